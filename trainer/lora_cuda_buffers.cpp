// The GPU LoRA trainer's buffer table (trainer/lora_cuda_buffers.h).
#include "trainer/lora_cuda_buffers.h"

#include <algorithm>

namespace qwenq {

int64_t lora_cuda_logits_rows(int64_t T, int64_t V, int64_t max_rows) {
  const int64_t rows = max_rows > 0 ? max_rows : kLoraCudaLogitsChunkFloats / V;
  return std::max<int64_t>(1, std::min<int64_t>(T, rows));
}

std::vector<LoraCudaBuffer> lora_cuda_batch_buffers(const QwenConfig& c, int64_t layers, int64_t rank, bool flash,
                                                    bool bf16_checkpoints, bool dropout) {
  const int64_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), I = c.intermediate_size, H = c.num_heads,
                r = rank, wide = std::max({C, Q, I});
  using Id = LoraCudaBufferId;
  using R = LoraCudaRole;
  const auto b16 = [](int64_t cols) { return (cols + 1) / 2; };  // bf16 values in 4-byte words
  std::vector<LoraCudaBuffer> v;
  if (bf16_checkpoints) {
    v.push_back({Id::Xs, R::Checkpoints, "the bf16 block inputs (activation checkpoints)", b16((layers + 1) * C)});
    v.push_back({Id::Xin, R::Forward, "the block input widened to fp32", C});
  } else {
    v.push_back({Id::Xs, R::Checkpoints, "the fp32 block inputs (activation checkpoints)", (layers + 1) * C});
  }
  const std::vector<LoraCudaBuffer> rest = {
      {Id::N1, R::Forward, "n1 (and the final hidden states)", C},
      {Id::Qpre, R::Forward, "q before its norm", c.qk_norm ? Q : 1},
      {Id::Kpre, R::Forward, "k before its norm", c.qk_norm ? KV : 1},
      {Id::Q, R::Forward, "q", Q},
      {Id::K, R::Forward, "k", KV},
      {Id::V, R::Forward, "v", KV},
      {Id::A, R::Forward, "the attention output", Q},
      {Id::Lse, R::Forward, "the attention lse", H},
      {Id::H1, R::Forward, "h1 (and dhidden)", C},
      {Id::N2, R::Forward, "n2", C},
      {Id::Gate, R::Forward, "gate", I},
      {Id::Up, R::Forward, "up (and dup)", I},
      {Id::Act, R::Forward, "the SwiGLU output (and dact, dgate)", I},
      {Id::U, R::Forward, "the LoRA u = x Aᵀ", 7 * r},
      {Id::D, R::Backward, "the residual gradient", C},
      {Id::Dn2, R::Backward, "dn2 (and dn1, the MLP output)", C},
      {Id::Dh1, R::Backward, "dh1", C},
  };
  v.insert(v.end(), rest.begin(), rest.end());
  if (!flash) {
    v.push_back({Id::Da, R::Backward, "da", Q});
    v.push_back({Id::Dq, R::Backward, "dq", Q});
    v.push_back({Id::Dk, R::Backward, "dk", KV});
    v.push_back({Id::Dv, R::Backward, "dv", KV});
  }
  if (dropout) v.push_back({Id::Tmp, R::Backward, "the dropped LoRA input / base input gradient", wide});
  const std::vector<LoraCudaBuffer> tail = {
      {Id::G, R::Backward, "the LoRA g = s dy B", r},
      {Id::Nll, R::Loss, "the per-token losses", 1},
      {Id::Tokens, R::Forward, "the token ids", 1},
      {Id::Positions, R::Forward, "the positions", 1},
      {Id::Targets, R::Loss, "the targets", 1},
      {Id::Act16, R::Forward, "the bf16 activations of the 4-bit Linears", b16(wide)},
  };
  v.insert(v.end(), tail.begin(), tail.end());
  if (flash) {
    v.push_back({Id::Q16, R::Forward, "bf16 q", b16(Q)});
    v.push_back({Id::K16, R::Forward, "bf16 k", b16(KV)});
    v.push_back({Id::V16, R::Forward, "bf16 v", b16(KV)});
    v.push_back({Id::A16, R::Forward, "bf16 attention output", b16(Q)});
  }
  return v;
}

}  // namespace qwenq
