// The GPU runner of awq_quantize_model (trainer/awq_runner.h's AwqBlockRunner; the driver in awq_model.cpp is the
// same for both devices): the calibration activations live on the device, and so do the heavy parts of the search
// (quant/awq_search.h's kernels); only scalars and clip bounds come back.
//   X        [T, C] fp32, the residual stream of every calibration window (T = windows·seq_len)
//   chunks   whole windows of at most chunk_tokens tokens (at least one), each a PackedBatch of its own (positions
//            restart per window, so chunking changes nothing in a block's or module's function)
//   capture(l)        per chunk: QwenModelCuda::block_forward(l) in place on X[chunk] (the model's own weights, as
//                     AutoAWQ), its hook copying each Linear group's input into feats[g] [T, K_g] (device)
//   input_mean(g)     column_abs_sum_cuda over feats[g] (double), K doubles downloaded, mean = (float)(sum / T): the
//                     CPU's awq_activation_mean up to the order of the double sums
//   set_reference     the group's fp32 working weights uploaded once into wref[j] and used as the module's
//                     replacement weights (so reference and candidates are both true fp32 GEMMs, whatever dtype the
//                     model stores), the module run per chunk (QwenModelCuda::attention_forward / mlp_forward /
//                     block_linear_forward) into ref [T, C]
//   loss_scaled(s)    s (K floats) uploaded, awq_candidate_cuda(wref[j], s) -> cand[j] on the device (bit for bit the
//                     CPU's candidates), then as loss
//   loss(candidate)   host candidates uploaded into cand[j]; the module run per chunk into one chunk buffer with the
//                     group's Linears at cand, sum_sq_diff_cuda(out, ref[chunk]) accumulated in one device double
//                     over the chunks; that one double is downloaded: loss = sum / (T·C), as the CPU
//                     (kernels/sum_reduce.h: double terms and sums, a different order). The stored weights are never
//                     touched: nothing needs restoring.
//   search_clip       the folded weight [N, K] and s uploaded, awq_clip_inputs_cuda gathers feats[g]'s sampled rows
//                     / s (zero-padded to K) into xclip [S, K], awq_clip_search_cuda -> bounds [N, ⌈K/G⌉] downloaded
//   sampled_rows      (tests) rows 0, step, 2·step, ... of feats[g], one strided copy back to the host
// Device memory: the model's weights, X, feats (T·(2C + q_dim + I) fp32), ref [T, C], one chunk output [chunk, C],
// the largest group's working weights and candidates (fp32: 2·I·C each for gate/up), the clip search's weight
// [N, K], sampled inputs [S, K] (S < 2·n_sample_tokens) and bounds, and the module's activation buffers for a chunk.
// Everything runs on QwenModelCuda's stream; the host waits once per loss (the double), per statistic and per clip
// search (its bounds).
#ifdef QWENQ_HAVE_CUDA

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
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
  CudaBlockRunner(const QwenModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t chunk_tokens)
      : cfg_(model.config()), gpu_(model), s_(gpu_.stream()) {
    QWENQ_CHECK(!windows.empty(), "awq: no calibration windows");
    QWENQ_CHECK(chunk_tokens > 0, "awq: chunk_tokens must be positive, got " << chunk_tokens);
    CalibChunks split = split_calibration(windows, chunk_tokens);  // whole windows (trainer/calib_chunks.h)
    chunks_ = std::move(split.batches);
    offset_ = std::move(split.offsets);
    T_ = split.total_tokens;
    const int64_t largest = split.largest;
    QWENQ_CHECK(T_ > 0, "awq: the calibration windows hold no tokens");
    const int64_t C = cfg_.hidden_size;
    X_ = allocate_named(f32_bytes(T_, C), MemoryTag::Activations, "the calibration residual stream " + dims(T_, C), s_);
    for (int g = 0; g < 4; ++g) {
      const BlockLinear at = static_cast<BlockLinear>(g);
      feats_[g] = allocate_named(f32_bytes(T_, width(at)), MemoryTag::Activations,
                                 "the captured inputs of Linear group " + std::to_string(g) + " " +
                                     dims(T_, width(at)), s_);
    }
    ref_ = allocate_named(f32_bytes(T_, C), MemoryTag::Activations, "the reference module output " + dims(T_, C), s_);
    out_ = allocate_named(f32_bytes(largest, C), MemoryTag::Activations,
                          "one chunk of the candidate module output " + dims(largest, C), s_);
    sums_ = allocate_named(static_cast<size_t>(std::max<int64_t>(1, max_width())) * sizeof(double),
                           MemoryTag::Workspace, "the reduction sums", s_);
    s_dev_ = allocate_named(f32_bytes(1, max_width()), MemoryTag::Workspace, "the scales", s_);
    for (size_t c = 0; c < chunks_.size(); ++c) gpu_.embed_batch(chunks_[c], X_.as<float>() + offset_[c] * C);
  }

  int64_t tokens() const override { return T_; }

  void capture(int64_t l) override {
    const int64_t C = cfg_.hidden_size;
    for (size_t c = 0; c < chunks_.size(); ++c) {
      const int64_t off = offset_[c];
      gpu_.block_forward(l, chunks_[c], X_.as<float>() + off * C, [&](BlockLinear at, const float* x, int64_t rows) {
        const int64_t K = width(at);
        QWENQ_CHECK(rows == chunks_[c].num_tokens(), "awq: block " << l << " saw " << rows << " rows, not "
                                                                   << chunks_[c].num_tokens());
        float* dst = feats_[static_cast<int>(at)].as<float>() + off * K;
        QWENQ_CUDA_CHECK(cudaMemcpyAsync(dst, x, f32_bytes(rows, K), cudaMemcpyDeviceToDevice, s_));
        return true;  // the whole block: its output is the next block's input
      });
    }
  }

  int64_t rows(const AwqInput& in) const override {
    block_input(in);
    return T_;
  }

  std::vector<float> input_mean(const AwqInput& in) override {
    const BlockLinear g = block_input(in);
    const int64_t K = width(g);
    QWENQ_CUDA_CHECK(cudaMemsetAsync(sums_.get(), 0, static_cast<size_t>(K) * sizeof(double), s_));
    column_abs_sum_cuda(feats_[static_cast<int>(g)].as<float>(), T_, K, sums_.as<double>(), s_);
    std::vector<double> sum(static_cast<size_t>(K));
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(sum.data(), sums_.get(), sum.size() * sizeof(double), cudaMemcpyDeviceToHost, s_));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    std::vector<float> mean(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) mean[k] = static_cast<float>(sum[k] / T_);
    return mean;
  }

  void set_reference(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* W) override {
    std::vector<const std::vector<float>*> weights;
    for (int slot : grp.slots) weights.push_back(&W[slot]);
    upload_weights(l, grp, weights, wref_);
    ref_layer_ = l;
    ref_group_ = grp.prev;
    const int64_t C = cfg_.hidden_size;
    for (size_t c = 0; c < chunks_.size(); ++c) run_module(l, grp, c, wref_, ref_.as<float>() + offset_[c] * C);
  }

  double loss(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* candidate) override {
    std::vector<const std::vector<float>*> weights;
    for (size_t j = 0; j < grp.slots.size(); ++j) weights.push_back(&candidate[j]);
    upload_weights(l, grp, weights, cand_);
    return candidate_loss(l, grp);
  }

  double loss_scaled(int64_t l, const AwqScaleGroup& grp, const std::vector<float>* W, const std::vector<float>& s,
                     const AwqSearchOptions& opt) override {
    QWENQ_CHECK(ref_layer_ == l && ref_group_ == grp.prev,
                "awq: loss_scaled for layer " << l << " " << grp.prev << " without its set_reference");
    const int64_t K = width(block_input(grp.input));
    QWENQ_CHECK(static_cast<int64_t>(s.size()) == K, "awq: " << s.size() << " scales for " << K << " input columns");
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(s_dev_.get(), s.data(), f32_bytes(1, K), cudaMemcpyHostToDevice, s_));
    for (size_t j = 0; j < grp.slots.size(); ++j) {
      const int64_t N = rows_of(grp.slots[j]);
      QWENQ_CHECK(static_cast<int64_t>(W[grp.slots[j]].size()) == N * K,
                  "awq: layer " << l << " " << kDecoderLinears[grp.slots[j]].name << " weight has "
                                << W[grp.slots[j]].size() << " values, not " << N << " x " << K);
      ensure(cand_[j], f32_bytes(N, K), std::string("the candidate ") + kDecoderLinears[grp.slots[j]].name + " " +
                                            dims(N, K));
      awq_candidate_cuda(wref_[j].as<float>(), N, K, s_dev_.as<float>(), opt.bits, opt.group_size,
                         cand_[j].as<float>(), s_);
    }
    return candidate_loss(l, grp);
  }

  std::vector<float> search_clip(const AwqInput& in, const std::vector<float>& s, const float* W, int64_t N, int64_t K,
                                 const AwqSearchOptions& opt) override {
    const BlockLinear g = block_input(in);
    const int64_t K0 = width(g), step = awq_clip_token_step(T_, opt), S = awq_clip_rows(T_, step);
    QWENQ_CHECK(s.empty() || static_cast<int64_t>(s.size()) == K0,
                "awq: " << s.size() << " scales for " << K0 << " input columns");
    awq_clip_inputs_check_args(T_, K0, step, K);
    awq_clip_search_check_args(N, K, S, opt);
    const int64_t G = opt.group_size > 0 ? opt.group_size : K, groups = (K + G - 1) / G;
    ensure(wclip_, f32_bytes(N, K), "the clipped weight " + dims(N, K));
    ensure(xclip_, f32_bytes(S, K), "the clip search's sampled inputs " + dims(S, K));
    ensure(bounds_, f32_bytes(N, groups), "the clip bounds " + dims(N, groups));
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(wclip_.get(), W, f32_bytes(N, K), cudaMemcpyHostToDevice, s_));
    if (!s.empty())
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(s_dev_.get(), s.data(), f32_bytes(1, K0), cudaMemcpyHostToDevice, s_));
    awq_clip_inputs_cuda(feats_[static_cast<int>(g)].as<float>(), T_, K0, step, s.empty() ? nullptr : s_dev_.as<float>(),
                         K, xclip_.as<float>(), s_);
    awq_clip_search_cuda(wclip_.as<float>(), N, K, xclip_.as<float>(), S, opt, bounds_.as<float>(), s_);
    std::vector<float> max_val(static_cast<size_t>(N * groups));
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(max_val.data(), bounds_.get(), f32_bytes(N, groups), cudaMemcpyDeviceToHost, s_));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    return max_val;
  }

  std::vector<float> sampled_rows(const AwqInput& in, int64_t step) override {
    const BlockLinear g = block_input(in);
    QWENQ_CHECK(step >= 1, "awq: token step " << step);
    const int64_t K = width(g), S = (T_ + step - 1) / step;
    std::vector<float> rows(static_cast<size_t>(S * K));
    QWENQ_CUDA_CHECK(cudaMemcpy2DAsync(rows.data(), K * sizeof(float), feats_[static_cast<int>(g)].get(),
                                       static_cast<size_t>(step * K) * sizeof(float), K * sizeof(float),
                                       static_cast<size_t>(S), cudaMemcpyDeviceToHost, s_));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    return rows;
  }

 private:
  // The module over every chunk with the group's Linears at cand_, against ref_: mean squared difference.
  double candidate_loss(int64_t l, const AwqScaleGroup& grp) {
    const int64_t C = cfg_.hidden_size;
    double* acc = sums_.as<double>();
    QWENQ_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(double), s_));
    for (size_t c = 0; c < chunks_.size(); ++c) {
      run_module(l, grp, c, cand_, out_.as<float>());
      const int64_t rows = chunks_[c].num_tokens();
      sum_sq_diff_cuda(out_.as<float>(), ref_.as<float>() + offset_[c] * C, rows * C, acc, s_);
    }
    double sum = 0.0;
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(&sum, acc, sizeof(double), cudaMemcpyDeviceToHost, s_));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_));
    return sum / static_cast<double>(T_ * C);
  }

  int64_t width(BlockLinear g) const { return block_linear_inputs(cfg_, g); }
  // The runner keeps block inputs only: the GPU model refuses MoE layers, whose experts read their own rows.
  static BlockLinear block_input(const AwqInput& in) {
    QWENQ_CHECK(in.is_block(), "awq: the GPU runner has no per-expert inputs (expert " << in.expert << ")");
    return in.at;
  }
  int64_t max_width() const { return std::max({cfg_.hidden_size, cfg_.q_dim(), cfg_.intermediate_size}); }

  // Output rows N of the Linear in slot `slot` (its K is width(kDecoderLinears[slot].group)).
  int64_t rows_of(int slot) const { return decoder_linear_outputs(cfg_, kDecoderLinears[slot]); }

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
                      DeviceAllocation* dst) {
    QWENQ_CHECK(weights.size() == grp.slots.size() && weights.size() <= 3, "awq: " << weights.size()
                                                                                   << " weights for a group of "
                                                                                   << grp.slots.size());
    for (size_t j = 0; j < weights.size(); ++j) {
      const DecoderLinear& d = kDecoderLinears[grp.slots[j]];
      const int64_t N = rows_of(grp.slots[j]), K = width(d.group);
      QWENQ_CHECK(static_cast<int64_t>(weights[j]->size()) == N * K,
                  "awq: layer " << l << " " << d.name << " weight has " << weights[j]->size() << " values, not "
                                << N << " x " << K);
      const size_t bytes = f32_bytes(N, K);
      ensure(dst[j], bytes, std::string("the ") + (dst == wref_ ? "working weight " : "candidate ") + d.name + " " +
                                dims(N, K));
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(dst[j].get(), weights[j]->data(), bytes, cudaMemcpyHostToDevice, s_));
    }
  }

  // grp's module over chunk c of its kept input, with the group's Linears at weights[j], into out [rows, C].
  void run_module(int64_t l, const AwqScaleGroup& grp, size_t c, const DeviceAllocation* weights, float* out) {
    const PackedBatch& b = chunks_[c];
    const int64_t rows = b.num_tokens();
    const BlockLinear at = block_input(grp.input);
    const float* x = feats_[static_cast<int>(at)].as<float>() + offset_[c] * width(at);
    const float* w[3] = {weights[0].as<float>(), weights[1].as<float>(), weights[2].as<float>()};
    switch (grp.module) {
      case AwqModule::SelfAttn:
        gpu_.attention_forward(l, b, x, out, w);
        break;
      case AwqModule::Mlp:
        gpu_.mlp_forward(l, x, rows, out, w);
        break;
      case AwqModule::Single: {
        const DecoderLinear& d = kDecoderLinears[grp.slots[0]];
        gpu_.block_linear_forward(l, d.group, d.index, x, rows, out, w[0]);
        break;
      }
    }
  }

  QwenConfig cfg_;
  QwenModelCuda gpu_;
  CudaStream s_;
  std::vector<PackedBatch> chunks_;
  std::vector<int64_t> offset_;  // first token of each chunk in X
  int64_t T_ = 0;
  DeviceAllocation X_, feats_[4], ref_, out_, sums_, s_dev_, wref_[3], cand_[3], wclip_, xclip_, bounds_;
  int64_t ref_layer_ = -1;
  std::string ref_group_;  // grp.prev of the last set_reference
};

}  // namespace

std::unique_ptr<AwqBlockRunner> make_awq_cuda_runner(const QwenModel& model,
                                                     const std::vector<std::vector<int32_t>>& windows,
                                                     int64_t chunk_tokens) {
  return std::make_unique<CudaBlockRunner>(model, windows, chunk_tokens);
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
