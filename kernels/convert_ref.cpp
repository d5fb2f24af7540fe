// CPU twins of kernels/convert.cu (formulas in convert.h): plain loops over core/dtype.h's conversions, which
// the CUDA kernels reproduce bit for bit.
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/convert.h"

namespace qwenq {

namespace {

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

}  // namespace

void f32_to_bf16_ref(const float* x, int64_t n, uint16_t* y) {
  QWENQ_CHECK(n >= 0, "f32_to_bf16_ref: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "f32_to_bf16_ref: null pointer");
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = f32_to_bf16(x[i]);
  });
}

void f32_to_bf16_strided_ref(const float* x, int64_t rows, int64_t cols, int64_t padded, float scale, uint16_t* y,
                             int64_t ld) {
  QWENQ_CHECK(rows >= 0 && cols >= 0 && padded >= cols && ld >= padded,
              "f32_to_bf16_strided_ref: bad shape rows=" << rows << " cols=" << cols << " padded=" << padded
                                                         << " ld=" << ld);
  if (rows == 0 || padded == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "f32_to_bf16_strided_ref: null pointer");
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float v = x[r * cols + c];
        y[r * ld + c] = f32_to_bf16(v != v ? v : scale * v);  // a NaN as itself (the CUDA twin's rule)
      }
      std::fill(y + r * ld + cols, y + r * ld + padded, uint16_t{0});
    }
  });
}

void bf16_to_f32_ref(const uint16_t* x, int64_t n, float* y) {
  QWENQ_CHECK(n >= 0, "bf16_to_f32_ref: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "bf16_to_f32_ref: null pointer");
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = bf16_to_f32(x[i]);
  });
}

void embedding_gather_ref(const void* table, DType dtype, int64_t V, int64_t C, const int32_t* tokens, int64_t T,
                          float* out) {
  QWENQ_CHECK(V > 0 && C > 0 && T >= 0, "embedding_gather_ref: bad shape V=" << V << " C=" << C << " T=" << T);
  QWENQ_CHECK(is_float_dtype(dtype),
              "embedding_gather_ref: table dtype " << dtype_name(dtype) << " is not supported (F32, BF16 or F16)");
  if (T == 0) return;
  QWENQ_CHECK(table != nullptr && tokens != nullptr && out != nullptr, "embedding_gather_ref: null pointer");
  check_token_ids(tokens, T, V);
  const size_t row_bytes = static_cast<size_t>(C) * dtype_size(dtype);
  for (int64_t t = 0; t < T; ++t) {
    to_f32(dtype, static_cast<const char*>(table) + row_bytes * tokens[t], out + t * C, static_cast<size_t>(C));
  }
}

void check_token_ids(const int32_t* tokens, int64_t T, int64_t V) {
  for (int64_t t = 0; t < T; ++t) {
    QWENQ_CHECK(tokens[t] >= 0 && tokens[t] < V,
                "token id " << tokens[t] << " at position " << t << " is outside the vocabulary [0, " << V << ")");
  }
}

void add_inplace_ref(float* y, const float* x, int64_t n) {
  QWENQ_CHECK(n >= 0, "add_inplace_ref: negative size " << n);
  if (n == 0) return;
  QWENQ_CHECK(x != nullptr && y != nullptr, "add_inplace_ref: null pointer");
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void store_row_ref(const float* x, int64_t n, const int32_t* row, int64_t rows, void* cache, DType cache_dtype) {
  QWENQ_CHECK(n >= 0 && rows > 0, "store_row_ref: bad shape n=" << n << " rows=" << rows);
  QWENQ_CHECK(cache_dtype == DType::F32 || cache_dtype == DType::BF16,
              "store_row_ref: cache dtype " << dtype_name(cache_dtype) << " is not supported (F32 or BF16)");
  QWENQ_CHECK(x != nullptr && row != nullptr && cache != nullptr, "store_row_ref: null pointer");
  QWENQ_CHECK(*row >= 0 && *row < rows, "store_row_ref: row " << *row << " is outside [0, " << rows << ")");
  if (cache_dtype == DType::F32) {
    std::copy(x, x + n, static_cast<float*>(cache) + *row * n);
  } else {
    f32_to_bf16_ref(x, n, static_cast<uint16_t*>(cache) + *row * n);
  }
}

void add_bias_rows_ref(float* y, int64_t rows, int64_t N, const void* bias, DType bias_dtype) {
  QWENQ_CHECK(rows >= 0 && N > 0, "add_bias_rows_ref: bad shape rows=" << rows << " N=" << N);
  QWENQ_CHECK(is_float_dtype(bias_dtype),
              "add_bias_rows_ref: bias dtype " << dtype_name(bias_dtype) << " is not supported (F32, BF16 or F16)");
  if (rows == 0) return;
  QWENQ_CHECK(y != nullptr && bias != nullptr, "add_bias_rows_ref: null pointer");
  std::vector<float> b(static_cast<size_t>(N));
  to_f32(bias_dtype, bias, b.data(), b.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t n = 0; n < N; ++n) y[r * N + n] += b[n];
  }
}

}  // namespace qwenq
