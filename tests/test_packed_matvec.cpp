// Small-M products with packed Linears (quant/packed_matvec.h) against the oracle Σ_k x·ŵ summed in double, where ŵ
// is the format's own dequantization (dequantize_int_linear, nf4_dequantize, dequantize_ggml_linear: each checked
// against the Python stack's readers by the oracle tests). Shapes include a real Qwen2.5-0.5B MLP, column counts
// that leave a tail after the 16-lane vectors, act-order, 2/3/8-bit GPTQ, AWQ's partial last group, NF4 rows that
// start inside a block and GGUF's permuted q/k rows. Also: each row's result is the same bits whatever M and the
// thread count (decode and a batch agree), and apply_linear switches paths at each format's limit.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "core/rng.h"
#include "quant/format/qgemm_layout.h"
#include "quant/ggml_blocks.h"
#include "quant/grid.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "quant/packed_matvec.h"
#include "tests/support/scoped_threads.h"
#include "tests/support/test_random.h"
#include "trainer/qwen_weights.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 9301;
// |y - Σ x·ŵ| <= kSumTol · Σ |x·ŵ|: fp32 sums of a few thousand terms (grouped or not) stay far inside this; a
// wrong code, scale, zero or column order is off by a sizeable fraction of Σ|x·ŵ|.
constexpr double kSumTol = 1e-5;
constexpr int64_t kRowCounts[] = {1, 2, 3, 5, 8, 9, 16};

// y [M, N] against the double-precision product with ŵ [N, K]; returns the worst error over its bound.
double worst_ratio(const std::vector<float>& y, const std::vector<float>& x, const std::vector<float>& W, int64_t M,
                   int64_t N, int64_t K) {
  double worst = 0.0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0.0, mag = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(x[m * K + k]) * W[n * K + k];
        ref += p;
        mag += std::fabs(p);
      }
      worst = std::max(worst, std::fabs(y[m * N + n] - ref) / (kSumTol * mag + 1e-30));
    }
  return worst;
}

// The product of w with M rows of x through `mv`, checked against the oracle for every M in kRowCounts, and each
// row equal, bit for bit, to the same row multiplied alone (M = 1) and to a run on one thread.
template <typename Matvec>
void check_matvec(const std::string& name, const std::vector<float>& W, int64_t N, int64_t K, Matvec mv) {
  SCOPED_TRACE(name);
  const int64_t Mmax = 16;
  const std::vector<float> x = test::normal_vector(Mmax * K, kSeed + N + K);
  std::vector<float> alone(static_cast<size_t>(Mmax * N));
  for (int64_t m = 0; m < Mmax; ++m) mv(x.data() + m * K, 1, alone.data() + m * N);
  for (int64_t M : kRowCounts) {
    std::vector<float> y(static_cast<size_t>(M * N), NAN);
    mv(x.data(), M, y.data());
    EXPECT_LE(worst_ratio(y, x, W, M, N, K), 1.0) << "M=" << M;
    for (int64_t i = 0; i < M * N; ++i)
      ASSERT_EQ(y[i], alone[i]) << "M=" << M << ": row " << i / N << ", column " << i % N << " differs from M=1";
  }
  std::vector<float> one_thread(static_cast<size_t>(Mmax * N));
  {
    test::ScopedThreads threads(1);
    mv(x.data(), Mmax, one_thread.data());
  }
  std::vector<float> three_threads(static_cast<size_t>(Mmax * N));
  {
    test::ScopedThreads threads(3);
    mv(x.data(), Mmax, three_threads.data());
  }
  EXPECT_EQ(one_thread, alone);
  EXPECT_EQ(three_threads, alone);
}

// Ŵᵀ [K, N] of ŵ [N, K]: the transposed product dx = dy · Ŵ is the forward product with Ŵᵀ.
std::vector<float> transposed(const std::vector<float>& W, int64_t N, int64_t K) {
  std::vector<float> T(W.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) T[k * N + n] = W[n * K + k];
  return T;
}

// ---- GPTQ / AWQ ------------------------------------------------------------------------------------------

struct IntCase {
  const char* name;
  IntLayout layout;
  int bits;
  int64_t N, K, group;
  bool act_order;
};

const IntCase kIntCases[] = {
    {"qwen2.5-0.5b_up_gptq_v1_g128", IntLayout::GptqV1, 4, 4864, 896, 128, false},
    {"gptq_v2_g64_actorder_N72", IntLayout::GptqV2, 4, 72, 256, 64, true},
    {"gptq_v1_g128_partial_group_N40", IntLayout::GptqV1, 4, 40, 1000, 128, false},
    {"gptq_v1_3bit_g32", IntLayout::GptqV1, 3, 64, 128, 32, false},
    {"gptq_v2_3bit_actorder", IntLayout::GptqV2, 3, 32, 96, 32, true},
    {"gptq_v2_8bit_perchannel", IntLayout::GptqV2, 8, 24, 160, -1, false},
    {"gptq_v1_2bit_g32", IntLayout::GptqV1, 2, 48, 160, 32, false},
    {"gptq_v1_4bit_g4", IntLayout::GptqV1, 4, 16, 64, 4, false},
    {"awq_g128_N136", IntLayout::AwqGemm, 4, 136, 896, 128, false},
    {"awq_g64_K172", IntLayout::AwqGemm, 4, 64, 172, 64, false},
    {"awq_g32_N1024", IntLayout::AwqGemm, 4, 1024, 96, 32, false},
};

PackedIntLinear build_int(const IntCase& c) {
  Rng rng(kSeed + c.N * 131 + c.K);
  std::vector<float> W(c.N * c.K);
  for (auto& w : W) w = static_cast<float>(rng.normal() * 0.05);
  const GridRule rule = c.layout == IntLayout::AwqGemm ? GridRule::Awq : GridRule::Gptq;
  const GroupGrid grid = find_grid(W.data(), c.N, c.K, c.bits, c.group, c.layout == IntLayout::GptqV1, rule);
  std::vector<int32_t> g_idx(c.K);
  for (int64_t k = 0; k < c.K; ++k) g_idx[k] = static_cast<int32_t>(k / grid.group);
  if (c.act_order)
    for (int64_t k = c.K - 1; k > 0; --k) std::swap(g_idx[k], g_idx[rng.below(k + 1)]);
  std::vector<uint8_t> codes(c.K * c.N);
  for (int64_t k = 0; k < c.K; ++k)
    for (int64_t n = 0; n < c.N; ++n) {
      const int64_t g = g_idx[k];
      codes[k * c.N + n] = quantize_value(W[n * c.K + k], grid.scale[g * c.N + n], grid.zero[g * c.N + n], grid.maxq());
    }
  return pack_int_linear(codes.data(), grid, c.act_order ? g_idx.data() : nullptr, c.layout);
}

TEST(PackedMatvec, IntLinearsMatchTheirDequantization) {
  for (const IntCase& c : kIntCases) {
    const PackedIntLinear p = build_int(c);
    const std::vector<float> W = dequantize_int_linear(p);
    check_matvec(c.name, W, c.N, c.K, [&](const float* x, int64_t M, float* y) { int_linear_matvec(p, x, M, y); });
    if (c.bits == 3) {
      EXPECT_EQ(int_linear_matvec_t_max_rows(p), 0);
      continue;
    }
    check_matvec(std::string(c.name) + " transposed", transposed(W, c.N, c.K), c.K, c.N,
                 [&](const float* dy, int64_t M, float* dx) { int_linear_matvec_t(p, dy, M, dx); });
  }
}

// A GPTQ v1 zero field of all ones reads as 2^bits (gptq_unpack_qzeros); the dequantization, the packed products
// and the repacked Q4 layout must all read it so. Every fourth column's zero set to all ones, in 8- and 4-bit.
TEST(PackedMatvec, GptqV1FieldOfAllOnesIsTwoToTheBitsEverywhere) {
  for (int bits : {8, 4}) {
    const IntCase c{"gptq_v1_all_ones_zero", IntLayout::GptqV1, bits, 48, 256, 64, false};
    PackedIntLinear p = build_int(c);
    const int per = 32 / bits;
    const uint32_t mask = (1u << bits) - 1;
    for (int64_t g = 0; g < p.num_groups(); ++g)
      for (int64_t n = 0; n < c.N; n += 4) {
        uint32_t& word = reinterpret_cast<uint32_t&>(p.qzeros[g * (c.N / per) + n / per]);
        word |= mask << (bits * (n % per));
      }
    const std::vector<float> W = dequantize_int_linear(p);
    // Column 0, input 0: ŵ = scale · (code - 2^bits).
    const uint32_t code = static_cast<uint32_t>(p.qweight[0]) & mask;
    EXPECT_EQ(W[0], f16_to_f32(p.scales[0]) * static_cast<float>(static_cast<int>(code) - (1 << bits)));
    const std::string name = c.name + std::string(" ") + std::to_string(bits) + "-bit";
    check_matvec(name, W, c.N, c.K, [&](const float* x, int64_t M, float* y) { int_linear_matvec(p, x, M, y); });
    check_matvec(name + " transposed", transposed(W, c.N, c.K), c.K, c.N,
                 [&](const float* dy, int64_t M, float* dx) { int_linear_matvec_t(p, dy, M, dx); });
    if (bits == 4) {
      EXPECT_EQ(q4_unpack(q4_from_int_linear(p).view()), W) << "the GPU's Q4 layout";
    }
  }
}

// ---- NF4 / FP4 -------------------------------------------------------------------------------------------

struct Nf4Case {
  const char* name;
  int64_t N, K, blocksize;
  bool fp4, double_quant;
};

const Nf4Case kNf4Cases[] = {
    {"qwen2.5-0.5b_up_nf4_dq", 4864, 896, 64, false, true},
    {"fp4_K100_rows_inside_blocks", 24, 100, 64, true, false},
    {"nf4_dq_b128_K48", 40, 48, 128, false, true},
    {"nf4_b32_K80", 10, 80, 32, false, false},
};

TEST(PackedMatvec, Nf4MatchesItsDequantization) {
  for (const Nf4Case& c : kNf4Cases) {
    const std::vector<float> W = test::normal_vector(c.N * c.K, kSeed + c.K, 0.05f);
    Nf4Options o;
    o.fp4 = c.fp4;
    o.blocksize = c.blocksize;
    o.double_quant = c.double_quant;
    const Nf4Tensor t = nf4_quantize(W.data(), c.N * c.K, o);
    const std::vector<float> Wq = nf4_dequantize(t);
    check_matvec(c.name, Wq, c.N, c.K,
                 [&](const float* x, int64_t M, float* y) { nf4_linear_matvec(t, c.N, c.K, x, M, y); });
    check_matvec(std::string(c.name) + " transposed", transposed(Wq, c.N, c.K), c.K, c.N,
                 [&](const float* dy, int64_t M, float* dx) { nf4_linear_matvec_t(t, c.N, c.K, dy, M, dx); });
  }
}

TEST(PackedMatvec, Nf4RefusesAShapeThatIsNotItsTensor) {
  const std::vector<float> W = test::normal_vector(64, kSeed);
  const Nf4Tensor t = nf4_quantize(W.data(), 64, {});
  std::vector<float> x(8), y(8);
  try {
    nf4_linear_matvec(t, 8, 9, x.data(), 1, y.data());
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("holds 64 weights, not 8 x 9"), std::string::npos) << e.what();
  }
}

// ---- GGUF ------------------------------------------------------------------------------------------------

TEST(PackedMatvec, GgufBlocksMatchTheirDequantization) {
  struct Case {
    const char* name;
    GgmlType type;
    int64_t N, K, rope_head_dim;
  };
  const Case cases[] = {{"q4_k_rope_rows", GgmlType::Q4_K, 24, 256, 8},
                        {"q8_0", GgmlType::Q8_0, 20, 96, 0},
                        {"q6_k", GgmlType::Q6_K, 16, 512, 0},
                        {"q4_0_K1056_chunks", GgmlType::Q4_0, 12, 1056, 0}};
  for (const Case& c : cases) {
    const std::vector<float> W = test::normal_vector(c.N * c.K, kSeed + c.N, 0.05f);
    const std::vector<uint8_t> bytes = quantize_ggml(c.type, W.data(), c.N, c.K);
    const GgmlLinear g{c.type, bytes.data(), c.N, c.K, c.rope_head_dim};
    const std::vector<float> Wq = dequantize_ggml_linear(g);
    check_matvec(c.name, Wq, c.N, c.K, [&](const float* x, int64_t M, float* y) { ggml_linear_matvec(g, x, M, y); });
    check_matvec(std::string(c.name) + " transposed", transposed(Wq, c.N, c.K), c.K, c.N,
                 [&](const float* dy, int64_t M, float* dx) { ggml_linear_matvec_t(g, dy, M, dx); });
  }
}

// ---- through apply_linear --------------------------------------------------------------------------------

TEST(PackedMatvec, IntLimitsFollowTheKernel) {
  EXPECT_EQ(int_linear_matvec_max_rows(build_int(kIntCases[0])), 512);  // GPTQ, g_idx = k / group
  EXPECT_EQ(int_linear_matvec_max_rows(build_int(kIntCases[1])), 256);  // act-order
  EXPECT_EQ(int_linear_matvec_max_rows(build_int(kIntCases[3])), 16);   // 3-bit
  EXPECT_EQ(int_linear_matvec_max_rows(build_int(kIntCases[8])), 512);  // AWQ
  EXPECT_EQ(int_linear_matvec_t_max_rows(build_int(kIntCases[0])), 64);
  EXPECT_EQ(int_linear_matvec_t_max_rows(build_int(kIntCases[1])), 32);
  EXPECT_EQ(int_linear_matvec_t_max_rows(build_int(kIntCases[3])), 0);
  EXPECT_EQ(int_linear_matvec_t_max_rows(build_int(kIntCases[8])), 64);
}

// Up to a format's limit apply_linear takes the packed path (the same bits as calling it), one row more the
// dequantize-and-GEMM one; both match the oracle, with the bias added.
TEST(PackedMatvec, ApplyLinearSwitchesPathsAtTheLimitAndAddsTheBias) {
  const int64_t N = 64, K = 256;
  const IntCase c{"awq", IntLayout::AwqGemm, 4, N, K, 128, false};
  LinearWeight awq;
  awq.N = N;
  awq.K = K;
  awq.packed = std::make_shared<PackedIntLinear>(build_int(c));
  const std::vector<float> Wsrc = test::normal_vector(N * K, kSeed + 2, 0.05f);
  LinearWeight nf4 = awq;
  nf4.packed = nullptr;
  auto nl = std::make_shared<Nf4Linear>();
  nl->q = nf4_quantize(Wsrc.data(), N * K, {});
  nl->shape = {N, K};
  nf4.nf4 = nl;
  LinearWeight q4k = nf4;
  q4k.nf4 = nullptr;
  const std::vector<uint8_t> bytes = quantize_ggml(GgmlType::Q4_K, Wsrc.data(), N, K);
  q4k.ggml = std::make_shared<GgmlLinear>(GgmlLinear{GgmlType::Q4_K, bytes.data(), N, K, 0});
  const auto direct = [&](const LinearWeight& w, const float* x, int64_t M, float* y) {
    if (w.packed) int_linear_matvec(*w.packed, x, M, y);
    if (w.nf4) nf4_linear_matvec(w.nf4->q, N, K, x, M, y);
    if (w.ggml) ggml_linear_matvec(*w.ggml, x, M, y);
  };

  const std::vector<float> bias_f = test::normal_vector(N, kSeed + 1);
  std::vector<uint16_t> bias(N);
  for (int64_t n = 0; n < N; ++n) bias[n] = f32_to_bf16(bias_f[n]);
  const TensorView bias_view{bias.data(), DType::BF16, {N}};
  for (const auto& [name, w, limit] : {std::make_tuple("awq", &awq, int64_t{512}),
                                      std::make_tuple("nf4", &nf4, kNf4MatvecMaxRows),
                                      std::make_tuple("q4_k", &q4k, kGgmlMatvecMaxRows)}) {
    const std::vector<float> W = w->dequantize();
    for (int64_t M : {int64_t{1}, limit, limit + 1}) {
      SCOPED_TRACE(std::string(name) + " M=" + std::to_string(M));
      const std::vector<float> x = test::normal_vector(M * K, kSeed + M);
      std::vector<float> y(static_cast<size_t>(M * N)), alone(static_cast<size_t>(M * N));
      apply_linear(*w, x.data(), M, bias_view, y.data());
      std::vector<float> no_bias(y);
      for (int64_t i = 0; i < M * N; ++i) no_bias[i] -= bf16_to_f32(bias[i % N]);
      EXPECT_LE(worst_ratio(no_bias, x, W, M, N, K), 1.0);
      direct(*w, x.data(), M, alone.data());
      int64_t same = 0;
      for (int64_t i = 0; i < M * N; ++i) same += y[i] == alone[i] + bf16_to_f32(bias[i % N]);
      if (M <= limit) {
        EXPECT_EQ(same, M * N) << "the packed path, bias added";
      } else {
        EXPECT_LT(same, M * N) << "beyond the limit, the GEMM's sums (some differ in the last bits)";
      }
    }
  }
}

}  // namespace
}  // namespace qwenq
