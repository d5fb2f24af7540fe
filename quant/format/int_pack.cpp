#include "quant/format/int_pack.h"

#include "core/error.h"

namespace qwenq {

namespace {

void check_bits(int bits) {
  QWENQ_CHECK(gptq_bits_supported(bits), "GPTQ packing supports 2, 4 and 8 bits, not " << bits);
}

}  // namespace

void gptq_pack_qweight(const uint8_t* codes, int64_t K, int64_t N, int bits, int32_t* qweight) {
  check_bits(bits);
  const int per = 32 / bits;
  QWENQ_CHECK(K % per == 0, "GPTQ qweight: K=" << K << " is not a multiple of " << per << " (" << bits << "-bit)");
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t r = 0; r < K / per; ++r) {
    for (int64_t n = 0; n < N; ++n) {
      uint32_t word = 0;
      for (int j = 0; j < per; ++j) {
        const uint32_t c = codes[(r * per + j) * N + n];
        QWENQ_CHECK(c <= mask, "GPTQ qweight: code " << c << " at row " << r * per + j << " does not fit " << bits << " bits");
        word |= c << (bits * j);
      }
      qweight[r * N + n] = static_cast<int32_t>(word);
    }
  }
}

void gptq_unpack_qweight(const int32_t* qweight, int64_t K, int64_t N, int bits, uint8_t* codes) {
  check_bits(bits);
  const int per = 32 / bits;
  QWENQ_CHECK(K % per == 0, "GPTQ qweight: K=" << K << " is not a multiple of " << per);
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t r = 0; r < K / per; ++r) {
    for (int64_t n = 0; n < N; ++n) {
      const uint32_t word = static_cast<uint32_t>(qweight[r * N + n]);
      for (int j = 0; j < per; ++j) codes[(r * per + j) * N + n] = static_cast<uint8_t>((word >> (bits * j)) & mask);
    }
  }
}

void gptq_pack_qzeros(const uint8_t* zeros, int64_t G, int64_t N, int bits, GptqFormat fmt, int32_t* qzeros) {
  check_bits(bits);
  const int per = 32 / bits;
  QWENQ_CHECK(N % per == 0, "GPTQ qzeros: N=" << N << " is not a multiple of " << per);
  const uint32_t mask = (1u << bits) - 1;
  const int64_t words = N / per;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t c = 0; c < words; ++c) {
      uint32_t word = 0;
      for (int j = 0; j < per; ++j) {
        uint32_t z = zeros[g * N + c * per + j];
        QWENQ_CHECK(z <= mask, "GPTQ qzeros: zero " << z << " does not fit " << bits << " bits");
        if (fmt == GptqFormat::V1) {
          QWENQ_CHECK(z >= 1, "GPTQ v1 cannot store a zero point of 0 (group " << g << ", column " << c * per + j
                                                                                << "); write format v2 instead");
          z -= 1;
        }
        word |= z << (bits * j);
      }
      qzeros[g * words + c] = static_cast<int32_t>(word);
    }
  }
}

void gptq_unpack_qzeros(const int32_t* qzeros, int64_t G, int64_t N, int bits, GptqFormat fmt, uint8_t* zeros) {
  check_bits(bits);
  const int per = 32 / bits;
  QWENQ_CHECK(N % per == 0, "GPTQ qzeros: N=" << N << " is not a multiple of " << per);
  const uint32_t mask = (1u << bits) - 1;
  const int64_t words = N / per;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t c = 0; c < words; ++c) {
      const uint32_t word = static_cast<uint32_t>(qzeros[g * words + c]);
      for (int j = 0; j < per; ++j) {
        uint32_t z = (word >> (bits * j)) & mask;
        // v1 readers compute (stored + 1) with the nibble already masked (AutoGPTQ, ExLlamaV2).
        if (fmt == GptqFormat::V1) z += 1;
        zeros[g * N + c * per + j] = static_cast<uint8_t>(z);
      }
    }
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
