// ggml block formats: quantize and dequantize F32, F16, BF16, Q8_0, Q4_0, Q4_1 here, Q5_0, Q5_1 and the k-quants
// Q4_K, Q5_K, Q6_K with quant/ggml_kquants.cpp's quantizers; every quantized type is read by
// quant/ggml_decode_vec.cpp. The math is at the top of quant/ggml_blocks.h.
#include "quant/ggml_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"
#include "quant/ggml_decode_vec.h"
#include "quant/ggml_kquants.h"

namespace qwenq {

namespace {

constexpr int64_t kQK = 32;    // values per block of the 32-blocks

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
void store_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
float load_f16(const uint8_t* p) { return f16_to_f32(load_u16(p)); }

// C's roundf: halves away from zero.
float round_half_away(float v) { return std::copysign(std::floor(std::fabs(v) + 0.5f), v); }

float inverse(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

void quantize_q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int64_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = inverse(d);
  store_u16(out, f32_to_f16(d));
  for (int64_t j = 0; j < kQK; ++j) out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(round_half_away(x[j] * id)));
}

// w[32]: importance-weighted codes (quant/ggml_kquants.h); null: the reference rounding.
void quantize_q4_0(const float* x, uint8_t* out, const float* w) {
  uint8_t q[kQK];
  store_u16(out, f32_to_f16(w ? ggml_detail::block_codes_0_weighted(x, 16, w, q) : ggml_detail::block_codes_0(x, 16, q)));
  ggml_detail::pack_nibbles(q, out + 2);
}

void quantize_q4_1(const float* x, uint8_t* out, const float* w) {
  uint8_t q[kQK];
  float min;
  store_u16(out, f32_to_f16(w ? ggml_detail::block_codes_1_weighted(x, 16, w, q, &min)
                              : ggml_detail::block_codes_1(x, 16, q, &min)));
  store_u16(out + 2, f32_to_f16(min));
  ggml_detail::pack_nibbles(q, out + 4);
}

// The type of a row of n values, refused (`doing`: "quantizing to", "reading") when we do not handle it or n is not a
// whole number of its blocks.
const GgmlTypeInfo* row_type(GgmlType t, int64_t n, const char* doing) {
  const GgmlTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t));
  QWENQ_CHECK(info && ggml_type_supported(t), doing << " ggml type " << (info ? info->name : "?") << " is not supported");
  QWENQ_CHECK(n % info->block == 0, info->name << ": a row of " << n << " values is not a multiple of " << info->block);
  return info;
}

}  // namespace

bool ggml_type_supported(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0: case GgmlType::Q4_0:
    case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q2_K: case GgmlType::Q3_K:
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K: case GgmlType::IQ4_NL: case GgmlType::IQ4_XS:
      return true;
    default: return false;
  }
}

void quantize_ggml_row(GgmlType t, const float* x, int64_t n, uint8_t* out, const float* importance) {
  const GgmlTypeInfo* info = row_type(t, n, "quantizing to");
  switch (t) {
    case GgmlType::F32: std::memcpy(out, x, n * 4); return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) store_u16(out + 2 * i, f32_to_f16(x[i]));
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) store_u16(out + 2 * i, f32_to_bf16(x[i]));
      return;
    default: break;
  }
  // The 32-block types weight each value by imp·sqrt(σ² + x²), σ² the row's mean square (ggml's *_impl).
  const bool blocks32 = t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q5_0 || t == GgmlType::Q5_1;
  float sigma2 = 0;
  if (importance && blocks32) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
    sigma2 = sum_x2 / static_cast<float>(n);
  }
  float w[kQK];
  for (int64_t b = 0; b < n / info->block; ++b) {
    uint8_t* o = out + b * info->bytes;
    const float* v = x + b * info->block;
    const float* imp = importance ? importance + b * info->block : nullptr;
    const float* wb = nullptr;
    if (imp && blocks32) {
      for (int64_t j = 0; j < kQK; ++j) w[j] = imp[j] * std::sqrt(sigma2 + v[j] * v[j]);
      wb = w;
    }
    switch (t) {
      case GgmlType::Q8_0: quantize_q8_0(v, o); break;
      case GgmlType::Q4_0: quantize_q4_0(v, o, wb); break;
      case GgmlType::Q4_1: quantize_q4_1(v, o, wb); break;
      case GgmlType::Q5_0: ggml_detail::quantize_q5_0(v, o, wb); break;
      case GgmlType::Q5_1: ggml_detail::quantize_q5_1(v, o, wb); break;
      case GgmlType::Q2_K: ggml_detail::quantize_q2_k(v, o, imp); break;
      case GgmlType::Q3_K: ggml_detail::quantize_q3_k(v, o, imp); break;
      case GgmlType::Q4_K: ggml_detail::quantize_q4_k(v, o, imp); break;
      case GgmlType::IQ4_NL: ggml_detail::quantize_iq4_nl(v, o, imp); break;
      case GgmlType::IQ4_XS: ggml_detail::quantize_iq4_xs(v, o, imp); break;
      case GgmlType::Q5_K: ggml_detail::quantize_q5_k(v, o, imp); break;
      default: ggml_detail::quantize_q6_k(v, o, imp); break;
    }
  }
}

void dequantize_ggml_row(GgmlType t, const uint8_t* in, int64_t n, float* y) {
  const GgmlTypeInfo* info = row_type(t, n, "reading");
  switch (t) {
    case GgmlType::F32: std::memcpy(y, in, n * 4); return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) y[i] = load_f16(in + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(load_u16(in + 2 * i));
      return;
    default: break;
  }
  // Every quantized type (row_type refused the others).
  QWENQ_CHECK(ggml_detail::dequantize_row_vec(t, in, n, y), info->name << ": no reader");
}

std::vector<uint8_t> quantize_ggml(GgmlType t, const float* x, int64_t rows, int64_t n, const float* importance) {
  const uint64_t row_bytes = ggml_row_bytes(t, n);
  std::vector<uint8_t> out(row_bytes * rows);
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) quantize_ggml_row(t, x + r * n, n, out.data() + r * row_bytes, importance);
  });
  return out;
}

std::vector<float> dequantize_ggml(const GgufTensor& t) {
  return dequantize_ggml_linear({t.type, t.data, t.rows(), t.ne[0], 0});
}

namespace {

// Row r of w (Hugging Face order) dequantized into out [K]: stored at rope_interleaved_row(r) for a permuted q/k.
void dequantize_linear_row(const GgmlLinear& w, uint64_t row_bytes, int64_t r, float* out) {
  dequantize_ggml_row(w.type, w.data + w.stored_row(r) * row_bytes, w.K, out);
}

}  // namespace

void dequantize_ggml_rows(const GgmlLinear& w, const std::function<void(int64_t, const float*)>& sink) {
  const uint64_t row_bytes = ggml_row_bytes(w.type, w.K);
  parallel_for(w.N, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(w.K));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_linear_row(w, row_bytes, r, row.data());
      sink(r, row.data());
    }
  });
}

std::vector<float> dequantize_ggml_linear(const GgmlLinear& w) {
  std::vector<float> out(static_cast<size_t>(w.N * w.K));
  dequantize_ggml_linear_into(w, out.data());
  return out;
}

void dequantize_ggml_linear_into(const GgmlLinear& w, float* out) {
  const uint64_t row_bytes = ggml_row_bytes(w.type, w.K);
  parallel_for(w.N, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) dequantize_linear_row(w, row_bytes, r, out + r * w.K);
  });
}

}  // namespace qwenq
