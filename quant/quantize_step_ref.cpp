// CPU twins of quant/quantize_step.cu (contract: quant/quantize_step.h): the conversion of a stored weight to a
// padded fp32 matrix, RTN into caller buffers (quant/grid.h's grid_for_group and quantize_value, call for call as
// find_grid and quantize_rtn make them) and the first NF4/FP4 level (quant/nf4.h's nf4_quantize_blocks).
// Parallel over rows (conversion, RTN) with disjoint outputs; the non-finite scan names the first bad element
// (parallel_find_first), so results and messages do not depend on the thread count.
#include "quant/quantize_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "quant/nf4.h"

namespace qwenq {

void weight_to_f32_check_args(DType dtype, int64_t N0, int64_t K0, int64_t N, int64_t K) {
  QWENQ_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
              "weight_to_f32: weight dtype " << dtype_name(dtype) << " is not F32, BF16 or F16");
  QWENQ_CHECK(N0 > 0 && K0 > 0 && N >= N0 && K >= K0,
              "weight_to_f32: cannot pad a [" << N0 << ", " << K0 << "] weight to [" << N << ", " << K << "]");
}

void rtn_quantize_check_args(int64_t N, int64_t K, int bits, int64_t group_size) {
  QWENQ_CHECK(N > 0 && K > 0, "rtn_quantize: empty weight [" << N << ", " << K << "]");
  QWENQ_CHECK(bits >= 2 && bits <= 8, "bits must be in 2..8, got " << bits);
  QWENQ_CHECK(group_size == -1 || group_size > 0, "group size must be positive or -1, got " << group_size);
}

void nf4_quantize_blocks_check_args(int64_t n, int64_t blocksize) {
  Nf4Options opts;
  opts.blocksize = blocksize;
  nf4_check_options(opts, "nf4_quantize");
  QWENQ_CHECK(n > 0, "nf4_quantize: nothing to quantize (n=" << n << ")");
}

void throw_rtn_nonfinite(int64_t i, int64_t K, float value) {
  QWENQ_FAIL("rtn_quantize: weight [" << i / K << ", " << i % K << "] is " << value
                                      << "; quantization needs finite weights");
}

void weight_to_f32_ref(DType dtype, const void* src, int64_t N0, int64_t K0, int64_t N, int64_t K, float* W) {
  weight_to_f32_check_args(dtype, N0, K0, N, K);
  const size_t esize = dtype_size(dtype);
  parallel_for(N, std::max<int64_t>(1, (int64_t{1} << 16) / K), [&](int64_t n0, int64_t n1) {  // rows are disjoint
    for (int64_t n = n0; n < n1; ++n) {
      float* row = W + n * K;
      if (n < N0) to_f32(dtype, static_cast<const uint8_t*>(src) + n * K0 * esize, row, static_cast<size_t>(K0));
      std::fill(row + (n < N0 ? K0 : 0), row + K, 0.0f);
    }
  });
}

void rtn_quantize_ref(const float* W, int64_t N, int64_t K, int bits, int64_t group_size, bool sym, GridRule rule,
                      float* scale, uint8_t* zero, uint8_t* codes) {
  rtn_quantize_check_args(N, K, bits, group_size);
  const int64_t bad = first_nonfinite(W, N * K);
  if (bad >= 0) throw_rtn_nonfinite(bad, K, W[bad]);
  const int64_t G = group_size == -1 ? K : group_size, groups = (K + G - 1) / G;
  const int maxq = (1 << bits) - 1;
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * G, len = std::min(G, K - k0);
        grid_for_group(W + n * K + k0, len, 1, bits, sym, rule, &scale[g * N + n], &zero[g * N + n]);
      }
      for (int64_t k = 0; k < K; ++k)
        codes[k * N + n] = quantize_value(W[n * K + k], scale[k / G * N + n], zero[k / G * N + n], maxq);
    }
  });
}

void nf4_quantize_blocks_ref(const float* w, int64_t n, int64_t blocksize, bool fp4, uint8_t* packed, float* absmax) {
  nf4_quantize_blocks(w, n, blocksize, fp4, packed, absmax);
}

}  // namespace qwenq
