#include "trainer/quantize_model.h"

#include <chrono>
#include <cstdio>
#include <memory>
#include <tuple>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "quant/gptq.h"
#include "quant/grid.h"
#include "quant/hessian.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

QuantizeReport gptq_quantize_model(const GptqModelOptions& g) {
  const auto t0 = std::chrono::steady_clock::now();
  QuantizeOptions o = g.out;
  o.method = QuantizeOptions::Method::Rtn;  // the integer-layout rules (bits, layout, padding) are shared with RTN
  check_int_options(o);
  check_not_quantized(o.model_dir);
  QwenModel model(o.model_dir);
  const QwenConfig& cfg = model.config();
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size, I2 = padded_intermediate(o, I);
  for (auto [what, N, K] : {std::tuple<const char*, int64_t, int64_t>{"q_proj", cfg.q_dim(), C},
                            {"k_proj", cfg.kv_dim(), C}, {"o_proj", C, cfg.q_dim()}, {"gate_proj", I2, C},
                            {"down_proj", C, I2}}) {
    check_layout_fits(o, std::string(o.model_dir) + ": " + what, N, K);
  }
  const auto windows = calibration_windows(g.calib_path, g.text_field, g.calib_samples, g.calib_seq_len, g.seed,
                                           Tokenizer::from_dir(o.model_dir));
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
    if (std::regex_match(name, kDecoderLinearRe)) continue;
    shards.add_view(name, ckpt.get(name));
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
        if (lw.is_dense() && !lw.owned) release_mapped_pages(lw.dense.data, lw.dense.nbytes());  // a view of the map
        if (N2 != N || K2 != K) W = pad_matrix(W, N, K, N2, K2);
        Eigen::MatrixXf h = H->matrix();
        if (K2 != K) {
          Eigen::MatrixXf hp = Eigen::MatrixXf::Zero(K2, K2);
          hp.topLeftCorner(K, K) = h;
          h = std::move(hp);
        }
        GptqResult r = gptq_quantize(W.data(), N2, K2, std::move(h), go);
        for (const auto& w : r.warnings) std::fprintf(stderr, "gptq: %s: %s\n", prefix.c_str(), w.c_str());
        shards.add_int_linear(prefix, pack_int_linear(r.codes.data(), r.grid, r.g_idx.data(), o.layout));
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
