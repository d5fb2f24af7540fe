// Packing is per output word with disjoint writes, so it runs in parallel (core/threads.h) over row blocks; codes
// are validated first by a scan that names the first bad element (row-major), so the bytes and the messages do not
// depend on the thread count.
#include "quant/format/int_pack.h"

#include <algorithm>

#include "core/error.h"
#include "core/threads.h"

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

// Rows per parallel chunk: at least 64K codes each, so small tensors stay on one thread.
int64_t rows_grain(int64_t codes_per_row) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, codes_per_row));
}

// First index of codes [n] above `mask` (or -1): the element a refusal names, whatever the thread count.
int64_t first_above(const uint8_t* codes, int64_t n, uint32_t mask) {
  return parallel_find_first(n, int64_t{1} << 16, [=](int64_t begin, int64_t end) -> int64_t {
    for (int64_t i = begin; i < end; ++i)
      if (codes[i] > mask) return i;
    return -1;
  });
}

}  // namespace

// A block of per = gptq_pack_multiple(bits) rows fills exactly per·bits/32 words of each column's stream (1, or 3
// for 3-bit codes), so blocks pack independently: one parallel chunk is a run of blocks, all N columns.
void gptq_pack_qweight(const uint8_t* codes, int64_t K, int64_t N, int bits, int32_t* qweight) {
  check_bits(bits);
  const int per = gptq_pack_multiple(bits), words = per * bits / 32;
  QWENQ_CHECK(K % per == 0, "GPTQ qweight: K=" << K << " is not a multiple of " << per << " (" << bits << "-bit)");
  const int64_t bad = first_above(codes, K * N, (1u << bits) - 1);
  QWENQ_CHECK(bad < 0, "GPTQ qweight: code " << int(codes[bad]) << " at row " << bad / N << ", column " << bad % N
                                             << " does not fit " << bits << " bits");
  parallel_for(K / per, rows_grain(per * N), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint8_t* rows = codes + b * per * N;
      int32_t* out = qweight + b * words * N;
      for (int64_t n = 0; n < N; ++n) {
        pack_stream(
            per, bits, [&](int64_t j) { return static_cast<uint32_t>(rows[j * N + n]); },
            [&](int64_t r, uint32_t word) { out[r * N + n] = static_cast<int32_t>(word); });
      }
    }
  });
}

void gptq_unpack_qweight(const int32_t* qweight, int64_t K, int64_t N, int bits, uint8_t* codes) {
  check_bits(bits);
  const int per = gptq_pack_multiple(bits), words = per * bits / 32;
  QWENQ_CHECK(K % per == 0, "GPTQ qweight: K=" << K << " is not a multiple of " << per);
  parallel_for(K / per, rows_grain(per * N), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      uint8_t* rows = codes + b * per * N;
      const int32_t* in = qweight + b * words * N;
      for (int64_t n = 0; n < N; ++n) {
        unpack_stream(
            per, bits, [&](int64_t r) { return static_cast<uint32_t>(in[r * N + n]); },
            [&](int64_t j, uint8_t c) { rows[j * N + n] = c; });
      }
    }
  });
}

void gptq_pack_qzeros(const uint8_t* zeros, int64_t G, int64_t N, int bits, GptqFormat fmt, int32_t* qzeros) {
  check_bits(bits);
  const int per = gptq_pack_multiple(bits);
  QWENQ_CHECK(N % per == 0, "GPTQ qzeros: N=" << N << " is not a multiple of " << per);
  const uint32_t mask = (1u << bits) - 1;
  const int64_t words = N * bits / 32;
  const bool v1 = fmt == GptqFormat::V1;
  const int64_t bad = parallel_find_first(G * N, int64_t{1} << 16, [&](int64_t begin, int64_t end) -> int64_t {
    for (int64_t i = begin; i < end; ++i)
      if (zeros[i] > mask || (v1 && zeros[i] == 0)) return i;
    return -1;
  });
  if (bad >= 0) {
    QWENQ_CHECK(zeros[bad] <= mask, "GPTQ qzeros: zero " << int(zeros[bad]) << " does not fit " << bits << " bits");
    QWENQ_FAIL("GPTQ v1 cannot store a zero point of 0 (group " << bad / N << ", column " << bad % N
                                                                << "); write format v2 instead");
  }
  parallel_for(G, rows_grain(N), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      pack_stream(
          N, bits, [&](int64_t n) { return static_cast<uint32_t>(zeros[g * N + n]) - (v1 ? 1u : 0u); },
          [&](int64_t c, uint32_t word) { qzeros[g * words + c] = static_cast<int32_t>(word); });
    }
  });
}

void gptq_unpack_qzeros(const int32_t* qzeros, int64_t G, int64_t N, int bits, GptqFormat fmt, uint16_t* zeros) {
  check_bits(bits);
  const int per = gptq_pack_multiple(bits);
  QWENQ_CHECK(N % per == 0, "GPTQ qzeros: N=" << N << " is not a multiple of " << per);
  const int64_t words = N * bits / 32;
  parallel_for(G, rows_grain(N), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      unpack_stream(
          N, bits, [&](int64_t c) { return static_cast<uint32_t>(qzeros[g * words + c]); },
          [&](int64_t n, uint8_t z) {
            // v1 readers compute (stored + 1) with the field already masked (AutoGPTQ, ExLlamaV2).
            zeros[g * N + n] = static_cast<uint16_t>(fmt == GptqFormat::V1 ? z + 1 : z);
          });
    }
  });
}

void awq_pack(const uint8_t* codes, int64_t R, int64_t N, int32_t* packed) {
  QWENQ_CHECK(N % 8 == 0, "AWQ GEMM packing: N=" << N << " is not a multiple of 8");
  const int64_t bad = first_above(codes, R * N, 15);
  QWENQ_CHECK(bad < 0, "AWQ GEMM packing: code " << int(codes[bad]) << " at row " << bad / N << ", column " << bad % N
                                                 << " does not fit 4 bits");
  parallel_for(R, rows_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < N / 8; ++c) {
        uint32_t word = 0;
        for (int i = 0; i < 8; ++i) word |= static_cast<uint32_t>(codes[r * N + c * 8 + kAwqOrder[i]]) << (4 * i);
        packed[r * (N / 8) + c] = static_cast<int32_t>(word);
      }
    }
  });
}

void awq_unpack(const int32_t* packed, int64_t R, int64_t N, uint8_t* codes) {
  QWENQ_CHECK(N % 8 == 0, "AWQ GEMM unpacking: N=" << N << " is not a multiple of 8");
  parallel_for(R, rows_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < N / 8; ++c) {
        const uint32_t word = static_cast<uint32_t>(packed[r * (N / 8) + c]);
        for (int j = 0; j < 8; ++j)
          codes[r * N + c * 8 + j] = static_cast<uint8_t>((word >> (4 * kAwqReverseOrder[j])) & 15u);
      }
    }
  });
}

}  // namespace qwenq
