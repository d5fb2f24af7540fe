// CPU twins of the fused dequant-matmul (kernels/qgemm.h): the specification the CUDA kernels are tested
// against. Simplest correct code: dequantize one output column (forward) or one layout row (transposed) of Ŵ
// with q4_dequant into a small buffer, then plain fp32 dot products in increasing index order.
#include "kernels/qgemm.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/bf16_split.h"

namespace qwenq {
namespace {

void check_args(const Q4View& w, const void* a, DType dtype, int64_t M, const float* out, const char* what) {
  q4_check(w, what);
  QWENQ_CHECK(M >= 1, what << ": M=" << M << " must be at least 1");
  QWENQ_CHECK(a != nullptr && out != nullptr, what << ": null activation or output pointer");
  QWENQ_CHECK(dtype == DType::F32 || dtype == DType::BF16,
              what << ": activations must be F32 or BF16, not " << dtype_name(dtype));
}

float load_f32(const void* a, DType dtype, int64_t i) {
  return dtype == DType::F32 ? static_cast<const float*>(a)[i] : bf16_to_f32(static_cast<const uint16_t*>(a)[i]);
}

}  // namespace

void qgemm_int4_ref(const Q4View& w, const void* x, DType x_dtype, int64_t M, float* y) {
  check_args(w, x, x_dtype, M, y, "qgemm_int4_ref");
  const int64_t K = w.K, N = w.N;
  // x gathered into layout-row order once: xp[m, kk] = x[m, perm[kk]].
  std::vector<float> xp(M * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t kk = 0; kk < K; ++kk) xp[m * K + kk] = load_f32(x, x_dtype, m * K + (w.perm ? w.perm[kk] : kk));
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> col(K);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t kk = 0; kk < K; ++kk) {
        const uint32_t word = w.qweight[kk / kQ4CodesPerWord * w.Np + n];
        const uint32_t code = (word >> (kQ4Bits * (kk % kQ4CodesPerWord))) & 15u;
        col[kk] = q4_dequant(w.kind, code, w.meta[kk / w.group * w.Np + n]);
      }
      for (int64_t m = 0; m < M; ++m) {
        float s = 0.0f;
        for (int64_t kk = 0; kk < K; ++kk) s += xp[m * K + kk] * col[kk];
        y[m * N + n] = s;
      }
    }
  });
}

void qgemm_int4_t_ref(const Q4View& w, const void* dy, DType dy_dtype, int64_t M, float* dx) {
  check_args(w, dy, dy_dtype, M, dx, "qgemm_int4_t_ref");
  const int64_t K = w.K, N = w.N;
  std::vector<float> g(M * N);
  for (int64_t i = 0; i < M * N; ++i) g[i] = load_f32(dy, dy_dtype, i);
  parallel_for(K, 16, [&](int64_t k0, int64_t k1) {
    std::vector<float> row(N);
    for (int64_t kk = k0; kk < k1; ++kk) {
      const uint32_t* words = w.qweight + kk / kQ4CodesPerWord * w.Np;
      const uint32_t* meta = w.meta + kk / w.group * w.Np;
      const int shift = kQ4Bits * (kk % kQ4CodesPerWord);
      for (int64_t n = 0; n < N; ++n) row[n] = q4_dequant(w.kind, (words[n] >> shift) & 15u, meta[n]);
      const int64_t k = w.perm ? w.perm[kk] : kk;
      for (int64_t m = 0; m < M; ++m) {
        float s = 0.0f;
        for (int64_t n = 0; n < N; ++n) s += g[m * N + n] * row[n];
        dx[m * K + k] = s;
      }
    }
  });
}

void q4_dequantize_bf16_ref(const Q4View& w, uint16_t* out) {
  q4_check(w, "q4_dequantize_bf16_ref");
  QWENQ_CHECK(out != nullptr, "q4_dequantize_bf16_ref: null output");
  parallel_for(w.N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t kk = 0; kk < w.Kp; ++kk) {
        const uint32_t word = w.qweight[kk / kQ4CodesPerWord * w.Np + n];
        const uint32_t code = (word >> (kQ4Bits * (kk % kQ4CodesPerWord))) & 15u;
        out[n * w.Kp + kk] = f32_to_bf16(q4_dequant(w.kind, code, w.meta[kk / w.group * w.Np + n]));
      }
  });
}

void qgemm_int4_dense_lowrank_ref(const Q4View& w, const uint16_t* xa, const Q4LowRank& lr, int64_t M, float* y) {
  const char* fn = "qgemm_int4_dense_lowrank_ref";
  q4_check(w, fn);
  QWENQ_CHECK(M >= 1 && xa != nullptr && y != nullptr, fn << ": M=" << M << " must be at least 1 and no pointer null");
  qgemm_lowrank_check(w, lr.ra, lr.rb, lr.B, /*transposed=*/false, fn);
  const int64_t ld = w.Kp + lr.ra;
  std::vector<uint16_t> wb(static_cast<size_t>(w.N * w.Kp));
  q4_dequantize_bf16_ref(w, wb.data());
  parallel_for(w.N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < M; ++m) {
        const uint16_t* xr = xa + m * ld;
        float acc = 0.0f;
        for (int64_t kk = 0; kk < w.Kp; ++kk) acc += bf16_to_f32(xr[kk]) * bf16_to_f32(wb[n * w.Kp + kk]);
        for (int64_t j = 0; j < lr.rb; ++j) acc += bf16_to_f32(xr[w.Kp + j]) * bf16_round(lr.B[n * lr.rb + j]);
        y[m * w.N + n] = acc;
      }
  });
}

void qgemm_int4_t_dense_lowrank_ref(const Q4View& w, const uint16_t* dya, const Q4LowRankT& lr, int64_t M, float* dx,
                                    bool accumulate) {
  const char* fn = "qgemm_int4_t_dense_lowrank_ref";
  q4_check(w, fn);
  QWENQ_CHECK(M >= 1 && dya != nullptr && dx != nullptr, fn << ": M=" << M << " must be at least 1 and no pointer null");
  qgemm_lowrank_check(w, lr.ra, lr.rb, lr.A, /*transposed=*/true, fn);
  const int64_t ld = w.N + lr.ra, K = w.K;
  std::vector<uint16_t> wb(static_cast<size_t>(w.N * K));
  q4_dequantize_bf16_ref(w, wb.data());
  std::vector<float> ab(static_cast<size_t>(lr.rb * K));
  for (size_t i = 0; i < ab.size(); ++i) ab[i] = bf16_round(lr.A[i]);
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    std::vector<float> acc(static_cast<size_t>(K));
    for (int64_t m = m0; m < m1; ++m) {
      const uint16_t* dr = dya + m * ld;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t n = 0; n < w.N; ++n) {
        const float a = bf16_to_f32(dr[n]);
        for (int64_t k = 0; k < K; ++k) acc[k] += a * bf16_to_f32(wb[n * K + k]);
      }
      for (int64_t j = 0; j < lr.rb; ++j) {
        const float a = bf16_to_f32(dr[w.N + j]);
        for (int64_t k = 0; k < K; ++k) acc[k] += a * ab[j * K + k];
      }
      for (int64_t k = 0; k < K; ++k) dx[m * K + k] = accumulate ? dx[m * K + k] + acc[k] : acc[k];
    }
  });
}

void qgemm_split_x3_ref(const float* x, int64_t M, int64_t K, const int32_t* perm, int64_t width, uint16_t* out) {
  QWENQ_CHECK(x != nullptr && out != nullptr, "qgemm_split_x3_ref: null input or output");
  QWENQ_CHECK(M >= 1 && K >= 1 && width >= K,
              "qgemm_split_x3_ref: M=" << M << " K=" << K << " width=" << width << " (need M, K >= 1, width >= K)");
  for (int64_t kk = 0; perm != nullptr && kk < K; ++kk)
    QWENQ_CHECK(perm[kk] >= 0 && perm[kk] < K, "qgemm_split_x3_ref: perm[" << kk << "]=" << perm[kk]
                                                   << " is outside [0, " << K << ")");
  const int64_t plane = M * width;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t kk = 0; kk < width; ++kk) {
      uint16_t pieces[3] = {0, 0, 0};
      if (kk < K) split_bf16x3(x[m * K + (perm ? perm[kk] : kk)], pieces);
      for (int p = 0; p < 3; ++p) out[p * plane + m * width + kk] = pieces[p];
    }
}

}  // namespace qwenq
