// GPTQ for one layer and its Hessian: agreement with RTN where the theory says they coincide (H = I), a
// clear gain over RTN on correlated inputs, the loss identity Σ½e² = ½·Δᵀ(H + λI)Δ (which proves the returned
// codes, grid and g_idx are exactly what the error feedback used), an unblocked fp64 oracle for small K,
// act-order / static-group index maps, damping retries, refusals and odd shapes.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "quant/gptq.h"
#include "quant/grid.h"
#include "quant/hessian.h"
#include "support/test_paths.h"
#include "tests/support/gptq_inputs.h"

namespace qwenq {
namespace {

constexpr uint64_t kSeed = 20250611;

// Named tolerances; every comparison below uses one of these.
struct Tol {
  static constexpr double kHessianRel = 1e-5;       // fp32 accumulator vs fp64 (2/n)·XᵀX, relative to max |H|
  static constexpr double kGptqOverRtn = 0.8;       // GPTQ output error must be below this fraction of RTN's
  static constexpr double kLossIdentityRel = 2e-3;  // reported loss vs ½·Δᵀ(H + λI)Δ (fp32 factor and updates)
  static constexpr double kBlockAgreement = 0.995;  // share of equal codes between block sizes 128 and 7
  static constexpr double kBlockLossRel = 1e-3;     // and their losses
};

void announce_seed() { std::printf("[ seed     ] %llu\n", static_cast<unsigned long long>(kSeed)); }

using test::correlated_inputs;
using test::hessian_of;
using test::random_weights;

// Σ over rows of x of ‖x·(W − Ŵ)ᵀ‖², in fp64.
double output_error(const std::vector<float>& x, const std::vector<float>& W, const std::vector<float>& Wq, int64_t N,
                    int64_t K) {
  const int64_t rows = static_cast<int64_t>(x.size()) / K;
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::MatrixXd X = Eigen::Map<const RowMajor>(x.data(), rows, K).cast<double>();
  const Eigen::MatrixXd D = (Eigen::Map<const RowMajor>(W.data(), N, K) - Eigen::Map<const RowMajor>(Wq.data(), N, K))
                                .cast<double>();
  return (X * D.transpose()).squaredNorm();
}

// ½·Σ_n Δ_nᵀ(H + λI)Δ_n, Δ = W − Ŵ (dead inputs: W zeroed and H[k,k] = 1, as GPTQ sees them).
double damped_objective(const std::vector<float>& W, const std::vector<float>& Wq, int64_t N, int64_t K,
                        const Eigen::MatrixXf& H, double damp) {
  Eigen::MatrixXd Hd = H.cast<double>();
  std::vector<bool> dead(K);
  for (int64_t k = 0; k < K; ++k)
    if (Hd(k, k) == 0) dead[k] = true, Hd(k, k) = 1;
  const double lambda = static_cast<float>(damp * Hd.diagonal().mean());
  Hd.diagonal().array() += lambda;
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    Eigen::VectorXd d(K);
    for (int64_t k = 0; k < K; ++k) d[k] = (dead[k] ? 0.0 : W[n * K + k]) - Wq[n * K + k];
    total += 0.5 * d.dot(Hd * d);
  }
  return total;
}

std::vector<float> dequantized(const GptqResult& r) { return dequantize_codes(r.codes.data(), r.grid, r.g_idx.data()); }

// Unblocked GPTQ in fp64, written from the paper's update rule: H⁻¹ explicitly, its upper Cholesky factor, then one
// column at a time with every remaining column updated immediately. Grids and rounding through quant/grid.h.
struct OracleResult {
  std::vector<uint8_t> codes;
  std::vector<float> scale;
  std::vector<uint8_t> zero;
};

OracleResult oracle_gptq(const std::vector<float>& W, int64_t N, int64_t K, const Eigen::MatrixXf& Hf,
                         const GptqOptions& o) {
  Eigen::MatrixXd H = Hf.cast<double>();
  std::vector<bool> dead(K);
  for (int64_t k = 0; k < K; ++k)
    if (H(k, k) == 0) dead[k] = true, H(k, k) = 1;
  std::vector<int64_t> order(K);
  std::iota(order.begin(), order.end(), int64_t{0});
  if (o.desc_act) std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return H(a, a) > H(b, b); });
  const int64_t G = o.group_size == -1 ? K : o.group_size, groups = (K + G - 1) / G;
  std::vector<float> Wd(W);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      if (dead[k]) Wd[n * K + k] = 0;
  OracleResult out;
  out.codes.assign(K * N, 0);
  out.scale.assign(groups * N, 0);
  out.zero.assign(groups * N, 0);
  if (o.static_groups) {
    const GroupGrid g = find_grid(Wd.data(), N, K, o.bits, G, o.sym, GridRule::Gptq);
    out.scale = g.scale;
    out.zero = g.zero;
  }
  Eigen::MatrixXd Hp(K, K);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) Hp(i, j) = H(order[i], order[j]);
  Hp.diagonal().array() += o.damp * H.diagonal().mean();
  const Eigen::MatrixXd Hinv = Hp.inverse();
  const Eigen::MatrixXd U = Hinv.llt().matrixU();
  Eigen::MatrixXd Wp(N, K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < K; ++p) Wp(n, p) = Wd[n * K + order[p]];
  const int maxq = (1 << o.bits) - 1;
  for (int64_t p = 0; p < K; ++p) {
    const int64_t k = order[p];
    const int64_t g = o.static_groups ? k / G : p / G;
    if (!o.static_groups && p % G == 0) {
      const int64_t len = std::min(G, K - p);
      for (int64_t n = 0; n < N; ++n) {
        std::vector<float> vals(len);
        for (int64_t c = 0; c < len; ++c) vals[c] = static_cast<float>(Wp(n, p + c));
        grid_for_group(vals.data(), len, 1, o.bits, o.sym, GridRule::Gptq, &out.scale[g * N + n], &out.zero[g * N + n]);
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      const float s = out.scale[g * N + n];
      const uint8_t z = out.zero[g * N + n];
      const uint8_t q = quantize_value(static_cast<float>(Wp(n, p)), s, z, maxq);
      out.codes[k * N + n] = q;
      const double e = (Wp(n, p) - dequantize_value(q, s, z)) / U(p, p);
      for (int64_t j = p + 1; j < K; ++j) Wp(n, j) -= e * U(p, j);
    }
  }
  return out;
}

std::string describe(const GptqOptions& o) {
  std::ostringstream s;
  s << "bits " << o.bits << " group " << o.group_size << (o.sym ? " sym" : " asym") << " damp " << o.damp
    << (o.desc_act ? " desc_act" : "") << (o.static_groups ? " static" : "") << " block " << o.block_size << " seed "
    << kSeed;
  return s.str();
}

TEST(Hessian, RunningMeanMatchesDirectSum) {
  announce_seed();
  for (int64_t K : {37, 300}) {
    const auto x = correlated_inputs(150, K, kSeed + K);
    HessianAccumulator acc(K);
    acc.add_batch(x.data(), 40);
    acc.add_batch(x.data(), 0);
    acc.add_batch(x.data() + 40 * K, 110);
    EXPECT_EQ(acc.count(), 150);
    Eigen::MatrixXd X(150, K);
    for (int64_t i = 0; i < 150 * K; ++i) X(i / K, i % K) = x[i];
    const Eigen::MatrixXd ref = (2.0 / 150) * X.transpose() * X;
    const Eigen::MatrixXf H = acc.matrix();
    EXPECT_LE((H.cast<double>() - ref).cwiseAbs().maxCoeff(), Tol::kHessianRel * ref.cwiseAbs().maxCoeff()) << "K " << K;
    EXPECT_EQ(H, H.transpose()) << "K " << K;
    EXPECT_EQ(acc.release(), H);
  }
}

TEST(Hessian, RefusesNonFiniteActivations) {
  HessianAccumulator acc(4);
  std::vector<float> x(8, 1.f);
  x[6] = std::nanf("");
  EXPECT_NE(test::error_of([&] { acc.add_batch(x.data(), 2); }).find("activation row 1, input 2 (of K = 4) is nan"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { HessianAccumulator bad(0); }).find("got K = 0"), std::string::npos);
}

TEST(Gptq, IdentityHessianGivesRtnExactly) {
  // H = (1 + λ)·I: U is diagonal, so no error reaches another column and every group sees the original weights.
  announce_seed();
  const int64_t N = 32, K = 256;
  const auto W = random_weights(N, K, kSeed);
  for (int64_t G : {int64_t{128}, int64_t{-1}, int64_t{100}})
    for (bool sym : {false, true})
      for (double damp : {0.0, 0.01})
        for (bool desc : {false, true}) {  // all diagonals tie: the stable order is the identity
          GptqOptions o;
          o.group_size = G, o.sym = sym, o.damp = damp, o.desc_act = desc;
          SCOPED_TRACE(describe(o));
          const GptqResult r = gptq_quantize(W.data(), N, K, Eigen::MatrixXf::Identity(K, K), o);
          const GroupGrid g = find_grid(W.data(), N, K, o.bits, G, sym, GridRule::Gptq);
          EXPECT_EQ(r.grid.scale, g.scale);
          EXPECT_EQ(r.grid.zero, g.zero);
          EXPECT_EQ(r.codes, quantize_rtn(W.data(), g));
          for (int64_t k = 0; k < K; ++k) ASSERT_EQ(r.g_idx[k], k / g.group);
          EXPECT_EQ(r.damp_retries, 0);
        }
}

TEST(Gptq, BeatsRtnOnCorrelatedInputs) {
  announce_seed();
  const int64_t N = 64, K = 256, rows = 512;
  const auto x = correlated_inputs(rows, K, kSeed + 1);
  const auto W = random_weights(N, K, kSeed + 2);
  const Eigen::MatrixXf H = hessian_of(x, K);
  for (int64_t G : {int64_t{128}, int64_t{-1}})
    for (bool sym : {false, true})
      for (bool desc : {false, true}) {
        GptqOptions o;
        o.group_size = G, o.sym = sym, o.desc_act = desc;
        SCOPED_TRACE(describe(o));
        const GptqResult r = gptq_quantize(W.data(), N, K, H, o);
        const GroupGrid g = find_grid(W.data(), N, K, o.bits, G, sym, GridRule::Gptq);
        const auto rtn_codes = quantize_rtn(W.data(), g);
        const double e_rtn = output_error(x, W, dequantize_codes(rtn_codes.data(), g), N, K);
        const double e_gptq = output_error(x, W, dequantized(r), N, K);
        std::printf("[ gptq/rtn ] group %4lld %-4s %-8s  ||X(W-Wq)^T||^2 gptq %.5g rtn %.5g ratio %.3f\n",
                    static_cast<long long>(G), sym ? "sym" : "asym", desc ? "desc_act" : "", e_gptq, e_rtn,
                    e_gptq / e_rtn);
        EXPECT_LT(e_gptq, Tol::kGptqOverRtn * e_rtn);
      }
}

TEST(Gptq, LossIsTheDampedObjectiveOfTheReturnedWeights) {
  // Σ½e² = ½·Δᵀ(H + λI)Δ holds only if ŵ = dequantize_codes(codes, grid, g_idx) is exactly what was fed back.
  announce_seed();
  const int64_t N = 70, K = 200;
  const auto x = correlated_inputs(400, K, kSeed + 3);
  const auto W = random_weights(N, K, kSeed + 4);
  const Eigen::MatrixXf H = hessian_of(x, K);
  for (int64_t G : {int64_t{128}, int64_t{48}, int64_t{-1}})
    for (int variant = 0; variant < 3; ++variant) {
      GptqOptions o;
      o.group_size = G, o.desc_act = variant >= 1, o.static_groups = variant == 2, o.block_size = 32;
      SCOPED_TRACE(describe(o));
      const GptqResult r = gptq_quantize(W.data(), N, K, H, o);
      const double objective = damped_objective(W, dequantized(r), N, K, H, r.damp_used);
      EXPECT_NEAR(r.loss, objective, Tol::kLossIdentityRel * objective);
    }
}

TEST(Gptq, MatchesUnblockedFp64Oracle) {
  announce_seed();
  int compared = 0;
  for (int64_t K : {5, 8})
    for (uint64_t s = 0; s < 6; ++s) {
      const int64_t N = 3;
      const auto x = correlated_inputs(3 * K, K, kSeed + 100 * K + s);
      const auto W = random_weights(N, K, kSeed + 100 * K + s + 50);
      const Eigen::MatrixXf H = hessian_of(x, K);
      for (int64_t G : {int64_t{-1}, int64_t{3}, int64_t{4}})
        for (int variant = 0; variant < 3; ++variant)
          for (int64_t B : {int64_t{1}, int64_t{3}, int64_t{128}}) {
            GptqOptions o;
            o.group_size = G, o.desc_act = variant >= 1, o.static_groups = variant == 2, o.block_size = B;
            o.sym = s % 2 == 1;
            SCOPED_TRACE(describe(o) + " K " + std::to_string(K));
            const GptqResult r = gptq_quantize(W.data(), N, K, H, o);
            const OracleResult ref = oracle_gptq(W, N, K, H, o);
            ASSERT_EQ(r.codes, ref.codes);
            ASSERT_EQ(r.grid.scale, ref.scale);
            ASSERT_EQ(r.grid.zero, ref.zero);
            ++compared;
          }
    }
  EXPECT_EQ(compared, 2 * 6 * 3 * 3 * 3);
}

TEST(Gptq, ActOrderGroupIndexIsAPermutationOfGroups) {
  announce_seed();
  const int64_t N = 32, K = 172, G = 64;
  const auto x = correlated_inputs(300, K, kSeed + 5);
  const auto W = random_weights(N, K, kSeed + 6);
  const Eigen::MatrixXf H = hessian_of(x, K);
  GptqOptions o;
  o.group_size = G, o.desc_act = true;
  const GptqResult r = gptq_quantize(W.data(), N, K, H, o);
  std::vector<int64_t> members(3, 0);
  bool monotone = true;
  for (int64_t k = 0; k < K; ++k) {
    ASSERT_GE(r.g_idx[k], 0);
    ASSERT_LT(r.g_idx[k], 3);
    ++members[r.g_idx[k]];
    if (k > 0 && r.g_idx[k] < r.g_idx[k - 1]) monotone = false;
  }
  EXPECT_EQ(members, (std::vector<int64_t>{64, 64, 44}));
  EXPECT_FALSE(monotone) << "act-order on correlated inputs should scatter the groups";
  for (int64_t p = 0; p < K; ++p) {
    ASSERT_EQ(r.g_idx[r.order[p]], p / G);
    if (p > 0) {
      ASSERT_GE(H(r.order[p - 1], r.order[p - 1]), H(r.order[p], r.order[p]));
    }
  }
  // The dequantized weights lie on the grid of their g_idx group: rounding them again gives the same codes.
  const auto Wq = dequantized(r);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const int64_t g = r.g_idx[k];
      ASSERT_EQ(quantize_value(Wq[n * K + k], r.grid.scale[g * N + n], r.grid.zero[g * N + n], 15), r.codes[k * N + n]);
    }

  o.static_groups = true;
  const GptqResult s = gptq_quantize(W.data(), N, K, H, o);
  for (int64_t k = 0; k < K; ++k) ASSERT_EQ(s.g_idx[k], k / G);
  const GroupGrid g = find_grid(W.data(), N, K, 4, G, false, GridRule::Gptq);
  EXPECT_EQ(s.grid.scale, g.scale);
  EXPECT_EQ(s.grid.zero, g.zero);
  EXPECT_EQ(s.order, r.order);
}

TEST(Gptq, RetriesDampingWhenNotPositiveDefinite) {
  announce_seed();
  const int64_t N = 8, K = 16;
  const auto x = correlated_inputs(6, K, kSeed + 7);  // 6 rows: rank 6 < K
  const auto W = random_weights(N, K, kSeed + 8);
  Eigen::MatrixXf H = hessian_of(x, K);
  const float off = 2.f * std::sqrt(H(0, 0) * H(1, 1));  // [[a, 2√ab], [2√ab, b]] has a negative eigenvalue
  H(0, 1) = H(1, 0) = off;
  GptqOptions o;
  o.damp = 0;
  const GptqResult r = gptq_quantize(W.data(), N, K, H, o);
  std::printf("[ retries  ] damp_used %g after %d retries\n", r.damp_used, r.damp_retries);
  EXPECT_GT(r.damp_used, 0.0);
  EXPECT_GE(r.damp_retries, 1);
  ASSERT_EQ(static_cast<int>(r.warnings.size()), r.damp_retries);
  EXPECT_NE(r.warnings[0].find("not positive definite with damp 0"), std::string::npos) << r.warnings[0];
  // The retry restored the matrix exactly: same result as asking for that damp directly.
  GptqOptions direct = o;
  direct.damp = r.damp_used;
  const GptqResult d = gptq_quantize(W.data(), N, K, H, direct);
  EXPECT_EQ(d.damp_retries, 0);
  EXPECT_EQ(d.codes, r.codes);
  EXPECT_EQ(d.grid.scale, r.grid.scale);
  EXPECT_EQ(d.loss, r.loss);

  o.max_damp_retries = 0;
  const std::string err = test::error_of([&] { gptq_quantize(W.data(), N, K, H, o); });
  EXPECT_NE(err.find("could not factor the Hessian after 0 damp retries"), std::string::npos) << err;
  EXPECT_NE(err.find("not positive definite with damp 0"), std::string::npos) << err;
}

TEST(Gptq, RefusesBadInputs) {
  const int64_t N = 4, K = 8;
  const auto W = random_weights(N, K, kSeed);
  Eigen::MatrixXf H = Eigen::MatrixXf::Identity(K, K);
  H(3, 1) = std::nanf("");
  std::string err = test::error_of([&] { gptq_quantize(W.data(), N, K, H, {}); });
  EXPECT_NE(err.find("Hessian entry (3, 1) is nan"), std::string::npos) << err;
  err = test::error_of([&] { gptq_quantize(W.data(), N, K, Eigen::MatrixXf::Identity(K + 1, K + 1), {}); });
  EXPECT_NE(err.find("Hessian is 9 x 9 but the weight has K = 8 inputs"), std::string::npos) << err;
  GptqOptions o;
  o.group_size = 0;
  err = test::error_of([&] { gptq_quantize(W.data(), N, K, Eigen::MatrixXf::Identity(K, K), o); });
  EXPECT_NE(err.find("group size must be positive or -1, got 0"), std::string::npos) << err;
  H = Eigen::MatrixXf::Identity(K, K);
  H(6, 6) = -0.5f;
  err = test::error_of([&] { gptq_quantize(W.data(), N, K, H, {}); });
  EXPECT_NE(err.find("Hessian diagonal entry 6 is -0.5 < 0"), std::string::npos) << err;
  auto Wbad = W;
  Wbad[2 * K + 5] = INFINITY;
  err = test::error_of([&] { gptq_quantize(Wbad.data(), N, K, Eigen::MatrixXf::Identity(K, K), {}); });
  EXPECT_NE(err.find("weight [2, 5] is inf"), std::string::npos) << err;
}

TEST(Gptq, DeadInputsAreZeroed) {
  announce_seed();
  const int64_t N = 16, K = 40;
  auto x = correlated_inputs(100, K, kSeed + 9);
  for (int64_t r = 0; r < 100; ++r) x[r * K + 7] = 0.f;
  const auto W = random_weights(N, K, kSeed + 10);
  const Eigen::MatrixXf H = hessian_of(x, K);
  ASSERT_EQ(H(7, 7), 0.f);
  GptqOptions o;
  o.group_size = 16, o.desc_act = true;
  const GptqResult r = gptq_quantize(W.data(), N, K, H, o);
  const auto Wq = dequantized(r);
  for (int64_t n = 0; n < N; ++n) EXPECT_EQ(Wq[n * K + 7], 0.f) << "row " << n;
  EXPECT_NEAR(r.loss, damped_objective(W, Wq, N, K, H, r.damp_used), Tol::kLossIdentityRel * r.loss);
}

TEST(Gptq, OddShapes) {
  announce_seed();
  struct Shape {
    int64_t N, K, G;
  };
  for (Shape sh : {Shape{24, 172, 128}, Shape{24, 172, 64}, Shape{1, 8, 128}, Shape{1, 8, -1}, Shape{5, 8, 4}}) {
    const auto x = correlated_inputs(4 * sh.K, sh.K, kSeed + 11 + sh.K);
    const auto W = random_weights(sh.N, sh.K, kSeed + 12 + sh.N);
    const Eigen::MatrixXf H = hessian_of(x, sh.K);
    for (bool desc : {false, true}) {
      GptqOptions o;
      o.group_size = sh.G, o.desc_act = desc;
      SCOPED_TRACE(describe(o) + " N " + std::to_string(sh.N) + " K " + std::to_string(sh.K));
      const GptqResult r = gptq_quantize(W.data(), sh.N, sh.K, H, o);
      const int64_t G = sh.G == -1 ? sh.K : sh.G;
      EXPECT_EQ(r.grid.num_groups(), (sh.K + G - 1) / G);
      EXPECT_EQ(r.codes.size(), static_cast<size_t>(sh.N * sh.K));
      for (uint8_t c : r.codes) ASSERT_LE(c, 15);
      const double objective = damped_objective(W, dequantized(r), sh.N, sh.K, H, r.damp_used);
      EXPECT_NEAR(r.loss, objective, Tol::kLossIdentityRel * objective);
    }
  }
}

TEST(Gptq, SameResultForAnyThreadCountAndNearlyAnyBlockSize) {
  announce_seed();
  // Large enough that the Hessian update, the Cholesky, the inverse and the row chunks all go parallel.
  const int64_t N = 200, K = 384;
  const auto x = correlated_inputs(500, K, kSeed + 13);
  const auto W = random_weights(N, K, kSeed + 14);
  GptqOptions o;
  o.group_size = 48, o.desc_act = true;
  const int threads = num_threads();
  set_num_threads(1);
  const Eigen::MatrixXf H = hessian_of(x, K);
  const GptqResult one = gptq_quantize(W.data(), N, K, H, o);
  set_num_threads(2);
  const Eigen::MatrixXf H2 = hessian_of(x, K);
  const GptqResult two = gptq_quantize(W.data(), N, K, H, o);
  set_num_threads(threads);
  EXPECT_EQ(H, H2);
  EXPECT_EQ(one.codes, two.codes);
  EXPECT_EQ(one.grid.scale, two.grid.scale);
  EXPECT_EQ(one.loss, two.loss);

  // Block size changes only the fp32 summation order of the updates: codes may flip where a value sits on a
  // rounding boundary, nothing more.
  o.block_size = 7;
  const GptqResult small = gptq_quantize(W.data(), N, K, H, o);
  int64_t same = 0;
  for (size_t i = 0; i < one.codes.size(); ++i) same += one.codes[i] == small.codes[i];
  const double agreement = static_cast<double>(same) / one.codes.size();
  std::printf("[ blocks   ] block 128 vs 7: %.5f of codes equal, loss %.6g vs %.6g\n", agreement, one.loss, small.loss);
  EXPECT_GE(agreement, Tol::kBlockAgreement);
  EXPECT_NEAR(small.loss, one.loss, Tol::kBlockLossRel * one.loss);
}

}  // namespace
}  // namespace qwenq
