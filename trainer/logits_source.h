// A model as the evaluations that need more than one NLL per token see it (KL divergence, llama.cpp's base files,
// multiple-choice log-likelihoods): run a packed batch, then read the logits of any of its rows, or the NLL of chosen
// targets at every row, on the host:
//
//   forward(batch)               runs the batch; its final hidden states h [T, C] stay with the source
//   logits(r0, rows, out)        out [rows, V] fp32 = h[r0 .. r0 + rows) · lm_headᵀ
//   nll(targets, out) -> count   out[t] = −log softmax(h_t · lm_headᵀ)[targets[t]] for all T rows (kIgnoreIndex:
//                                0, not counted)
//
// cpu_logits_source: QwenModel's forward_hidden / logits / hidden_nll (the hidden states in a host vector the source
// owns). cuda_logits_source (CUDA builds): QwenModelCuda's forward_hidden / logits_rows / hidden_nll, the hidden
// states on the device and each requested block of logits copied to the host. Either way the statistics are the
// caller's, computed on the host from the same fp32 logits, so a GPU run differs from the CPU's only by the forward's
// rounding (trainer/qwen_model_cuda.h); except KL divergence between two GPU sources and llama.cpp's base-file rows
// of a GPU source, whose per-row work runs on the device (device_kl_rows, device_kld_encode_rows,
// device_kld_score_rows: the CUDA twins of the host's kl_rows_ref / kld_*_rows_ref) so that the logits never cross
// PCIe. A source is used by one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kl_rows.h"
#include "kernels/kld_rows.h"
#include "trainer/qwen_model.h"
#ifdef QWENQ_HAVE_CUDA
#include "trainer/qwen_model_cuda.h"
#endif

namespace qwenq {

struct LogitsSource {
  std::string name;                 // the model's directory, in messages
  int64_t vocab_size = 0;
  int64_t max_positions = 0;        // the model's context (max_position_embeddings)
  std::function<void(const PackedBatch& batch)> forward;
  std::function<void(int64_t r0, int64_t rows, float* out)> logits;
  std::function<int64_t(const int32_t* targets, float* nll)> nll;
  // GPU sources only (empty for the CPU's): the logits of rows [r0, r0 + rows) left in the source's device buffer
  // (QwenModelCuda::logits_device: valid until the source's next call, finished when it returns).
  std::function<const float*(int64_t r0, int64_t rows)> device_logits;
};

// The CPU model (must outlive the source).
LogitsSource cpu_logits_source(const QwenModel& model);

#ifdef QWENQ_HAVE_CUDA
// The GPU model (must outlive the source); `name` as the CPU model's dir().
LogitsSource cuda_logits_source(QwenModelCuda& gpu, const std::string& name);

// KL divergence without the logits leaving the GPU: rows [r0, r0 + rows) of both sources' logits on the device
// (device_logits, so both must be GPU sources on the current device), kl_rows_cuda (kernels/kl_rows.h) over them,
// and only the KlRows (40 bytes a row instead of 2·V·4) copied to the host. targets and out on the host.
void device_kl_rows(LogitsSource& model, LogitsSource& base, int64_t r0, int64_t rows, const int32_t* targets,
                    KlRow* out);
// llama.cpp's base-file rows on the device (kernels/kld_rows.h), for a GPU source: the encoding of its logits rows
// [r0, r0 + rows) (out [rows, kld_row_width(V)] and nll [rows] on the host: 2 bytes a value cross PCIe instead of 4),
// and the scoring of those rows against encoded base rows (base on the host, uploaded; KlRows back).
void device_kld_encode_rows(LogitsSource& src, int64_t r0, int64_t rows, const int32_t* targets, uint16_t* out,
                            float* nll);
void device_kld_score_rows(LogitsSource& src, const uint16_t* base, int64_t r0, int64_t rows, const int32_t* targets,
                           KlRow* out);
#endif

}  // namespace qwenq
