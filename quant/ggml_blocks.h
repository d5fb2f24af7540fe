// llama.cpp's (ggml's) block formats: rows of fp32 values <-> the bytes a GGUF tensor stores.
//
// Quantization (what `convert_hf_to_gguf.py --outtype q8_0` and `llama-quantize ... Q4_0|Q4_1` compute without an
// importance matrix; bit-exact with gguf-py's numpy twins, tests/oracle/test_gguf_oracle.py), per block of 32:
//   Q8_0: d = max|x| / 127, q = roundf(x / d) (half away from zero)    x ≈ d q            (fp16 d, 32 x int8)
//   Q4_0: m = the x of largest |x| (first on ties), d = m / -8,
//         q = min(15, trunc(x / d + 8.5)) computed in double             x ≈ d (q - 8)      (fp16 d, 16 bytes)
//   Q4_1: d = (max - min) / 15, q = min(15, trunc((x - min) / d + 0.5))  x ≈ d q + min      (fp16 d, fp16 min, 16 bytes)
// where 1/d is taken in fp32 (0 when d = 0) and multiplied, as ggml does; 4-bit codes of values j and j + 16 share
// byte j (j in the low nibble). Q4_0's rounding is computed in double: ggml's C compiles x*id + 8.5f to one
// fused multiply-add where the compiler contracts it, which double reproduces (gguf-py does the same).
//
// Q5_0, Q5_1, the k-quants Q2_K ... Q6_K (256-value super-blocks; llama-quantize's Q4_K_M / Q5_K_M / Q6_K files are
// mostly these) and IQ4_NL / IQ4_XS are quantized by quant/ggml_kquants.h (Q2_K, Q3_K and the IQ4 types also
// dequantized there) and the others dequantized here:
//   Q5_0: x = d (q - 16), q = 4 low bits | bit j of qh << 4;   Q5_1: x = d q + m
//   Q4_K: 8 sub-blocks of 32, 6-bit scale s_j and min m_j packed in 12 bytes, x = d s_j q - dmin m_j
//   Q5_K: as Q4_K with a fifth bit per value in qh[32]
//   Q6_K: 16 sub-blocks of 16, int8 scale each, x = d s_j (q - 32), q = 4 bits of ql | 2 bits of qh << 4
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/gguf.h"

namespace qwenq {

// True for the types quantize_ggml_row writes and dequantize_ggml_row reads (the same set): F32, F16, BF16, Q8_0,
// Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS (the 5-bit, k-quant and IQ4 quantizers:
// quant/ggml_kquants.h).
bool ggml_type_supported(GgmlType t);

// x[n] -> out (ggml_row_bytes(t, n) bytes); n a multiple of the type's block size. `importance` (n values, or null):
// an importance matrix's row for this tensor (llama-imatrix's E[x_j²] of column j's input; quant/ggml_imatrix.h),
// used as ggml_quantize_chunk uses it (quant/ggml_kquants.h); Q8_0 and the float types ignore it.
void quantize_ggml_row(GgmlType t, const float* x, int64_t n, uint8_t* out, const float* importance = nullptr);
// The values ggml's dequantize_row_* computes for n values stored in `in`.
void dequantize_ggml_row(GgmlType t, const uint8_t* in, int64_t n, float* out);

// A whole [rows, n] matrix, rows quantized in parallel (importance: n values shared by every row, or null).
std::vector<uint8_t> quantize_ggml(GgmlType t, const float* x, int64_t rows, int64_t n,
                                   const float* importance = nullptr);
// A whole tensor's values (numel of it), rows in parallel.
std::vector<float> dequantize_ggml(const GgufTensor& t);

// Row r of a [heads * D, K] rotate-half weight is stored at row rope_interleaved_row(r, D) of the interleaved one.
inline int64_t rope_interleaved_row(int64_t r, int64_t D) {
  const int64_t h = r / D, i = r % D;
  return h * D + (i < D / 2 ? 2 * i : 2 * (i - D / 2) + 1);
}

// A Linear weight [N, K] stored as N ggml rows of K values in a mapped GGUF file. `rope_head_dim` D > 0 (the q and k
// of llama.cpp's "llama" architecture) means the rows of each head of D rows hold the RoPE pairs interleaved
// (2i, 2i+1); reading puts them back in rotate-half order (i, D/2 + i).
struct GgmlLinear {
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t N = 0, K = 0;
  int64_t rope_head_dim = 0;
  // The stored row that holds Hugging Face row r.
  int64_t stored_row(int64_t r) const { return rope_head_dim > 0 ? rope_interleaved_row(r, rope_head_dim) : r; }
};
// Row r (Hugging Face order) of w dequantized, for every r in parallel: sink(r, values[K]) (values valid during the
// call), for writers that convert row by row instead of holding the fp32 matrix.
void dequantize_ggml_rows(const GgmlLinear& w, const std::function<void(int64_t, const float*)>& sink);
// The fp32 [N, K] values in Hugging Face row order.
std::vector<float> dequantize_ggml_linear(const GgmlLinear& w);
void dequantize_ggml_linear_into(const GgmlLinear& w, float* out);  // out [N·K]
}  // namespace qwenq
