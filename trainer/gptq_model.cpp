// gptq_quantize_model (trainer/quantize_model.h): the checks, the calibration windows, the pass-through tensors
// and the output, the per-Linear step both drivers share (trainer/gptq_model.h), and the CPU driver.
#include "trainer/gptq_model.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <tuple>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "quant/gptq.h"
#include "quant/grid.h"
#include "quant/hessian.h"
#include "lora/lora_adapter.h"
#include "lora/low_rank.h"
#include "lora/peft_io.h"
#include "lora/pissa.h"
#include "trainer/adapter_init.h"
#include "trainer/calib_chunks.h"
#include "trainer/tokenizer.h"

namespace qwenq {

const BlockLinear kGptqGroups[4] = {BlockLinear::QKV, BlockLinear::O, BlockLinear::GateUp, BlockLinear::Down};

GptqSolve GptqLinearStep::with_host_h(Eigen::MatrixXf& h, GptqSolver solve) {
  return [&h, solve](const float* W, int64_t N2, int64_t K2, const GptqOptions& o) {
    const int64_t K = h.rows();
    if (K2 != K) {
      Eigen::MatrixXf hp = Eigen::MatrixXf::Zero(K2, K2);
      hp.topLeftCorner(K, K) = h;
      h = std::move(hp);
    }
    return solve(W, N2, K2, std::move(h), o);
  };
}

std::vector<float> GptqLinearStep::run(int64_t l, const GptqSlot& slot, Eigen::MatrixXf h, GptqSolver solve) {
  return run_group_member(l, slot, with_host_h(h, solve));
}

std::vector<float> GptqLinearStep::run_group_member(int64_t l, const GptqSlot& slot, const GptqSolve& solve) {
  const BlockLinear group = slot.group;
  LinearWeight& lw = model_.linear_weight(l, slot.group, slot.index);
  // Pad the MLP width with zero channels when asked: zero rows of gate/up, zero columns (dead inputs,
  // H = 0 there) of down.
  const int64_t N2 = (group == BlockLinear::GateUp) ? I2_ : lw.N, K2 = (group == BlockLinear::Down) ? I2_ : lw.K;
  return quantize(l, slot.name, lw, N2, K2, solve);
}

void GptqLinearStep::run_group(int64_t l, BlockLinear group, Eigen::MatrixXf h, GptqSolver solve,
                               const GptqUse& use) {
  int left = 0;
  for (const GptqSlot& slot : kDecoderLinears) left += slot.group == group;
  for (const GptqSlot& slot : kDecoderLinears) {
    if (slot.group != group) continue;
    use(slot, --left == 0 ? run(l, slot, std::move(h), solve) : run(l, slot, h, solve));
  }
}

void GptqLinearStep::run_group(int64_t l, BlockLinear group, const GptqSolve& solve, const GptqUse& use) {
  for (const GptqSlot& slot : kDecoderLinears)
    if (slot.group == group) use(slot, run_group_member(l, slot, solve));
}

std::vector<float> GptqLinearStep::run_expert(int64_t l, int64_t expert, int which, Eigen::MatrixXf h,
                                              GptqSolver solve) {
  static const char* kProj[3] = {"gate_proj", "up_proj", "down_proj"};
  const std::string name = moe_expert_path(expert) + kProj[which];
  LinearWeight& lw = model_.expert_linear(l, expert, which);
  return quantize(l, name, lw, lw.N, lw.K, with_host_h(h, solve));
}

std::vector<float> GptqLinearStep::quantize(int64_t l, const std::string& name, LinearWeight& lw, int64_t N2,
                                            int64_t K2, const GptqSolve& solve) {
  const std::string prefix = "model.layers." + std::to_string(l) + "." + name;
  const int64_t N = lw.N, K = lw.K;
  std::vector<float> W = lw.dequantize();
  if (lw.is_dense() && !lw.owned) release_mapped_pages(lw.dense.data, lw.dense.nbytes());  // a view of the map
  if (N2 != N || K2 != K) W = pad_matrix(W, N, K, N2, K2);
  LoraWeights* pw = adapter_weights_for(pissa_, prefix + ".weight");
  if (pw) {  // PiSSA: the principal part to the adapter, the residual to GPTQ (the padding stays zero in both)
    const std::string what = "pissa: " + prefix;
    PissaSplit ps = pissa_split(W, N2, K2, pissa_->uniform_rank(), pissa_->uniform_scaling(), {}, {}, what.c_str());
    pw->A = std::move(ps.A);
    pw->B = std::move(ps.B);
    pissa_w2_ += ps.weight_sq;
    pissa_p2_ += ps.principal_sq;
    W = std::move(ps.residual);
  }
  GptqResult r;
  {
    const StageScope t(times_.solves);
    r = solve(W.data(), N2, K2, gptq_);
  }
  for (const auto& w : r.warnings) std::fprintf(stderr, "gptq: %s: %s\n", prefix.c_str(), w.c_str());
  const StageScope t(times_.packing);
  shards_.add_int_linear(prefix, pack_int_linear(r.codes.data(), r.grid, r.g_idx.data(), out_.layout));
  std::vector<float> back = dequantize_codes(r.codes.data(), r.grid, r.g_idx.data());
  if (pw) subtract_scaled_product(back.data(), pw->B.data(), pw->A.data(), -pissa_->uniform_scaling(), N2, K2, pissa_->uniform_rank(),
                                  back.data());  // Q + s·B A: the adapted Linear
  if (N2 != N || K2 != K) {  // the padded weight's [N, K] corner
    std::vector<float> fq = std::move(back);
    back.assign(static_cast<size_t>(N * K), 0.f);
    for (int64_t n = 0; n < N; ++n) std::copy(fq.begin() + n * K2, fq.begin() + n * K2 + K, back.begin() + n * K);
  }
  if (calib_dtype_ == DType::BF16) bf16_round_inplace(back.data(), back.size());
  ++rep_.linears;
  rep_.params_quantized += N * K;
  char extra[96];
  std::snprintf(extra, sizeof extra, "layer %lld %s loss %.3g", (long long)l, name.c_str(), r.loss);
  bar_.update(rep_.linears, extra);
  return back;
}

int64_t gptq_expert_input_width(const QwenConfig& c, BlockLinear group, int64_t expert) {
  if (group == BlockLinear::GateUp) return c.hidden_size;
  return expert < 0 ? c.shared_expert_intermediate_size : c.moe_intermediate_size;
}

std::vector<int> gptq_expert_linears(BlockLinear group) {
  return group == BlockLinear::GateUp ? std::vector<int>{0, 1} : std::vector<int>{2};
}

void warn_idle_experts(int64_t layer, const std::vector<int64_t>& idle, int64_t num_experts) {
  if (idle.empty()) return;
  std::string list;
  for (int64_t e : idle) list += (list.empty() ? "" : ", ") + std::to_string(e);
  std::fprintf(stderr, "gptq: layer %lld: %zu of %lld experts received no calibration token (%s): quantized round to "
                       "nearest (H = I); more or longer calibration windows reach more experts\n",
               (long long)layer, idle.size(), (long long)num_experts, list.c_str());
}

namespace {

// GPTQ of one group (GateUp or Down) of MoE layer l on the CPU: one pass of every chunk through the block gives each
// expert the Hessian of the inputs routed to it (the shared expert: of every token), then each expert's Linears of
// the group are quantized with it and swapped in. An expert no calibration token chose has no Hessian: it is
// quantized with H = I (round to nearest, GPTQ's error feedback then changes nothing) and named in a warning.
void gptq_moe_group_cpu(QwenModel& model, int64_t l, BlockLinear group, const CalibChunks& chunks,
                        const std::vector<float>& X, GptqLinearStep& step, GptqStageTimes& times) {
  const QwenConfig& cfg = model.config();
  const int64_t C = cfg.hidden_size, E = cfg.num_experts;
  const bool shared = cfg.shared_expert_intermediate_size > 0;
  auto width = [&](int64_t e) { return gptq_expert_input_width(cfg, group, e); };
  std::vector<HessianAccumulator> H;
  for (int64_t e = 0; e < E; ++e) H.emplace_back(width(e), step.calib_dtype());
  if (shared) H.emplace_back(width(-1), step.calib_dtype());
  std::vector<float> work;
  CalibPassTimer pass(make_host_step_clock());
  pass.begin();
  for (size_t c = 0; c < chunks.batches.size(); ++c) {
    const int64_t off = chunks.offsets[c], T = chunks.batches[c].num_tokens();
    work.assign(X.begin() + off * C, X.begin() + (off + T) * C);
    model.block_forward(l, chunks.batches[c], work.data(), nullptr,
                        [&](BlockLinear at, int64_t e, const float* x, int64_t rows, const int64_t*) {
                          if (at != group) return;
                          pass.hessian([&] { H[e < 0 ? E : e].add_batch(x, rows); });
                        });
  }
  pass.end(times);
  std::vector<int64_t> idle;
  for (int64_t s = 0; s < static_cast<int64_t>(H.size()); ++s) {
    const int64_t e = s < E ? s : -1;
    Eigen::MatrixXf h;
    if (H[s].count() > 0) {
      const StageScope t(times.hessians);
      h = H[s].release();
    } else {
      h = Eigen::MatrixXf::Identity(width(e), width(e));
      if (group == BlockLinear::GateUp) idle.push_back(e);
    }
    for (int w : gptq_expert_linears(group)) {
      LinearWeight& lw = model.expert_linear(l, e, w);
      const int64_t N = lw.N, K = lw.K;
      std::vector<float> back = step.run_expert(l, e, w, h, gptq_quantize);
      lw = LinearWeight::from_fp32(std::move(back), N, K);
    }
  }
  warn_idle_experts(l, idle, E);
}

// The CPU driver: the embedded windows X [T, C] on the host; per block and group, each chunk of whole windows
// (trainer/calib_chunks.h) copied into `work` and run through the block up to the group's input (the earlier Linears
// already quantized; QwenModel::block_forward_to, so the QKV pass is one RMSNorm and no pass runs what follows its
// group, as the GPU driver's hook stops), its rows added to the group's Hessian (HessianAccumulator's running mean);
// then every chunk of X through the quantized block, in place, for the next block, and the block's Linears back to
// their stored (memory-mapped) form: the dequantized fp32 copies are needed only inside the block, and kept for
// every block they came to the whole model in fp32 (30 GB for a 7B). Host memory: X, one chunk's copy and block
// activations (QwenModel's scratch), the Hessian, one block's dequantized Linears.
void gptq_blocks_cpu(QwenModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t chunk_tokens,
                     GptqLinearStep& step, ShardedWriter& shards, GptqStageTimes& times) {
  const QwenConfig& cfg = model.config();
  const int64_t C = cfg.hidden_size;
  const CalibChunks chunks = split_calibration(windows, chunk_tokens);
  std::vector<float> X(static_cast<size_t>(chunks.total_tokens * C)), work;
  CalibPassTimer pass(make_host_step_clock());
  pass.begin();
  for (size_t c = 0; c < chunks.batches.size(); ++c) {
    model.embed_batch(chunks.batches[c], &work);
    std::copy(work.begin(), work.end(), X.begin() + chunks.offsets[c] * C);
  }
  pass.end(times);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    std::vector<LinearWeight> stored;
    for (const GptqSlot& slot : kDecoderLinears) stored.push_back(model.linear_weight(l, slot.group, slot.index));
    const MoeWeights stored_moe = model.weights().layers[l].moe;  // views and shared packed forms: cheap
    for (BlockLinear group : kGptqGroups) {
      if (cfg.is_moe_layer(l) && (group == BlockLinear::GateUp || group == BlockLinear::Down)) {
        gptq_moe_group_cpu(model, l, group, chunks, X, step, times);
        const StageScope t(times.writing);
        shards.maybe_flush();
        continue;
      }
      // Hessian of this group's input, with every earlier Linear of the block already quantized.
      HessianAccumulator H(block_linear_inputs(cfg, group), step.calib_dtype());
      pass.begin();
      for (size_t c = 0; c < chunks.batches.size(); ++c) {
        const int64_t off = chunks.offsets[c], T = chunks.batches[c].num_tokens();
        work.assign(X.begin() + off * C, X.begin() + (off + T) * C);
        model.block_forward_to(l, chunks.batches[c], work.data(), group, [&](const float* x, int64_t rows) {
          pass.hessian([&] { H.add_batch(x, rows); });
        });
      }
      pass.end(times);
      QWENQ_CHECK(H.count() == chunks.total_tokens, "gptq: layer " << l << " never reached a Linear group");
      Eigen::MatrixXf h;
      {
        const StageScope t(times.hessians);
        h = H.release();
      }
      // The rest of the block and the later blocks see the quantized Linears.
      step.run_group(l, group, std::move(h), gptq_quantize, [&](const GptqSlot& slot, std::vector<float> back) {
        LinearWeight& lw = model.linear_weight(l, slot.group, slot.index);
        const int64_t N = lw.N, K = lw.K;
        lw = LinearWeight::from_fp32(std::move(back), N, K);
      });
      const StageScope t(times.writing);
      shards.maybe_flush();
    }
    pass.begin();
    for (size_t c = 0; c < chunks.batches.size(); ++c) {  // inputs of the next block, through the quantized block
      model.block_forward(l, chunks.batches[c], X.data() + chunks.offsets[c] * C, nullptr);
    }
    pass.end(times);
    for (size_t i = 0; i < stored.size(); ++i) {
      model.linear_weight(l, kDecoderLinears[i].group, kDecoderLinears[i].index) = stored[i];
    }
    for (size_t e = 0; e < stored_moe.experts.size(); ++e) {
      for (int which = 0; which < 3; ++which)
        model.expert_linear(l, static_cast<int64_t>(e), which) = expert_member(stored_moe.experts[e], which);
    }
    if (stored_moe.shared.gate.N > 0) {
      for (int which = 0; which < 3; ++which) model.expert_linear(l, -1, which) = expert_member(stored_moe.shared, which);
    }
  }
}

}  // namespace

QuantizeReport gptq_quantize_model(const GptqModelOptions& g) {
  const auto t0 = std::chrono::steady_clock::now();
  QuantizeOptions o = g.out;
  o.method = QuantizeOptions::Method::Rtn;  // the integer-layout rules (bits, layout, padding) are shared with RTN
  check_int_options(o);
  check_quantizable_source(o.model_dir);
#ifndef QWENQ_HAVE_CUDA
  QWENQ_CHECK(g.device == Device::Cpu, "gptq: --device cuda needs a build with the CUDA backend (this one has none)");
#endif
  QWENQ_CHECK(g.chunk_tokens > 0, "gptq: chunk_tokens must be positive, got " << g.chunk_tokens);
  QWENQ_CHECK(g.calib_dtype == DType::F32 || g.calib_dtype == DType::BF16,
              "gptq: the calibration dtype must be fp32 or bf16, got " << dtype_name(g.calib_dtype));
  // A sequence classifier (a reward model) calibrates as its decoder; its score head passes through as lm_head does.
  QwenModel model(o.model_dir, checkpoint_head(o.model_dir));
  const QwenConfig& cfg = model.config();
  nlohmann::ordered_json moe_lists = nlohmann::ordered_json::object();  // checked now, written at the end
  add_moe_module_lists(moe_lists, cfg, moe_list_for(o));
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size, I2 = padded_intermediate(o, I);
  const int64_t Id = cfg.has_dense_mlp() ? I2 : 0;  // no dense MLP to check in a MoE model without dense layers
  for (auto [what, N, K] : {std::tuple<const char*, int64_t, int64_t>{"q_proj", cfg.q_dim(), C},
                            {"k_proj", cfg.kv_dim(), C}, {"o_proj", C, cfg.q_dim()}, {"gate_proj", Id, C},
                            {"down_proj", C, Id}, {"experts.*.gate_proj", cfg.moe_intermediate_size, C},
                            {"experts.*.down_proj", C, cfg.moe_intermediate_size},
                            {"shared_expert.gate_proj", cfg.shared_expert_intermediate_size, C},
                            {"shared_expert.down_proj", C, cfg.shared_expert_intermediate_size}}) {
    if (N > 0 && K > 0) check_layout_fits(o, std::string(o.model_dir) + ": " + what, N, K);
  }
  if (g.device == Device::Cpu && g.calib_samples >= 1 && g.calib_seq_len >= 2) {  // calibration_windows checks those
    std::string source;
    const uint64_t available = available_memory_bytes(&source);
    check_host_memory("gptq", gptq_cpu_memory_parts(cfg, g.calib_samples, g.calib_seq_len, g.chunk_tokens), available,
                      source, "lower --calib-samples or --calib-seq-len (--chunk-tokens bounds the chunk's part)");
  }
  const auto windows = calibration_windows(g.calib_path, g.text_field, g.calib_samples, g.calib_seq_len, g.seed,
                                           Tokenizer::from_dir(o.model_dir));
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

  // LoftQ (--loftq-rank): one-shot on the finished model, checked now so that a bad rank fails before the work.
  QWENQ_CHECK(o.loftq.r == 0 || o.loftq_iters == 1, "gptq: LoftQ runs one-shot after GPTQ (its iterations need a "
                                                     "quantizer of W - L R alone); drop --loftq-iter");
  std::unique_ptr<LoraAdapter> loftq = loftq_adapter_for(o, cfg, I2);
  std::unique_ptr<LoraAdapter> pissa = pissa_adapter_for(o, cfg, I2);  // split Linear by Linear (GptqLinearStep)
  Checkpoint ckpt(o.model_dir);
  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  set_int_output(shards, o, g.desc_act, g.static_groups);
  QuantizeReport rep;
  GptqStageTimes times;
  {
    const StageScope t(times.writing);
    for (const auto& name : ckpt.names()) {  // everything that is not a decoder Linear passes through
      if (std::regex_match(name, kDecoderLinearRe) || is_source_scale(name)) continue;
      shards.add_view(name, ckpt.get(name));
      shards.maybe_flush();
    }
  }
  int64_t n_linears = 0;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    n_linears += !cfg.is_moe_layer(l) ? 7 : 4 + 3 * cfg.num_experts + (cfg.shared_expert_intermediate_size > 0 ? 3 : 0);
  }
  Progress bar("gptq", n_linears, "layers", o.quiet);
  GptqLinearStep step(model, o, I2, go, g.calib_dtype, shards, rep, bar, times);
  step.set_pissa(pissa.get());
#ifdef QWENQ_HAVE_CUDA
  if (g.device == Device::Cuda) gptq_blocks_cuda(model, windows, g.chunk_tokens, step, shards, times);
#endif
  if (g.device == Device::Cpu) gptq_blocks_cpu(model, windows, g.chunk_tokens, step, shards, times);
  {
    const StageScope t(times.writing);
    shards.finish();
  }
  bar.finish();
  if (!o.quiet) {
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "gptq: time by stage: %s\n", times.line(total).c_str());
  }

  nlohmann::ordered_json config = read_ordered_json_file(path_join(o.model_dir, "config.json"));
  if (I2 != I) config["intermediate_size"] = I2;
  config["quantization_config"] = int_quantization_config(o, g.desc_act, g.static_groups, g.damp);
  for (const auto& [key, value] : moe_lists.items()) config["quantization_config"][key] = value;
  if (pissa) {
    rep.pissa_share = step.pissa_share();
    return finish_output(config, o.model_dir, shards, out, t0, rep, [&](const std::string& staged) {
      save_peft_adapter(path_join(staged, "pissa_init"), *pissa);
    });
  }
  if (!loftq) return finish_output(config, o.model_dir, shards, out, t0, rep);
  return finish_output_with_loftq(config, o.model_dir, shards, out, t0, rep, loftq.get(), o.quiet);
}

}  // namespace qwenq
