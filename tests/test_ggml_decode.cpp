// dequantize_ggml_row for every quantized type (quant/ggml_decode_vec.cpp reads them all with vectors)
// against each layout restated here as ggml-quants.c's dequantize_row_* loops walk it (blocks in order, ggml's
// pointer steps and bit masks, ggml's float expressions): bit for bit, over random bytes (every code, 6-bit scale and
// min, qh bit and int8 scale pattern) with finite fp16 block scales, one block and a 7-block row. The Python oracle
// (tests/oracle/test_gguf_oracle.py) checks the same readers against gguf-py's dequantize.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "quant/ggml_blocks.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 4711;

float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// ggml's get_scale_min_k4.
void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void ref_q8_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

void ref_q4_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((b[2 + j] & 0x0F) - 8) * d;
    y[j + 16] = static_cast<float>((b[2 + j] >> 4) - 8) * d;
  }
}

// Q4_K (qh null) and Q5_K: 64 values per step, two sub-blocks sharing 32 bytes of qs (low nibbles, then high).
void ref_q45_k(const uint8_t* b, float* y, bool five) {
  const float d = f16_at(b), min = f16_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = five ? b + 16 : nullptr;
  const uint8_t* q = b + (five ? 48 : 16);
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, m;
    scale_min_k4(is + 0, scales, &sc, &m);
    const float d1 = d * sc, m1 = min * m;
    scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((q[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((q[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
    q += 32;
    is += 2;
    u1 <<= 2;
    u2 <<= 2;
  }
}

void ref_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_at(b + 208);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int8_t>((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int8_t>((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * sc[is + 0] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void ref_q4_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  for (int j = 0; j < 16; ++j) {
    const int x0 = b[4 + j] & 0x0F, x1 = b[4 + j] >> 4;
    y[j] = x0 * d + m;
    y[j + 16] = x1 * d + m;
  }
}

// Q5_0 and Q5_1: ggml's xh_0 / xh_1 (bit j and bit j + 16 of qh moved to bit 4).
void ref_q5(const uint8_t* b, float* y, bool with_min) {
  const float d = f16_at(b), m = with_min ? f16_at(b + 2) : 0.0f;
  uint32_t qh;
  std::memcpy(&qh, b + (with_min ? 4 : 2), 4);
  const uint8_t* qs = b + (with_min ? 8 : 6);
  for (int j = 0; j < 16; ++j) {
    const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
    const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
    if (with_min) {
      y[j] = ((qs[j] & 0x0F) | xh_0) * d + m;
      y[j + 16] = ((qs[j] >> 4) | xh_1) * d + m;
    } else {
      y[j] = (((qs[j] & 0x0F) | xh_0) - 16) * d;
      y[j + 16] = (((qs[j] >> 4) | xh_1) - 16) * d;
    }
  }
}

void ref_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = f16_at(b + 80), min = f16_at(b + 82);
  int is = 0;
  for (int n = 0; n < 256; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      uint8_t sc = scales[is++];
      float dl = d * (sc & 0xF), ml = min * (sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<int8_t>((q[l] >> shift) & 3) - ml;
      sc = scales[is++];
      dl = d * (sc & 0xF);
      ml = min * (sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<int8_t>((q[l + 16] >> shift) & 3) - ml;
      shift += 2;
    }
    q += 32;
  }
}

// ggml's Q3_K scale unpacking: the 12 bytes as three words, rebuilt into 16 bytes with its kmask1/kmask2 steps.
void ref_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const float d_all = f16_at(b + 108);
  uint32_t aux[4];
  std::memcpy(aux, b + 96, 12);
  const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f, tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  int8_t scales[16];
  std::memcpy(scales, aux, 16);
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < 256; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      float dl = d_all * (scales[is++] - 32);
      for (int l = 0; l < 16; ++l) *y++ = dl * (static_cast<int8_t>((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
      dl = d_all * (scales[is++] - 32);
      for (int l = 0; l < 16; ++l)
        *y++ = dl * (static_cast<int8_t>((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
      shift += 2;
      m <<= 1;
    }
    q += 32;
  }
}

constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

void ref_iq4_nl(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * kIq4Values[b[2 + j] & 0xf];
    y[j + 16] = d * kIq4Values[b[2 + j] >> 4];
  }
}

void ref_iq4_xs(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  uint16_t scales_h;
  std::memcpy(&scales_h, b + 2, 2);
  const uint8_t* scales_l = b + 4;
  const uint8_t* qs = b + 8;
  for (int ib = 0; ib < 8; ++ib) {
    const int ls = ((scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((scales_h >> 2 * ib) & 3) << 4);
    const float dl = d * (ls - 32);
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * kIq4Values[qs[j] & 0xf];
      y[j + 16] = dl * kIq4Values[qs[j] >> 4];
    }
    y += 32;
    qs += 16;
  }
}

struct Layout {
  const char* name;
  GgmlType type;
  int block, bytes;
  std::vector<int> fp16_at;  // where the block's fp16 scales are: kept finite and sane
  void (*ref)(const uint8_t*, float*);
};

TEST(GgmlDecode, VectorReadersEqualGgmlsLoopsBitForBit) {
  const Layout layouts[] = {
      {"Q8_0", GgmlType::Q8_0, 32, 34, {0}, ref_q8_0},
      {"Q4_0", GgmlType::Q4_0, 32, 18, {0}, ref_q4_0},
      {"Q4_K", GgmlType::Q4_K, 256, 144, {0, 2}, [](const uint8_t* b, float* y) { ref_q45_k(b, y, false); }},
      {"Q5_K", GgmlType::Q5_K, 256, 176, {0, 2}, [](const uint8_t* b, float* y) { ref_q45_k(b, y, true); }},
      {"Q6_K", GgmlType::Q6_K, 256, 210, {208}, ref_q6_k},
      {"Q4_1", GgmlType::Q4_1, 32, 20, {0, 2}, ref_q4_1},
      {"Q5_0", GgmlType::Q5_0, 32, 22, {0}, [](const uint8_t* b, float* y) { ref_q5(b, y, false); }},
      {"Q5_1", GgmlType::Q5_1, 32, 24, {0, 2}, [](const uint8_t* b, float* y) { ref_q5(b, y, true); }},
      {"Q2_K", GgmlType::Q2_K, 256, 84, {80, 82}, ref_q2_k},
      {"Q3_K", GgmlType::Q3_K, 256, 110, {108}, ref_q3_k},
      {"IQ4_NL", GgmlType::IQ4_NL, 32, 18, {0}, ref_iq4_nl},
      {"IQ4_XS", GgmlType::IQ4_XS, 256, 136, {0}, ref_iq4_xs},
  };
  Rng rng(kSeed);
  for (const Layout& t : layouts) {
    for (int blocks : {1, 7}) {
      SCOPED_TRACE(std::string(t.name) + ", " + std::to_string(blocks) + " blocks");
      std::vector<uint8_t> row(static_cast<size_t>(blocks * t.bytes));
      for (auto& b : row) b = static_cast<uint8_t>(rng.next_u64());
      for (int b = 0; b < blocks; ++b)
        for (int at : t.fp16_at) {
          const uint16_t h = f32_to_f16(static_cast<float>(rng.uniform() * 0.01 + 1e-4));
          std::memcpy(row.data() + b * t.bytes + at, &h, 2);
        }
      const int64_t n = int64_t{blocks} * t.block;
      std::vector<float> got(static_cast<size_t>(n), NAN), want(static_cast<size_t>(n), NAN);
      dequantize_ggml_row(t.type, row.data(), n, got.data());
      for (int b = 0; b < blocks; ++b) t.ref(row.data() + b * t.bytes, want.data() + b * t.block);
      ASSERT_EQ(std::memcmp(got.data(), want.data(), n * sizeof(float)), 0) << [&] {
        for (int64_t i = 0; i < n; ++i)
          if (std::memcmp(&got[i], &want[i], 4) != 0)
            return "first difference at value " + std::to_string(i) + ": " + std::to_string(got[i]) + " vs " +
                   std::to_string(want[i]);
        return std::string();
      }();
    }
  }
}

}  // namespace
}  // namespace qwenq
