#include "trainer/quantize_output.h"

#include <cstdio>
#include <cstring>
#include <map>

#include "core/error.h"
#include "core/progress.h"
#include "core/rng.h"
#include "core/strings.h"
#include "quant/compressed_tensors.h"
#include "quant/quantize_step.h"
#include "trainer/adapter_init.h"
#include "trainer/lora_model.h"
#include "trainer/quant_config.h"
#include "trainer/qwen_weights.h"
#include "trainer/text_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {

const std::regex kDecoderLinearRe(
    R"(^model\.layers\.(\d+)\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj|mlp\.(experts\.\d+|shared_expert)\.(gate|up|down)_proj)\.weight$)");

namespace {

// The layer, LoRA target and expert (kNoExpert for a block's own Linear, -1 the shared expert) of a decoder Linear,
// from kDecoderLinearRe's groups: "model.layers.12.mlp.experts.3.up_proj.weight" -> (12, up_proj, 3).
struct LinearSlot {
  int64_t layer = 0;
  LoraTarget target{};
  int64_t expert = kNoExpert;
};
LinearSlot linear_slot(const std::string& name) {
  std::smatch m;
  QWENQ_CHECK(std::regex_match(name, m, kDecoderLinearRe), name << ": not a decoder Linear");
  LinearSlot s;
  const std::string proj = m[3].matched ? m[3].str() : m[4].matched ? m[4].str() : m[6].str();
  QWENQ_CHECK(lora_target_from_name(proj + "_proj", &s.target), name << ": not a LoRA target");
  s.layer = std::stoll(m[1].str());
  if (m[5].matched) s.expert = m[5].str() == "shared_expert" ? -1 : std::stoll(m[5].str().substr(8));  // "experts.<e>"
  return s;
}

}  // namespace

LoraWeights* adapter_weights_for(LoraAdapter* adapter, const std::string& weight_name) {
  if (!adapter) return nullptr;
  const LinearSlot ls = linear_slot(weight_name);
  if (ls.expert == kNoExpert) return adapter->has(ls.layer, ls.target) ? &adapter->at(ls.layer, ls.target) : nullptr;
  return adapter->has_expert(ls.layer, ls.expert, ls.target) ? &adapter->expert_at(ls.layer, ls.expert, ls.target)
                                                             : nullptr;
}

bool is_packed_part(const std::unordered_set<std::string>& packed_prefixes, const std::string& name) {
  for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
    if (packed_prefixes.count(name.substr(0, dot)) && name.compare(dot + 1, std::string::npos, "bias") != 0) return true;
  }
  return false;
}

void add_moe_module_lists(nlohmann::ordered_json& qc, const QwenConfig& c, MoeListFor format) {
  if (!c.is_moe()) return;
  const bool dense_layers = c.has_dense_mlp();
  const bool shared = c.shared_expert_intermediate_size > 0;
  if (format == MoeListFor::Fp8Block) {
    nlohmann::ordered_json skip = {"lm_head"};
    for (int64_t l = 0; l < c.num_layers; ++l) {
      if (!c.is_moe_layer(l)) continue;
      const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
      skip.push_back(p + "gate");
      if (shared) skip.push_back(p + "shared_expert_gate");
    }
    qc["modules_to_not_convert"] = skip;
    return;
  }
  if (format == MoeListFor::Ct) {  // patterns that end at "gate": a dense layer's mlp.gate_proj stays quantized
    nlohmann::ordered_json ignore = {"lm_head", "re:.*mlp\\.gate$"};
    if (shared) ignore.push_back("re:.*mlp\\.shared_expert_gate$");
    qc["ignore"] = ignore;  // the whole list (lm_head too): callers copy these keys over the config's
    return;
  }
  if (format == MoeListFor::Gptq) {
    nlohmann::ordered_json in = nlohmann::ordered_json::array(), down = nlohmann::ordered_json::array();
    auto add = [&](int64_t e) {
      const std::string p = moe_expert_path(e);
      in.push_back(p + "gate_proj");
      in.push_back(p + "up_proj");
      down.push_back(p + "down_proj");
    };
    for (int64_t e = 0; e < c.num_experts; ++e) add(e);
    if (shared) add(-1);  // the shared expert after the routed ones
    if (dense_layers) {
      in.push_back("mlp.gate_proj");
      in.push_back("mlp.up_proj");
      down.push_back("mlp.down_proj");
    }
    qc["modules_in_block_to_quantize"] = {{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
                                          {"self_attn.o_proj"}, in, down};
    return;
  }
  if (format == MoeListFor::Awq) {
    QWENQ_CHECK(!dense_layers, "the AutoAWQ layout cannot mark a MoE model's routers unquantized when it also has "
                               "dense layers (mlp_only_layers / decoder_sparse_step): transformers skips modules by "
                               "substring and \"mlp.gate\" would also skip their mlp.gate_proj; use --format gptq_v2 (or, for rtn, gptq)");
    nlohmann::ordered_json skip = {"mlp.gate"};
    if (shared) skip.push_back("mlp.shared_expert_gate");
    qc["modules_to_not_convert"] = skip;
    return;
  }
  nlohmann::ordered_json skip = {"lm_head", "gate"};
  if (shared) skip.push_back("shared_expert_gate");
  qc["llm_int8_skip_modules"] = skip;
}

void ShardedWriter::add_view(const std::string& name, const TensorView& t) {
  writer_.add(name, t.dtype, t.shape, t.data);
  note_added(name);
  views_.emplace_back(t.data, t.nbytes());
}

void ShardedWriter::add_int_linear(const std::string& prefix, const PackedIntLinear& p) {
  if (ct_) {
    add_ct_packed_linear(writer_, prefix, p, ct_sym_, ct_g_idx_);
    for (const char* suffix : {".weight_packed", ".weight_scale", ".weight_shape"}) note_added(prefix + suffix);
    if (!ct_sym_) note_added(prefix + ".weight_zero_point");
    if (ct_g_idx_) note_added(prefix + ".weight_g_idx");
    return;
  }
  qwenq::add_int_linear(writer_, prefix, p);
  for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx"}) {
    if (p.layout != IntLayout::AwqGemm || std::string(suffix) != ".g_idx") note_added(prefix + suffix);
  }
}

void ShardedWriter::finish() {
  if (!pending_.empty() || files_.empty()) flush();
  const int n = static_cast<int>(files_.size());
  std::map<std::string, std::string> weight_map;
  for (int i = 0; i < n; ++i) {
    char name[64];
    if (n == 1) std::snprintf(name, sizeof name, "model.safetensors");
    else std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i + 1, n);
    QWENQ_CHECK(std::rename(path_join(dir_, files_[i].first).c_str(), path_join(dir_, name).c_str()) == 0,
                "cannot rename shard " << files_[i].first << " in " << dir_);
    for (const auto& t : files_[i].second) weight_map[t] = name;
  }
  if (n > 1) write_safetensors_index(path_join(dir_, "model.safetensors.index.json"), weight_map, total_);
}

void ShardedWriter::flush() {
  const std::string name = "model-shard-" + std::to_string(files_.size()) + ".safetensors";
  writer_.set_metadata("format", "pt");
  total_ += writer_.payload_bytes();
  writer_.write(path_join(dir_, name));
  files_.emplace_back(name, pending_);
  pending_.clear();
  for (const auto& [p, n] : views_) release_mapped_pages(p, n);
  views_.clear();
  writer_ = SafetensorsWriter();
}

MoeListFor moe_list_for(const QuantizeOptions& o) {
  return o.compressed_tensors ? MoeListFor::Ct : o.layout == IntLayout::AwqGemm ? MoeListFor::Awq : MoeListFor::Gptq;
}

namespace {
// Act-order groups out of input order, stored as weight_g_idx (static groups keep them in order).
bool ct_g_idx(const QuantizeOptions& o, bool desc_act, bool static_groups) {
  return desc_act && !static_groups && o.group_size > 0;
}
}  // namespace

nlohmann::ordered_json int_quantization_config(const QuantizeOptions& o, bool desc_act, bool static_groups,
                                               double damp) {
  if (o.compressed_tensors) {
    // Act-order is "group" when its g_idx is stored, "weight" when static groups keep the groups in input order.
    const char* actorder = ct_g_idx(o, desc_act, static_groups) ? "group"
                           : desc_act && o.group_size > 0        ? "weight"
                                                                 : nullptr;
    return ct_quantization_config(o.bits, o.group_size, o.sym, actorder, {"lm_head"});
  }
  if (o.layout == IntLayout::AwqGemm) return awq_quantization_config(o.bits, o.group_size);
  return gptq_quantization_config(o.bits, o.group_size, o.sym, desc_act, static_groups, damp, o.layout);
}

void set_int_output(ShardedWriter& shards, const QuantizeOptions& o, bool desc_act, bool static_groups) {
  if (o.compressed_tensors) shards.write_compressed_tensors(o.sym, ct_g_idx(o, desc_act, static_groups));
}

const char* torch_dtype_name(DType t) {
  return t == DType::BF16 ? "bfloat16" : t == DType::F16 ? "float16" : "float32";
}

namespace {
// Copies the tokenizer and generation files a loader needs.
void copy_side_files(const std::string& from, const std::string& to) {
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                        "added_tokens.json", "generation_config.json", "tokenizer.model"}) {
    const std::string src = path_join(from, f);
    if (file_exists(src)) write_file_atomic(path_join(to, f), read_file(src));
  }
}

int64_t gcd64(int64_t a, int64_t b) { return b == 0 ? a : gcd64(b, a % b); }
}  // namespace

QuantizeReport finish_output(const nlohmann::ordered_json& config, const std::string& model_dir,
                             const ShardedWriter& shards, StagedDir& out, std::chrono::steady_clock::time_point t0,
                             QuantizeReport rep, const std::function<void(const std::string&)>& before_commit) {
  write_file_atomic(path_join(out.path(), "config.json"), config.dump(2) + "\n");
  copy_side_files(model_dir, out.path());
  if (before_commit) before_commit(out.path());
  out.commit();
  rep.shards = shards.shards();
  rep.bytes_written = shards.total_bytes();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.peak_rss = peak_rss_bytes();
  return rep;
}

namespace {

// The adapter of `c` for the output's dims (a MoE model's experts each get their own A and B: LoraSlot); a rank the
// Linears cannot hold is refused with the flag that set it.
std::unique_ptr<LoraAdapter> init_adapter_for(LoraConfig c, const std::string& out_dir, const QwenConfig& cfg,
                                              int64_t I2, const char* flag) {
  c.base_model = out_dir;
  c.validate();
  try {
    LoraDims dims = lora_dims_of(cfg);
    dims.intermediate_size = I2;
    return std::make_unique<LoraAdapter>(dims, c);
  } catch (const Error& e) {
    throw Error(std::string(flag) + ": " + e.what());
  }
}

}  // namespace

std::unique_ptr<LoraAdapter> loftq_adapter_for(const QuantizeOptions& o, const QwenConfig& cfg, int64_t I2) {
  if (o.loftq.r <= 0) return nullptr;
  QWENQ_CHECK(o.loftq_iters >= 1, "--loftq-iter must be at least 1, got " << o.loftq_iters);
  return init_adapter_for(o.loftq, o.out_dir, cfg, I2, "--loftq-rank");
}

std::unique_ptr<LoraAdapter> pissa_adapter_for(const QuantizeOptions& o, const QwenConfig& cfg, int64_t I2) {
  if (o.pissa.r <= 0) return nullptr;
  QWENQ_CHECK(o.loftq.r <= 0, "give --loftq-rank or --pissa-rank, not both (each starts the adapter its own way)");
  return init_adapter_for(o.pissa, o.out_dir, cfg, I2, "--pissa-rank");
}

QuantizeReport finish_output_with_loftq(const nlohmann::ordered_json& config, const std::string& model_dir,
                                        const ShardedWriter& shards, StagedDir& out,
                                        std::chrono::steady_clock::time_point t0, QuantizeReport rep,
                                        LoraAdapter* adapter, bool quiet) {
  LoftqInitReport lq;
  QuantizeReport done = finish_output(config, model_dir, shards, out, t0, rep, [&](const std::string& staged) {
    lq = write_loftq_adapter(staged, model_dir, adapter, quiet);
  });
  done.loftq_plain_error = lq.quant_error;
  done.loftq_error = lq.corrected_error;
  return done;
}

void check_int_options(const QuantizeOptions& o) {
  QWENQ_CHECK(o.bits == 2 || o.bits == 3 || o.bits == 4 || o.bits == 8,
              "--bits " << o.bits << " is not supported for GPTQ/AWQ files (2, 3, 4 or 8)");
  QWENQ_CHECK(o.layout != IntLayout::AwqGemm || o.bits == 4, "AWQ GEMM files hold 4-bit codes only, not " << o.bits);
  QWENQ_CHECK(o.group_size == -1 || o.group_size >= 8, "--group-size must be -1 or at least 8, got " << o.group_size);
  QWENQ_CHECK(o.layout != IntLayout::AwqGemm || o.group_size > 0, "AWQ needs a positive --group-size");
  QWENQ_CHECK(!o.compressed_tensors || o.layout == IntLayout::GptqV2,
              "compressed-tensors output is made from GPTQ v2 codes, not " << int_layout_name(o.layout));
  QWENQ_CHECK(!o.compressed_tensors || o.bits != 3,
              "compressed-tensors pack-quantized files are written with 2, 4 or 8-bit codes, not 3 (use --format gptq)");
  QWENQ_CHECK(!(o.layout == IntLayout::GptqV1 && !o.sym),
              "asymmetric grids can have a zero point of 0, which GPTQ v1 files cannot store; use --format gptq_v2 "
              "or --sym");
}

void check_layout_fits(const QuantizeOptions& o, const std::string& name, int64_t N, int64_t K) {
  if (o.method != QuantizeOptions::Method::Rtn) return;
  if (o.layout != IntLayout::AwqGemm) {
    // 32 codes fill a whole number of int32 words for every width (3 bits: 32 codes in 3 words).
    const int per = o.bits == 3 ? 32 : 32 / o.bits;
    QWENQ_CHECK(K % per == 0 && N % per == 0,
                name << " has shape [" << N << ", " << K << "]: GPTQ packs " << o.bits << "-bit codes into int32 words "
                     << per << " at a time along K and along N, so both must be multiples of " << per
                     << " (pass --pad-intermediate, or use nf4)");
  } else {
    QWENQ_CHECK(N % 8 == 0, name << " has shape [" << N << ", " << K
                                 << "]: AWQ GEMM packs 8 output channels per int32, so N must be a multiple of 8"
                                 << " (pass --pad-intermediate, or use nf4)");
    QWENQ_CHECK(K % o.group_size == 0, name << " has shape [" << N << ", " << K << "]: AWQ GEMM readers need K to be a "
                                            "multiple of the group size " << o.group_size
                                            << " (choose a smaller --group-size, or pass --pad-intermediate)");
  }
}

QuantConfig check_quantizable_source(const std::string& model_dir) {
  QuantConfig q = load_quant_config(model_dir);
  QWENQ_CHECK(q.float8_weights() || q.method == QuantConfig::Method::None,
              model_dir << " is already quantized (its config.json has a quantization_config); give the original "
                           "bf16/fp16/fp32 model (or an FP8 one)");
  return q;
}

std::vector<float> source_linear_f32(const Checkpoint& ckpt, const QuantConfig& quant, const std::string& prefix,
                                     const TensorView& t, int64_t N, int64_t K) {
  if (quant.method == QuantConfig::Method::None) {
    std::vector<float> W(static_cast<size_t>(N * K));
    weight_to_f32_ref(t.dtype, t.data, t.shape[0], t.shape[1], N, K, W.data());
    return W;
  }
  std::vector<float> W = load_linear(ckpt, quant, prefix, t.shape[0], t.shape[1]).dequantize();
  return t.shape[0] == N && t.shape[1] == K ? W : pad_matrix(W, t.shape[0], t.shape[1], N, K);
}

bool is_source_scale(const std::string& name) {
  for (const char* suffix : {".weight_scale_inv", ".weight_scale", ".input_scale"}) {
    if (has_proper_suffix(name, suffix)) {
      return std::regex_match(name.substr(0, name.size() - std::strlen(suffix)) + ".weight", kDecoderLinearRe);
    }
  }
  return false;
}

int64_t padded_intermediate(const QuantizeOptions& o, int64_t I) {
  if (!o.pad_intermediate || o.method != QuantizeOptions::Method::Rtn) return I;
  int64_t m = o.layout == IntLayout::AwqGemm ? 8 : (o.bits == 3 ? 32 : 32 / o.bits);
  if (o.group_size > 0) m = m / gcd64(m, o.group_size) * o.group_size;
  return (I + m - 1) / m * m;
}

std::vector<float> pad_matrix(const std::vector<float>& W, int64_t N, int64_t K, int64_t N2, int64_t K2) {
  std::vector<float> out(N2 * K2, 0.f);
  for (int64_t n = 0; n < N; ++n) std::copy(W.begin() + n * K, W.begin() + (n + 1) * K, out.begin() + n * K2);
  return out;
}

std::vector<std::vector<int32_t>> calibration_windows(const std::string& path, const std::string& text_field,
                                                      int64_t samples, int64_t seq_len, uint64_t seed,
                                                      const Tokenizer& tok) {
  QWENQ_CHECK(samples >= 1 && seq_len >= 2, "--calib-samples and --calib-seq-len must be positive (got " << samples
                                                << " and " << seq_len << ")");
  const std::string text = load_text_corpus(path, text_field, &tok);
  const std::vector<int32_t> ids = tok.encode(text, false);
  const int64_t n = static_cast<int64_t>(ids.size());
  QWENQ_CHECK(n > seq_len, path << ": " << n << " tokens, too short for one calibration window of --calib-seq-len "
                                << seq_len << "; give more text or a shorter window");
  Rng rng(seed);
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < samples; ++i) {
    const int64_t start = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - seq_len)));
    out.emplace_back(ids.begin() + start, ids.begin() + start + seq_len);
  }
  return out;
}

std::vector<std::vector<int32_t>> calibration_blocks_concat(const std::string& path, const std::string& text_field,
                                                            int64_t documents, int64_t seq_len, const Tokenizer& tok) {
  QWENQ_CHECK(documents >= 1 && seq_len >= 2, "--calib-samples and --calib-seq-len must be positive (got " << documents
                                                 << " and " << seq_len << ")");
  std::vector<int32_t> all;
  int64_t used = 0;
  for (const std::string& doc : load_text_documents(path, text_field, &tok)) {
    const size_t b = doc.find_first_not_of(" \t\r\n\f\v"), e = doc.find_last_not_of(" \t\r\n\f\v");
    if (b == std::string::npos) continue;
    // With the tokenizer's special tokens, as AutoAWQ's tokenizer.encode(line) adds them (a BOS for Llama-style
    // tokenizers; nothing for Qwen's).
    const std::vector<int32_t> ids = tok.encode(doc.substr(b, e - b + 1), true);
    if (ids.empty() || static_cast<int64_t>(ids.size()) > seq_len) continue;  // AutoAWQ skips longer documents
    all.insert(all.end(), ids.begin(), ids.end());
    if (++used == documents) break;
  }
  const int64_t blocks = static_cast<int64_t>(all.size()) / seq_len;
  QWENQ_CHECK(blocks >= 1, path << ": " << used << " documents of at most " << seq_len << " tokens give " << all.size()
                                << " tokens, not one whole calibration block of --calib-seq-len " << seq_len);
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < blocks; ++i) out.emplace_back(all.begin() + i * seq_len, all.begin() + (i + 1) * seq_len);
  return out;
}

}  // namespace qwenq
