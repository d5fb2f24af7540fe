#include "quant/format/int_pack.h"

#include "core/error.h"

namespace qwenq {

namespace {

void check_bits(int bits) {
  QWENQ_CHECK(gptq_bits_supported(bits), "GPTQ packing supports 2, 3, 4 and 8 bits, not " << bits);
}

// Writes `count` codes code(i) as one little-endian bit stream into count·bits/32 words (word w at out(w)).
template <typename Code, typename Out>
void pack_stream(int64_t count, int bits, Code code, Out out) {
  uint64_t acc = 0;
  int filled = 0;
  int64_t w = 0;
  for (int64_t i = 0; i < count; ++i) {
    acc |= static_cast<uint64_t>(code(i)) << filled;
    filled += bits;
    if (filled >= 32) {
      out(w++, static_cast<uint32_t>(acc));
      acc >>= 32;
      filled -= 32;
    }
  }
}

// The inverse: code i of the stream held in words word(0..).
template <typename Word, typename Put>
void unpack_stream(int64_t count, int bits, Word word, Put put) {
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t bit = i * bits, w = bit / 32, off = bit % 32;
    uint64_t v = word(w) >> off;
    if (off + bits > 32) v |= static_cast<uint64_t>(word(w + 1)) << (32 - off);
    put(i, static_cast<uint8_t>(v & mask));
  }
}

}  // namespace

void gptq_pack_qweight(const uint8_t* codes, int64_t K, int64_t N, int bits, int32_t* qweight) {
  check_bits(bits);
  const int per = gptq_pack_multiple(bits);
  QWENQ_CHECK(K % per == 0, "GPTQ qweight: K=" << K << " is not a multiple of " << per << " (" << bits << "-bit)");
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t n = 0; n < N; ++n) {
    pack_stream(
        K, bits,
        [&](int64_t k) {
          const uint32_t c = codes[k * N + n];
          QWENQ_CHECK(c <= mask, "GPTQ qweight: code " << c << " at row " << k << " does not fit " << bits << " bits");
          return c;
        },
        [&](int64_t r, uint32_t word) { qweight[r * N + n] = static_cast<int32_t>(word); });
  }
}

void gptq_unpack_qweight(const int32_t* qweight, int64_t K, int64_t N, int bits, uint8_t* codes) {
  check_bits(bits);
  const int per = gptq_pack_multiple(bits);
  QWENQ_CHECK(K % per == 0, "GPTQ qweight: K=" << K << " is not a multiple of " << per);
  for (int64_t n = 0; n < N; ++n) {
    unpack_stream(
        K, bits, [&](int64_t r) { return static_cast<uint32_t>(qweight[r * N + n]); },
        [&](int64_t k, uint8_t c) { codes[k * N + n] = c; });
  }
}

void gptq_pack_qzeros(const uint8_t* zeros, int64_t G, int64_t N, int bits, GptqFormat fmt, int32_t* qzeros) {
  check_bits(bits);
  const int per = gptq_pack_multiple(bits);
  QWENQ_CHECK(N % per == 0, "GPTQ qzeros: N=" << N << " is not a multiple of " << per);
  const uint32_t mask = (1u << bits) - 1;
  const int64_t words = N * bits / 32;
  for (int64_t g = 0; g < G; ++g) {
    pack_stream(
        N, bits,
        [&](int64_t n) {
          uint32_t z = zeros[g * N + n];
          QWENQ_CHECK(z <= mask, "GPTQ qzeros: zero " << z << " does not fit " << bits << " bits");
          if (fmt == GptqFormat::V1) {
            QWENQ_CHECK(z >= 1, "GPTQ v1 cannot store a zero point of 0 (group " << g << ", column " << n
                                                                                    << "); write format v2 instead");
            z -= 1;
          }
          return z;
        },
        [&](int64_t c, uint32_t word) { qzeros[g * words + c] = static_cast<int32_t>(word); });
  }
}

void gptq_unpack_qzeros(const int32_t* qzeros, int64_t G, int64_t N, int bits, GptqFormat fmt, uint8_t* zeros) {
  check_bits(bits);
  const int per = gptq_pack_multiple(bits);
  QWENQ_CHECK(N % per == 0, "GPTQ qzeros: N=" << N << " is not a multiple of " << per);
  const int64_t words = N * bits / 32;
  for (int64_t g = 0; g < G; ++g) {
    unpack_stream(
        N, bits, [&](int64_t c) { return static_cast<uint32_t>(qzeros[g * words + c]); },
        [&](int64_t n, uint8_t z) {
          // v1 readers compute (stored + 1) with the field already masked (AutoGPTQ, ExLlamaV2).
          zeros[g * N + n] = static_cast<uint8_t>(fmt == GptqFormat::V1 ? z + 1 : z);
        });
  }
}

void awq_pack(const uint8_t* codes, int64_t R, int64_t N, int32_t* packed) {
  QWENQ_CHECK(N % 8 == 0, "AWQ GEMM packing: N=" << N << " is not a multiple of 8");
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t c = 0; c < N / 8; ++c) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) {
        const uint32_t v = codes[r * N + c * 8 + kAwqOrder[i]];
        QWENQ_CHECK(v <= 15, "AWQ GEMM packing: code " << v << " does not fit 4 bits");
        word |= v << (4 * i);
      }
      packed[r * (N / 8) + c] = static_cast<int32_t>(word);
    }
  }
}

void awq_unpack(const int32_t* packed, int64_t R, int64_t N, uint8_t* codes) {
  QWENQ_CHECK(N % 8 == 0, "AWQ GEMM unpacking: N=" << N << " is not a multiple of 8");
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t c = 0; c < N / 8; ++c) {
      const uint32_t word = static_cast<uint32_t>(packed[r * (N / 8) + c]);
      for (int j = 0; j < 8; ++j) codes[r * N + c * 8 + j] = static_cast<uint8_t>((word >> (4 * kAwqReverseOrder[j])) & 15u);
    }
  }
}

}  // namespace qwenq
