// FlashAttention's tolerance rule for a bf16 attention (the GPU's flash kernels, kernels/flash_attention.h, and the
// CPU's bf16 twin, attention_forward_ref(..., bf16 = true)): its error may be at most twice the error of a naive
// implementation in the same precision (bf16), plus a tiny term for the cases where the naive one is exact.
//
// On the same bf16 inputs q, k, v, dout:
//   truth  attention_forward_ref / attention_backward_ref (fp32, kernels/attention_ref.cpp) on the bf16 values,
//          the backward fed the truth's own out and lse;
//   naive  the attention a straightforward bf16 implementation computes (torch in bf16 without a fused kernel):
//          scores = bf16(bf16(q·k) · scale), softmax in fp32 over the bf16 scores, P = bf16(softmax),
//          out = bf16(P·v), lse = fp32 logsumexp of the bf16 scores; backward dP = bf16(dout·vᵀ),
//          dS = bf16(P ⊙ (dP − Σ P·dP)), dS' = bf16(dS · scale), dq = bf16(dS'·k), per head
//          dk_h = bf16(dS'ᵀ·q), dv_h = bf16(Pᵀ·dout), then dk, dv = bf16(Σ over the group's heads).
//          Every product accumulates in fp32 (as the tensor cores do); the roundings are at the points where such
//          an implementation writes a bf16 tensor.
//   got    the implementation under test: forward on the bf16 inputs, backward fed its own out and lse.
// Rule, per tensor (out, lse, dq, dk, dv), with err = max |x − truth| over the compared elements:
//   err(got) <= kNaiveFactor · err(naive) + kTinyUlps · kU · M
// where M is the magnitude of the terms that make the tensor (out: max|v|; lse: 1 + max|lse|; dq: scale · D ·
// max|k|·max|dout|·max|v|; dk: the same with q; dv: max|dout|). The tiny term matters only where the naive
// computation is exact (a length-1 sequence: P = 1, out = v, dS = 0 exactly) while the fp32 kernel and the
// truth differ in the last bits of their sums; elsewhere it is far below the naive error.
// Cost: both references are O(T²); for T >= 1024 only kv groups 0 and Hkv − 1 (all their query heads) are compared,
// heads being independent.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qwenq::test {

constexpr double kFlashU = 1.0 / 16777216.0;  // fp32 unit roundoff
constexpr double kNaiveFactor = 2.0;          // FlashAttention's rule
constexpr double kTinyUlps = 8;               // fp32 sums in another order (see the header)

// The outputs of one attention over the whole problem: out, dq [T, H, D], lse [T, H], dk, dv [T, Hkv, D].
struct AttentionResult {
  std::vector<float> out, lse, dq, dk, dv;
};

// The offsets of sequences of these lengths packed back to back: {0, L0, L0 + L1, ...} (the attention's cu_seqlens).
inline std::vector<int32_t> cu_seqlens_of(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> cu{0};
  for (int32_t L : lengths) cu.push_back(cu.back() + L);
  return cu;
}

// Heads [h0, h0 + nh) of a [T, heads, D] tensor, as a [T, nh, D] tensor.
std::vector<float> slice_heads(const std::vector<float>& x, int64_t T, int64_t heads, int64_t D, int64_t h0,
                               int64_t nh);

// The naive bf16 attention above, forward and backward.
AttentionResult naive_bf16_attention(const std::vector<float>& q, const std::vector<float>& k,
                                     const std::vector<float>& v, const std::vector<float>& dout,
                                     const std::vector<int32_t>& cu, int64_t H, int64_t Hkv, int64_t D);

// EXPECTs `got` within the rule against truth and naive, per compared kv group (each line printed with its ratio to
// the bound, prefixed by `tag`); ctx names the case in messages.
void expect_within_flash_rule(const AttentionResult& got, const std::vector<float>& q, const std::vector<float>& k,
                              const std::vector<float>& v, const std::vector<float>& dout,
                              const std::vector<int32_t>& cu, int64_t H, int64_t Hkv, int64_t D,
                              const std::string& tag, const std::string& ctx);

}  // namespace qwenq::test
