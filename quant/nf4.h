// Blockwise 4-bit quantization as bitsandbytes does it (QLoRA's NF4; REFERENCE A3.2-A3.3), with the layout
// of quant/format/nf4_pack.h.
//
//   w flattened (row-major), blocks of B = blocksize elements, the last one possibly shorter.
//   absmax_b = max |w| over block b (exact, float32).
//   x = clamp(w · (1/absmax_b), -1, 1) in float32: bnb multiplies by the float32 reciprocal (CUDA kernel and
//       torch fallback alike); when 1/absmax_b overflows (absmax_b subnormal) we divide instead.
//   code = nearest entry of the code book (nf4_code_of / fp4_code_of: midpoints, ties to the lower code).
//   An all-zero block has absmax 0: bnb scales 0·inf = NaN there and its backends disagree on the code; we
//   store the zero code (NF4 7, FP4 0), which every reader turns back into 0 · 0 = +0.
// Double quantization (bnb compress_statistics=True, nested blocks of 256):
//   offset = mean(absmax), accumulated in double and rounded once to float32 (bnb takes torch's float32
//            mean, which can differ in the last bit; the file stores the offset, so readers agree with us).
//   v = absmax - offset (float32), quantized blockwise like above with the 8-bit dynamic map: nested_absmax =
//       max |v| per 256, x = clamp(v · (1/nested_absmax), -1, 1), absmax_q = nearest map index (ties lower).
//   The 4-bit codes are computed from the exact absmax, before the scales are compressed, as bnb does.
// Dequantization (bnb dequantize_4bit / _gemm_4bit_default_impl), float32 throughout, two roundings each:
//   absmax_i = dyn[absmax_q_i] · nested_absmax[i / 256] + offset   (with DQ; the product is rounded first)
//   ŵ = code[nibble] · absmax_block
// Overhead: 32/B bits per weight without DQ; 8/B + 32/(B·256) (+ 32 for the offset) with it: 0.127 at B = 64.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qwenq {

struct Nf4Options {
  bool fp4 = false;               // FP4 code book instead of NF4
  int64_t blocksize = 64;         // a power of two in [32, 4096]
  bool double_quant = false;      // bnb_4bit_use_double_quant
  int64_t nested_blocksize = 256; // a power of two in [64, 4096] (bnb uses 256)
};

struct Nf4Tensor {
  bool fp4 = false;
  int64_t blocksize = 64;
  int64_t n = 0;                        // number of weights
  std::vector<uint8_t> packed;          // [ceil(n/2)], high nibble = even element
  std::vector<float> absmax;            // [nblocks] without double quantization
  bool double_quant = false;
  std::vector<uint8_t> absmax_q;        // [nblocks] with double quantization: dynamic-map indices
  std::vector<float> nested_absmax;     // [ceil(nblocks / nested_blocksize)]
  std::vector<float> nested_code;       // [256] the map absmax_q indexes (bnb's nested_quant_map)
  float nested_offset = 0.0f;
  int64_t nested_blocksize = 256;

  int64_t num_blocks() const { return (n + blocksize - 1) / blocksize; }
  int64_t num_nested_blocks() const { return (num_blocks() + nested_blocksize - 1) / nested_blocksize; }
  const char* quant_type() const { return fp4 ? "fp4" : "nf4"; }
};

// Throws naming `what` unless the options are ones bnb can read.
void nf4_check_options(const Nf4Options& opts, const std::string& what);
// Throws naming `what` unless every vector has the size n, blocksize and the flags imply.
void nf4_check(const Nf4Tensor& t, const std::string& what);

// Quantizes n > 0 finite weights (throws naming the first non-finite index). The two halves below, in turn.
Nf4Tensor nf4_quantize(const float* w, int64_t n, const Nf4Options& opts = {});
// The first level into caller buffers: absmax [ceil(n/blocksize)] and packed codes [ceil(n/2)] (the CPU twin of
// quant/quantize_step.h's nf4_quantize_blocks_cuda). Same checks and messages as nf4_quantize.
void nf4_quantize_blocks(const float* w, int64_t n, int64_t blocksize, bool fp4, uint8_t* packed, float* absmax);
// "nf4_quantize: weight i is v; 4-bit quantization needs finite weights" (both twins' message).
[[noreturn]] void throw_nf4_nonfinite(int64_t i, float value);
// The tensor from that first level (moved in), with the double quantization of the absmax when opts asks for it.
Nf4Tensor nf4_from_blocks(const Nf4Options& opts, int64_t n, std::vector<uint8_t> packed, std::vector<float> absmax);
// The first-level scales a reader reconstructs, [nblocks].
std::vector<float> nf4_block_absmax(const Nf4Tensor& t);
// ŵ, [n], float32, exactly as bnb computes it before casting to the compute dtype.
std::vector<float> nf4_dequantize(const Nf4Tensor& t);
void nf4_dequantize_into(const Nf4Tensor& t, float* out);  // out [t.n]

}  // namespace qwenq
