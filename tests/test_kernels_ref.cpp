// CPU kernels against plain double-precision loops written here, on seeded random data, over shapes that mix
// awkward sizes (1, 3, 17, 127, K = 172, tails of every vector width) with real Qwen2.5 shapes kept small in
// M. Inputs are the same for kernel and oracle: 16-bit weights are widened with core's to_f32 for the oracle,
// so the only differences are fp32 rounding and summation order, bounded by the tolerances below relative to
// the magnitude of what is summed. Also: the error messages of bad shapes and dtypes, and device selection.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "kernels/act.h"
#include "kernels/attention.h"
#include "kernels/convert.h"
#include "kernels/device.h"
#include "kernels/gemm.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/qgemm.h"
#include "kernels/rope.h"

namespace qwenq {
namespace {

// ---- tolerances (observed worst cases are 3-10x below these) ----------------------------------------------
// linear:    |y - ref| <= kGemmTol · Σ_k |x_k w_k| + kFloatEps · |bias|
// rmsnorm:   |y - ref| <= kNormTol · |ref|
// rope:      |y - ref| <= kRopeTol · (|x_i| + |x_{i+D/2}|)      (ref: fp32 angles, double trigonometry)
// attention: |out - ref| <= kAttnTol · max_j |v_j| · (1 + A), |lse - ref| <= kLseTol · (1 + A),
//            A = max_j Σ_d |q_d k_jd| / sqrt(D), the magnitude of the largest score's terms
// swiglu:    |y - ref| <= kSwigluTol · |ref| + kTiny
// xent:      |nll - ref| <= kXentTol · (1 + |lse| + |logit_target|)
constexpr double kFloatEps = 1.1920928955078125e-7;
constexpr double kGemmTol = 2e-6;
constexpr double kNormTol = 2e-6;
constexpr double kRopeTol = 4e-7;
constexpr double kAttnTol = 2e-6;
constexpr double kLseTol = 2e-6;
constexpr double kSwigluTol = 1e-6;
constexpr double kTiny = 1e-37;
constexpr double kXentTol = 1e-6;

// ---- helpers ----------------------------------------------------------------------------------------------

std::vector<float> uniform(Rng& rng, size_t n, float lo, float hi) {
  std::vector<float> v(n);
  for (auto& f : v) f = rng.uniform(lo, hi);
  return v;
}

std::vector<float> normal(Rng& rng, size_t n, double sigma) {
  std::vector<float> v(n);
  for (auto& f : v) f = static_cast<float>(rng.normal() * sigma);
  return v;
}

// fp32 values stored as `t`: the raw bytes, and the exact fp32 values they hold (what the kernel must use).
struct Stored {
  std::vector<uint8_t> bytes;
  std::vector<float> widened;
};

Stored store(DType t, const std::vector<float>& v) {
  Stored s;
  s.bytes.resize(v.size() * dtype_size(t));
  from_f32(t, v.data(), s.bytes.data(), v.size());
  s.widened.resize(v.size());
  to_f32(t, s.bytes.data(), s.widened.data(), v.size());
  return s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no qwenq::Error thrown)";
}

#define EXPECT_ERROR_CONTAINS(stmt, text)                          \
  do {                                                             \
    const std::string msg_ = error_of([&] { stmt; });              \
    EXPECT_NE(msg_.find(text), std::string::npos) << "message: " << msg_; \
  } while (0)

// Tracks the worst error / tolerance of a test and prints it at the end: the headroom the tolerance leaves.
class Headroom {
 public:
  explicit Headroom(const char* what) : what_(what) {}
  ~Headroom() { std::printf("[ headroom ] %s: worst error = %.3g of the tolerance\n", what_, worst_); }
  bool ok(double err, double tol) {
    worst_ = std::max(worst_, err / tol);
    return err <= tol;
  }

 private:
  const char* what_;
  double worst_ = 0;
};

// Runs the body with 1, 3 (more chunks than cores) and the default number of threads.
class ThreadSweep {
 public:
  ThreadSweep() : saved_(num_threads()) {}
  ~ThreadSweep() { set_num_threads(saved_); }
  std::vector<int> counts() const { return {1, 3, saved_}; }

 private:
  int saved_;
};

// ---- linear -----------------------------------------------------------------------------------------------

struct GemmShape {
  int64_t M, K, N;
};

// M: 1..23 take the dot-product path, 24+ the Eigen path (and M > 256 several row tiles).
const GemmShape kGemmShapes[] = {
    {1, 1, 1},     {1, 3, 17},    {3, 17, 5},     {2, 16, 4},    {17, 127, 3},  {2, 172, 127},
    {7, 172, 33},  {23, 33, 9},   {24, 172, 17},  {25, 127, 49}, {127, 17, 130}, {130, 172, 259},
    {257, 33, 45}, {1, 896, 4864}, {7, 896, 4864}, {1, 4864, 896}, {7, 4864, 896}, {7, 896, 128},
    {64, 896, 96}, {33, 4864, 40},
};

void check_linear(const GemmShape& s, DType wt, bool with_bias, uint64_t seed, Headroom* hr) {
  Rng rng(seed);
  const std::vector<float> x = uniform(rng, s.M * s.K, -1.f, 1.f);
  std::vector<float> w0 = uniform(rng, s.N * s.K, -1.f, 1.f);
  for (size_t i = 0; i < w0.size(); i += 7) w0[i] *= 4e-6f;  // f16 subnormals, tiny bf16
  const Stored w = store(wt, w0);
  const Stored b = store(wt, uniform(rng, s.N, -2.f, 2.f));
  std::vector<float> y(s.M * s.N, NAN);
  linear_forward_ref(x.data(), s.M, s.K, w.bytes.data(), wt, s.N, with_bias ? b.bytes.data() : nullptr, wt,
                     y.data());
  for (int64_t m = 0; m < s.M; ++m)
    for (int64_t n = 0; n < s.N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < s.K; ++k) {
        const double p = static_cast<double>(x[m * s.K + k]) * w.widened[n * s.K + k];
        ref += p;
        mag += std::fabs(p);
      }
      double bias = with_bias ? b.widened[n] : 0.0;
      ref += bias;
      const double err = std::fabs(y[m * s.N + n] - ref);
      const double tol = kGemmTol * mag + kFloatEps * std::fabs(bias) + 1e-30;
      if (!hr->ok(err, tol)) {
        ADD_FAILURE() << "linear M=" << s.M << " K=" << s.K << " N=" << s.N << " " << dtype_name(wt)
                      << (with_bias ? " +bias" : "") << " y[" << m << "," << n << "]=" << y[m * s.N + n]
                      << " ref=" << ref << " err=" << err << " tol=" << tol;
        return;
      }
    }
}

// store_row_ref: the row at the index in memory, the other rows untouched; BF16 rounds as f32_to_bf16; an index
// outside [0, rows) and a dtype other than F32/BF16 are refused by name.
TEST(KernelsRef, StoreRowWritesTheIndexedRowOnly) {
  const float x[3] = {1.5f, -2.25f, 1.0f + 1.0f / 256.0f + 1.0f / 1024.0f};  // the last rounds up in bf16
  std::vector<float> f32(4 * 3, 7.f);
  const int32_t row = 2;
  store_row_ref(x, 3, &row, 4, f32.data(), DType::F32);
  for (int r = 0; r < 4; ++r)
    for (int i = 0; i < 3; ++i) EXPECT_EQ(f32[r * 3 + i], r == 2 ? x[i] : 7.f) << r << "," << i;
  std::vector<uint16_t> b16(4 * 3, 0x1234);
  store_row_ref(x, 3, &row, 4, b16.data(), DType::BF16);
  for (int r = 0; r < 4; ++r)
    for (int i = 0; i < 3; ++i) EXPECT_EQ(b16[r * 3 + i], r == 2 ? f32_to_bf16(x[i]) : 0x1234) << r << "," << i;
  EXPECT_EQ(bf16_to_f32(b16[2 * 3 + 2]), 1.0f + 1.0f / 128.0f);
  const int32_t bad = 4;
  try {
    store_row_ref(x, 3, &bad, 4, f32.data(), DType::F32);
    ADD_FAILURE() << "no error for row 4 of 4";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("store_row_ref: row 4 is outside [0, 4)"), std::string::npos) << e.what();
  }
  try {
    store_row_ref(x, 3, &row, 4, f32.data(), DType::F16);
    ADD_FAILURE() << "no error for an F16 cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cache dtype F16 is not supported"), std::string::npos) << e.what();
  }
}

TEST(KernelsRef, LinearMatchesDoubleOracle) {
  Headroom hr("linear");
  uint64_t seed = 100;
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (const GemmShape& s : kGemmShapes) {
      SCOPED_TRACE(testing::Message() << dtype_name(wt) << " M=" << s.M << " K=" << s.K << " N=" << s.N);
      check_linear(s, wt, /*with_bias=*/(seed % 2) == 0, seed, &hr);
      ++seed;
    }
}

TEST(KernelsRef, LinearWithBiasAndAnyThreadCount) {
  ThreadSweep sweep;
  Headroom hr("linear, thread sweep");
  const GemmShape shapes[] = {{1, 172, 131}, {5, 896, 67}, {40, 127, 301}, {300, 64, 33}};
  for (int threads : sweep.counts()) {
    set_num_threads(threads);
    for (const GemmShape& s : shapes)
      for (DType wt : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(testing::Message() << threads << " threads, " << dtype_name(wt) << " M=" << s.M);
        check_linear(s, wt, true, 7 + s.M, &hr);
      }
  }
}

// Below the Eigen path's rows (the decode kernel), a row of y has the same bits alone as among others: a batched
// decode step (QwenModel::forward_steps) relies on it. K with and without a tail past the 16-wide blocks, every
// weight dtype, 1 to 23 rows against each row alone. (Before the tail's fma was written out, K = 172 and 17 differed.)
TEST(KernelsRef, LinearRowsHaveTheSameBitsAloneOrTogether) {
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (const int64_t K : {int64_t{17}, int64_t{64}, int64_t{172}, int64_t{896}}) {
      const int64_t N = 37, M = 23;
      Rng rng(K);
      std::vector<float> x(M * K), wf(N * K), y(M * N), one(N);
      for (auto& v : x) v = static_cast<float>(rng.normal());
      for (auto& v : wf) v = static_cast<float>(rng.normal());
      std::vector<uint16_t> w16(wf.size());
      const void* w = wf.data();
      if (wt != DType::F32) {
        from_f32(wt, wf.data(), w16.data(), wf.size());
        w = w16.data();
      }
      for (const int64_t rows : {M, int64_t{2}, int64_t{3}}) {
        linear_forward_ref(x.data(), rows, K, w, wt, N, nullptr, DType::F32, y.data());
        for (int64_t m = 0; m < rows; ++m) {
          linear_forward_ref(x.data() + m * K, 1, K, w, wt, N, nullptr, DType::F32, one.data());
          ASSERT_TRUE(std::equal(one.begin(), one.end(), y.begin() + m * N))
              << dtype_name(wt) << " K=" << K << ": row " << m << " of " << rows;
        }
      }
    }
}

TEST(KernelsRef, LinearBiasDtypeMayDifferFromWeight) {
  Rng rng(3);
  const int64_t M = 3, K = 20, N = 6;
  const std::vector<float> x = uniform(rng, M * K, -1.f, 1.f), w = uniform(rng, N * K, -1.f, 1.f);
  const Stored b = store(DType::BF16, uniform(rng, N, -1.f, 1.f));
  std::vector<float> y(M * N);
  linear_forward_ref(x.data(), M, K, w.data(), DType::F32, N, b.bytes.data(), DType::BF16, y.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = b.widened[n];
      for (int64_t k = 0; k < K; ++k) ref += static_cast<double>(x[m * K + k]) * w[n * K + k];
      EXPECT_NEAR(y[m * N + n], ref, 1e-5);
    }
}

TEST(KernelsRef, LinearRejectsBadShapesAndDtypes) {
  std::vector<float> x(64, 1.f), w(64, 1.f), y(64);
  EXPECT_ERROR_CONTAINS(linear_forward_ref(x.data(), 0, 4, w.data(), DType::F32, 4, nullptr, DType::F32, y.data()),
                        "linear_forward_ref: shapes must be positive, got M=0 K=4 N=4");
  EXPECT_ERROR_CONTAINS(linear_forward_ref(x.data(), 2, -1, w.data(), DType::F32, 4, nullptr, DType::F32, y.data()),
                        "got M=2 K=-1 N=4");
  EXPECT_ERROR_CONTAINS(linear_forward_ref(x.data(), 2, 4, w.data(), DType::I8, 4, nullptr, DType::F32, y.data()),
                        "linear_forward_ref: weight dtype I8 is not supported (F32, BF16 or F16)");
  EXPECT_ERROR_CONTAINS(linear_forward_ref(x.data(), 2, 4, w.data(), DType::F64, 4, nullptr, DType::F32, y.data()),
                        "weight dtype F64 is not supported");
  EXPECT_ERROR_CONTAINS(linear_forward_ref(x.data(), 2, 4, w.data(), DType::F32, 4, w.data(), DType::I32, y.data()),
                        "linear_forward_ref: bias dtype I32 is not supported");
  EXPECT_ERROR_CONTAINS(linear_forward_ref(x.data(), 2, 4, w.data(), DType::F32, 4, nullptr, DType::F32, x.data()),
                        "output y overlaps input x");
  // A null bias ignores the bias dtype.
  EXPECT_NO_THROW(linear_forward_ref(x.data(), 2, 4, w.data(), DType::F32, 4, nullptr, DType::I8, y.data()));
}

// ---- rmsnorm ----------------------------------------------------------------------------------------------

TEST(KernelsRef, RmsNormMatchesDoubleOracle) {
  const int64_t rows_list[] = {1, 3, 17};
  const int64_t C_list[] = {1, 7, 127, 896, 4864};
  Headroom hr("rmsnorm");
  uint64_t seed = 200;
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (int64_t rows : rows_list)
      for (int64_t C : C_list)
        for (bool in_place : {false, true}) {
          SCOPED_TRACE(testing::Message() << dtype_name(wt) << " rows=" << rows << " C=" << C << " in_place=" << in_place);
          Rng rng(++seed);
          const std::vector<float> x = normal(rng, rows * C, 3.0);
          const Stored w = store(wt, uniform(rng, C, -2.f, 2.f));
          const float eps = (seed % 2) ? 1e-6f : 1e-5f;
          std::vector<float> y = x;
          rmsnorm_forward_ref(in_place ? y.data() : x.data(), rows, C, w.bytes.data(), wt, eps, y.data());
          for (int64_t r = 0; r < rows; ++r) {
            double ss = 0;
            for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(x[r * C + c]) * x[r * C + c];
            const double inv = 1.0 / std::sqrt(ss / C + eps);
            for (int64_t c = 0; c < C; ++c) {
              const double ref = w.widened[c] * (x[r * C + c] * inv);
              const double err = std::fabs(y[r * C + c] - ref);
              ASSERT_TRUE(hr.ok(err, kNormTol * std::fabs(ref) + 1e-30)) << "y[" << r << "," << c << "]=" << y[r * C + c]
                                                                 << " ref=" << ref;
            }
          }
        }
}

TEST(KernelsRef, RmsNormOfZerosIsZeroAndErrorsAreClear) {
  std::vector<float> x(8, 0.f), w(8, 1.f), y(8, NAN);
  rmsnorm_forward_ref(x.data(), 1, 8, w.data(), DType::F32, 1e-6f, y.data());
  for (float v : y) EXPECT_EQ(v, 0.f);
  EXPECT_ERROR_CONTAINS(rmsnorm_forward_ref(x.data(), 1, 8, w.data(), DType::I32, 1e-6f, y.data()),
                        "rmsnorm_forward_ref: weight dtype I32 is not supported");
  EXPECT_ERROR_CONTAINS(rmsnorm_forward_ref(x.data(), 1, 0, w.data(), DType::F32, 1e-6f, y.data()),
                        "rmsnorm_forward_ref: bad shape rows=1 C=0");
}

// ---- rope -------------------------------------------------------------------------------------------------

// transformers' inv_freq, in fp32 exactly as the kernel must compute it.
float inv_freq_f32(float theta, int64_t i, int64_t D) {
  return 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(D));
}

// Rotation in double of s·R(angle)·x with the fp32 angle pos·inv_freq[i] of the given table (exact_angle: the
// default angle in double instead, for contrast). The table itself is checked in tests/test_rope_table.cpp.
std::vector<double> rope_oracle(const std::vector<float>& x, int64_t T, int64_t H, int64_t D,
                                const std::vector<int32_t>& pos, float theta, const std::vector<float>& inv_freq,
                                double scale, bool exact_angle) {
  std::vector<double> y(x.size());
  const int64_t half = D / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = exact_angle ? pos[t] * std::pow(static_cast<double>(theta), -2.0 * i / D)
                                       : static_cast<double>(static_cast<float>(pos[t]) * inv_freq[i]);
      const double c = scale * std::cos(angle), s = scale * std::sin(angle);
      for (int64_t h = 0; h < H; ++h) {
        const double a = x[(t * H + h) * D + i], b = x[(t * H + h) * D + i + half];
        y[(t * H + h) * D + i] = a * c - b * s;
        y[(t * H + h) * D + i + half] = b * c + a * s;
      }
    }
  return y;
}

std::vector<float> default_inv_freq(float theta, int64_t D) {
  std::vector<float> f(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) f[i] = inv_freq_f32(theta, i, D);
  return f;
}

// The scaled specs: yarn with an attention factor (cos and sin scaled by 1.25), linear and llama3.
std::vector<RopeSpec> scaled_rope_specs(float theta) {
  RopeSpec yarn = rope_spec_default(theta), linear = yarn, llama3 = yarn;
  yarn.type = RopeType::Yarn;
  yarn.factor = 4;
  yarn.original_max_position_embeddings = 4096;
  yarn.attention_factor = 1.25;
  linear.type = RopeType::Linear;
  linear.factor = 3;
  llama3.type = RopeType::Llama3;
  llama3.factor = 8;
  llama3.original_max_position_embeddings = 8192;
  return {yarn, linear, llama3};
}

TEST(KernelsRef, RopeMatchesFormulaWithFp32Angles) {
  const int64_t T = 9;
  const std::vector<int32_t> pos = {0, 1, 2, 17, 127, 1000, 4095, 32767, 131071};
  Headroom hr("rope");
  uint64_t seed = 300;
  for (float theta : {10000.0f, 1000000.0f})
    for (int64_t H : {1, 3, 14})
      for (int64_t D : {2, 8, 64, 128}) {
        std::vector<RopeSpec> specs = scaled_rope_specs(theta);
        specs.insert(specs.begin(), rope_spec_default(theta));
        for (const RopeSpec& spec : specs) {
          SCOPED_TRACE(testing::Message() << "theta=" << theta << " H=" << H << " D=" << D << " rope "
                                          << rope_type_name(spec.type));
          Rng rng(++seed);
          const std::vector<float> x = uniform(rng, T * H * D, -2.f, 2.f);
          std::vector<float> y = x;
          rope_forward_ref(y.data(), T, H, D, pos.data(), spec);
          // The default table must be transformers' 1/θ^(2i/D) itself, not just any table.
          const std::vector<float> inv_freq =
              spec.type == RopeType::Default ? default_inv_freq(theta, D) : rope_table(spec, D).inv_freq;
          const double scale = spec.attention_factor;
          const std::vector<double> ref = rope_oracle(x, T, H, D, pos, theta, inv_freq, scale, false);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t h = 0; h < H; ++h)
              for (int64_t d = 0; d < D; ++d) {
                const int64_t idx = (t * H + h) * D + d, pair = (t * H + h) * D + (d + D / 2) % D;
                const double tol = kRopeTol * scale * (std::fabs(x[idx]) + std::fabs(x[pair]));
                ASSERT_TRUE(hr.ok(std::fabs(y[idx] - ref[idx]), tol))
                    << "t=" << t << " pos=" << pos[t] << " h=" << h << " d=" << d;
              }
        }
      }
}

TEST(KernelsRef, RopeUsesFp32AnglesLikeTransformers) {
  // At position 131071 the fp32 product pos·inv_freq is off the exact angle by up to ~0.004 rad; transformers
  // rotates by the fp32 angle, and so must we.
  const int64_t H = 1, D = 64;
  const std::vector<int32_t> pos = {131071};
  Rng rng(5);
  const std::vector<float> x = uniform(rng, D, -1.f, 1.f);
  std::vector<float> y = x;
  rope_forward_ref(y.data(), 1, H, D, pos.data(), rope_spec_default(1000000.0));
  const std::vector<double> exact = rope_oracle(x, 1, H, D, pos, 1000000.0f, default_inv_freq(1e6f, D), 1.0, true);
  double worst = 0;
  for (int64_t d = 0; d < D; ++d) worst = std::max(worst, std::fabs(y[d] - exact[d]));
  EXPECT_GT(worst, 1e-4) << "rotation looks computed with exact (double) angles, not transformers' fp32 ones";
  // Position 0 is the identity.
  std::vector<float> z = x;
  const int32_t zero = 0;
  rope_forward_ref(z.data(), 1, H, D, &zero, rope_spec_default(1000000.0));
  EXPECT_EQ(z, x);
}

TEST(KernelsRef, RopeRejectsOddHeadDim) {
  std::vector<float> x(6);
  const int32_t p = 0;
  const RopeSpec rope = rope_spec_default(10000.0);
  EXPECT_ERROR_CONTAINS(rope_forward_ref(x.data(), 1, 2, 3, &p, rope), "rope_forward_ref: head dim D=3 must be even");
  EXPECT_ERROR_CONTAINS(rope_forward_ref(x.data(), 1, 0, 2, &p, rope), "rope_forward_ref: bad shape T=1 H=0 D=2");
  EXPECT_ERROR_CONTAINS(rope_forward_ref(x.data(), 1, 1, 2, &p, rope_spec_default(0.0)),
                        "rope_forward_ref: rope theta must be > 0, got 0");
  RopeSpec yarn = rope_spec_default(10000.0);
  yarn.type = RopeType::Yarn;
  yarn.factor = 4;
  EXPECT_ERROR_CONTAINS(rope_forward_ref(x.data(), 1, 1, 2, &p, yarn),
                        "rope_forward_ref: rope_scaling yarn needs original_max_position_embeddings > 0, got 0");
}

// ---- attention --------------------------------------------------------------------------------------------

struct AttnCase {
  int64_t H, Hkv, D;
  std::vector<int32_t> seqlens;
};

// Checks query rows `rows` (all rows when empty) against a double softmax. With suffix_from = p0 >= 0 (one sequence)
// the rows p0.. come from attention_forward_suffix_ref instead, the rows before p0 being its cache (no lse).
void check_attention(const AttnCase& c, uint64_t seed, double sigma, Headroom* hr,
                     const std::vector<int64_t>& rows_to_check = {}, int64_t suffix_from = -1) {
  std::vector<int32_t> cu = {0};
  for (int32_t L : c.seqlens) cu.push_back(cu.back() + L);
  const int64_t T = cu.back(), H = c.H, Hkv = c.Hkv, D = c.D, group = H / Hkv;
  Rng rng(seed);
  const std::vector<float> q = normal(rng, T * H * D, sigma), k = normal(rng, T * Hkv * D, sigma),
                           v = uniform(rng, T * Hkv * D, -1.f, 1.f);
  std::vector<float> out(T * H * D, NAN), lse(T * H, NAN);
  if (suffix_from >= 0) {
    ASSERT_EQ(c.seqlens.size(), 1u);
    attention_forward_suffix_ref(q.data() + suffix_from * H * D, k.data(), v.data(), suffix_from, T - suffix_from, H,
                                 Hkv, D, out.data() + suffix_from * H * D);
  } else {
    attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), static_cast<int64_t>(c.seqlens.size()), H, Hkv, D,
                          out.data(), lse.data());
  }

  std::vector<int64_t> rows = rows_to_check;
  if (rows.empty())
    for (int64_t i = std::max<int64_t>(suffix_from, 0); i < T; ++i) rows.push_back(i);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> s, o(D);
  for (int64_t i : rows) {
    const int64_t seq = std::upper_bound(cu.begin(), cu.end(), static_cast<int32_t>(i)) - cu.begin() - 1;
    const int64_t b = cu[seq];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      s.assign(i - b + 1, 0.0);
      double mx = -INFINITY, amax = 0, vmax = 0;  // amax: largest Σ_d |q_d k_d| · scale of the row
      for (int64_t j = b; j <= i; ++j) {
        double dot = 0, abs_dot = 0;
        for (int64_t d = 0; d < D; ++d) {
          const double p = static_cast<double>(q[(i * H + h) * D + d]) * k[(j * Hkv + g) * D + d];
          dot += p;
          abs_dot += std::fabs(p);
        }
        s[j - b] = dot * scale;
        mx = std::max(mx, s[j - b]);
        amax = std::max(amax, abs_dot * scale);
      }
      double l = 0;
      for (double& e : s) l += (e = std::exp(e - mx));
      std::fill(o.begin(), o.end(), 0.0);
      for (int64_t j = b; j <= i; ++j)
        for (int64_t d = 0; d < D; ++d) {
          o[d] += s[j - b] / l * v[(j * Hkv + g) * D + d];
          vmax = std::max(vmax, std::fabs(static_cast<double>(v[(j * Hkv + g) * D + d])));
        }
      for (int64_t d = 0; d < D; ++d) {
        const double got = out[(i * H + h) * D + d];
        ASSERT_TRUE(hr->ok(std::fabs(got - o[d]), kAttnTol * vmax * (1 + amax)))
            << "out[row " << i << ", head " << h << ", " << d << "]=" << got << " ref=" << o[d];
      }
      const double lse_ref = mx + std::log(l);
      if (suffix_from >= 0) continue;
      ASSERT_TRUE(hr->ok(std::fabs(lse[i * H + h] - lse_ref), kLseTol * (1 + amax)))
          << "lse[row " << i << ", head " << h << "]=" << lse[i * H + h] << " ref=" << lse_ref;
    }
  }
}

TEST(KernelsRef, AttentionMatchesDoubleOracle) {
  // GQA ratios 1, 2, 7, 8; head dims 8, 64, 128; several packed sequences of odd lengths (and an empty one).
  const AttnCase cases[] = {
      {1, 1, 8, {1}},
      {2, 2, 8, {3, 17, 1, 40}},
      {4, 2, 64, {5, 0, 33, 70}},
      {14, 2, 64, {13, 37}},  // Qwen2.5-0.5B: 14 query heads, 2 kv heads
      {7, 1, 128, {9, 65}},
      {8, 1, 64, {1, 2, 3, 127}},
      {16, 2, 128, {31}},
      {3, 3, 8, {129}},
      {6, 2, 64, {300, 7}},  // several key blocks per row: the online-softmax rescaling matters
  };
  Headroom hr("attention");
  uint64_t seed = 400;
  for (const AttnCase& c : cases) {
    for (double sigma : {1.0, 3.0}) {  // sigma 3: peaked softmax, large scores
      SCOPED_TRACE(testing::Message() << "H=" << c.H << " Hkv=" << c.Hkv << " D=" << c.D << " sigma=" << sigma);
      check_attention(c, ++seed, sigma, &hr);
    }
  }
}

TEST(KernelsRef, AttentionAnyThreadCount) {
  ThreadSweep sweep;
  Headroom hr("attention, thread sweep");
  for (int threads : sweep.counts()) {
    set_num_threads(threads);
    SCOPED_TRACE(testing::Message() << threads << " threads");
    check_attention({4, 2, 64, {70, 1, 45, 200}}, 11, 1.5, &hr);
  }
}

TEST(KernelsRef, AttentionLongSequence) {
  // T = 4096 in one sequence: memory stays at one row of scores per thread; check a sample of rows.
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < 4096; i += 331) rows.push_back(i);
  rows.push_back(4095);
  Headroom hr("attention, T=4096");
  check_attention({2, 1, 8, {4096}}, 12, 1.0, &hr, rows);
}

TEST(KernelsRef, AttentionLseMayBeNullAndErrorsAreClear) {
  const int64_t T = 5, H = 2, Hkv = 1, D = 8;
  Rng rng(13);
  const std::vector<float> q = normal(rng, T * H * D, 1), k = normal(rng, T * Hkv * D, 1), v = normal(rng, T * Hkv * D, 1);
  const std::vector<int32_t> cu = {0, 2, 5};
  std::vector<float> out1(T * H * D), out2(T * H * D), lse(T * H);
  attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), 2, H, Hkv, D, out1.data(), lse.data());
  attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), 2, H, Hkv, D, out2.data(), nullptr);
  EXPECT_EQ(out1, out2);
  // The first row of each sequence attends only to itself: out = v of that row, lse = its score.
  for (int64_t d = 0; d < D; ++d) EXPECT_FLOAT_EQ(out1[(2 * H + 1) * D + d], v[(2 * Hkv) * D + d]);

  EXPECT_ERROR_CONTAINS(attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), 2, 3, 2, D, out1.data(), nullptr),
                        "attention_forward_ref: query heads H=3 must be a multiple of kv heads Hkv=2");
  const std::vector<int32_t> bad_start = {1, 5}, decreasing = {0, 4, 3};
  EXPECT_ERROR_CONTAINS(
      attention_forward_ref(q.data(), k.data(), v.data(), bad_start.data(), 1, H, Hkv, D, out1.data(), nullptr),
      "cu_seqlens[0] must be 0, got 1");
  EXPECT_ERROR_CONTAINS(
      attention_forward_ref(q.data(), k.data(), v.data(), decreasing.data(), 2, H, Hkv, D, out1.data(), nullptr),
      "cu_seqlens must be non-decreasing, got 4 then 3 at sequence 1");
  EXPECT_ERROR_CONTAINS(attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), 2, H, Hkv, 0, out1.data(), nullptr),
                        "attention_forward_ref: bad shape n_seqs=2 H=2 Hkv=1 D=0");
}

// attention_forward_suffix_ref (a KV cache's new rows: queries p0 .. p0 + n - 1 over keys 0 .. p0 + n - 1) against the
// double softmax, as the whole forward above: prefixes inside and across query and key blocks, GQA 7:1 and 14:2 and
// none, head dims 8, 64 and 128, one and several threads. (Not bit for bit the whole forward's rows: a query block
// starts at p0, and Eigen sums a one-row block in another order.)
TEST(KernelsRef, AttentionSuffixMatchesDoubleOracle) {
  const std::pair<int64_t, int64_t> spans[] = {{0, 1},   {0, 45},  {1, 1},    {31, 2},  {32, 33},
                                               {100, 60}, {127, 3}, {129, 200}, {300, 1}};
  ThreadSweep sweep;
  Headroom hr("attention suffix");
  uint64_t seed = 700;
  for (int threads : sweep.counts()) {
    set_num_threads(threads);
    for (const AttnCase& c : {AttnCase{14, 2, 64, {}}, AttnCase{7, 1, 128, {}}, AttnCase{3, 3, 8, {}}}) {
      for (const auto& [p0, n] : spans) {
        SCOPED_TRACE(testing::Message() << "H=" << c.H << " Hkv=" << c.Hkv << " D=" << c.D << " p0=" << p0 << " n=" << n
                                        << ", " << threads << " threads");
        AttnCase one = c;
        one.seqlens = {static_cast<int32_t>(p0 + n)};
        check_attention(one, ++seed, 1.5, &hr, {}, p0);
      }
    }
  }
  std::vector<float> x(64, 1.f);
  EXPECT_ERROR_CONTAINS(attention_forward_suffix_ref(x.data(), x.data(), x.data(), 2, 1, 3, 2, 8, x.data()),
                        "attention_forward_suffix_ref: bad shape p0=2 n=1 H=3 Hkv=2 D=8");
  EXPECT_ERROR_CONTAINS(attention_forward_suffix_ref(x.data(), nullptr, x.data(), 2, 1, 2, 1, 8, x.data()),
                        "attention_forward_suffix_ref: null pointer");
}

// ---- swiglu -----------------------------------------------------------------------------------------------

TEST(KernelsRef, SwigluMatchesDoubleOracle) {
  Headroom hr("swiglu");
  for (int64_t n : {1, 17, 100003}) {
    Rng rng(500 + n);
    std::vector<float> gate = uniform(rng, n, -20.f, 20.f);
    const std::vector<float> up = uniform(rng, n, -3.f, 3.f);
    const float extremes[] = {-1e4f, -100.f, -88.f, 0.f, -0.f, 88.f, 100.f, 1e4f};
    for (size_t i = 0; i < 8 && i < gate.size(); ++i) gate[i] = extremes[i];
    for (bool in_place : {false, true}) {
      std::vector<float> out = gate;
      swiglu_forward_ref(in_place ? out.data() : gate.data(), up.data(), n, out.data());
      for (int64_t i = 0; i < n; ++i) {
        const double g = gate[i];
        const double ref = g / (1.0 + std::exp(-g)) * up[i];
        ASSERT_TRUE(hr.ok(std::fabs(out[i] - ref), kSwigluTol * std::fabs(ref) + kTiny))
            << "n=" << n << " gate=" << g << " up=" << up[i] << " got " << out[i] << " ref " << ref;
      }
    }
  }
}

// ---- cross entropy ----------------------------------------------------------------------------------------

TEST(KernelsRef, CrossEntropyMatchesDoubleOracle) {
  struct Case {
    int64_t rows, V;
  };
  const Case cases[] = {{1, 1}, {5, 2}, {33, 17}, {7, 1000}, {2, 151936}};
  Headroom hr("cross entropy");
  uint64_t seed = 600;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "rows=" << c.rows << " V=" << c.V);
    Rng rng(++seed);
    std::vector<float> logits = normal(rng, c.rows * c.V, 3.0);
    for (int64_t r = 0; r < c.rows; ++r)  // large offsets: only a max-subtracted logsumexp survives these
      for (int64_t v = 0; v < c.V; ++v) logits[r * c.V + v] += (r % 3 == 1) ? 80.f : (r % 3 == 2 ? -90.f : 0.f);
    std::vector<int32_t> targets(c.rows);
    int64_t expect_counted = 0;
    for (int64_t r = 0; r < c.rows; ++r) {
      targets[r] = (r % 4 == 3) ? kIgnoreIndex : static_cast<int32_t>(rng.below(c.V));
      expect_counted += targets[r] != kIgnoreIndex;
    }
    std::vector<float> nll(c.rows, NAN);
    EXPECT_EQ(cross_entropy_forward_ref(logits.data(), c.rows, c.V, targets.data(), nll.data()), expect_counted);
    for (int64_t r = 0; r < c.rows; ++r) {
      if (targets[r] == kIgnoreIndex) {
        EXPECT_EQ(nll[r], 0.f) << "ignored row " << r;
        continue;
      }
      const float* l = logits.data() + r * c.V;
      double mx = -INFINITY, sum = 0;
      for (int64_t v = 0; v < c.V; ++v) mx = std::max(mx, static_cast<double>(l[v]));
      for (int64_t v = 0; v < c.V; ++v) sum += std::exp(l[v] - mx);
      const double lse = mx + std::log(sum), ref = lse - l[targets[r]];
      EXPECT_TRUE(hr.ok(std::fabs(nll[r] - ref), kXentTol * (1 + std::fabs(lse) + std::fabs(l[targets[r]]))))
          << "row " << r << " nll=" << nll[r] << " ref=" << ref;
      EXPECT_GE(nll[r], -1e-6f);
    }
  }
}

// The fused call is the forward and the backward bit for bit (its CUDA twin's test compares with both refs):
// random rows, ignored rows, large offsets, the 152K vocabulary.
TEST(KernelsRef, CrossEntropyFusedIsForwardAndBackwardBitForBit) {
  uint64_t seed = 650;
  for (int64_t V : {1, 3, 1000, 151936}) {
    SCOPED_TRACE(testing::Message() << "V=" << V);
    const int64_t rows = 9;
    Rng rng(++seed);
    std::vector<float> logits = normal(rng, rows * V, 3.0);
    for (int64_t v = 0; v < V; ++v) logits[4 * V + v] += 85.f;
    std::vector<int32_t> targets(rows);
    for (int64_t r = 0; r < rows; ++r)
      targets[r] = (r % 4 == 3) ? kIgnoreIndex : static_cast<int32_t>(rng.below(V));
    const float scale = 1.f / 7;
    std::vector<float> nll(rows, NAN), dl(rows * V, NAN);
    const int64_t counted = cross_entropy_forward_ref(logits.data(), rows, V, targets.data(), nll.data());
    cross_entropy_backward_ref(logits.data(), rows, V, targets.data(), scale, dl.data());
    std::vector<float> work = logits, nll_fused(rows + 1, NAN);
    EXPECT_EQ(cross_entropy_fused_ref(work.data(), rows, V, targets.data(), scale, nll_fused.data()), counted);
    EXPECT_TRUE(std::isnan(nll_fused.back())) << "wrote past nll";
    nll_fused.pop_back();
    EXPECT_EQ(nll_fused, nll);
    EXPECT_EQ(work, dl);
    // Per-row scales (a sequence-level loss): row r is the backward's row at scale row_scale[r], any sign.
    std::vector<float> row_scale(rows);
    for (int64_t r = 0; r < rows; ++r) row_scale[r] = (r % 2 ? -0.3f : 0.7f) * static_cast<float>(r + 1);
    std::vector<float> scaled = logits, nll_scaled(rows);
    cross_entropy_fused_ref(scaled.data(), rows, V, targets.data(), 123.f, nll_scaled.data(), row_scale.data());
    EXPECT_EQ(nll_scaled, nll);
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> one(V);
      cross_entropy_backward_ref(logits.data() + r * V, 1, V, targets.data() + r, row_scale[r], one.data());
      EXPECT_TRUE(std::equal(one.begin(), one.end(), scaled.begin() + r * V)) << "row " << r;
    }
  }
  std::vector<float> l(4, 0.f), n(1);
  const float inf_scale = INFINITY;
  const int32_t zero = 0;
  EXPECT_ERROR_CONTAINS(cross_entropy_fused_ref(l.data(), 1, 4, &zero, 1.f, n.data(), &inf_scale),
                        "cross_entropy_fused_ref: row_scale of row 0 must be finite");
  const int32_t bad = 4;
  EXPECT_ERROR_CONTAINS(cross_entropy_fused_ref(l.data(), 1, 4, &bad, 1.f, n.data()),
                        "cross_entropy_fused_ref: target 4 of row 0 is outside the vocabulary [0, 4)");
  const int32_t ok = 0;
  EXPECT_ERROR_CONTAINS(cross_entropy_fused_ref(l.data(), 1, 4, &ok, NAN, n.data()),
                        "cross_entropy_fused_ref: dnll_scale must be finite");
}

TEST(KernelsRef, CrossEntropyRejectsTargetsOutsideVocabulary) {
  std::vector<float> logits(2 * 5, 0.f), nll(2);
  const std::vector<int32_t> too_big = {1, 5}, negative = {-1, 0};
  EXPECT_ERROR_CONTAINS(cross_entropy_forward_ref(logits.data(), 2, 5, too_big.data(), nll.data()),
                        "cross_entropy_forward_ref: target 5 of row 1 is outside the vocabulary [0, 5) and is not the "
                        "ignore index -100");
  EXPECT_ERROR_CONTAINS(cross_entropy_forward_ref(logits.data(), 2, 5, negative.data(), nll.data()),
                        "target -1 of row 0 is outside the vocabulary");
  // Uniform logits: nll = log V.
  const std::vector<int32_t> ok = {4, kIgnoreIndex};
  EXPECT_EQ(cross_entropy_forward_ref(logits.data(), 2, 5, ok.data(), nll.data()), 1);
  EXPECT_NEAR(nll[0], std::log(5.0), 1e-6);
}

// ---- device selection -------------------------------------------------------------------------------------

TEST(KernelsRef, DeviceChoice) {
  const DeviceChoice cpu = choose_device("cpu");
  EXPECT_EQ(cpu.device, Device::Cpu);
  EXPECT_EQ(cpu.description, "device: cpu (requested)");

  const DeviceChoice a = choose_device("auto");
  EXPECT_EQ(a.description.rfind("device: ", 0), 0u) << a.description;
  EXPECT_EQ(a.description.find('\n'), std::string::npos);
  if (a.device == Device::Cpu) {
    // No GPU here: "cuda" must refuse with the same reason.
    EXPECT_NE(a.description.find("device: cpu ("), std::string::npos) << a.description;
    EXPECT_ERROR_CONTAINS(choose_device("cuda"), "--device cuda: CUDA is not available (");
#ifndef QWENQ_HAVE_CUDA
    EXPECT_EQ(a.description, "device: cpu (built without CUDA)");
#else
    // The reason in words a user can act on (kernels/device_cuda.cu), not the runtime's own string.
    bool known = false;
    for (const char* reason : {"device: cpu (no NVIDIA driver installed)", "device: cpu (no NVIDIA GPU found)",
                               "device: cpu (the NVIDIA driver supports CUDA ", "device: cpu (the CUDA runtime failed: "}) {
      known = known || a.description.rfind(reason, 0) == 0;
    }
    EXPECT_TRUE(known) << a.description;
#endif
  } else {
    EXPECT_NE(a.description.find("device: cuda available ("), std::string::npos) << a.description;
    EXPECT_EQ(choose_device("cuda").device, Device::Cuda);
  }
  EXPECT_ERROR_CONTAINS(choose_device("gpu"), "unknown device 'gpu' (expected auto, cpu or cuda)");
}

// Where a command with a GPU path runs once its input is known (settle_device): every request against a machine
// with a GPU (a found choice made up here, as choose_device returns one) and without, with and without a refusal.
TEST(KernelsRef, SettleDeviceTakesTheGpuWhenItCanRunTheInput) {
  const DeviceChoice gpu{Device::Cuda, "device: cuda available (NVIDIA H200, sm_90, 139.8 GiB); the Hopper wgmma kernels",
                         "NVIDIA H200, sm_90, 139.8 GiB", "; the Hopper wgmma kernels"};
  const DeviceChoice none{Device::Cpu, "device: cpu (no NVIDIA GPU found)", "", ""};
  const DeviceChoice cpu{Device::Cpu, "device: cpu (requested)", "", ""};
  const std::string refusal = "'model.layers.0.self_attn.q_proj': FP8 checkpoints run on the CPU only";

  // auto with a GPU that can run the input: the GPU, the line naming it and the kernels' remarks.
  DeviceChoice d = settle_device("auto", gpu, "the evaluation", "");
  EXPECT_EQ(d.device, Device::Cuda);
  EXPECT_EQ(d.description,
            "device: cuda (NVIDIA H200, sm_90, 139.8 GiB), the evaluation runs on the GPU; the Hopper wgmma kernels");
  // cuda: the same.
  d = settle_device("cuda", gpu, "the evaluation", "");
  EXPECT_EQ(d.device, Device::Cuda);
  EXPECT_EQ(d.description,
            "device: cuda (NVIDIA H200, sm_90, 139.8 GiB), the evaluation runs on the GPU; the Hopper wgmma kernels");
  // auto with an input the GPU cannot run: the CPU, saying which GPU stays idle and why.
  d = settle_device("auto", gpu, "the evaluation", refusal);
  EXPECT_EQ(d.device, Device::Cpu);
  EXPECT_EQ(d.description, "device: cpu (a GPU is present, NVIDIA H200, sm_90, 139.8 GiB, but the evaluation cannot "
                           "run on it: " + refusal + ")");
  // cuda with that input: refused, before any work.
  EXPECT_ERROR_CONTAINS(settle_device("cuda", gpu, "the evaluation", refusal),
                        "--device cuda: the evaluation cannot run on the GPU: " + refusal + " (use --device cpu)");
  // cpu, or no GPU: the CPU and choose_device's line, refusal or not.
  for (const std::string& why : {std::string(), refusal}) {
    d = settle_device("cpu", cpu, "the evaluation", why);
    EXPECT_EQ(d.device, Device::Cpu);
    EXPECT_EQ(d.description, "device: cpu (requested)");
    d = settle_device("auto", none, "the evaluation", why);
    EXPECT_EQ(d.device, Device::Cpu);
    EXPECT_EQ(d.description, "device: cpu (no NVIDIA GPU found)");
  }
  EXPECT_ERROR_CONTAINS(settle_device("gpu", gpu, "the evaluation", ""), "unknown device 'gpu'");
  // On this machine: auto settles where choose_device found a GPU, and no line has a line break.
  const DeviceChoice here = choose_device("auto");
  d = settle_device("auto", here, "the evaluation", "");
  EXPECT_EQ(d.device, here.device);
  EXPECT_EQ(d.description.find('\n'), std::string::npos);
  if (here.device == Device::Cpu) {
    EXPECT_EQ(d.description, here.description);
  }
}

// QWENQ_WGMMA=0/1 (the Hopper kernels' switch, kernels/cuda_check.h) is explained on the device line, never silent:
// on the CPU it does nothing; on a GPU =1 either runs the wgmma kernels or is ignored with the reason. Any other
// value, or none, leaves a CPU line as it was.
TEST(KernelsRef, DeviceChoiceExplainsTheWgmmaSwitch) {
  const char* before = std::getenv("QWENQ_WGMMA");
  const std::string saved = before ? before : "";
  ::setenv("QWENQ_WGMMA", "1", 1);
  EXPECT_EQ(choose_device("cpu").description, "device: cpu (requested); QWENQ_WGMMA=1 has no effect on the CPU");
  const DeviceChoice a = choose_device("auto");
  if (a.device == Device::Cpu) {
    EXPECT_NE(a.description.find("; QWENQ_WGMMA=1 has no effect on the CPU"), std::string::npos) << a.description;
  } else {
    EXPECT_TRUE(a.description.find("; QWENQ_WGMMA=1: the Hopper wgmma kernels") != std::string::npos ||
                a.description.find("; QWENQ_WGMMA=1 ignored: it needs an sm_90 GPU") != std::string::npos)
        << a.description;
  }
  EXPECT_EQ(a.description.find('\n'), std::string::npos);
  ::setenv("QWENQ_WGMMA", "0", 1);
  EXPECT_EQ(choose_device("cpu").description, "device: cpu (requested); QWENQ_WGMMA=0 has no effect on the CPU");
  ::setenv("QWENQ_WGMMA", "yes", 1);
  EXPECT_EQ(choose_device("cpu").description, "device: cpu (requested)");
  if (before) ::setenv("QWENQ_WGMMA", saved.c_str(), 1);
  else ::unsetenv("QWENQ_WGMMA");
}

// The 4-bit path switches (kernels/qgemm.h) are named on the device line when set to 0 or 1, and nothing otherwise.
TEST(KernelsRef, DeviceChoiceNamesTheGemmPathSwitches) {
  const char* wg = std::getenv("QWENQ_WGMMA");
  const std::string saved_wg = wg ? wg : "";
  ::unsetenv("QWENQ_WGMMA");
  ::setenv("QWENQ_DECODE_MMA", "0", 1);
  ::setenv("QWENQ_QGEMM_DENSE", "1", 1);
  ::setenv("QWENQ_QGEMM_OVERLAP", "1", 1);
  EXPECT_EQ(choose_device("cpu").description,
            "device: cpu (requested); QWENQ_DECODE_MMA=0 has no effect on the CPU; QWENQ_QGEMM_DENSE=1 has no effect "
            "on the CPU; QWENQ_QGEMM_OVERLAP=1 has no effect on the CPU");
  const DeviceChoice a = choose_device("auto");
  if (a.device == Device::Cuda) {
    EXPECT_NE(a.description.find("; QWENQ_DECODE_MMA=0: the 4-bit decode products on CUDA cores (FMA), not tensor "
                                 "cores; QWENQ_QGEMM_DENSE=1: the 4-bit prefill products as bf16 W + cuBLASLt for "
                                 "every M > 64; QWENQ_QGEMM_OVERLAP=1: the dense 4-bit path dequantizes weights of 8M "
                                 "values and up in 4 pieces overlapped with the GEMM"),
              std::string::npos)
        << a.description;
  }
  // The defaults (unset, or a value other than 0 and 1) say nothing.
  ::unsetenv("QWENQ_DECODE_MMA");
  ::unsetenv("QWENQ_QGEMM_OVERLAP");
  ::setenv("QWENQ_QGEMM_DENSE", "yes", 1);
  EXPECT_EQ(choose_device("cpu").description, "device: cpu (requested)");
  ::unsetenv("QWENQ_QGEMM_DENSE");
  if (wg) ::setenv("QWENQ_WGMMA", saved_wg.c_str(), 1);
}

// The switches' rules (kernels/qgemm_paths.cpp): the tensor-core decode and the dense prefill from M = 512 by
// default; QWENQ_QGEMM_DENSE=1 from M = 65, =0 never; QWENQ_DECODE_MMA=0 turns the decode one off.
TEST(KernelsRef, QgemmPathSwitches) {
  const char* d0 = std::getenv("QWENQ_DECODE_MMA");
  const char* q0 = std::getenv("QWENQ_QGEMM_DENSE");
  const std::string sd = d0 ? d0 : "", sq = q0 ? q0 : "";
  ::unsetenv("QWENQ_DECODE_MMA");
  ::unsetenv("QWENQ_QGEMM_DENSE");
  EXPECT_TRUE(qgemm_decode_mma_enabled());
  EXPECT_EQ(qgemm_dense_min_m(), kQgemmDenseMinM);
  EXPECT_FALSE(qgemm_dense_for(64));
  EXPECT_FALSE(qgemm_dense_for(kQgemmDenseMinM - 1));
  EXPECT_TRUE(qgemm_dense_for(kQgemmDenseMinM));
  EXPECT_TRUE(qgemm_dense_for(16384));
  ::setenv("QWENQ_QGEMM_DENSE", "1", 1);
  EXPECT_FALSE(qgemm_dense_for(64));  // the decode regime stays the decode kernels'
  EXPECT_TRUE(qgemm_dense_for(65));
  ::setenv("QWENQ_QGEMM_DENSE", "0", 1);
  EXPECT_FALSE(qgemm_dense_for(16384));
  ::setenv("QWENQ_DECODE_MMA", "0", 1);
  EXPECT_FALSE(qgemm_decode_mma_enabled());
  ::setenv("QWENQ_DECODE_MMA", "on", 1);  // not 0 or 1: the default
  EXPECT_TRUE(qgemm_decode_mma_enabled());
  if (d0) ::setenv("QWENQ_DECODE_MMA", sd.c_str(), 1); else ::unsetenv("QWENQ_DECODE_MMA");
  if (q0) ::setenv("QWENQ_QGEMM_DENSE", sq.c_str(), 1); else ::unsetenv("QWENQ_QGEMM_DENSE");
}

}  // namespace
}  // namespace qwenq
