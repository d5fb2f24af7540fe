// The one 4-bit layout our fused dequant-matmul kernels read ("Q4"), shared by the CPU twin and the CUDA
// kernels (kernels/qgemm.h). Every packed source format is repacked into it once, at load time, losslessly:
// unpacking a Q4 weight gives back, bit for bit, the fp32 values the source format's own reader computes
// (dequantize_int_linear for GPTQ v1/v2 and AutoAWQ GEMM, nf4_dequantize for bitsandbytes NF4/FP4 with or
// without double quantization).
//
// Logical weight: ŵ [N, K], the nn.Linear orientation (N = out_features, K = in_features). The layout stores
// it by "layout rows" kk = 0..Kp-1, a permutation of the input rows padded to Kp = round_up(K, 8), and by
// output columns n = 0..Np-1 padded to Np = round_up(N, 4):
//
//   qweight  uint32 [Kp/8, Np]   word (r, n) holds the codes of layout rows 8r..8r+7 of column n, row 8r+j in
//                                bits [4j, 4j+4) (LSB first, no interleave).
//   meta     uint32 [Gq, Np]     one 32-bit word per (group, column), Gq = ceil(Kp / group):
//                                  kind Int:      bits 0..15 = fp16 scale, bits 16..23 = zero point (0..16)
//                                  kind Nf4/Fp4:  the fp32 bits of the block's absmax (already decoded)
//   perm     int32  [K] or empty layout row kk holds original input row perm[kk]; empty = identity.
//
//   Int:      ŵ[n, perm[kk]] = (code - zero) · scale   (code - zero exact in fp32, one rounding)
//   Nf4/Fp4:  ŵ[n, perm[kk]] = book[code] · absmax      (the bnb reader's single multiply)
//
// Why this shape (the hardware reason for each choice):
// - 8 consecutive K of one output column in one uint32: a thread loads 32 bits and gets 8 weights with a
//   shift and a mask each; all 8 share one group, so one meta word serves the whole word (group % 8 == 0).
// - Words of one word-row are contiguous along N: a warp reading 4 adjacent columns per thread with one
//   128-bit load (ld.global.v4) covers 512 contiguous bytes, i.e. 4 full 128-byte lines, the pattern HBM
//   serves at full bandwidth in the memory-bound decode regime. Np % 4 == 0 keeps every row 16-byte aligned.
// - The same words serve the transposed product dx = dy·Ŵ: a warp sweeps N along a word-row and reduces.
// - One meta word per (group, column): for GPTQ/AWQ the fp16 scale and the integer zero together (0.25 bit
//   per weight at group 128, what the source formats cost); for NF4 the fp32 absmax, decoded at repack time
//   exactly as the CPU reader does (dyn[q]·nested_absmax + offset), so the kernel never touches the nested
//   tables. We keep (q - z)·s instead of a precomputed q·s - z·s: q - z is exact in fp32, so the product has
//   the single rounding of the formats' readers and the repack stays bit-exact; the extra FADD per weight is
//   free in the memory-bound regime.
// - Act-order (GPTQ desc_act, a non-monotone g_idx): the rows are sorted by group once at repack time (stable,
//   so rows of one group keep their order) and the kernels gather x[:, perm] when they stage the activations
//   (forward) or scatter dx[:, perm] when they store (transposed). Groups are then contiguous runs of `group`
//   layout rows, so the per-word meta load stays; the alternative, a g_idx lookup per K in the kernel, costs a
//   scale load per weight and breaks the 8-weights-per-meta sharing. This is what ExLlamaV2 and vLLM's
//   Marlin/Machete do (REFERENCE A1.4). GPTQ's act-order g_idx puts exactly `group` rows in every group but the
//   last; a g_idx that does not is refused with a message.
// - NF4 blocks run over the flattened [N, K] weight; a block of B elements lies inside one row n when K % B ==
//   0 (all real Qwen shapes). Otherwise the layout group is gcd(K, B): every run of that many K in one row lies
//   inside one block (block boundaries are multiples of B, hence of the gcd), at the price of repeated meta
//   words. It must still be a multiple of 8.
// - Padding: rows K..Kp-1 and columns N..Np-1 dequantize to exactly +0 (Int: code = zero and scale 0 for pad
//   columns; Nf4/Fp4: the zero code / absmax 0), and the kernels also never read x or write y/dx beyond K, N.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/format/nf4_pack.h"

namespace qwenq {

struct PackedIntLinear;  // quant/int_checkpoint.h
struct Nf4Tensor;        // quant/nf4.h
enum class IntLayout;    // quant/int_checkpoint.h

enum class Q4Kind : uint8_t { Int, Nf4, Fp4 };

constexpr int kQ4Bits = 4;
constexpr int kQ4CodesPerWord = 8;  // K rows per qweight word
constexpr int kQ4RowPad = 8;        // Kp = round_up(K, 8)
constexpr int kQ4ColPad = 4;        // Np = round_up(N, 4): 16-byte rows for 128-bit loads
static_assert(kQ4Bits * kQ4CodesPerWord == 32, "one uint32 word holds 8 codes");
static_assert(sizeof(uint32_t) * kQ4ColPad == 16, "a padded word-row is a whole number of 128-bit loads");
static_assert(kQ4RowPad == kQ4CodesPerWord, "K is padded to whole words");

// Int meta word: fp16 scale in the low half, zero point in bits 16..23.
inline uint32_t q4_int_meta(uint16_t scale_f16, uint8_t zero) {
  return static_cast<uint32_t>(scale_f16) | (static_cast<uint32_t>(zero) << 16);
}
inline uint16_t q4_meta_scale_f16(uint32_t meta) { return static_cast<uint16_t>(meta & 0xFFFFu); }
inline uint32_t q4_meta_zero(uint32_t meta) { return (meta >> 16) & 0xFFu; }
inline uint32_t q4_float_meta(float absmax) {
  uint32_t u;
  std::memcpy(&u, &absmax, 4);
  return u;
}
inline float q4_meta_float(uint32_t meta) {
  float f;
  std::memcpy(&f, &meta, 4);
  return f;
}

// The layout's sizes for a weight [N, K], without building it (`qwen-qlora plan`, trainer/memory_plan.h):
//   layout group   Int: the format's group g, or Kp when one group spans K (G = ceil(K / g) == 1);
//                  Nf4/Fp4: gcd(K, blocksize)
//   qweight words  (Kp / 8)·Np          meta words  ceil(Kp / group)·Np          perm words  K with act-order, else 0
int64_t q4_int_layout_group(int64_t K, int64_t group_size);  // group_size -1 or >= K: one group
int64_t q4_nf4_layout_group(int64_t K, int64_t blocksize);
inline int64_t q4_padded_k(int64_t K) { return (K + kQ4RowPad - 1) / kQ4RowPad * kQ4RowPad; }
inline int64_t q4_padded_n(int64_t N) { return (N + kQ4ColPad - 1) / kQ4ColPad * kQ4ColPad; }
inline int64_t q4_qweight_words(int64_t N, int64_t K) { return q4_padded_k(K) / kQ4CodesPerWord * q4_padded_n(N); }
inline int64_t q4_meta_words(int64_t N, int64_t K, int64_t group) {
  return (q4_padded_k(K) + group - 1) / group * q4_padded_n(N);
}

// A non-owning view: host pointers for the CPU twin, device pointers for the CUDA kernels.
struct Q4View {
  Q4Kind kind = Q4Kind::Int;
  int64_t K = 0, N = 0;    // logical sizes
  int64_t Kp = 0, Np = 0;  // padded sizes
  int64_t group = 0;       // layout rows per group, a multiple of 8
  const uint32_t* qweight = nullptr;  // [Kp/8, Np]
  const uint32_t* meta = nullptr;     // [num_groups(), Np]
  const int32_t* perm = nullptr;      // [K] or null (identity)
  int64_t num_groups() const { return group > 0 ? (Kp + group - 1) / group : 0; }
};

// The owning host form the repack functions produce.
struct Q4Layout {
  Q4Kind kind = Q4Kind::Int;
  int64_t K = 0, N = 0, Kp = 0, Np = 0, group = 0;
  std::vector<uint32_t> qweight, meta;
  std::vector<int32_t> perm;  // empty = identity
  int64_t num_groups() const { return group > 0 ? (Kp + group - 1) / group : 0; }
  Q4View view() const {
    return Q4View{kind, K, N, Kp, Np, group, qweight.data(), meta.data(), perm.empty() ? nullptr : perm.data()};
  }
};

inline const char* q4_kind_name(Q4Kind kind) {
  return kind == Q4Kind::Int ? "int" : (kind == Q4Kind::Nf4 ? "nf4" : "fp4");
}

// Throws qwenq::Error naming `what` and the offending values unless the view is self-consistent (sizes,
// padding, group a multiple of 8, non-null pointers). Cheap: it does not read the arrays. Inline (like
// q4_dequant) so that kernels, which link only core, can call it.
inline void q4_check(const Q4View& w, const char* what) {
  QWENQ_CHECK(w.K > 0 && w.N > 0, what << ": empty weight K=" << w.K << " N=" << w.N);
  QWENQ_CHECK(w.Kp == (w.K + kQ4RowPad - 1) / kQ4RowPad * kQ4RowPad,
              what << ": Kp=" << w.Kp << " is not K=" << w.K << " rounded up to a multiple of " << kQ4RowPad);
  QWENQ_CHECK(w.Np == (w.N + kQ4ColPad - 1) / kQ4ColPad * kQ4ColPad,
              what << ": Np=" << w.Np << " is not N=" << w.N << " rounded up to a multiple of " << kQ4ColPad);
  QWENQ_CHECK(w.group > 0 && w.group % kQ4CodesPerWord == 0,
              what << ": group " << w.group << " is not a positive multiple of " << kQ4CodesPerWord);
  QWENQ_CHECK(w.qweight != nullptr && w.meta != nullptr, what << ": null qweight or meta pointer");
  QWENQ_CHECK(w.kind == Q4Kind::Int || w.kind == Q4Kind::Nf4 || w.kind == Q4Kind::Fp4,
              what << ": unknown Q4 kind " << static_cast<int>(w.kind));
}

// GPTQ v1/v2 (4-bit, incl. act-order g_idx) or AutoAWQ GEMM -> Q4. Throws for other bit widths, a group size
// that is not a multiple of 8 (unless one group spans K), or an act-order g_idx with unequal group sizes.
Q4Layout q4_from_int_linear(const PackedIntLinear& p);
// bitsandbytes NF4/FP4 of a weight [N, K] (t.n == N·K), with or without double quantization.
Q4Layout q4_from_nf4(const Nf4Tensor& t, int64_t N, int64_t K);
// Whether a weight has a Q4 form at all, without the repack: the checks above alone (bits, packed axes, act-order
// groups of equal sizes, layout groups of whole words), throwing the same errors. For a host to decide before an
// upload which device can run a model (trainer/gpu_support.h).
void q4_check_int_linear(const PackedIntLinear& p);
void q4_check_nf4(const Nf4Tensor& t, int64_t N, int64_t K);
// Whether q4_from_int_linear(p) has a permutation (perm, K entries): act-order g_idx, or rows stored sorted.
bool q4_int_has_perm(const PackedIntLinear& p);
// ŵ [N, K] fp32 (nn.Linear orientation), dropping the padding and undoing the permutation.
std::vector<float> q4_unpack(const Q4View& w);

// A Q4 form of a 4-bit weight for one product, cheap enough to make per call (the CPU's bf16 products of a 4-bit
// Linear, kernels/gemm_bf16.h): the words and meta q4_from_int_linear / q4_from_nf4 build, word for word, made by
// moving whole words instead of one code at a time. GPTQ v1/v2: the file's own words are Q4's (a borrowed pointer,
// no copy) and only the meta words [G, N] are built; AutoAWQ: its words transposed 8 x 8 nibbles at a time;
// NF4/FP4: each run of 8 codes of a row is 4 bytes of the file, one word with its nibble pairs swapped. Views
// `view.qweight` into the weight itself for GPTQ, so the weight must outlive it. Act-order GPTQ whose rows the loader
// sorted by group (int_linear_sort_inputs_by_group, as every loaded model's are) keeps them sorted, view.perm its perm
// (borrowed too). No form (view.qweight null) for act-order rows not sorted yet, other bit widths, K % 8 != 0,
// N % 4 != 0 or a layout group that is not a multiple of 8 (NF4: blocks that straddle rows): the caller dequantizes
// instead.
struct Q4Transient {
  Q4View view;  // qweight null: this weight has no transient form
  std::vector<uint32_t> words, meta;
  bool has_form() const { return view.qweight != nullptr; }
};
Q4Transient q4_transient_int_linear(const PackedIntLinear& p);
Q4Transient q4_transient_nf4(const Nf4Tensor& t, int64_t N, int64_t K);

// Seeded synthetic weights in the source formats, for tests and benchmarks (the caller includes
// quant/int_checkpoint.h / quant/nf4.h). Int: uniform random 4-bit codes and zero points (1..15, which GPTQ v1
// can store), fp16 scales; group -1 means one group. act_order: g_idx = (i / group)[invperm] for a random
// permutation, as GPTQ desc_act writes it. exact: scales in {1/4, 1/2, 1, 2}, so every product with a small
// integer activation and every partial sum of up to ~2^24 / (4·128) terms is exact in fp32.
// Nf4: random packed codes and absmax; with double quantization random dynamic-map indices, nested absmax and
// offset over bnb's map.
PackedIntLinear q4_synthetic_int_linear(IntLayout layout, int64_t K, int64_t N, int64_t group, bool act_order,
                                        uint64_t seed, bool exact = false);
Nf4Tensor q4_synthetic_nf4(int64_t N, int64_t K, bool fp4, int64_t blocksize, bool double_quant, uint64_t seed);

// Scalar dequantization of one code (0..15) with its meta word, exactly as q4_unpack and the kernels compute
// it: fp32, (T(code) - zero) then one multiply.
inline float q4_dequant(Q4Kind kind, uint32_t code, uint32_t meta) {
  if (kind == Q4Kind::Int) {
    return (static_cast<float>(code) - static_cast<float>(q4_meta_zero(meta))) * f16_to_f32(q4_meta_scale_f16(meta));
  }
  return (kind == Q4Kind::Nf4 ? kNf4Code : kFp4Code)[code & 15u] * q4_meta_float(meta);
}

}  // namespace qwenq
