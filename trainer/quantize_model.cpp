#include "trainer/quantize_model.h"

#include <chrono>
#include <cstdio>
#include <map>
#include <regex>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/rng.h"
#include "quant/gptq.h"
#include "quant/grid.h"
#include "quant/hessian.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "trainer/quant_config.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_weights.h"
#include "trainer/text_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {

namespace {

// Shards written as they fill up, as "model-shard-<i>.safetensors", renamed to transformers'
// "model-0000i-of-0000n.safetensors" (or model.safetensors when there is one) at the end.
class ShardedWriter {
 public:
  ShardedWriter(std::string dir, uint64_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {}
  SafetensorsWriter& current() { return writer_; }
  void note_added(const std::string& name) { pending_.push_back(name); }
  void maybe_flush() {
    if (writer_.payload_bytes() >= max_bytes_) flush();
  }
  void finish() {
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
  int shards() const { return static_cast<int>(files_.size()); }
  uint64_t total_bytes() const { return total_; }

 private:
  void flush() {
    const std::string name = "model-shard-" + std::to_string(files_.size()) + ".safetensors";
    writer_.set_metadata("format", "pt");
    total_ += writer_.payload_bytes();
    writer_.write(path_join(dir_, name));
    files_.emplace_back(name, pending_);
    pending_.clear();
    writer_ = SafetensorsWriter();
  }
  std::string dir_;
  uint64_t max_bytes_;
  uint64_t total_ = 0;
  SafetensorsWriter writer_;
  std::vector<std::string> pending_;
  std::vector<std::pair<std::string, std::vector<std::string>>> files_;
};

const std::regex kLinearRe(R"(^model\.layers\.(\d+)\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$)");

const char* torch_dtype_name(DType t) {
  return t == DType::BF16 ? "bfloat16" : t == DType::F16 ? "float16" : "float32";
}

void check_layout_fits(const QuantizeOptions& o, const std::string& name, int64_t N, int64_t K) {
  if (o.method != QuantizeOptions::Method::Rtn) return;
  const int per = 32 / o.bits;
  const bool gptq = o.layout != IntLayout::AwqGemm;
  if (gptq) {
    QWENQ_CHECK(K % per == 0 && N % per == 0,
                name << " has shape [" << N << ", " << K << "]: GPTQ packs " << per << " " << o.bits
                     << "-bit codes per int32 along K and along N, so both must be multiples of " << per
                     << " (pass --pad-intermediate, or use nf4)");
  } else {
    QWENQ_CHECK(N % 8 == 0, name << " has shape [" << N << ", " << K
                                 << "]: AWQ GEMM packs 8 output channels per int32, so N must be a multiple of 8");
  }
}

// Copies the tokenizer and generation files a loader needs.
void copy_side_files(const std::string& from, const std::string& to) {
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                        "added_tokens.json", "generation_config.json", "tokenizer.model"}) {
    const std::string src = path_join(from, f);
    if (file_exists(src)) write_file_atomic(path_join(to, f), read_file(src));
  }
}

// Writes config.json and the tokenizer files, renames the staged directory into place, completes the report.
QuantizeReport finish_output(const nlohmann::ordered_json& config, const std::string& model_dir,
                             const ShardedWriter& shards, StagedDir& out, std::chrono::steady_clock::time_point t0,
                             QuantizeReport rep) {
  write_file_atomic(path_join(out.path(), "config.json"), config.dump(2) + "\n");
  copy_side_files(model_dir, out.path());
  out.commit();
  rep.shards = shards.shards();
  rep.bytes_written = shards.total_bytes();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.peak_rss = peak_rss_bytes();
  return rep;
}

// Options every GPTQ/AWQ-layout writer must satisfy.
void check_int_options(const QuantizeOptions& o) {
  QWENQ_CHECK(o.bits == 2 || o.bits == 4 || o.bits == 8,
              "--bits " << o.bits << " is not supported for GPTQ/AWQ files (2, 4 or 8)");
  QWENQ_CHECK(o.layout != IntLayout::AwqGemm || o.bits == 4, "AWQ GEMM files hold 4-bit codes only, not " << o.bits);
  QWENQ_CHECK(o.group_size == -1 || o.group_size >= 8, "--group-size must be -1 or at least 8, got " << o.group_size);
  QWENQ_CHECK(o.layout != IntLayout::AwqGemm || o.group_size > 0, "AWQ needs a positive --group-size");
  QWENQ_CHECK(!(o.layout == IntLayout::GptqV1 && !o.sym),
              "asymmetric grids can have a zero point of 0, which GPTQ v1 files cannot store; use --format gptq_v2 "
              "or --sym");
}

int64_t gcd64(int64_t a, int64_t b) { return b == 0 ? a : gcd64(b, a % b); }

// The intermediate size to write: I itself, or with pad_intermediate the next multiple of what the RTN
// layout needs (32/bits codes per word along K and N; AWQ: 8 along N; whole groups along down_proj's K).
int64_t padded_intermediate(const QuantizeOptions& o, int64_t I) {
  if (!o.pad_intermediate || o.method != QuantizeOptions::Method::Rtn) return I;
  int64_t m = o.layout == IntLayout::AwqGemm ? 8 : 32 / o.bits;
  if (o.group_size > 0) m = m / gcd64(m, o.group_size) * o.group_size;
  return (I + m - 1) / m * m;
}

// W [N, K] -> [N2, K2] with zeros appended.
std::vector<float> pad_matrix(const std::vector<float>& W, int64_t N, int64_t K, int64_t N2, int64_t K2) {
  std::vector<float> out(N2 * K2, 0.f);
  for (int64_t n = 0; n < N; ++n) std::copy(W.begin() + n * K, W.begin() + (n + 1) * K, out.begin() + n * K2);
  return out;
}

}  // namespace

QuantizeReport quantize_model(const QuantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  QWENQ_CHECK(load_quant_config(o.model_dir).method == QuantConfig::Method::None,
              o.model_dir << " is already quantized (its config.json has a quantization_config); give the original "
                             "bf16/fp16/fp32 model");
  const QwenConfig cfg = load_qwen_config(o.model_dir);
  if (o.method == QuantizeOptions::Method::Rtn) check_int_options(o);
  Checkpoint ckpt(o.model_dir);
  const std::vector<std::string> names = ckpt.names();
  const int64_t I = cfg.intermediate_size, I2 = padded_intermediate(o, I);
  // The shape a Linear is written with: MLP shapes padded along the intermediate dimension when asked.
  auto out_shape = [&](const std::string& name, int64_t N, int64_t K) {
    const bool mlp_in = name.find("mlp.gate_proj") != std::string::npos || name.find("mlp.up_proj") != std::string::npos;
    const bool mlp_out = name.find("mlp.down_proj") != std::string::npos;
    return std::make_pair(mlp_in && N == I ? I2 : N, mlp_out && K == I ? I2 : K);
  };
  // Refuse awkward shapes before writing anything.
  int64_t n_linear = 0;
  DType weight_dtype = DType::BF16;
  for (const auto& name : names) {
    if (!std::regex_match(name, kLinearRe)) continue;
    const TensorView& t = ckpt.get(name);
    const auto [N2, K2] = out_shape(name, t.shape[0], t.shape[1]);
    check_layout_fits(o, ckpt.file_of(name) + ": " + name, N2, K2);
    weight_dtype = t.dtype;
    ++n_linear;
  }
  QWENQ_CHECK(n_linear > 0, o.model_dir << ": no decoder Linear weights (model.layers.N.*_proj.weight) found");

  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  QuantizeReport rep;
  Progress bar("quantize", n_linear, "layers", o.quiet);
  for (const auto& name : names) {
    const TensorView& t = ckpt.get(name);
    if (!std::regex_match(name, kLinearRe)) {
      shards.current().add(name, t.dtype, t.shape, t.data);  // pass-through, straight from the map
      shards.note_added(name);
      shards.maybe_flush();
      continue;
    }
    const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
    std::vector<float> W(t.numel());
    to_f32(t.dtype, t.data, W.data(), W.size());
    const auto [N, K] = out_shape(name, t.shape[0], t.shape[1]);
    if (N != t.shape[0] || K != t.shape[1]) W = pad_matrix(W, t.shape[0], t.shape[1], N, K);
    if (o.method == QuantizeOptions::Method::Rtn) {
      const GridRule rule = o.layout == IntLayout::AwqGemm ? GridRule::Awq : GridRule::Gptq;
      GroupGrid grid = find_grid(W.data(), N, K, o.bits, o.group_size, o.sym, rule);
      std::vector<uint8_t> codes = quantize_rtn(W.data(), grid);
      add_int_linear(shards.current(), prefix, pack_int_linear(codes.data(), grid, nullptr, o.layout));
      for (const char* s : {".qweight", ".qzeros", ".scales", ".g_idx"}) shards.note_added(prefix + s);
    } else {
      Nf4Options no;
      no.fp4 = o.method == QuantizeOptions::Method::Fp4;
      no.blocksize = o.blocksize;
      no.double_quant = o.double_quant;
      Nf4Tensor q = nf4_quantize(W.data(), N * K, no);
      add_nf4_linear(shards.current(), prefix, q, {N, K}, torch_dtype_name(t.dtype));
      shards.note_added(prefix + ".weight");
    }
    ++rep.linears;
    rep.params_quantized += N * K;
    bar.update(rep.linears, prefix);
    shards.maybe_flush();
  }
  shards.finish();
  bar.finish();

  nlohmann::ordered_json config = nlohmann::ordered_json::parse(read_file(path_join(o.model_dir, "config.json")));
  if (I2 != I) {
    config["intermediate_size"] = I2;
    if (!o.quiet) std::fprintf(stderr, "padded intermediate_size %lld -> %lld with zero channels\n", (long long)I, (long long)I2);
  }
  if (o.method == QuantizeOptions::Method::Rtn) {
    config["quantization_config"] = o.layout == IntLayout::AwqGemm
                                        ? awq_quantization_config(o.bits, o.group_size)
                                        : gptq_quantization_config(o.bits, o.group_size, o.sym, false, false, 0.0, o.layout);
    config["quantization_config"]["qwenq_method"] = "rtn";
  } else {
    config["quantization_config"] = nf4_quantization_config_json(o.double_quant, torch_dtype_name(weight_dtype),
                                                                 o.method == QuantizeOptions::Method::Fp4);
  }
  return finish_output(config, o.model_dir, shards, out, t0, rep);
}

QuantizeReport dequantize_model(const DequantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  QWENQ_CHECK(o.dtype == DType::BF16 || o.dtype == DType::F16 || o.dtype == DType::F32,
              "dequantize: --dtype must be bf16, fp16 or fp32");
  const QwenConfig cfg = load_qwen_config(o.model_dir);
  const QuantConfig quant = load_quant_config(o.model_dir);
  QWENQ_CHECK(quant.method != QuantConfig::Method::None,
              o.model_dir << " is not quantized (no quantization_config in config.json)");
  Checkpoint ckpt(o.model_dir);
  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  QuantizeReport rep;
  std::vector<std::string> packed_prefixes;
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size;
  const std::pair<const char*, std::pair<int64_t, int64_t>> projs[] = {
      {"self_attn.q_proj", {cfg.q_dim(), C}}, {"self_attn.k_proj", {cfg.kv_dim(), C}},
      {"self_attn.v_proj", {cfg.kv_dim(), C}}, {"self_attn.o_proj", {C, cfg.q_dim()}},
      {"mlp.gate_proj", {I, C}},               {"mlp.up_proj", {I, C}},
      {"mlp.down_proj", {C, I}}};
  Progress bar("dequantize", cfg.num_layers * 7, "layers", o.quiet);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    for (const auto& [proj, shape] : projs) {
      const std::string prefix = "model.layers." + std::to_string(l) + "." + proj;
      LinearWeight w = load_linear(ckpt, quant, prefix, shape.first, shape.second);
      if (w.is_dense()) continue;
      const std::vector<float> W = w.dequantize();
      std::vector<uint8_t> bytes(W.size() * dtype_size(o.dtype));
      from_f32(o.dtype, W.data(), bytes.data(), W.size());
      shards.current().add_owned(prefix + ".weight", o.dtype, {w.N, w.K}, std::move(bytes));
      shards.note_added(prefix + ".weight");
      packed_prefixes.push_back(prefix + ".");
      ++rep.linears;
      rep.params_quantized += w.N * w.K;
      bar.update(rep.linears);
      shards.maybe_flush();
    }
  }
  for (const auto& name : ckpt.names()) {
    bool packed_part = false;
    for (const auto& p : packed_prefixes) {
      if (name.compare(0, p.size(), p) == 0 && name.substr(p.size()) != "bias") packed_part = true;
    }
    if (packed_part) continue;
    const TensorView& t = ckpt.get(name);
    shards.current().add(name, t.dtype, t.shape, t.data);
    shards.note_added(name);
    shards.maybe_flush();
  }
  shards.finish();
  bar.finish();
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(read_file(path_join(o.model_dir, "config.json")));
  config.erase("quantization_config");
  config["torch_dtype"] = torch_dtype_name(o.dtype);
  return finish_output(config, o.model_dir, shards, out, t0, rep);
}

namespace {

// Seeded calibration windows of `len` tokens cut from the tokenized calibration text.
std::vector<std::vector<int32_t>> calibration_windows(const GptqModelOptions& g, const Tokenizer& tok) {
  const std::string text = load_text_corpus(g.calib_path, g.text_field);
  const std::vector<int32_t> ids = tok.encode(text, false);
  const int64_t L = g.calib_seq_len, n = static_cast<int64_t>(ids.size());
  QWENQ_CHECK(g.calib_samples >= 1 && L >= 2, "--calib-samples and --calib-seq-len must be positive");
  QWENQ_CHECK(n > L, g.calib_path << ": " << n << " tokens, too short for one calibration window of --calib-seq-len "
                                  << L << "; give more text or a shorter window");
  Rng rng(g.seed);
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < g.calib_samples; ++i) {
    const int64_t start = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - L)));
    out.emplace_back(ids.begin() + start, ids.begin() + start + L);
  }
  return out;
}

}  // namespace

QuantizeReport gptq_quantize_model(const GptqModelOptions& g) {
  const auto t0 = std::chrono::steady_clock::now();
  QuantizeOptions o = g.out;
  o.method = QuantizeOptions::Method::Rtn;  // the integer-layout rules (bits, layout, padding) are shared with RTN
  check_int_options(o);
  QWENQ_CHECK(load_quant_config(o.model_dir).method == QuantConfig::Method::None,
              o.model_dir << " is already quantized (its config.json has a quantization_config); give the original "
                             "bf16/fp16/fp32 model");
  QwenModel model(o.model_dir);
  const QwenConfig& cfg = model.config();
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size, I2 = padded_intermediate(o, I);
  for (auto [what, N, K] : {std::tuple<const char*, int64_t, int64_t>{"q_proj", cfg.q_dim(), C},
                            {"k_proj", cfg.kv_dim(), C}, {"o_proj", C, cfg.q_dim()}, {"gate_proj", I2, C},
                            {"down_proj", C, I2}}) {
    check_layout_fits(o, std::string(o.model_dir) + ": " + what, N, K);
  }
  const auto windows = calibration_windows(g, Tokenizer::from_dir(o.model_dir));
  const PackedBatch batch = PackedBatch::from_sequences(windows);
  std::vector<float> X;
  model.embed_batch(batch, &X);
  if (!o.quiet) {
    std::fprintf(stderr, "gptq: %zu calibration windows x %lld tokens from %s; %lld layers\n", windows.size(),
                 (long long)g.calib_seq_len, g.calib_path.c_str(), (long long)cfg.num_layers);
  }

  GptqOptions go;
  go.bits = o.bits;
  go.group_size = o.group_size;
  go.sym = o.sym;
  go.damp = g.damp;
  go.desc_act = g.desc_act;
  go.static_groups = g.static_groups;
  go.block_size = g.block_size;

  Checkpoint ckpt(o.model_dir);
  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  QuantizeReport rep;
  for (const auto& name : ckpt.names()) {  // everything that is not a decoder Linear passes through
    if (std::regex_match(name, kLinearRe)) continue;
    const TensorView& t = ckpt.get(name);
    shards.current().add(name, t.dtype, t.shape, t.data);
    shards.note_added(name);
    shards.maybe_flush();
  }
  struct Slot {
    BlockLinear group;
    int index;
    const char* name;
  };
  const Slot slots[] = {{BlockLinear::QKV, 0, "self_attn.q_proj"}, {BlockLinear::QKV, 1, "self_attn.k_proj"},
                        {BlockLinear::QKV, 2, "self_attn.v_proj"}, {BlockLinear::O, 0, "self_attn.o_proj"},
                        {BlockLinear::GateUp, 0, "mlp.gate_proj"},  {BlockLinear::GateUp, 1, "mlp.up_proj"},
                        {BlockLinear::Down, 0, "mlp.down_proj"}};
  Progress bar("gptq", cfg.num_layers * 7, "layers", o.quiet);
  std::vector<float> work;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    for (BlockLinear group : {BlockLinear::QKV, BlockLinear::O, BlockLinear::GateUp, BlockLinear::Down}) {
      // Hessian of this group's input, with every earlier Linear of the block already quantized.
      std::unique_ptr<HessianAccumulator> H;
      work = X;
      model.block_forward(l, batch, work.data(), [&](BlockLinear at, const float* x, int64_t T) {
        if (at != group) return;
        const int64_t K = group == BlockLinear::O ? cfg.q_dim() : group == BlockLinear::Down ? I : C;
        H = std::make_unique<HessianAccumulator>(K);
        H->add_batch(x, T);
      });
      QWENQ_CHECK(H != nullptr, "gptq: layer " << l << " never reached a Linear group");
      for (const Slot& slot : slots) {
        if (slot.group != group) continue;
        LinearWeight& lw = model.linear_weight(l, slot.group, slot.index);
        const std::string prefix = "model.layers." + std::to_string(l) + "." + slot.name;
        const int64_t N = lw.N, K = lw.K;
        // Pad the MLP width with zero channels when asked: zero rows of gate/up, zero columns (dead inputs,
        // H = 0 there) of down.
        const int64_t N2 = (group == BlockLinear::GateUp) ? I2 : N, K2 = (group == BlockLinear::Down) ? I2 : K;
        std::vector<float> W = lw.dequantize();
        if (N2 != N || K2 != K) W = pad_matrix(W, N, K, N2, K2);
        Eigen::MatrixXf h = H->matrix();
        if (K2 != K) {
          Eigen::MatrixXf hp = Eigen::MatrixXf::Zero(K2, K2);
          hp.topLeftCorner(K, K) = h;
          h = std::move(hp);
        }
        GptqResult r = gptq_quantize(W.data(), N2, K2, std::move(h), go);
        for (const auto& w : r.warnings) std::fprintf(stderr, "gptq: %s: %s\n", prefix.c_str(), w.c_str());
        add_int_linear(shards.current(), prefix, pack_int_linear(r.codes.data(), r.grid, r.g_idx.data(), o.layout));
        for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx"}) shards.note_added(prefix + suffix);
        // The rest of the block and the later blocks see the quantized layer.
        std::vector<float> fq = dequantize_codes(r.codes.data(), r.grid, r.g_idx.data());
        std::vector<float> back(N * K);
        for (int64_t n = 0; n < N; ++n) std::copy(fq.begin() + n * K2, fq.begin() + n * K2 + K, back.begin() + n * K);
        lw = LinearWeight::from_fp32(std::move(back), N, K);
        ++rep.linears;
        rep.params_quantized += N * K;
        char extra[96];
        std::snprintf(extra, sizeof extra, "layer %lld %s loss %.3g", (long long)l, slot.name, r.loss);
        bar.update(rep.linears, extra);
      }
      shards.maybe_flush();
    }
    model.block_forward(l, batch, X.data(), nullptr);  // inputs of the next block, through the quantized block
  }
  shards.finish();
  bar.finish();

  nlohmann::ordered_json config = nlohmann::ordered_json::parse(read_file(path_join(o.model_dir, "config.json")));
  if (I2 != I) config["intermediate_size"] = I2;
  config["quantization_config"] =
      o.layout == IntLayout::AwqGemm
          ? awq_quantization_config(o.bits, o.group_size)
          : gptq_quantization_config(o.bits, o.group_size, o.sym, g.desc_act, g.static_groups, g.damp, o.layout);
  return finish_output(config, o.model_dir, shards, out, t0, rep);
}

}  // namespace qwenq
