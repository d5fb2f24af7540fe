// awq_quantize_model: AutoAWQ's AwqQuantizer over a Qwen model, one decoder block at a time (see
// quantize_model.h for the sequence and quant/awq.h for the math). The driver (statistics of the weights, the
// scale-grid loop, folding, grid, writing) runs on the host; what it asks of the calibration activations goes
// through an AwqBlockRunner (trainer/awq_runner.h): the CPU's below, or the GPU's (awq_model_cuda.cpp) with
// AwqModelOptions::device Cuda. The runner also builds each grid point's candidates Q(W·s)/s and runs the clip
// search (quant/awq_search.h), where the activations live; the driver hands it s and the folded weights.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "kernels/gemm.h"
#include "kernels/sum_reduce.h"
#include "quant/awq.h"
#include "quant/awq_search.h"
#include "quant/grid.h"
#include "trainer/awq_runner.h"
#include "trainer/calib_chunks.h"
#include "trainer/quantize_model.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

std::vector<AwqLinear> awq_layer_linears(const QwenConfig& c, int64_t l) {
  std::vector<AwqLinear> out;
  const int dense_slots = c.is_moe_layer(l) ? 4 : 7;
  for (int s = 0; s < dense_slots; ++s) {
    const DecoderLinear& d = kDecoderLinears[s];
    AwqLinear a{d.name, decoder_linear_outputs(c, d), block_linear_inputs(c, d.group), d.group};
    a.slot = s;
    a.clipped = s > 1;
    out.push_back(std::move(a));
  }
  if (dense_slots == 7) return out;
  const int64_t C = c.hidden_size;
  auto add_expert = [&](int64_t e, int64_t I) {
    const std::string p = moe_expert_path(e);
    const char* names[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int which = 0; which < 3; ++which) {
      AwqLinear a{p + names[which], which == 2 ? C : I, which == 2 ? I : C,
                  AwqInput(which == 2 ? BlockLinear::Down : BlockLinear::GateUp, e)};
      a.expert = e;
      a.which = which;
      out.push_back(std::move(a));
    }
  };
  for (int64_t e = 0; e < c.num_experts; ++e) add_expert(e, c.moe_intermediate_size);
  if (c.shared_expert_intermediate_size > 0) add_expert(-1, c.shared_expert_intermediate_size);
  return out;
}

LinearWeight& awq_linear_weight(QwenModel& model, int64_t l, const AwqLinear& a) {
  if (a.slot >= 0) return model.linear_weight(l, kDecoderLinears[a.slot].group, kDecoderLinears[a.slot].index);
  return model.expert_linear(l, a.expert, a.which);
}

std::vector<AwqScaleGroup> awq_layer_groups(const QwenConfig& c, int64_t l) {
  std::vector<AwqScaleGroup> out = {kAwqGroups[0]};
  if (c.q_dim() == c.kv_dim()) out.push_back(kAwqGroups[1]);  // AutoAWQ: only when v_proj and o_proj have one shape
  if (!c.is_moe_layer(l)) {
    out.push_back(kAwqGroups[2]);
    out.push_back(kAwqGroups[3]);
    return out;
  }
  const std::vector<AwqLinear> lin = awq_layer_linears(c, l);
  AwqScaleGroup in{"post_attention_layernorm", -1, {}, BlockLinear::GateUp, AwqModule::Mlp, {"mlp.gate"}};
  if (c.shared_expert_intermediate_size > 0) in.dense_readers.push_back("mlp.shared_expert_gate");
  std::vector<AwqScaleGroup> outs;
  for (int i = 4; i < static_cast<int>(lin.size()); i += 3) {  // gate, up, down of each expert (the shared one last)
    in.slots.push_back(i);
    in.slots.push_back(i + 1);
    outs.push_back({lin[i + 1].name, i + 1, {i + 2}, lin[i + 2].input, AwqModule::Single});
  }
  out.push_back(std::move(in));
  out.insert(out.end(), outs.begin(), outs.end());
  return out;
}

namespace {

constexpr int kGate = kAwqGate, kUp = kAwqUp, kDown = kAwqDown;
using ScaleGroup = AwqScaleGroup;
using Module = AwqModule;

int input_index(BlockLinear b) { return static_cast<int>(b); }

void scale_columns(std::vector<float>& W, int64_t N, int64_t K, const std::vector<float>& s, bool divide) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) W[n * K + k] = divide ? W[n * K + k] / s[k] : W[n * K + k] * s[k];
  }
}

// y [T, N] = x [T, K] · W[N, K]ᵀ in fp32.
std::vector<float> matmul(const float* x, int64_t T, int64_t K, const std::vector<float>& W, int64_t N) {
  std::vector<float> y(T * N);
  linear_forward_ref(x, T, K, W.data(), DType::F32, N, nullptr, DType::F32, y.data());
  return y;
}

void add_f32_as(ShardedWriter& shards, const std::string& name, const std::vector<float>& v,
                const std::vector<int64_t>& shape, DType dtype) {
  std::vector<uint8_t> bytes(v.size() * dtype_size(dtype));
  from_f32(dtype, v.data(), bytes.data(), v.size());
  shards.current().add_owned(name, dtype, shape, std::move(bytes));
  shards.note_added(name);
}

// The CPU: the calibration batch's residual stream X [T, C] and the captured inputs in host memory; QwenModel's
// attention_forward / mlp_forward over the calibration pieces (at most chunk_tokens tokens each), the candidates
// swapped into the model for the call and the originals restored after it; a single Linear is a fp32 matmul. The
// reference of the attention and MLP groups is computed with the model's own weights (W unused there). Candidates
// and clip bounds come from quant/awq_search.h's CPU twins (the former awq_fake_quantize(W·s)/s and awq_search_clip,
// bit for bit). In a MoE layer the experts' gate/up inputs are the block input's rows of the tokens routed to them
// (kept as token lists), their down_proj inputs are kept as the block produced them.
class CpuBlockRunner final : public AwqBlockRunner {
 public:
  CpuBlockRunner(QwenModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t chunk_tokens,
                 DType calib_dtype)
      : model_(model), pieces_(split_calibration(windows, chunk_tokens)), bf16_(calib_dtype == DType::BF16) {
    const int64_t C = model_.config().hidden_size;
    X_.resize(static_cast<size_t>(tokens() * C));
    std::vector<float> x;
    for (size_t p = 0; p < pieces_.batches.size(); ++p) {
      model_.embed_batch(pieces_.batches[p], &x);
      std::copy(x.begin(), x.end(), X_.begin() + pieces_.offsets[p] * C);
    }
  }
  int64_t tokens() const override { return pieces_.total_tokens; }

  // The block on each piece in place (one piece's activations at a time), every input kept.
  void capture(int64_t l) override {
    const QwenConfig& c = model_.config();
    const int64_t C = c.hidden_size, E = c.num_experts;
    layer_ = l;
    lin_ = awq_layer_linears(c, l);
    const bool moe = c.is_moe_layer(l);
    for (int g = 0; g < 4; ++g) {
      const BlockLinear at = static_cast<BlockLinear>(g);
      feats_[g].assign(moe && at == BlockLinear::Down ? 0 : static_cast<size_t>(tokens() * width(at)), 0.f);
    }
    routed_.assign(moe ? E : 0, {});
    down_.assign(moe ? E + 1 : 0, {});
    for (size_t p = 0; p < pieces_.batches.size(); ++p) {
      const int64_t off = pieces_.offsets[p];
      const MoeInputHook experts = [&](BlockLinear at, int64_t e, const float* x, int64_t rows, const int64_t* tok) {
        if (at == BlockLinear::GateUp) {
          if (e >= 0) {
            for (int64_t r = 0; r < rows; ++r) routed_[e].push_back(off + tok[r]);
          }
          return;
        }
        std::vector<float>& d = down_[e < 0 ? E : e];
        d.insert(d.end(), x, x + rows * width(AwqInput(at, e)));
      };
      model_.block_forward(
          l, pieces_.batches[p], X_.data() + off * C,
          [&](BlockLinear at, const float* x, int64_t rows) {
            std::copy(x, x + rows * width(at), feats_[input_index(at)].begin() + off * width(at));
          },
          moe ? experts : MoeInputHook{});
    }
  }

  int64_t rows(const AwqInput& in) const override {
    if (in.is_block() || in.expert < 0) return tokens();
    return static_cast<int64_t>(routed_.at(in.expert).size());
  }

  std::vector<float> input_mean(const AwqInput& in) override {
    std::vector<float> scratch;
    const float* x = rows_of(in, &scratch);
    return awq_activation_mean(x, rows(in), width(in));
  }

  void set_reference(int64_t l, const ScaleGroup& grp, const std::vector<float>* W) override {
    if (!bf16_) {
      reference_ = output(l, grp, W, nullptr);
      return;
    }
    std::vector<std::vector<float>> rounded;  // bf16: the group's working copies rounded, as the candidates are
    for (int slot : grp.slots) rounded.push_back(round_to_bf16(W[slot]));
    reference_ = output(l, grp, nullptr, rounded.data());
  }

  double loss(int64_t l, const ScaleGroup& grp, const std::vector<float>* candidate) override {
    return loss_of(l, grp, std::vector<std::vector<float>>(candidate, candidate + grp.slots.size()));
  }

  double loss_scaled(int64_t l, const ScaleGroup& grp, const std::vector<float>* W, const std::vector<float>& s,
                     const AwqSearchOptions& opt) override {
    const int64_t K = width(grp.input);
    QWENQ_CHECK(static_cast<int64_t>(s.size()) == K, "awq: " << s.size() << " scales for " << K << " input columns");
    std::vector<std::vector<float>> cand(grp.slots.size());
    for (size_t j = 0; j < grp.slots.size(); ++j) {
      const std::vector<float>& w = W[grp.slots[j]];
      const int64_t N = static_cast<int64_t>(w.size()) / K;
      cand[j].resize(w.size());
      awq_candidate_ref(w.data(), N, K, s.data(), opt.bits, opt.group_size, cand[j].data());
    }
    return loss_of(l, grp, std::move(cand));
  }

  std::vector<float> search_clip(const AwqInput& in, const std::vector<float>& s, const float* W, int64_t N, int64_t K,
                                 const AwqSearchOptions& opt) override {
    const int64_t R = rows(in), K0 = width(in);
    QWENQ_CHECK(R > 0, "awq: no calibration rows reach the Linear whose clip bounds are asked for");
    const int64_t step = awq_clip_token_step(R, opt), S = awq_clip_rows(R, step);
    QWENQ_CHECK(s.empty() || static_cast<int64_t>(s.size()) == K0,
                "awq: " << s.size() << " scales for " << K0 << " input columns");
    std::vector<float> scratch, x(static_cast<size_t>(S * K));
    awq_clip_inputs_ref(rows_of(in, &scratch), R, K0, step, s.empty() ? nullptr : s.data(), K, x.data());
    const int64_t G = opt.group_size > 0 ? opt.group_size : K;
    std::vector<float> max_val(static_cast<size_t>(N * ((K + G - 1) / G)));
    awq_clip_search_ref(W, N, K, x.data(), S, opt, max_val.data());
    return max_val;
  }

  std::vector<float> sampled_rows(const AwqInput& in, int64_t step) override {
    const int64_t R = rows(in), K = width(in), S = (R + step - 1) / step;
    std::vector<float> scratch;
    const float* x = rows_of(in, &scratch);
    std::vector<float> out(static_cast<size_t>(S * K));
    for (int64_t i = 0; i < S; ++i) std::copy_n(x + i * step * K, K, out.data() + i * K);
    return out;
  }

 private:
  int64_t width(const AwqInput& in) const {
    const QwenConfig& c = model_.config();
    if (in.is_block()) return block_linear_inputs(c, in.at);
    if (in.at == BlockLinear::GateUp) return c.hidden_size;
    return in.expert < 0 ? c.shared_expert_intermediate_size : c.moe_intermediate_size;
  }

  // The rows [rows(in), width(in)] of a kept input: a block input or an expert's down_proj input as kept, an
  // expert's gate/up input gathered into *scratch.
  const float* rows_of(const AwqInput& in, std::vector<float>* scratch) const {
    if (in.is_block()) return feats_[input_index(in.at)].data();
    if (in.at == BlockLinear::Down) return down_.at(in.expert < 0 ? down_.size() - 1 : in.expert).data();
    const std::vector<float>& n = feats_[input_index(BlockLinear::GateUp)];
    if (in.expert < 0) return n.data();
    const int64_t C = model_.config().hidden_size;
    const std::vector<int64_t>& tok = routed_.at(in.expert);
    scratch->resize(tok.size() * C);
    for (size_t r = 0; r < tok.size(); ++r) std::copy_n(n.data() + tok[r] * C, C, scratch->data() + r * C);
    return scratch->data();
  }

  // w with every value rounded to bf16 (nearest even), still as fp32.
  static std::vector<float> round_to_bf16(std::vector<float> w) {
    bf16_round_inplace(w.data(), w.size());
    return w;
  }

  // loss() of candidates it may consume (moved into the model for the call: a MoE layer's are every expert's),
  // rounded to bf16 first with a bf16 calibration.
  double loss_of(int64_t l, const ScaleGroup& grp, std::vector<std::vector<float>> candidate) {
    if (bf16_)
      for (std::vector<float>& c : candidate) c = round_to_bf16(std::move(c));
    const std::vector<float> y = output(l, grp, nullptr, candidate.data());
    QWENQ_CHECK(y.size() == reference_.size(), "awq: the module output changed size between calls");
    double sum = 0.0;
    sum_sq_diff_ref(y.data(), reference_.data(), static_cast<int64_t>(y.size()), &sum);
    return sum / static_cast<double>(y.size());
  }

  // The module's output [rows, C] over the kept input of grp, with the group's Linears at candidate (non-null; a
  // module's are moved into the model for the call) or, for a single Linear, at W[slot]; otherwise the model's own.
  std::vector<float> output(int64_t l, const ScaleGroup& grp, const std::vector<float>* W,
                            std::vector<float>* candidate) {
    QWENQ_CHECK(l == layer_, "awq: layer " << l << " evaluated after capturing layer " << layer_);
    const int64_t C = model_.config().hidden_size, T = tokens();
    if (grp.module == Module::Single) {
      const int s = grp.slots[0];
      const std::vector<float>& w = candidate ? candidate[0] : W[s];
      const int64_t K = width(grp.input), N = static_cast<int64_t>(w.size()) / K;
      std::vector<float> scratch;
      return matmul(rows_of(grp.input, &scratch), rows(grp.input), K, w, N);
    }
    const std::vector<float>& x = feats_[input_index(grp.input.at)];
    std::vector<LinearWeight> original(grp.slots.size());
    for (size_t j = 0; j < grp.slots.size(); ++j) {
      LinearWeight& lw = awq_linear_weight(model_, l, lin_[grp.slots[j]]);
      original[j] = lw;
      if (candidate) lw = LinearWeight::from_fp32(std::move(candidate[j]), lw.N, lw.K);
    }
    std::vector<float> y(T * C);
    for (size_t p = 0; p < pieces_.batches.size(); ++p) {
      const int64_t off = pieces_.offsets[p];
      if (grp.module == Module::SelfAttn) {
        model_.attention_forward(l, pieces_.batches[p], x.data() + off * C, y.data() + off * C);
      } else {
        model_.mlp_forward(l, x.data() + off * C, pieces_.batches[p].num_tokens(), y.data() + off * C);
      }
    }
    for (size_t j = 0; j < grp.slots.size(); ++j) awq_linear_weight(model_, l, lin_[grp.slots[j]]) = original[j];
    return y;
  }

  QwenModel& model_;
  CalibChunks pieces_;
  bool bf16_;                    // calib_dtype BF16: the group's Linears rounded to bf16 in every module evaluation
  std::vector<float> X_;         // residual stream [T, C]: the input of the next block to capture
  int64_t layer_ = -1;           // the captured block
  std::vector<AwqLinear> lin_;   // its Linears
  std::vector<float> feats_[4];  // block inputs [T, K] of the last captured block (a MoE layer: no Down)
  std::vector<std::vector<int64_t>> routed_;  // MoE: the tokens routed to each expert, in the block's row order
  std::vector<std::vector<float>> down_;      // MoE: each expert's down_proj inputs [rows, Im] (the shared one last)
  std::vector<float> reference_;
};

}  // namespace

void check_awq_calib_dtype(DType calib_dtype) {
  QWENQ_CHECK(calib_dtype == DType::F32 || calib_dtype == DType::BF16,
              "awq: the calibration dtype must be fp32 or bf16, got " << dtype_name(calib_dtype));
}

std::unique_ptr<AwqBlockRunner> make_awq_cpu_runner(QwenModel& model, const std::vector<std::vector<int32_t>>& windows,
                                                    int64_t chunk_tokens, DType calib_dtype) {
  QWENQ_CHECK(!windows.empty(), "awq: no calibration windows");
  check_awq_calib_dtype(calib_dtype);
  return std::make_unique<CpuBlockRunner>(model, windows, chunk_tokens, calib_dtype);
}

QuantizeReport awq_quantize_model(const AwqModelOptions& a) {
  const auto t0 = std::chrono::steady_clock::now();
  QuantizeOptions o = a.out;
  o.method = QuantizeOptions::Method::Rtn;  // the integer-layout rules (bits, layout, padding) are shared with RTN
  o.sym = false;                            // AWQ's grid always has a zero point
  QWENQ_CHECK(o.bits == 4, "awq: only 4-bit AWQ is supported (AutoAWQ's kernels and GEMM layout), not " << o.bits);
  QWENQ_CHECK(o.layout != IntLayout::GptqV1,
              "awq: AWQ grids can have a zero point of 0, which GPTQ v1 files cannot store; use --format awq or gptq_v2");
  check_int_options(o);
  QWENQ_CHECK(o.loftq.r == 0 && o.pissa.r == 0, "awq: no LoftQ or PiSSA adapter (AWQ rescales the base the adapter "
                                                "would be computed from)");
  check_quantizable_source(o.model_dir);
  AwqSearchOptions so = a.search;
  so.bits = o.bits;
  so.group_size = o.group_size;
#ifndef QWENQ_HAVE_CUDA
  QWENQ_CHECK(a.device == Device::Cpu, "awq: --device cuda needs a build with the CUDA backend (this one has none)");
#endif
  QWENQ_CHECK(a.chunk_tokens > 0, "awq: chunk_tokens must be positive, got " << a.chunk_tokens);
  check_awq_calib_dtype(a.calib_dtype);

  // A sequence classifier (a reward model) calibrates as its decoder; its score head passes through as lm_head does.
  QwenModel model(o.model_dir, checkpoint_head(o.model_dir));
  const QwenConfig& cfg = model.config();
  // The quantization_config first: its MoE module lists refuse what the layout cannot describe before any work.
  nlohmann::ordered_json qconfig = int_quantization_config(o);
  // AutoAWQ's config says nothing of the method (it is always AWQ); a GPTQ-layout file records it for readers.
  if (o.compressed_tensors || o.layout != IntLayout::AwqGemm) qconfig["qwenq_method"] = "awq";
  add_moe_module_lists(qconfig, cfg, moe_list_for(o));
  const int64_t I = cfg.intermediate_size, I2 = padded_intermediate(o, I), L = cfg.num_layers;
  // The Linears and scaling groups of every layer; the written shapes (a dense MLP padded when asked) refused before
  // any work.
  std::vector<std::vector<AwqLinear>> linears(L);
  std::vector<std::vector<AwqScaleGroup>> groups(L);
  int64_t total_steps = 0;
  for (int64_t l = 0; l < L; ++l) {
    linears[l] = awq_layer_linears(cfg, l);
    groups[l] = awq_layer_groups(cfg, l);
    total_steps += static_cast<int64_t>(groups[l].size()) + 1;
    if (l > 0 && cfg.is_moe_layer(l) == cfg.is_moe_layer(l - 1)) continue;  // the shapes of the layer before
    for (const AwqLinear& x : linears[l]) {
      const int64_t N2 = (x.slot == kGate || x.slot == kUp) ? I2 : x.N, K2 = x.slot == kDown ? I2 : x.K;
      check_layout_fits(o, o.model_dir + ": model.layers." + std::to_string(l) + "." + x.name, N2, K2);
    }
  }

  const bool loaded = !a.load_search.empty();
  AwqSearchResult found;
  if (loaded) {
    found = load_awq_search(a.load_search);
    QWENQ_CHECK(found.bits == o.bits && found.group_size == o.group_size,
                a.load_search << ": the search was made for " << found.bits << "-bit, group size " << found.group_size
                              << ", not " << o.bits << "-bit, group size " << o.group_size);
    QWENQ_CHECK(found.intermediate_size == I, a.load_search << ": the search was made for intermediate_size "
                                                            << found.intermediate_size << ", this model has " << I);
  } else {
    found.bits = o.bits;
    found.group_size = o.group_size;
    found.intermediate_size = I;
  }

  // Calibration: the inputs of block 0 for every window (not needed when the search is loaded), on the device the
  // runner uses.
  std::unique_ptr<AwqBlockRunner> runner;
  if (!loaded) {
    QWENQ_CHECK(!a.calib_path.empty(), "awq: give --calib (calibration text) or --load-search (a saved search)");
    // The CPU runner's host memory, refused before the work: random windows are counted before they are cut,
    // AutoAWQ's blocks (fewer tokens than documents x seq_len) once they are.
    std::string source;
    const uint64_t available = a.device == Device::Cpu ? available_memory_bytes(&source) : 0;
    const auto check_fits = [&](int64_t windows) {
      if (windows < 1 || a.calib_seq_len < 2) return;  // the calibration readers refuse those
      check_host_memory("awq", awq_cpu_memory_parts(cfg, windows, a.calib_seq_len, a.chunk_tokens), available, source,
                        "lower --calib-samples or --calib-seq-len (--chunk-tokens bounds the chunk's part)");
    };
    if (!a.calib_concat) check_fits(a.calib_samples);
    const Tokenizer tok = Tokenizer::from_dir(o.model_dir);
    const std::vector<std::vector<int32_t>> windows =
        a.calib_concat ? calibration_blocks_concat(a.calib_path, a.text_field, a.calib_samples, a.calib_seq_len, tok)
                       : calibration_windows(a.calib_path, a.text_field, a.calib_samples, a.calib_seq_len, a.seed, tok);
    if (a.calib_concat) check_fits(static_cast<int64_t>(windows.size()));
    if (!o.quiet) {
      std::fprintf(stderr, "awq: %zu calibration windows x %lld tokens from %s; %lld layers; grid %d%s%s%s\n",
                   windows.size(), (long long)a.calib_seq_len, a.calib_path.c_str(), (long long)L, so.n_grid,
                   so.duo_scaling ? ", duo scaling" : "", a.clip ? ", clip search" : ", no clip",
                   a.calib_dtype == DType::BF16 ? ", bf16 module evaluations" : "");
    }
#ifdef QWENQ_HAVE_CUDA
    if (a.device == Device::Cuda) runner = make_awq_cuda_runner(model, windows, a.chunk_tokens, a.calib_dtype);
#endif
    if (a.device == Device::Cpu) runner = make_awq_cpu_runner(model, windows, a.chunk_tokens, a.calib_dtype);
  } else if (!o.quiet) {
    std::fprintf(stderr, "awq: applying the saved search %s (no calibration)\n", a.load_search.c_str());
  }

  Checkpoint ckpt(o.model_dir);
  auto layer_prefix = [](int64_t l) { return "model.layers." + std::to_string(l) + "."; };
  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  set_int_output(shards, o);
  // Everything but the decoder Linears, the norms that absorb scales, (with v -> o scaling) v_proj's bias and the
  // routers that take the scales passes through from the map.
  const bool v_to_o = cfg.q_dim() == cfg.kv_dim();
  for (const auto& name : ckpt.names()) {
    if (std::regex_match(name, kDecoderLinearRe) || is_source_scale(name)) continue;
    const auto ends_in = [&](const char* s) { return has_proper_suffix(name, s); };
    if (name.rfind("model.layers.", 0) == 0 &&
        (ends_in(".input_layernorm.weight") || ends_in(".post_attention_layernorm.weight") ||
         (v_to_o && ends_in(".self_attn.v_proj.bias")) ||
         (cfg.is_moe() && (ends_in(".mlp.gate.weight") || ends_in(".mlp.shared_expert_gate.weight"))))) {
      continue;
    }
    shards.add_view(name, ckpt.get(name));
    shards.maybe_flush();
  }

  QuantizeReport rep;
  Progress bar("awq", total_steps, "steps", o.quiet);
  int64_t steps = 0;
  for (int64_t l = 0; l < L; ++l) {
    const std::string pre = layer_prefix(l);
    const std::vector<AwqLinear>& lin = linears[l];
    const size_t n_lin = lin.size();
    // fp32 working copies of the layer's Linears and of the ops that absorb the scales.
    std::vector<std::vector<float>> W(n_lin);
    std::vector<int64_t> N(n_lin), K(n_lin);
    std::vector<LinearWeight> original(n_lin);
    for (size_t i = 0; i < n_lin; ++i) {
      LinearWeight& lw = awq_linear_weight(model, l, lin[i]);
      original[i] = lw;
      W[i] = lw.dequantize();
      N[i] = lw.N;
      K[i] = lw.K;
    }
    const TensorView& ln1_view = ckpt.get(pre + "input_layernorm.weight");
    const TensorView& ln2_view = ckpt.get(pre + "post_attention_layernorm.weight");
    std::vector<float> norms[2] = {tensor_to_f32(ln1_view), tensor_to_f32(ln2_view)};
    const bool has_v_bias = ckpt.has(pre + "self_attn.v_proj.bias");
    std::vector<float> v_bias = has_v_bias ? tensor_to_f32(ckpt.get(pre + "self_attn.v_proj.bias")) : std::vector<float>{};

    // 1. Inputs of every Linear group from the original block; its output feeds the next block.
    if (!loaded) runner->capture(l);

    // 2. Scales per group, searched against the module's output with the original weights everywhere else. An
    //    expert no calibration token reached keeps s = 1 (saved so, so that a loaded search knows it).
    const std::vector<AwqScaleGroup>& grps = groups[l];
    std::vector<std::vector<float>> scales(grps.size());
    std::vector<int64_t> idle;
    for (size_t gi = 0; gi < grps.size(); ++gi) {
      const ScaleGroup& grp = grps[gi];
      const std::string key = pre + grp.prev;
      const int64_t width = K[grp.slots[0]];
      if (loaded) {
        auto it = found.scales.find(key);
        QWENQ_CHECK(it != found.scales.end(), a.load_search << ": no scales for " << key);
        QWENQ_CHECK(static_cast<int64_t>(it->second.size()) == width,
                    a.load_search << ": " << key << ".awq_scales has " << it->second.size() << " values, the model needs "
                                  << width);
        scales[gi] = it->second;
        bar.update(++steps);
        continue;
      }
      if (runner->rows(grp.input) == 0) {
        idle.push_back(grp.input.expert);
        scales[gi].assign(width, 1.f);
        found.scales[key] = scales[gi];
        bar.update(++steps);
        continue;
      }
      std::vector<const float*> ws;
      std::vector<int64_t> rows;
      for (int s : grp.slots) {
        ws.push_back(W[s].data());
        rows.push_back(N[s]);
      }
      const std::vector<float> x_mean = runner->input_mean(grp.input);
      const std::vector<float> w_mean = awq_weight_mean(ws, rows, width, o.group_size);
      // The module's output with the original weights, and the loss of candidate weights Q(W·s)/s against it.
      runner->set_reference(l, grp, W.data());
      const AwqScaleResult r = awq_search_scale(
          x_mean, w_mean, so, [&](const std::vector<float>& s) { return runner->loss_scaled(l, grp, W.data(), s, so); });
      scales[gi] = r.scales;
      found.scales[key] = r.scales;
      char extra[160];
      std::snprintf(extra, sizeof extra, "layer %lld %s alpha %.2f", (long long)l, grp.prev.c_str(), r.best_alpha);
      bar.update(++steps, extra);
    }
    if (!idle.empty() && !o.quiet) {
      std::string list;
      for (int64_t e : idle) list += (list.empty() ? "" : ", ") + std::to_string(e);
      std::fprintf(stderr, "awq: layer %lld: %zu of %lld experts received no calibration token (%s): their down_proj "
                           "is not scaled (s = 1) and no clip bound is searched for them; more or longer calibration "
                           "windows reach more experts\n",
                   (long long)l, idle.size(), (long long)cfg.num_experts, list.c_str());
    }

    // 3. Fold the scales in: previous op's output channels / s, the group's input columns · s (inputs / s), and the
    //    columns of the dense Linears reading the same input (routers) · s.
    std::vector<const std::vector<float>*> input_scale(n_lin, nullptr);  // what each Linear's inputs were divided by
    std::vector<std::pair<std::string, std::vector<float>>> readers;       // scaled routers, written after the layer
    for (size_t gi = 0; gi < grps.size(); ++gi) {
      const ScaleGroup& grp = grps[gi];
      const std::vector<float>& s = scales[gi];
      if (grp.prev_slot < 0) {
        std::vector<float>& ln = norms[grp.prev == "input_layernorm" ? 0 : 1];
        for (size_t k = 0; k < ln.size(); ++k) ln[k] /= s[k];
      } else {
        const int p = grp.prev_slot;
        for (int64_t n = 0; n < N[p]; ++n) {
          for (int64_t k = 0; k < K[p]; ++k) W[p][n * K[p] + k] /= s[n];
        }
        if (lin[p].slot == kAwqV && has_v_bias) {
          for (size_t n = 0; n < v_bias.size(); ++n) v_bias[n] /= s[n];
        }
      }
      for (int sl : grp.slots) {
        scale_columns(W[sl], N[sl], K[sl], s, false);
        input_scale[sl] = &s;
      }
      for (const std::string& r : grp.dense_readers) {
        std::vector<float> w = tensor_to_f32(ckpt.get(pre + r + ".weight"));
        const int64_t width = static_cast<int64_t>(s.size());
        scale_columns(w, static_cast<int64_t>(w.size()) / width, width, s, false);
        readers.emplace_back(r, std::move(w));
      }
    }

    // 4. Pad a dense MLP's width (zero gate/up rows, zero down columns and inputs), search and apply clip bounds,
    //    round onto the grid, write.
    if (I2 != I && !cfg.is_moe_layer(l)) {
      for (int sl : {kGate, kUp}) W[sl] = pad_matrix(W[sl], N[sl], K[sl], I2, K[sl]), N[sl] = I2;
      W[kDown] = pad_matrix(W[kDown], N[kDown], K[kDown], N[kDown], I2);
      K[kDown] = I2;
    }
    // The clip search runs where the activations live, on the tokens it samples (awq_clip_token_step) of the
    // Linear's input, divided by the scales its columns took, the MLP width padded with zero columns.
    for (size_t i = 0; i < n_lin; ++i) {
      const std::string prefix = pre + lin[i].name;
      const int64_t groups_k = (K[i] + o.group_size - 1) / o.group_size;
      if (loaded) {
        auto it = found.clips.find(prefix);
        if (it != found.clips.end()) {
          QWENQ_CHECK(it->second.second == (std::vector<int64_t>{N[i], groups_k}),
                      a.load_search << ": " << prefix << ".awq_clip is not [" << N[i] << ", " << groups_k << "]");
          awq_apply_clip(W[i].data(), N[i], K[i], o.group_size, it->second.first);
        }
      } else if (a.clip && lin[i].clipped && runner->rows(lin[i].input) > 0) {
        static const std::vector<float> kUnscaled;
        std::vector<float> mx = runner->search_clip(lin[i].input, input_scale[i] ? *input_scale[i] : kUnscaled,
                                                    W[i].data(), N[i], K[i], so);
        awq_apply_clip(W[i].data(), N[i], K[i], o.group_size, mx);
        found.clips[prefix] = {std::move(mx), {N[i], groups_k}};
      }
      const GroupGrid grid = find_grid(W[i].data(), N[i], K[i], o.bits, o.group_size, /*sym=*/false, GridRule::Awq);
      const std::vector<uint8_t> codes = quantize_rtn(W[i].data(), grid);
      shards.add_int_linear(prefix, pack_int_linear(codes.data(), grid, nullptr, o.layout));
      std::vector<float>().swap(W[i]);
      ++rep.linears;
      rep.params_quantized += N[i] * K[i];
    }
    for (const LinearWeight& w : original) {
      if (w.is_dense() && !w.owned) release_mapped_pages(w.dense.data, w.dense.nbytes());  // a view of the map
    }
    add_f32_as(shards, pre + "input_layernorm.weight", norms[0], ln1_view.shape, ln1_view.dtype);
    add_f32_as(shards, pre + "post_attention_layernorm.weight", norms[1], ln2_view.shape, ln2_view.dtype);
    if (v_to_o && has_v_bias) {
      const TensorView& b = ckpt.get(pre + "self_attn.v_proj.bias");
      add_f32_as(shards, pre + "self_attn.v_proj.bias", v_bias, b.shape, b.dtype);
    }
    for (const auto& [name, w] : readers) {
      const TensorView& v = ckpt.get(pre + name + ".weight");
      add_f32_as(shards, pre + name + ".weight", w, v.shape, v.dtype);
    }
    shards.maybe_flush();
    char extra[64];
    std::snprintf(extra, sizeof extra, "layer %lld quantized", (long long)l);
    bar.update(++steps, extra);
  }
  shards.finish();
  bar.finish();
  if (!a.save_search.empty()) {
    save_awq_search(a.save_search, found);
    if (!o.quiet) std::fprintf(stderr, "awq: search saved to %s\n", a.save_search.c_str());
  }

  nlohmann::ordered_json config = read_ordered_json_file(path_join(o.model_dir, "config.json"));
  if (I2 != I) config["intermediate_size"] = I2;
  config["quantization_config"] = qconfig;
  return finish_output(config, o.model_dir, shards, out, t0, rep);
}

}  // namespace qwenq
