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
#include "quant/grid.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "trainer/quant_config.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_weights.h"

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
  if (o.method == QuantizeOptions::Method::Rtn) {
    QWENQ_CHECK(o.bits == 2 || o.bits == 4 || o.bits == 8,
                "--bits " << o.bits << " is not supported for GPTQ/AWQ files (2, 4 or 8)");
    QWENQ_CHECK(o.layout != IntLayout::AwqGemm || o.bits == 4, "AWQ GEMM files hold 4-bit codes only, not " << o.bits);
    QWENQ_CHECK(o.group_size == -1 || o.group_size >= 8, "--group-size must be -1 or at least 8, got " << o.group_size);
    QWENQ_CHECK(o.layout != IntLayout::AwqGemm || o.group_size > 0, "AWQ needs a positive --group-size");
    QWENQ_CHECK(!(o.layout == IntLayout::GptqV1 && !o.sym),
                "asymmetric grids can have a zero point of 0, which GPTQ v1 files cannot store; use --format gptq_v2 "
                "or --sym");
  }
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

}  // namespace qwenq
