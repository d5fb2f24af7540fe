// The GPU runner of awq_quantize_model (trainer/awq_runner.h's AwqBlockRunner; the driver in awq_model.cpp is the
// same for both devices): the calibration activations live on the device, and so do the heavy parts of the search
// (quant/awq_search.h's kernels); only scalars and clip bounds come back.
//   X        [T, C] fp32, the residual stream of every calibration window (T = windows·seq_len)
//   chunks   whole windows of at most chunk_tokens tokens (at least one), each a PackedBatch of its own (positions
//            restart per window, so chunking changes nothing in a block's or module's function)
//   capture(l)        per chunk: QwenModelCuda::block_forward(l) in place on X[chunk] (the model's own weights, as
//                     AutoAWQ), its hook copying each Linear group's input into feats[g] [T, K_g] (device). A
//                     mixture-of-experts layer: feats keeps QKV, O and GateUp (the MoE block's input n); the expert
//                     hook gives each routed row's token (kept on the host: routed[e], in the CPU block's order) and
//                     each expert's down_proj input, copied into one buffer: the shared expert's [T, Is] at its
//                     tokens' rows, then the routed experts' pieces in capture order (T·k·Im floats in all; an
//                     expert's rows put end to end are the CPU runner's down_[e], copied so into a scratch when a
//                     group asks for them). The layer captured before is released from the device first
//                     (QwenModelCuda::release_layer: the search is done with it).
//   input_mean(in)    column_abs_sum_cuda over the kept rows (double), K doubles downloaded, mean = (float)(sum / R):
//                     the CPU's awq_activation_mean up to the order of the double sums. An expert's gate/up input
//                     (its routed rows of n) is gathered first (embedding_gather_cuda over n by routed[e]).
//   set_reference     the group's fp32 working weights uploaded once into wref[j] and used as the module's
//                     replacement weights (so reference and candidates are both true fp32 GEMMs, whatever dtype the
//                     model stores), the module run per chunk (QwenModelCuda::attention_forward / mlp_forward /
//                     block_linear_forward; a MoE layer's MLP group: mlp_forward with every expert's gate/up
//                     replaced, the routing recomputed per call from the unchanged router) into ref [T, C]; an
//                     expert's up -> down group: its down_proj rows times wref[0]ᵀ (linear_forward_cuda, fp32) into
//                     ref [R, C], in pieces of at most one chunk's rows (the candidates' GEMM shapes)
//   loss_scaled(s)    s (K floats) uploaded, awq_candidate_cuda(wref[j], s) -> cand[j] on the device (bit for bit the
//                     CPU's candidates), then as loss
//   loss(candidate)   host candidates uploaded into cand[j]; the module run per chunk (an expert's down_proj: per
//                     piece of at most one chunk's rows) into one chunk buffer with the group's Linears at cand,
//                     sum_sq_diff_cuda(out, ref[rows]) accumulated in one device double; that one double is
//                     downloaded: loss = sum / (R·C), as the CPU (kernels/sum_reduce.h: double terms and sums, a
//                     different order). The stored weights are never touched: nothing needs restoring.
//   bf16 calibration  (calib_dtype BF16) the reference's and the candidates' fp32 weights are rounded into bf16
//                     copies (f32_to_bf16_cuda, the CPU's rounding) and the module runs on those: bf16 tensor-core
//                     GEMMs, the fp32 activations rounded to bf16 at each GEMM's input (kernels/blas_lt.h), fp32
//                     sums and outputs; one bf16 copy of the group's weights more in memory
//   search_clip       the folded weight [N, K] and s uploaded, awq_clip_inputs_cuda gathers the kept rows' sampled
//                     rows / s (zero-padded to K) into xclip [S, K], awq_clip_search_cuda -> bounds [N, ⌈K/G⌉]
//                     downloaded
//   sampled_rows      (tests) rows 0, step, 2·step, ... of the kept rows, one strided copy back to the host
// Device memory: the model's weights, X, feats (T·(2C + q_dim) fp32, + T·I with a dense MLP), ref [T, C], one chunk
// output [chunk, C], the largest group's working weights and candidates (fp32: 2·I·C each for a dense gate/up, every
// expert's gate and up for a MoE layer: 2·E·Im·C each, 1.6 GB at Qwen3-30B-A3B), the clip search's weight [N, K],
// sampled inputs [S, K] (S < 2·n_sample_tokens) and bounds, and the module's activation buffers for a chunk. A MoE
// layer adds its experts' down_proj inputs T·(k·Im + Is) fp32 (1.6 GB for 128 x 512 tokens of Qwen3-30B-A3B, 10.7 GB
// of Qwen2-57B-A14B) and one expert's gathered rows [R, max(C, Im)]. The model's layers leave the device as the
// search passes them.
// Everything runs on QwenModelCuda's stream; the host waits once per loss (the double), per statistic and per clip
// search (its bounds), and once per chunk of a MoE layer's MLP (its routing).
#ifdef QWENQ_HAVE_CUDA

#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/blas_lt.h"
#include "kernels/convert.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_allocator.h"
#include "kernels/sum_reduce.h"
#include "quant/awq_search.h"
#include "trainer/awq_runner.h"
#include "trainer/calib_chunks.h"
#include "trainer/qwen_model_cuda.h"

namespace qwenq {

namespace {

// Through the caching allocator (kernels/device_allocator.h), whose out-of-memory message names the buffer, the
// device's free memory and what else is held; AWQ adds which of its options lower the request.
DeviceAllocation allocate_named(size_t bytes, MemoryTag tag, const std::string& what, CudaStream s) {
  try {
    return cuda_device_allocator().allocate(bytes, s, tag, "awq: " + what);
  } catch (const OutOfMemoryError& e) {
    throw Error(std::string(e.what()) + "\nawq: fewer --calib-samples, a shorter --calib-seq-len or a smaller "
                "--chunk-tokens lower it");
  }
}

size_t f32_bytes(int64_t rows, int64_t cols) { return static_cast<size_t>(rows * cols) * sizeof(float); }

std::string dims(int64_t rows, int64_t cols) {
  return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "] fp32";
}

class CudaBlockRunner final : public AwqBlockRunner {
 public:
  CudaBlockRunner(const QwenModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t chunk_tokens,
                  DType calib_dtype)
      : cfg_(model.config()), gpu_(model), s_(gpu_.stream()), bf16_(calib_dtype == DType::BF16) {
    QWENQ_CHECK(!windows.empty(), "awq: no calibration windows");
    QWENQ_CHECK(chunk_tokens > 0, "awq: chunk_tokens must be positive, got " << chunk_tokens);
    CalibChunks split = split_calibration(windows, chunk_tokens);  // whole windows (trainer/calib_chunks.h)
    chunks_ = std::move(split.batches);
    offset_ = std::move(split.offsets);
    T_ = split.total_tokens;
    largest_ = split.largest;
    QWENQ_CHECK(T_ > 0, "awq: the calibration windows hold no tokens");
    QWENQ_CHECK(T_ <= std::numeric_limits<int32_t>::max(),
                "awq: " << T_ << " calibration tokens: the GPU runner indexes them with 32-bit integers");
    const int64_t C = cfg_.hidden_size;
    X_ = allocate_named(f32_bytes(T_, C), MemoryTag::Activations, "the calibration residual stream " + dims(T_, C), s_);
    for (int g = 0; g < 4; ++g) {
      const BlockLinear at = static_cast<BlockLinear>(g);
      if (at == BlockLinear::Down && !cfg_.has_dense_mlp()) continue;  // every Down input is an expert's
      feats_[g] = allocate_named(f32_bytes(T_, block_width(at)), MemoryTag::Activations,
                                 "the captured inputs of Linear group " + std::to_string(g) + " " +
                                     dims(T_, block_width(at)), s_);
    }
    ref_ = allocate_named(f32_bytes(T_, C), MemoryTag::Activations, "the reference module output " + dims(T_, C), s_);
    out_ = allocate_named(f32_bytes(largest_, C), MemoryTag::Activations,
                          "one chunk of the candidate module output " + dims(largest_, C), s_);
    sums_ = allocate_named(static_cast<size_t>(std::max<int64_t>(1, max_width())) * sizeof(double),
                           MemoryTag::Workspace, "the reduction sums", s_);
    s_dev_ = allocate_named(f32_bytes(1, max_width()), MemoryTag::Workspace, "the scales", s_);
    for (size_t c = 0; c < chunks_.size(); ++c) gpu_.embed_batch(chunks_[c], X_.as<float>() + offset_[c] * C);
  }

  int64_t tokens() const override { return T_; }

  void capture(int64_t l) override {
    const int64_t C = cfg_.hidden_size, E = cfg_.num_experts, Is = cfg_.shared_expert_intermediate_size;
    // The layer searched before is done (the driver goes block by block): its weights leave the device, so that the
    // model shrinks as the search advances (GPTQ's driver does the same).
    if (layer_ >= 0 && layer_ != l) gpu_.release_layer(layer_);
    layer_ = l;
    lin_ = awq_layer_linears(cfg_, l);
    moe_ = cfg_.is_moe_layer(l);
    ref_group_.clear();
    routed_.assign(moe_ ? static_cast<size_t>(E) : 0, {});
    pieces_.assign(moe_ ? static_cast<size_t>(E) : 0, {});
    down_.reset();
    // A MoE layer's down_proj inputs: the shared expert's [T, Is] first (each chunk's rows at its token offset), then
    // the routed experts' pieces in capture order (T·k rows of Im in all: each token picks k distinct experts).
    int64_t routed_floats = 0;
    const int64_t shared_floats = T_ * Is;
    if (moe_) {
      const int64_t floats = shared_floats + T_ * cfg_.experts_per_token * cfg_.moe_intermediate_size;
      down_ = allocate_named(f32_bytes(floats, 1), MemoryTag::Activations,
                             "the experts' down_proj inputs of layer " + std::to_string(l) + " (" +
                                 std::to_string(floats) + " fp32)", s_);
    }
    for (size_t c = 0; c < chunks_.size(); ++c) {
      const int64_t off = offset_[c], T = chunks_[c].num_tokens();
      const DeviceExpertInputHook experts = [&](BlockLinear at, int64_t e, const float* x, int64_t rows,
                                                const int32_t* tok) {
        if (at == BlockLinear::GateUp) {
          if (e < 0) return;  // the shared expert reads every token: n itself
          QWENQ_CHECK(tok != nullptr, "awq: layer " << l << " expert " << e << ": no token indices");
          std::vector<int32_t>& r = routed_[static_cast<size_t>(e)];
          for (int64_t i = 0; i < rows; ++i) r.push_back(static_cast<int32_t>(off + tok[i]));
          return;
        }
        float* dst = nullptr;
        if (e < 0) {
          QWENQ_CHECK(rows == T, "awq: layer " << l << ": the shared expert saw " << rows << " rows, not " << T);
          dst = down_.as<float>() + off * Is;
        } else {
          const int64_t floats = rows * cfg_.moe_intermediate_size;
          QWENQ_CHECK(shared_floats + routed_floats + floats <= static_cast<int64_t>(down_.bytes() / sizeof(float)),
                      "awq: layer " << l << ": the routed experts' down_proj inputs exceed T·k rows");
          dst = down_.as<float>() + shared_floats + routed_floats;
          pieces_[static_cast<size_t>(e)].push_back({shared_floats + routed_floats, rows});
          routed_floats += floats;
        }
        QWENQ_CUDA_CHECK(cudaMemcpyAsync(dst, x, f32_bytes(rows, expert_width(e)), cudaMemcpyDeviceToDevice, s_));
      };
      gpu_.block_forward(
          l, chunks_[c], X_.as<float>() + off * C,
          [&](BlockLinear at, const float* x, int64_t rows) {
            QWENQ_CHECK(rows == T, "awq: block " << l << " saw " << rows << " rows, not " << T);
            const int64_t K = block_width(at);
            float* dst = feats_[static_cast<int>(at)].as<float>() + off * K;
            QWENQ_CUDA_CHECK(cudaMemcpyAsync(dst, x, f32_bytes(rows, K), cudaMemcpyDeviceToDevice, s_));
            return true;  // the whole block: its output is the next block's input
          },
          moe_ ? experts : DeviceExpertInputHook{});
    }
    QWENQ_CHECK(!moe_ || routed_floats == T_ * cfg_.experts_per_token * cfg_.moe_intermediate_size,
                "awq: layer " << l << ": the routed experts saw " << routed_floats / cfg_.moe_intermediate_size
                              << " rows, not T·k = " << T_ * cfg_.experts_per_token);
  }

  int64_t rows(const AwqInput& in) const override {
    check_input(in);
    if (in.is_block() || in.expert < 0) return T_;
    return static_cast<int64_t>(routed_[static_cast<size_t>(in.expert)].size());
  }

  std::vector<float> input_mean(const AwqInput& in) override {
    const int64_t R = rows(in), K = width(in);
    QWENQ_CHECK(R > 0, "awq: no calibration rows reach expert " << in.expert << " of layer " << layer_);
    QWENQ_CUDA_CHECK(cudaMemsetAsync(sums_.get(), 0, static_cast<size_t>(K) * sizeof(double), s_));
    column_abs_sum_cuda(kept_rows(in), R, K, sums_.as<double>(), s_);
    std::vector<double> sum(static_cast<size_t>(K));
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(sum.data(), sums_.get(), sum.size() * sizeof(double), cudaMemcpyDeviceToHost, s_));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    std::vector<float> mean(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) mean[k] = static_cast<float>(sum[k] / R);
    return mean;
  }

  void set_reference(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* W) override {
    check_group(l, grp);
    std::vector<const std::vector<float>*> weights;
    for (int slot : grp.slots) weights.push_back(&W[slot]);
    upload_weights(l, grp, weights, wref_);
    to_module_dtype(grp, wref_, wref16_);
    ref_group_ = grp.prev;
    const std::vector<DeviceAllocation>& wm = bf16_ ? wref16_ : wref_;
    if (expert_single(grp)) {  // in the pieces candidate_loss uses: the same GEMM shapes, the same sums
      const Lin& a = lin_[static_cast<size_t>(grp.slots[0])];
      const float* x = kept_rows(grp.input);
      const int64_t R = rows(grp.input), C = cfg_.hidden_size;
      for (int64_t r0 = 0; r0 < R; r0 += largest_) {
        linear_forward_cuda(x + r0 * a.K, std::min(largest_, R - r0), a.K, wm[0].get(), module_dtype(), a.N,
                            nullptr, DType::F32, ref_.as<float>() + r0 * C, DType::F32, s_);
      }
      return;
    }
    const int64_t C = cfg_.hidden_size;
    for (size_t c = 0; c < chunks_.size(); ++c) run_module(l, grp, c, wm, ref_.as<float>() + offset_[c] * C);
  }

  double loss(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* candidate) override {
    check_group(l, grp);
    std::vector<const std::vector<float>*> weights;
    for (size_t j = 0; j < grp.slots.size(); ++j) weights.push_back(&candidate[j]);
    upload_weights(l, grp, weights, cand_);
    to_module_dtype(grp, cand_, cand16_);
    return candidate_loss(l, grp);
  }

  double loss_scaled(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* W, const std::vector<float>& s,
                     const AwqSearchOptions& opt) override {
    check_group(l, grp);
    QWENQ_CHECK(ref_group_ == grp.prev,
                "awq: loss_scaled for layer " << l << " " << grp.prev << " without its set_reference");
    const int64_t K = width(grp.input);
    QWENQ_CHECK(static_cast<int64_t>(s.size()) == K, "awq: " << s.size() << " scales for " << K << " input columns");
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(s_dev_.get(), s.data(), f32_bytes(1, K), cudaMemcpyHostToDevice, s_));
    cand_.resize(grp.slots.size());
    for (size_t j = 0; j < grp.slots.size(); ++j) {
      const Lin& a = lin_[static_cast<size_t>(grp.slots[j])];
      QWENQ_CHECK(a.K == K && static_cast<int64_t>(W[grp.slots[j]].size()) == a.N * K,
                  "awq: layer " << l << " " << a.name << " weight has " << W[grp.slots[j]].size() << " values, not "
                                << a.N << " x " << K);
      ensure(cand_[j], f32_bytes(a.N, K), "the candidate " + a.name + " " + dims(a.N, K));
      awq_candidate_cuda(wref_[j].as<float>(), a.N, K, s_dev_.as<float>(), opt.bits, opt.group_size,
                         cand_[j].as<float>(), s_);
    }
    to_module_dtype(grp, cand_, cand16_);
    return candidate_loss(l, grp);
  }

  std::vector<float> search_clip(const AwqInput& in, const std::vector<float>& s, const float* W, int64_t N, int64_t K,
                                 const AwqSearchOptions& opt) override {
    const int64_t R = rows(in), K0 = width(in);
    QWENQ_CHECK(R > 0, "awq: no calibration rows reach the Linear whose clip bounds are asked for");
    const int64_t step = awq_clip_token_step(R, opt), S = awq_clip_rows(R, step);
    QWENQ_CHECK(s.empty() || static_cast<int64_t>(s.size()) == K0,
                "awq: " << s.size() << " scales for " << K0 << " input columns");
    awq_clip_inputs_check_args(R, K0, step, K);
    awq_clip_search_check_args(N, K, S, opt);
    const int64_t G = opt.group_size > 0 ? opt.group_size : K, groups = (K + G - 1) / G;
    ensure(wclip_, f32_bytes(N, K), "the clipped weight " + dims(N, K));
    ensure(xclip_, f32_bytes(S, K), "the clip search's sampled inputs " + dims(S, K));
    ensure(bounds_, f32_bytes(N, groups), "the clip bounds " + dims(N, groups));
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(wclip_.get(), W, f32_bytes(N, K), cudaMemcpyHostToDevice, s_));
    if (!s.empty())
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(s_dev_.get(), s.data(), f32_bytes(1, K0), cudaMemcpyHostToDevice, s_));
    awq_clip_inputs_cuda(kept_rows(in), R, K0, step, s.empty() ? nullptr : s_dev_.as<float>(), K, xclip_.as<float>(),
                         s_);
    awq_clip_search_cuda(wclip_.as<float>(), N, K, xclip_.as<float>(), S, opt, bounds_.as<float>(), s_);
    std::vector<float> max_val(static_cast<size_t>(N * groups));
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(max_val.data(), bounds_.get(), f32_bytes(N, groups), cudaMemcpyDeviceToHost, s_));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    return max_val;
  }

  std::vector<float> sampled_rows(const AwqInput& in, int64_t step) override {
    QWENQ_CHECK(step >= 1, "awq: token step " << step);
    const int64_t R = rows(in), K = width(in), S = (R + step - 1) / step;
    std::vector<float> out(static_cast<size_t>(S * K));
    if (S == 0) return out;
    const float* x = kept_rows(in);
    QWENQ_CUDA_CHECK(cudaMemcpy2DAsync(out.data(), K * sizeof(float), x, static_cast<size_t>(step * K) * sizeof(float),
                                       K * sizeof(float), static_cast<size_t>(S), cudaMemcpyDeviceToHost, s_));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    return out;
  }

 private:
  using Lin = AwqLinear;

  // The module over every chunk (an expert's down_proj: its rows in pieces of at most one chunk) with the group's
  // Linears at cand_, against ref_: mean squared difference.
  double candidate_loss(int64_t l, const AwqScaleGroup& grp) {
    const int64_t C = cfg_.hidden_size;
    double* acc = sums_.as<double>();
    QWENQ_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(double), s_));
    const int64_t R = rows(grp.input);
    const std::vector<DeviceAllocation>& wm = bf16_ ? cand16_ : cand_;
    if (expert_single(grp)) {
      const Lin& a = lin_[static_cast<size_t>(grp.slots[0])];
      const float* x = kept_rows(grp.input);
      for (int64_t r0 = 0; r0 < R; r0 += largest_) {
        const int64_t n = std::min(largest_, R - r0);
        linear_forward_cuda(x + r0 * a.K, n, a.K, wm[0].get(), module_dtype(), a.N, nullptr, DType::F32, out_.get(),
                            DType::F32, s_);
        sum_sq_diff_cuda(out_.as<float>(), ref_.as<float>() + r0 * C, n * C, acc, s_);
      }
    } else {
      for (size_t c = 0; c < chunks_.size(); ++c) {
        run_module(l, grp, c, wm, out_.as<float>());
        sum_sq_diff_cuda(out_.as<float>(), ref_.as<float>() + offset_[c] * C, chunks_[c].num_tokens() * C, acc, s_);
      }
    }
    double sum = 0.0;
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(&sum, acc, sizeof(double), cudaMemcpyDeviceToHost, s_));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    return sum / static_cast<double>(R * C);
  }

  int64_t block_width(BlockLinear g) const { return block_linear_inputs(cfg_, g); }
  // Input columns of expert e's down_proj (-1: the shared expert's).
  int64_t expert_width(int64_t e) const {
    return e < 0 ? cfg_.shared_expert_intermediate_size : cfg_.moe_intermediate_size;
  }
  int64_t width(const AwqInput& in) const {
    if (in.is_block()) return block_width(in.at);
    return in.at == BlockLinear::GateUp ? cfg_.hidden_size : expert_width(in.expert);
  }
  int64_t max_width() const {
    return std::max({cfg_.hidden_size, cfg_.q_dim(), cfg_.has_dense_mlp() ? cfg_.intermediate_size : int64_t{0},
                     cfg_.is_moe() ? std::max(cfg_.moe_intermediate_size, cfg_.shared_expert_intermediate_size)
                                   : int64_t{0}});
  }

  // The captured layer keeps `in`: a block input of it (a MoE layer has no Down input of its own), or an expert's.
  void check_input(const AwqInput& in) const {
    QWENQ_CHECK(layer_ >= 0, "awq: no block captured yet");
    if (in.is_block()) {
      QWENQ_CHECK(!(moe_ && in.at == BlockLinear::Down),
                  "awq: layer " << layer_ << " is a mixture-of-experts layer: its down_proj inputs are its experts'");
      return;
    }
    QWENQ_CHECK(moe_ && in.expert >= -1 && in.expert < cfg_.num_experts &&
                    (in.expert >= 0 || cfg_.shared_expert_intermediate_size > 0) &&
                    (in.at == BlockLinear::GateUp || in.at == BlockLinear::Down),
                "awq: layer " << layer_ << " has no expert " << in.expert << " input");
  }

  // The device rows [rows(in), width(in)] of a kept input: a block input as kept, an expert's down_proj input in the
  // compacted buffer, the shared expert's gate/up input (n itself), a routed expert's gathered into gather_ (valid
  // until the next call).
  const float* kept_rows(const AwqInput& in) {
    check_input(in);
    if (in.is_block()) return feats_[static_cast<int>(in.at)].as<float>();
    if (in.at == BlockLinear::Down) return expert_down_rows(in.expert);
    const float* n = feats_[static_cast<int>(BlockLinear::GateUp)].as<float>();
    if (in.expert < 0) return n;
    const std::vector<int32_t>& tok = routed_[static_cast<size_t>(in.expert)];
    const int64_t R = static_cast<int64_t>(tok.size()), C = cfg_.hidden_size;
    if (R == 0) return nullptr;
    ensure(gather_idx_, static_cast<size_t>(R) * sizeof(int32_t), "the routed rows' token indices");
    ensure(gather_, f32_bytes(R, C), "the rows routed to expert " + std::to_string(in.expert) + " " + dims(R, C));
    upload_owned_async(gather_idx_.get(), tok, s_);
    embedding_gather_cuda(n, DType::F32, T_, C, gather_idx_.as<int32_t>(), R, gather_.as<float>(), s_, tok.data());
    return gather_.as<float>();
  }

  // Expert e's down_proj inputs [R, width]: the shared expert's as kept; a routed expert's piece when a single chunk
  // gave it rows, else its pieces copied in capture order into gather_ (valid until the next call).
  const float* expert_down_rows(int64_t e) {
    if (e < 0) return down_.as<float>();
    const std::vector<DownPiece>& ps = pieces_[static_cast<size_t>(e)];
    if (ps.empty()) return nullptr;
    if (ps.size() == 1) return down_.as<float>() + ps[0].offset;
    const int64_t Im = cfg_.moe_intermediate_size, R = rows(AwqInput(BlockLinear::Down, e));
    ensure(gather_, f32_bytes(R, Im), "the down_proj inputs of expert " + std::to_string(e) + " " + dims(R, Im));
    int64_t at = 0;
    for (const DownPiece& p : ps) {
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(gather_.as<float>() + at * Im, down_.as<float>() + p.offset,
                                       f32_bytes(p.rows, Im), cudaMemcpyDeviceToDevice, s_));
      at += p.rows;
    }
    return gather_.as<float>();
  }

  // A routed or shared expert's up_proj -> down_proj group: a single Linear on the expert's own rows.
  static bool expert_single(const AwqScaleGroup& grp) {
    return grp.module == AwqModule::Single && !grp.input.is_block();
  }

  // grp belongs to the captured layer l and its slots to lin_: a MoE layer's MLP group lists every expert's gate and
  // up in mlp_forward's replacement order (expert e's at 2e, 2e + 1; the shared expert's last).
  void check_group(int64_t l, const AwqScaleGroup& grp) const {
    QWENQ_CHECK(l == layer_, "awq: layer " << l << " evaluated after capturing layer " << layer_);
    QWENQ_CHECK(!grp.slots.empty(), "awq: the group of " << grp.prev << " has no Linears");
    for (int sl : grp.slots) {
      QWENQ_CHECK(sl >= 0 && sl < static_cast<int>(lin_.size()),
                  "awq: layer " << l << " has no Linear " << sl << " (group of " << grp.prev << ")");
    }
    check_input(grp.input);
    if (!(moe_ && grp.module == AwqModule::Mlp)) return;
    const int64_t E = cfg_.num_experts, S = E + (cfg_.shared_expert_intermediate_size > 0 ? 1 : 0);
    QWENQ_CHECK(static_cast<int64_t>(grp.slots.size()) == 2 * S,
                "awq: layer " << l << "'s MoE group has " << grp.slots.size() << " Linears, not " << 2 * S);
    for (int64_t i = 0; i < S; ++i) {
      for (int which = 0; which < 2; ++which) {
        const Lin& a = lin_[static_cast<size_t>(grp.slots[static_cast<size_t>(2 * i + which)])];
        QWENQ_CHECK(a.expert == (i < E ? i : -1) && a.which == which,
                    "awq: layer " << l << "'s MoE group lists " << a.name << " at position " << 2 * i + which);
      }
    }
  }

  // buf holds at least `bytes` (reallocated, contents lost, when smaller). Reallocation is stream-ordered: the
  // caching allocator reuses the old block only after the work queued on s_ before the release.
  void ensure(DeviceAllocation& buf, size_t bytes, const std::string& what) {
    if (buf.bytes() >= bytes) return;
    buf.reset();
    buf = allocate_named(bytes, MemoryTag::Workspace, what, s_);
  }

  // The group's Linears' weights (fp32 [N, K] each, in slot order) into dst[j], grown as needed. The copies are
  // queued on the stream after every module call already queued, which may still read dst: stream order makes
  // overwriting them safe. The host vectors (the driver's working weights, the candidates) live until the next
  // loss or statistic has waited for the stream, so the copies never depend on pageable memory being staged.
  void upload_weights(int64_t l, const AwqScaleGroup& grp, const std::vector<const std::vector<float>*>& weights,
                      std::vector<DeviceAllocation>& dst) {
    QWENQ_CHECK(weights.size() == grp.slots.size(), "awq: " << weights.size() << " weights for a group of "
                                                            << grp.slots.size());
    dst.resize(weights.size());
    for (size_t j = 0; j < weights.size(); ++j) {
      const Lin& a = lin_[static_cast<size_t>(grp.slots[j])];
      QWENQ_CHECK(static_cast<int64_t>(weights[j]->size()) == a.N * a.K,
                  "awq: layer " << l << " " << a.name << " weight has " << weights[j]->size() << " values, not "
                                << a.N << " x " << a.K);
      const size_t bytes = f32_bytes(a.N, a.K);
      ensure(dst[j], bytes, std::string(&dst == &wref_ ? "the working weight " : "the candidate ") + a.name + " " +
                                dims(a.N, a.K));
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(dst[j].get(), weights[j]->data(), bytes, cudaMemcpyHostToDevice, s_));
    }
  }

  // The dtype of the group's Linears in the module evaluations: bf16 with a bf16 calibration, else fp32.
  DType module_dtype() const { return bf16_ ? DType::BF16 : DType::F32; }

  // With a bf16 calibration, the group's fp32 weights src[j] rounded into dst[j] (bf16 [N, K], grown as needed)
  // on the stream; nothing otherwise.
  void to_module_dtype(const AwqScaleGroup& grp, const std::vector<DeviceAllocation>& src,
                       std::vector<DeviceAllocation>& dst) {
    if (!bf16_) return;
    dst.resize(src.size());
    for (size_t j = 0; j < src.size(); ++j) {
      const Lin& a = lin_[static_cast<size_t>(grp.slots[j])];
      ensure(dst[j], static_cast<size_t>(a.N * a.K) * sizeof(uint16_t),
             "the bf16 copy of " + a.name + " [" + std::to_string(a.N) + ", " + std::to_string(a.K) + "]");
      f32_to_bf16_cuda(src[j].as<float>(), a.N * a.K, dst[j].as<uint16_t>(), s_);
    }
  }

  // grp's module (not an expert's single Linear) over chunk c of its kept input, with the group's Linears at
  // weights[j] (module_dtype()), into out [rows, C].
  void run_module(int64_t l, const AwqScaleGroup& grp, size_t c, const std::vector<DeviceAllocation>& weights,
                  float* out) {
    const PackedBatch& b = chunks_[c];
    const int64_t rows = b.num_tokens();
    const BlockLinear at = grp.input.at;
    const float* x = feats_[static_cast<int>(at)].as<float>() + offset_[c] * block_width(at);
    std::vector<const void*> w(weights.size());
    for (size_t j = 0; j < w.size(); ++j) w[j] = weights[j].get();
    const DType dt = module_dtype();
    switch (grp.module) {
      case AwqModule::SelfAttn:
        gpu_.attention_forward(l, b, x, out, w.data(), dt);
        break;
      case AwqModule::Mlp:  // a MoE layer's: every expert's gate/up replaced (check_group's order)
        gpu_.mlp_forward(l, x, rows, out, w.data(), dt);
        break;
      case AwqModule::Single: {
        const Lin& a = lin_[static_cast<size_t>(grp.slots[0])];
        const DecoderLinear& d = kDecoderLinears[a.slot];
        gpu_.block_linear_forward(l, d.group, d.index, x, rows, out, w[0], dt);
        break;
      }
    }
  }

  QwenConfig cfg_;
  QwenModelCuda gpu_;
  CudaStream s_;
  std::vector<PackedBatch> chunks_;
  std::vector<int64_t> offset_;  // first token of each chunk in X
  int64_t T_ = 0, largest_ = 0;
  DeviceAllocation X_, feats_[4], ref_, out_, sums_, s_dev_, wclip_, xclip_, bounds_;
  std::vector<DeviceAllocation> wref_, cand_;  // per slot of the group (a MoE layer's MLP group: 2·(E + shared))
  bool bf16_ = false;                          // a bf16 calibration: the module evaluations read ...
  std::vector<DeviceAllocation> wref16_, cand16_;  // ... these bf16 copies of wref_ and cand_
  int64_t layer_ = -1;                         // the captured block
  bool moe_ = false;                           // ... is a mixture-of-experts layer
  std::vector<AwqLinear> lin_;                 // its Linears (awq_layer_linears)
  std::string ref_group_;                      // grp.prev of the last set_reference
  // A captured MoE layer: the tokens routed to each expert (indices into the calibration set, the CPU block's
  // order); down_ holds the shared expert's down_proj inputs [T, Is] and then each routed expert's pieces (one per
  // chunk that routed tokens to it, in capture order: the CPU runner's down_[e] when put end to end).
  struct DownPiece {
    int64_t offset, rows;  // floats into down_, rows of Im
  };
  std::vector<std::vector<int32_t>> routed_;
  std::vector<std::vector<DownPiece>> pieces_;
  DeviceAllocation down_, gather_, gather_idx_;
};

}  // namespace

std::unique_ptr<AwqBlockRunner> make_awq_cuda_runner(const QwenModel& model,
                                                     const std::vector<std::vector<int32_t>>& windows,
                                                     int64_t chunk_tokens, DType calib_dtype) {
  check_awq_calib_dtype(calib_dtype);
  return std::make_unique<CudaBlockRunner>(model, windows, chunk_tokens, calib_dtype);
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
