// The CPU twins of kernels/dora.h. One rounding per float operation (this file is compiled with -ffp-contract=off),
// so every elementwise output is the CUDA twin's bits; the row norms sum k ascending and dm sums t ascending in
// double, trainer/lora_model.cpp's orders. Parallel over output rows j (row norms, split grad) or rows t.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/dora.h"

namespace qwenq {

namespace {

bool dense_dtype_ok(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// The i-th name of a comma-separated list ("m, n, z").
std::string nth_name(const char* names, size_t i) {
  std::string all(names);
  size_t begin = 0;
  for (size_t k = 0; k < i; ++k) {
    const size_t comma = all.find(',', begin);
    if (comma == std::string::npos) return "pointer " + std::to_string(i);
    begin = comma + 1;
  }
  while (begin < all.size() && all[begin] == ' ') ++begin;
  const size_t end = all.find(',', begin);
  return all.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

}  // namespace

void dora_row_norms_check(const char* name, const DoraBaseWeight& W, int64_t N, int64_t K, const float* A,
                          const float* B, int64_t r, const float* n) {
  QWENQ_CHECK(N >= 1 && K >= 1 && r >= 1, name << ": bad shape N=" << N << " K=" << K << " r=" << r);
  QWENQ_CHECK(A != nullptr && B != nullptr && n != nullptr,
              name << ": null pointer (" << (A == nullptr ? "A" : B == nullptr ? "B" : "n") << ")");
  if (W.q4 != nullptr) {
    q4_check(*W.q4, name);
    QWENQ_CHECK(W.q4->N == N && W.q4->K == K, name << ": the Q4 weight is [N=" << W.q4->N << ", K=" << W.q4->K
                                                   << "], the call's [N=" << N << ", K=" << K << "]");
  } else {
    QWENQ_CHECK(W.dense != nullptr, name << ": null pointer (the dense weight; no Q4 view either)");
    QWENQ_CHECK(dense_dtype_ok(W.dtype),
                name << ": weight dtype " << dtype_name(W.dtype) << " is not supported (F32, BF16 or F16)");
  }
}

void dora_rows_check(const char* name, int64_t rows, int64_t N, const char* names,
                     std::initializer_list<const void*> ptrs) {
  QWENQ_CHECK(rows >= 1 && N >= 1, name << ": bad shape rows=" << rows << " N=" << N);
  size_t i = 0;
  for (const void* p : ptrs) {
    QWENQ_CHECK(p != nullptr, name << ": null pointer (" << nth_name(names, i) << ")");
    ++i;
  }
}

void dora_row_norms_ref(const DoraBaseWeight& W, int64_t N, int64_t K, const float* A, const float* B, int64_t r,
                        float s, float* n) {
  dora_row_norms_check("dora_row_norms_ref", W, N, K, A, B, r, n);
  const Q4View* q = W.q4;
  const size_t esize = q ? 0 : dtype_size(W.dtype);
  parallel_for(N, 16, [&](int64_t j0, int64_t j1) {
    std::vector<float> row(static_cast<size_t>(K)), ba(static_cast<size_t>(K));
    for (int64_t j = j0; j < j1; ++j) {
      if (q == nullptr) {
        to_f32(W.dtype, static_cast<const uint8_t*>(W.dense) + static_cast<size_t>(j * K) * esize, row.data(),
               static_cast<size_t>(K));
      } else {  // q4_dequant of every layout row kk < K of column j, stored at its input row perm[kk]
        for (int64_t kk = 0; kk < K; ++kk) {
          const int64_t w = kk / kQ4CodesPerWord;
          const uint32_t word = q->qweight[w * q->Np + j];
          const uint32_t meta = q->meta[(kk / q->group) * q->Np + j];
          const uint32_t code = (word >> (kQ4Bits * (kk % kQ4CodesPerWord))) & 15u;
          row[static_cast<size_t>(q->perm ? q->perm[kk] : kk)] = q4_dequant(q->kind, code, meta);
        }
      }
      for (int64_t k = 0; k < K; ++k) ba[k] = 0.f;
      for (int64_t i = 0; i < r; ++i) {
        const float b = B[j * r + i];
        const float* a = A + i * K;
        for (int64_t k = 0; k < K; ++k) ba[k] += b * a[k];
      }
      double ss = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double e = row[k] + s * ba[k];  // fp32: s·ba, then + ŵ
        ss += e * e;
      }
      n[j] = static_cast<float>(std::sqrt(ss));
    }
  });
}

void dora_gain_ref(const float* m, const float* n, int64_t N, float* g) {
  const char* name = "dora_gain_ref";
  QWENQ_CHECK(N >= 1, name << ": bad size N=" << N);
  QWENQ_CHECK(m != nullptr && n != nullptr && g != nullptr,
              name << ": null pointer (" << (m == nullptr ? "m" : n == nullptr ? "n" : "g") << ")");
  for (int64_t j = 0; j < N; ++j) g[j] = m[j] / n[j];
}

void dora_scale_rows_ref(float* y, int64_t rows, int64_t N, const float* g, const void* bias, DType bias_dtype) {
  const char* name = "dora_scale_rows_ref";
  dora_rows_check(name, rows, N, "y, g", {y, g});
  QWENQ_CHECK(dense_dtype_ok(bias_dtype),
              name << ": bias dtype " << dtype_name(bias_dtype) << " is not supported (F32, BF16 or F16)");
  std::vector<float> b;
  if (bias != nullptr) {
    b.resize(static_cast<size_t>(N));
    to_f32(bias_dtype, bias, b.data(), b.size());
  }
  parallel_for(rows, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* yt = y + t * N;
      if (b.empty()) {
        for (int64_t j = 0; j < N; ++j) yt[j] = g[j] * yt[j];
      } else {
        for (int64_t j = 0; j < N; ++j) yt[j] = g[j] * yt[j] + (1.f - g[j]) * b[j];
      }
    }
  });
}

void dora_combine_ref(const float* m, const float* n, const float* z, const float* v, int64_t rows, int64_t N,
                      float* y) {
  dora_rows_check("dora_combine_ref", rows, N, "m, n, z, v, y", {m, n, z, v, y});
  std::vector<float> g(static_cast<size_t>(N));
  for (int64_t j = 0; j < N; ++j) g[j] = m[j] / n[j];
  parallel_for(rows, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t j = 0; j < N; ++j) y[t * N + j] += (g[j] - 1.f) * z[t * N + j] + g[j] * v[t * N + j];
    }
  });
}

void dora_split_grad_ref(const float* m, const float* n, const float* z, const float* v, const float* dy,
                         int64_t rows, int64_t N, float* dm, float* dz, float* dv) {
  dora_rows_check("dora_split_grad_ref", rows, N, "m, n, z, v, dy, dm, dz, dv", {m, n, z, v, dy, dm, dz, dv});
  // Columns in parallel, each column's sum over t ascending (the trainer's order, whatever the chunks).
  parallel_for(N, 64, [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    std::vector<float> g(static_cast<size_t>(w));
    std::vector<double> sum(static_cast<size_t>(w), 0.0);
    for (int64_t j = j0; j < j1; ++j) g[j - j0] = m[j] / n[j];
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t i = t * N + j;
        const float gj = g[j - j0];
        sum[j - j0] += static_cast<double>(dy[i]) * (z[i] + v[i]);
        dz[i] = (gj - 1.f) * dy[i];
        dv[i] = gj * dy[i];
      }
    }
    for (int64_t j = j0; j < j1; ++j) dm[j] += static_cast<float>(sum[j - j0] / n[j]);
  });
}

// The CUDA launchers' partition (kernels/dora.cu), host code so the memory plan can count the scratch.
int64_t dora_row_norm_slices(int64_t N, int64_t K) {
  const int64_t tiles = (N + kDoraNormTileRows - 1) / kDoraNormTileRows;
  const int64_t chunks = (K + kDoraNormChunk - 1) / kDoraNormChunk;
  int64_t slices = std::min((kDoraNormTargetBlocks + tiles - 1) / tiles,
                            (chunks + kDoraNormMinChunksPerSlice - 1) / kDoraNormMinChunksPerSlice);
  slices = std::max<int64_t>(1, std::min(slices, kDoraNormMaxSlices));
  const int64_t per = (chunks + slices - 1) / slices;
  return (chunks + per - 1) / per;  // no empty slice
}

int64_t dora_split_grad_slices(int64_t rows, int64_t N) {
  (void)N;
  return std::max<int64_t>(1, std::min(kDoraSplitMaxSlices, (rows + kDoraSplitMinSliceRows - 1) / kDoraSplitMinSliceRows));
}

uint64_t dora_row_norms_scratch_bytes(int64_t N, int64_t K) {
  const int64_t slices = dora_row_norm_slices(N, K);
  return slices > 1 ? static_cast<uint64_t>(slices * N) * sizeof(double) : 0;
}

uint64_t dora_split_grad_scratch_bytes(int64_t rows, int64_t N) {
  return static_cast<uint64_t>(dora_split_grad_slices(rows, N) * N) * sizeof(double);
}

}  // namespace qwenq
