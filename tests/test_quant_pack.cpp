// Packed layouts (GPTQ v1/v2, AWQ GEMM) and the RTN grid: hand-made words from the published layouts,
// bit-exact round trips, and refusals. The packers run in parallel: on shapes of several chunks their words
// equal a bit-by-bit construction of the layout and are the same at 1, 2 and 4 threads, and a refusal names
// the first bad code in row-major order whatever the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "quant/format/int_pack.h"
#include "quant/grid.h"
#include "tests/support/scoped_threads.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 20261122;

std::vector<uint8_t> random_codes(int64_t n, int bits, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint8_t> c(n);
  for (auto& v : c) v = static_cast<uint8_t>(rng.below(1u << bits));
  return c;
}

TEST(GptqPack, HandMadeWordMatchesPublishedLayout) {
  // Rows 0..7 of column 0 hold codes 0..7: row 0 goes to the lowest nibble (AutoGPTQ pack()).
  const int64_t K = 8, N = 2;
  std::vector<uint8_t> codes(K * N, 0);
  for (int k = 0; k < 8; ++k) codes[k * N + 0] = static_cast<uint8_t>(k);
  std::vector<int32_t> qw(N);
  gptq_pack_qweight(codes.data(), K, N, 4, qw.data());
  EXPECT_EQ(static_cast<uint32_t>(qw[0]), 0x76543210u);
  EXPECT_EQ(qw[1], 0);
}

TEST(GptqPack, ThreeBitCodesStraddleWordsAsAutoGptqPacksThem) {
  // 32 rows of one column, codes (7k + 3) mod 8, go into 3 words. Expected words from AutoGPTQ's explicit
  // 3-bit branch of pack() (10 codes, a 2+1-bit split, 10 codes, a 1+2-bit split, 10 codes) run by hand.
  const int64_t K = 32, N = 1;
  std::vector<uint8_t> codes(K);
  for (int k = 0; k < 32; ++k) codes[k] = static_cast<uint8_t>((7 * k + 3) % 8);
  std::vector<int32_t> qw(3);
  gptq_pack_qweight(codes.data(), K, N, 3, qw.data());
  EXPECT_EQ(static_cast<uint32_t>(qw[0]), 0x53977053u);
  EXPECT_EQ(static_cast<uint32_t>(qw[1]), 0x70539770u);
  EXPECT_EQ(static_cast<uint32_t>(qw[2]), 0x97705397u);
  // qzeros use the same stream along N.
  std::vector<int32_t> qz(3);
  gptq_pack_qzeros(codes.data(), 1, 32, 3, GptqFormat::V2, qz.data());
  EXPECT_EQ(std::vector<int32_t>(qw.begin(), qw.end()), qz);
}

TEST(GptqPack, SymmetricZerosHaveTheKnownWords) {
  const int64_t G = 3, N = 16;
  std::vector<uint8_t> zeros(G * N, 8);
  std::vector<int32_t> v1(G * N / 8), v2(G * N / 8);
  gptq_pack_qzeros(zeros.data(), G, N, 4, GptqFormat::V1, v1.data());
  gptq_pack_qzeros(zeros.data(), G, N, 4, GptqFormat::V2, v2.data());
  for (int32_t w : v1) EXPECT_EQ(w, 2004318071);   // 0x77777777
  for (int32_t w : v2) EXPECT_EQ(w, -2004318072);  // 0x88888888
}

TEST(GptqPack, RoundTripsBitExactly) {
  for (int bits : {2, 3, 4, 8}) {
    for (auto [K, N] : {std::pair<int64_t, int64_t>{32, 32}, {896, 128}, {4864, 32}, {64, 96}}) {
      SCOPED_TRACE(::testing::Message() << "bits " << bits << " K " << K << " N " << N << " seed " << kSeed);
      auto codes = random_codes(K * N, bits, kSeed + bits);
      std::vector<int32_t> qw(K * bits / 32 * N);
      gptq_pack_qweight(codes.data(), K, N, bits, qw.data());
      std::vector<uint8_t> back(K * N);
      gptq_unpack_qweight(qw.data(), K, N, bits, back.data());
      ASSERT_EQ(back, codes);

      const int64_t G = 5;
      auto zeros = random_codes(G * N, bits, kSeed + 100 + bits);
      for (auto& z : zeros) z = z == 0 ? 1 : z;  // v1 cannot store 0
      for (GptqFormat fmt : {GptqFormat::V1, GptqFormat::V2}) {
        std::vector<int32_t> qz(G * N * bits / 32);
        gptq_pack_qzeros(zeros.data(), G, N, bits, fmt, qz.data());
        std::vector<uint16_t> zb(G * N);
        gptq_unpack_qzeros(qz.data(), G, N, bits, fmt, zb.data());
        ASSERT_EQ(zb, std::vector<uint16_t>(zeros.begin(), zeros.end()));
      }
    }
  }
}

TEST(GptqPack, RefusesWhatTheFormatCannotHold) {
  std::vector<uint8_t> zeros(8, 3);
  zeros[5] = 0;
  std::vector<int32_t> qz(1);
  try {
    gptq_pack_qzeros(zeros.data(), 1, 8, 4, GptqFormat::V1, qz.data());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPTQ v1 cannot store a zero point of 0 (group 0, column 5)"), std::string::npos)
        << e.what();
  }
  std::vector<uint8_t> codes(12 * 8, 1);
  std::vector<int32_t> qw(8 * 2);
  try {
    gptq_pack_qweight(codes.data(), 12, 8, 4, qw.data());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("K=12 is not a multiple of 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(gptq_pack_qweight(codes.data(), 12, 8, 3, qw.data()), Error);
}

// Another packer's v1 zero of 0 leaves a field of all ones; readers add 1 to the masked field (REFERENCE A1.3,
// AutoGPTQ's torch path in int16 for 8-bit), so it reads as 2^bits: 4, 8, 16, 256. v2 reads the field as stored.
TEST(GptqPack, V1FieldOfAllOnesReadsTwoToTheBits) {
  for (int bits : {2, 3, 4, 8}) {
    SCOPED_TRACE("bits " + std::to_string(bits));
    const int64_t N = 32, words = N * bits / 32;
    std::vector<int32_t> qz(words, -1);  // every field all ones
    std::vector<uint16_t> z(N);
    gptq_unpack_qzeros(qz.data(), 1, N, bits, GptqFormat::V1, z.data());
    EXPECT_EQ(z, std::vector<uint16_t>(N, static_cast<uint16_t>(1 << bits)));
    gptq_unpack_qzeros(qz.data(), 1, N, bits, GptqFormat::V2, z.data());
    EXPECT_EQ(z, std::vector<uint16_t>(N, static_cast<uint16_t>((1 << bits) - 1)));
  }
}

// GPTQ's stream written out as its definition (REFERENCE A1.2), one bit at a time: bit t of element i of a
// stream is stream bit bits·i + t, and stream bit s is bit s % 32 of word s / 32. Element i of column `col`
// is at(i, col); word w of column `col` lands at out[w * cols + col].
std::vector<int32_t> stream_by_bits(int64_t count, int64_t cols, int bits,
                                    const std::function<uint8_t(int64_t, int64_t)>& at) {
  std::vector<uint32_t> w(count * bits / 32 * cols, 0);
  for (int64_t col = 0; col < cols; ++col)
    for (int64_t i = 0; i < count; ++i)
      for (int t = 0; t < bits; ++t) {
        const int64_t s = i * bits + t;
        w[s / 32 * cols + col] |= ((static_cast<uint32_t>(at(i, col)) >> t) & 1u) << (s % 32);
      }
  return std::vector<int32_t>(w.begin(), w.end());
}

TEST(GptqPack, ParallelWordsAreTheLayoutsBitsAtAnyThreadCount) {
  for (int bits : {2, 3, 4, 8}) {
    // 311K and 143K codes: 3+ chunks. K and N are plain variables: C++17 lambdas cannot capture a structured binding
    // (clang 14 refuses it; GCC accepts it as an extension).
    for (const auto& shape : {std::pair<int64_t, int64_t>{4864, 64}, {896, 160}}) {
      const int64_t K = shape.first, N = shape.second;
      SCOPED_TRACE(::testing::Message() << "bits " << bits << " K " << K << " N " << N << " seed " << kSeed);
      const auto codes = random_codes(K * N, bits, kSeed + 7 * bits + K);
      const auto expect = stream_by_bits(K, N, bits, [&](int64_t k, int64_t n) { return codes[k * N + n]; });
      const int64_t G = K / 4;  // qzeros of G·N >= 35K zeros: several chunks at 4 threads for the larger shape
      auto zeros = random_codes(G * N, bits, kSeed + 11 * bits + K);
      for (auto& z : zeros) z = z == 0 ? 1 : z;  // v1 cannot store 0
      const int64_t words = N * bits / 32;
      const auto expect_v2 = stream_by_bits(N, G, bits, [&](int64_t n, int64_t g) { return zeros[g * N + n]; });
      const auto expect_v1 = stream_by_bits(N, G, bits, [&](int64_t n, int64_t g) { return zeros[g * N + n] - 1; });
      auto rows_of = [&](const std::vector<int32_t>& by_col) {  // [words, G] (stream per g) -> [G, words]
        std::vector<int32_t> t(G * words);
        for (int64_t g = 0; g < G; ++g)
          for (int64_t c = 0; c < words; ++c) t[g * words + c] = by_col[c * G + g];
        return t;
      };
      for (int threads : {1, 2, 4}) {
        test::ScopedThreads scoped(threads);
        std::vector<int32_t> qw(K * bits / 32 * N, -1);
        gptq_pack_qweight(codes.data(), K, N, bits, qw.data());
        ASSERT_EQ(qw, expect) << "threads " << threads;
        std::vector<uint8_t> back(K * N, 255);
        gptq_unpack_qweight(qw.data(), K, N, bits, back.data());
        ASSERT_EQ(back, codes) << "threads " << threads;
        for (GptqFormat fmt : {GptqFormat::V1, GptqFormat::V2}) {
          std::vector<int32_t> qz(G * words, -1);
          gptq_pack_qzeros(zeros.data(), G, N, bits, fmt, qz.data());
          ASSERT_EQ(qz, rows_of(fmt == GptqFormat::V1 ? expect_v1 : expect_v2)) << "threads " << threads;
          std::vector<uint16_t> zb(G * N, 255);
          gptq_unpack_qzeros(qz.data(), G, N, bits, fmt, zb.data());
          ASSERT_EQ(zb, std::vector<uint16_t>(zeros.begin(), zeros.end())) << "threads " << threads;
        }
      }
    }
  }
}

TEST(GptqPack, RefusalNamesTheFirstBadCodeAtAnyThreadCount) {
  const int64_t K = 4864, N = 64;
  auto codes = random_codes(K * N, 4, kSeed);
  codes[3000 * N + 5] = 16;   // in a later chunk
  codes[100 * N + 9] = 200;   // the first in row-major order
  auto zeros = random_codes(2048 * N, 4, kSeed + 1);
  for (auto& z : zeros) z = z == 0 ? 1 : z;
  zeros[1500 * N + 3] = 0;
  zeros[40 * N + 63] = 0;
  std::vector<int32_t> qw(K / 8 * N), qz(2048 * N / 8), awq(K * N / 8);
  for (int threads : {1, 4}) {
    test::ScopedThreads scoped(threads);
    test::expect_error([&] { gptq_pack_qweight(codes.data(), K, N, 4, qw.data()); },
                       {"GPTQ qweight: code 200 at row 100, column 9 does not fit 4 bits"});
    test::expect_error([&] { awq_pack(codes.data(), K, N, awq.data()); },
                       {"AWQ GEMM packing: code 200 at row 100, column 9 does not fit 4 bits"});
    test::expect_error([&] { gptq_pack_qzeros(zeros.data(), 2048, N, 4, GptqFormat::V1, qz.data()); },
                       {"GPTQ v1 cannot store a zero point of 0 (group 40, column 63)"});
    zeros[40 * N + 63] = 17;
    test::expect_error([&] { gptq_pack_qzeros(zeros.data(), 2048, N, 4, GptqFormat::V2, qz.data()); },
                       {"GPTQ qzeros: zero 17 does not fit 4 bits"});
    zeros[40 * N + 63] = 0;
  }
}

TEST(AwqPack, InterleaveMatchesAutoAwq) {
  // Row 0 holds code j in logical column j; nibble i must hold column kAwqOrder[i] = {0,2,4,6,1,3,5,7}.
  std::vector<uint8_t> codes(8);
  for (int j = 0; j < 8; ++j) codes[j] = static_cast<uint8_t>(j);
  int32_t word;
  awq_pack(codes.data(), 1, 8, &word);
  EXPECT_EQ(static_cast<uint32_t>(word), 0x75316420u);
  auto big = random_codes(172 * 64, 4, kSeed);
  std::vector<int32_t> packed(172 * 8);
  awq_pack(big.data(), 172, 64, packed.data());
  std::vector<uint8_t> back(big.size());
  awq_unpack(packed.data(), 172, 64, back.data());
  EXPECT_EQ(back, big);
}

TEST(AwqPack, ParallelWordsAreTheInterleaveAtAnyThreadCount) {
  const int64_t R = 4864, N = 72;  // 350K codes: several chunks
  const auto codes = random_codes(R * N, 4, kSeed + 3);
  std::vector<int32_t> expect(R * N / 8, 0);  // nibble i of word (r, c) holds column 8c + kAwqOrder[i]
  for (int64_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n) {
      int i = 0;
      while (kAwqOrder[i] != n % 8) ++i;
      expect[r * (N / 8) + n / 8] |= static_cast<int32_t>(static_cast<uint32_t>(codes[r * N + n]) << (4 * i));
    }
  for (int threads : {1, 2, 4}) {
    test::ScopedThreads scoped(threads);
    std::vector<int32_t> packed(R * N / 8, -1);
    awq_pack(codes.data(), R, N, packed.data());
    ASSERT_EQ(packed, expect) << "threads " << threads << " seed " << kSeed + 3;
    std::vector<uint8_t> back(R * N, 255);
    awq_unpack(packed.data(), R, N, back.data());
    ASSERT_EQ(back, codes) << "threads " << threads;
  }
}

TEST(Grid, GridValuedWeightsAreReproducedExactly) {
  // Weights built on a power-of-two grid that includes 0 in every group: the GPTQ rule finds the same grid and
  // RTN reproduces every weight exactly (no rounding anywhere).
  const int64_t N = 5, K = 172, G = 64;
  Rng rng(kSeed);
  std::vector<float> W(N * K);
  for (int64_t n = 0; n < N; ++n) {
    const float s = std::ldexp(1.f, -static_cast<int>(4 + n));
    for (int64_t k = 0; k < K; ++k) W[n * K + k] = s * static_cast<float>(static_cast<int>(rng.below(16)) - 5);
    for (int64_t g0 = 0; g0 < K; g0 += G) {  // pin min and max of each group: lo = -5 s, hi = 10 s
      W[n * K + g0] = -5 * s;
      W[n * K + g0 + 1] = 10 * s;
    }
  }
  GroupGrid grid = find_grid(W.data(), N, K, 4, G, false, GridRule::Gptq);
  ASSERT_EQ(grid.num_groups(), 3);  // 64 + 64 + 44
  for (int64_t i = 0; i < grid.num_groups() * N; ++i) EXPECT_EQ(grid.zero[i], 5);
  auto codes = quantize_rtn(W.data(), grid);
  auto back = dequantize_codes(codes.data(), grid);
  EXPECT_EQ(back, W);
}

TEST(Grid, RtnErrorIsAtMostHalfAStep) {
  const int64_t N = 16, K = 896;
  Rng rng(kSeed + 1);
  std::vector<float> W(N * K);
  for (auto& w : W) w = static_cast<float>(rng.normal() * 0.02);
  for (bool sym : {false, true}) {
    for (GridRule rule : {GridRule::Gptq, GridRule::Awq}) {
      GroupGrid grid = find_grid(W.data(), N, K, 4, 128, sym, rule);
      auto back = dequantize_codes(quantize_rtn(W.data(), grid).data(), grid);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = 0; k < K; ++k) {
          const float s = grid.scale[(k / 128) * N + n];
          // Half a step, plus the fp16 rounding of the scale stretching the grid by up to 2^-11 per step.
          ASSERT_LE(std::fabs(back[n * K + k] - W[n * K + k]), 0.5f * s * (1 + 1e-3f) + 16 * s * 1e-3f)
              << "sym " << sym << " n " << n << " k " << k;
        }
      }
    }
  }
}

}  // namespace
}  // namespace qwenq
