// Packed layouts (GPTQ v1/v2, AWQ GEMM) and the RTN grid: hand-made words from the published layouts,
// bit-exact round trips, and refusals.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "quant/format/int_pack.h"
#include "quant/grid.h"

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
        std::vector<uint8_t> zb(G * N);
        gptq_unpack_qzeros(qz.data(), G, N, bits, fmt, zb.data());
        ASSERT_EQ(zb, zeros);
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
