// Hand-written backward passes against finite differences, and AdamW / gradient clipping against torch's
// documented algorithms.
//
// Method: for each op a plain double-precision forward y = f(x) is written here; for the scalar loss
// L = Σ r ⊙ y with seeded random r, ∂L/∂x is what the op's backward returns for dy = r. Central differences
// (L(x + h·e_k) − L(x − h·e_k)) / 2h in double give ∂L/∂x_k to about 1e-9 relative (truncation h²·L'''/6 with
// h = 1e-4 × the input's scale, rounding 1e-16·|L|/h), far below fp32 error, so the tolerances bound the fp32
// error of the kernels, nothing else. Inputs are fp32 values used exactly by both sides (16-bit weights are
// widened with core's to_f32 for the double forward). Shapes are small and awkward: 1, 3, 17, several packed
// sequences of different lengths including 1 and 0, GQA ratios 1, 2, 4, blocks crossed by 70-row sequences.
// Outputs that are written (not accumulated) start as NaN and have guard elements after them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "kernels/act.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/optim.h"
#include "kernels/rope.h"
#include "tests/support/bf16_paths.h"
#include "tests/support/flash_rule.h"

namespace qwenq {
namespace {

// ---- tolerances --------------------------------------------------------------------------------------------
// Gradient checks, element by element over a tensor: |got − fd| <= tol · (|fd| + max|fd|). The max term is the
// scale of the fp32 sums that produce every entry (an entry near 0 is a sum of terms of that size), the |fd|
// term the rounding of the entry itself. fp32 has 6e-8 relative rounding; the sums here have 3..200 terms.
constexpr double kFdStep = 1e-4;         // h = kFdStep · (the input's scale + |x_k|)
constexpr double kNormGradTol = 1e-6;    // rmsnorm: two fp32 row sums (Σx², Σ g·x), C <= 64
constexpr double kLinearGradTol = 1e-6;  // linear: one fp32 dot product per entry
constexpr double kRopeGradTol = 4e-7;    // rope: two fp32 products and a sum per entry
constexpr double kAttnGradTol = 2e-6;    // attention: P = exp(S − lse), dP, dS and three products, chained
constexpr double kSwigluGradTol = 1e-6;  // swiglu, relative to the size of its terms: a chain of 8 fp32
                                         // roundings (exp, 1 + e, 1 / ·, 1 − s, g·, 1 + ·, s·, dout·up·), <= 5e-7
constexpr double kTiny = 1e-37;          // absolute floor: near and below fp32's smallest normal (1.2e-38),
                                         // at gate = -88 and -100, results have no relative accuracy
constexpr double kXentGradTol = 1e-6;    // cross entropy: exp(l − m) with l − m rounded to fp32 (1/2 ulp of
                                         // |l − m| <= 16: relative 5e-7 of p), times scale / Σ, minus scale
// Cross entropy at V = 151936 against the double formula, each entry relative to its own size: exp of an fp32
// argument l − m off by up to 1/2 ulp of |l − m| <= 32 (relative 2e-6 in p), plus three fp32 roundings.
constexpr double kXentVocabTol = 4e-6;
// Larger linear shapes against a double product: |got − ref| <= kLinearSumTol · Σ|terms| (as the forward's test).
constexpr double kLinearSumTol = 2e-6;
// AdamW against the double loop: each step rounds p, m, v a few times, so errors grow with the sum over steps of
// the magnitudes involved; bounded by kAdamTol (5 fp32 ulps) times that sum, tracked in double.
constexpr double kAdamTol = 6e-7;
// Hand-derived golden values are exact decimals; fp32 holds them to within 4 ulp at 1.
constexpr double kGoldenTol = 5e-7;
// clip_grad_norm: the norm is summed in double and rounded once; scaling is one fp32 product.
constexpr double kClipTol = 2e-7;

constexpr size_t kGuard = 16;
constexpr float kGuardValue = 12345.f;

// ---- helpers -----------------------------------------------------------------------------------------------

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

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

double dot(const std::vector<float>& r, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += r[i] * y[i];
  return s;
}

// An output buffer of n elements filled with `fill`, followed by kGuard guard elements.
std::vector<float> guarded(size_t n, float fill) {
  std::vector<float> v(n + kGuard, kGuardValue);
  std::fill(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n), fill);
  return v;
}

void expect_guards(const std::vector<float>& v, const char* what) {
  for (size_t i = v.size() - kGuard; i < v.size(); ++i)
    if (v[i] != kGuardValue) {
      ADD_FAILURE() << what << ": guard element " << i - (v.size() - kGuard) << " after the output was overwritten";
      return;
    }
}

// fp32 values stored as `t`, and the fp32 values they hold.
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

using Loss = std::function<double(const std::vector<double>&)>;

// Central differences of `loss` at x with step h_k = kFdStep · (scale + |x_k|) (relative = false: kFdStep ·
// scale), for every `stride`-th coordinate and the last one; NaN at the coordinates not visited.
std::vector<double> fd_gradient(const std::vector<float>& x, double scale, const Loss& loss, size_t stride = 1,
                                bool relative = true) {
  std::vector<double> xd = to_double(x), g(x.size(), NAN);
  auto visit = [&](size_t k) {
    const double x0 = xd[k], h = kFdStep * (scale + (relative ? std::fabs(x0) : 0.0));
    xd[k] = x0 + h;
    const double up = loss(xd);
    xd[k] = x0 - h;
    const double down = loss(xd);
    xd[k] = x0;
    g[k] = (up - down) / (2 * h);
  };
  for (size_t k = 0; k < x.size(); k += stride) visit(k);
  if (!x.empty() && (x.size() - 1) % stride != 0) visit(x.size() - 1);
  return g;
}

// Tracks the worst error / tolerance of a test and prints it: the headroom the tolerance leaves.
class Headroom {
 public:
  Headroom(const char* what, double tol) : what_(what), tol_(tol) {}
  ~Headroom() {
    std::printf("[ headroom ] %s: worst error = %.3g of the tolerance (normalized error %.3g, tolerance %.3g)\n",
                what_, worst_, worst_ * tol_, tol_);
  }
  bool ok(double err, double bound) {
    worst_ = std::max(worst_, err / bound);
    return err <= bound;
  }

 private:
  const char* what_;
  double tol_;
  double worst_ = 0;
};

// Every visited element: |got − fd| <= tol · (|fd| + max(max|fd|, floor)). `floor`: the size of the terms
// summed into an entry where the gradient itself can be 0 for any input (attention over one key).
void expect_grad_near(const std::string& what, const float* got, const std::vector<double>& fd, double tol,
                      Headroom* hr, double floor = 0) {
  double mx = floor;
  for (double g : fd)
    if (!std::isnan(g)) mx = std::max(mx, std::fabs(g));
  for (size_t k = 0; k < fd.size(); ++k) {
    if (std::isnan(fd[k])) continue;
    const double err = std::fabs(got[k] - fd[k]), bound = tol * (std::fabs(fd[k]) + mx) + 1e-300;
    if (!hr->ok(err, bound)) {
      ADD_FAILURE() << what << "[" << k << "] = " << got[k] << ", finite differences give " << fd[k]
                    << " (error " << err << ", bound " << bound << ", max|grad| " << mx << ")";
      return;
    }
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no qwenq::Error thrown)";
}

#define EXPECT_ERROR_CONTAINS(stmt, text)                                  \
  do {                                                                     \
    const std::string msg_ = error_of([&] { stmt; });                      \
    EXPECT_NE(msg_.find(text), std::string::npos) << "message: " << msg_;  \
  } while (0)

// Runs the body with 1, 3 (more chunks than cores) and the default number of threads.
class ThreadSweep {
 public:
  ThreadSweep() : saved_(num_threads()) {}
  ~ThreadSweep() { set_num_threads(saved_); }
  std::vector<int> counts() const { return {1, 3, saved_}; }

 private:
  int saved_;
};

// ---- rmsnorm -----------------------------------------------------------------------------------------------

std::vector<double> rmsnorm_f64(const std::vector<double>& x, int64_t rows, int64_t C, const std::vector<float>& w,
                                float eps) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[r * C + c] * x[r * C + c];
    const double inv = 1.0 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; ++c) y[r * C + c] = w[c] * x[r * C + c] * inv;
  }
  return y;
}

TEST(KernelsBackward, RmsNormMatchesFiniteDifferences) {
  Headroom hr("rmsnorm backward", kNormGradTol);
  uint64_t seed = 1000;
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (int64_t rows : {1, 3})
      for (int64_t C : {3, 17, 64})
        for (double scale : {1.0, 1e-3}) {  // 1e-3: mean(x²) = 1e-6 below eps = 1e-5, eps matters
          SCOPED_TRACE(testing::Message() << dtype_name(wt) << " rows=" << rows << " C=" << C << " scale=" << scale
                                          << " seed=" << seed + 1);
          Rng rng(++seed);
          const std::vector<float> x = normal(rng, rows * C, scale), r = normal(rng, rows * C, 1.0);
          const Stored w = store(wt, uniform(rng, C, -2.f, 2.f));
          const float eps = 1e-5f;
          std::vector<float> dx = guarded(rows * C, NAN);
          rmsnorm_backward_ref(r.data(), x.data(), rows, C, w.bytes.data(), wt, eps, dx.data());
          const std::vector<double> fd = fd_gradient(x, scale, [&](const std::vector<double>& xd) {
            return dot(r, rmsnorm_f64(xd, rows, C, w.widened, eps));
          });
          expect_grad_near("dx", dx.data(), fd, kNormGradTol, &hr);
          expect_guards(dx, "dx");

          std::vector<float> in_place = r;  // dx may alias dy
          rmsnorm_backward_ref(in_place.data(), x.data(), rows, C, w.bytes.data(), wt, eps, in_place.data());
          EXPECT_TRUE(std::equal(in_place.begin(), in_place.end(), dx.begin())) << "in-place dx differs";
        }
}

// ---- linear ------------------------------------------------------------------------------------------------

std::vector<double> linear_f64(const std::vector<double>& x, const std::vector<double>& w, int64_t M, int64_t K,
                               int64_t N) {
  std::vector<double> y(M * N, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) y[m * N + n] += x[m * K + k] * w[n * K + k];
  return y;
}

struct GemmShape {
  int64_t M, K, N;
};

// K = 130 > 128 columns per tile, M = 260 > 256 rows per tile: the tile edges of both backward GEMMs.
const GemmShape kGemmShapes[] = {{1, 1, 1},  {1, 3, 17}, {3, 17, 5},  {17, 5, 3},
                                 {2, 33, 64}, {5, 130, 3}, {3, 7, 130}, {260, 3, 2}};

TEST(KernelsBackward, LinearInputGradMatchesFiniteDifferences) {
  Headroom hr("linear backward input", kLinearGradTol);
  uint64_t seed = 1100;
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (const GemmShape& s : kGemmShapes) {
      SCOPED_TRACE(testing::Message() << dtype_name(wt) << " M=" << s.M << " K=" << s.K << " N=" << s.N
                                      << " seed=" << seed + 1);
      Rng rng(++seed);
      const std::vector<float> x = uniform(rng, s.M * s.K, -1.f, 1.f), r = normal(rng, s.M * s.N, 1.0);
      const Stored w = store(wt, uniform(rng, s.N * s.K, -1.f, 1.f));
      const std::vector<double> wd = to_double(w.widened);
      std::vector<float> dx = guarded(s.M * s.K, NAN);
      linear_backward_input_ref(r.data(), s.M, s.N, w.bytes.data(), wt, s.K, dx.data());
      const std::vector<double> fd = fd_gradient(x, 1.0, [&](const std::vector<double>& xd) {
        return dot(r, linear_f64(xd, wd, s.M, s.K, s.N));
      });
      expect_grad_near("dx", dx.data(), fd, kLinearGradTol, &hr);
      expect_guards(dx, "dx");
    }
}

TEST(KernelsBackward, LinearWeightGradMatchesFiniteDifferencesAndAccumulates) {
  Headroom hr("linear backward weight", kLinearGradTol);
  uint64_t seed = 1200;
  for (const GemmShape& s : kGemmShapes) {
    SCOPED_TRACE(testing::Message() << "M=" << s.M << " K=" << s.K << " N=" << s.N << " seed=" << seed + 1);
    Rng rng(++seed);
    const std::vector<float> x = uniform(rng, s.M * s.K, -1.f, 1.f), r = normal(rng, s.M * s.N, 1.0);
    const std::vector<float> w = uniform(rng, s.N * s.K, -1.f, 1.f);
    const std::vector<double> xd = to_double(x);
    std::vector<float> dw(s.N * s.K + kGuard, kGuardValue);
    std::fill(dw.begin(), dw.begin() + s.N * s.K, 0.f);
    linear_backward_weight_ref(r.data(), x.data(), s.M, s.N, s.K, dw.data());
    const std::vector<double> fd = fd_gradient(w, 1.0, [&](const std::vector<double>& wv) {
      return dot(r, linear_f64(xd, wv, s.M, s.K, s.N));
    });
    expect_grad_near("dW", dw.data(), fd, kLinearGradTol, &hr);
    expect_guards(dw, "dW");

    // A second call on the result accumulates: 2·grad (an overwrite would leave grad). Not bit-exact: Eigen may
    // add its partial sums over M into dW one panel at a time.
    std::vector<double> twice_fd(fd.size());
    for (size_t i = 0; i < fd.size(); ++i) twice_fd[i] = 2 * fd[i];
    std::vector<float> twice(dw.begin(), dw.begin() + s.N * s.K);
    linear_backward_weight_ref(r.data(), x.data(), s.M, s.N, s.K, twice.data());
    expect_grad_near("dW after two calls", twice.data(), twice_fd, kLinearGradTol, &hr);
  }
}

// got [I, J] against the double sums Σ_t a[i·a_row + t·a_step] · b[t·J + j] over T terms:
// |error| <= kLinearSumTol · Σ|terms| (the first failure). dx = dy [M, N] · W [N, K]: a_row N, a_step 1;
// dW = gᵀ [N, M] · x [M, K]: a_row 1, a_step N.
void expect_sums_near_double(const char* what, const std::vector<float>& got, const std::vector<float>& a,
                             int64_t a_row, int64_t a_step, const std::vector<float>& b, int64_t I, int64_t T,
                             int64_t J, Headroom* hr) {
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < J; ++j) {
      double ref = 0, mag = 0;
      for (int64_t t = 0; t < T; ++t) {
        const double p = static_cast<double>(a[i * a_row + t * a_step]) * b[t * J + j];
        ref += p;
        mag += std::fabs(p);
      }
      if (!hr->ok(std::fabs(got[i * J + j] - ref), kLinearSumTol * mag)) {
        ADD_FAILURE() << what << "[" << i << "," << j << "] = " << got[i * J + j] << ", double " << ref;
        return;
      }
    }
}

TEST(KernelsBackward, LinearBackwardRealShapesAnyThreadCount) {
  // Qwen2.5-0.5B shapes: the MLP down projection's input gradient with a bf16 weight (N = 896 rows of W,
  // K = 4864), and LoRA A/B gradients of rank 16 over 300 tokens. Against a double product, and the same
  // bits with any number of threads (the tiles do not depend on it).
  ThreadSweep sweep;
  Headroom hr("linear backward, real shapes", kLinearSumTol);
  Rng rng(1300);
  const int64_t M = 7, N = 896, K = 4864;
  const std::vector<float> dy = normal(rng, M * N, 1.0);
  const Stored w = store(DType::BF16, uniform(rng, N * K, -1.f, 1.f));
  const int64_t Mt = 300, r = 16, C = 896;
  const std::vector<float> dy_a = normal(rng, Mt * r, 1.0), x_a = normal(rng, Mt * C, 1.0);  // dA [r, C]
  const std::vector<float> dy_b = normal(rng, Mt * C, 1.0), x_b = normal(rng, Mt * r, 1.0);  // dB [C, r]

  std::vector<float> dx_first, da_first, db_first;
  for (int threads : sweep.counts()) {
    set_num_threads(threads);
    SCOPED_TRACE(testing::Message() << threads << " threads");
    std::vector<float> dx(M * K, NAN), da(r * C, 0.f), db(C * r, 0.f);
    linear_backward_input_ref(dy.data(), M, N, w.bytes.data(), DType::BF16, K, dx.data());
    linear_backward_weight_ref(dy_a.data(), x_a.data(), Mt, r, C, da.data());
    linear_backward_weight_ref(dy_b.data(), x_b.data(), Mt, C, r, db.data());
    if (dx_first.empty()) {
      dx_first = dx;
      da_first = da;
      db_first = db;
      expect_sums_near_double("dx", dx, dy, N, 1, w.widened, M, N, K, &hr);
      expect_sums_near_double("dA", da, dy_a, 1, r, x_a, r, Mt, C, &hr);
      expect_sums_near_double("dB", db, dy_b, 1, C, x_b, C, Mt, r, &hr);
    } else {
      EXPECT_EQ(dx, dx_first);
      EXPECT_EQ(da, da_first);
      EXPECT_EQ(db, db_first);
    }
  }
}

TEST(KernelsBackward, LinearInputGradChunkedReductionAnyThreadCount) {
  // A 16-bit W is widened in chunks of rows and the chunks' products summed (kernels/gemm_ref.cpp): at K = 256
  // the column blocks are 64 wide and a chunk 4096 rows, so N = 4500 is one full chunk and a short one; M = 257
  // is two row blocks. Against a double product, and the same bits with any number of threads.
  ThreadSweep sweep;
  Headroom hr("linear backward input, chunked", kLinearSumTol);
  const int64_t N = 4500, K = 256;
  uint64_t seed = 1400;
  for (DType wt : {DType::BF16, DType::F16})
    for (int64_t M : {3, 257}) {
      SCOPED_TRACE(testing::Message() << dtype_name(wt) << " M=" << M << " seed=" << seed + 1);
      Rng rng(++seed);
      const std::vector<float> dy = normal(rng, M * N, 1.0);
      const Stored w = store(wt, uniform(rng, N * K, -1.f, 1.f));
      std::vector<float> dx_first;
      for (int threads : sweep.counts()) {
        set_num_threads(threads);
        SCOPED_TRACE(testing::Message() << threads << " threads");
        std::vector<float> dx = guarded(M * K, NAN);
        linear_backward_input_ref(dy.data(), M, N, w.bytes.data(), wt, K, dx.data());
        expect_guards(dx, "dx");
        dx.resize(M * K);
        if (!dx_first.empty()) {
          EXPECT_EQ(dx, dx_first);
          continue;
        }
        dx_first = dx;
        expect_sums_near_double("dx", dx, dy, N, 1, w.widened, M, N, K, &hr);
      }
    }
}

// ---- rope --------------------------------------------------------------------------------------------------

// s·R(angle)·x in double by the kernel's fp32 angles: transformers' table (kernels/rope_table.h, itself checked
// in tests/test_rope_table.cpp) and the fp32 product; s = the spec's attention scaling.
std::vector<double> rope_f64(const std::vector<double>& x, int64_t T, int64_t H, int64_t D,
                             const std::vector<int32_t>& pos, const RopeSpec& spec) {
  const RopeTable table = rope_table(spec, D);
  const double scale = spec.attention_factor;
  std::vector<double> y(x.size());
  const int64_t half = D / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(static_cast<float>(pos[t]) * table.inv_freq[i]);
      const double c = scale * std::cos(angle), s = scale * std::sin(angle);
      for (int64_t h = 0; h < H; ++h) {
        const double a = x[(t * H + h) * D + i], b = x[(t * H + h) * D + i + half];
        y[(t * H + h) * D + i] = a * c - b * s;
        y[(t * H + h) * D + i + half] = b * c + a * s;
      }
    }
  return y;
}

// Default RoPE (θ alternating 1e4 / 1e6), and the scaled types: yarn with attention scaling 1.3 (dx = s·Rᵀ·dx'),
// linear, llama3.
RopeSpec rope_backward_spec(uint64_t seed) {
  RopeSpec r = rope_spec_default((seed % 2) ? 10000.0 : 1000000.0);
  switch (seed % 4) {
    case 0:
      r.type = RopeType::Yarn;
      r.factor = 4;
      r.original_max_position_embeddings = 64;
      r.attention_factor = 1.3;
      break;
    case 1:
      r.type = RopeType::Linear;
      r.factor = 2.5;
      break;
    case 2:
      r.type = RopeType::Llama3;
      r.factor = 8;
      r.original_max_position_embeddings = 256;
      break;
    default:
      break;
  }
  return r;
}

TEST(KernelsBackward, RopeMatchesFiniteDifferences) {
  Headroom hr("rope backward", kRopeGradTol);
  uint64_t seed = 1400;
  for (int64_t T : {1, 3, 17})
    for (int64_t H : {1, 2, 4})
      for (int64_t D : {8, 16}) {
        SCOPED_TRACE(testing::Message() << "T=" << T << " H=" << H << " D=" << D << " seed=" << seed + 1);
        Rng rng(++seed);
        std::vector<int32_t> pos(T);
        for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(t == T - 1 ? 131071 : rng.below(4096));
        const RopeSpec spec = rope_backward_spec(seed);
        SCOPED_TRACE(rope_type_name(spec.type));
        const std::vector<float> x = uniform(rng, T * H * D, -2.f, 2.f), r = normal(rng, T * H * D, 1.0);
        std::vector<float> dx = r;
        rope_backward_ref(dx.data(), T, H, D, pos.data(), spec);
        const std::vector<double> fd = fd_gradient(x, 1.0, [&](const std::vector<double>& xd) {
          return dot(r, rope_f64(xd, T, H, D, pos, spec));
        });
        expect_grad_near("dx", dx.data(), fd, kRopeGradTol, &hr);

        // The backward undoes the forward up to s²: (s·R)ᵀ·(s·R) = s²·I up to fp32 rounding (cos² + sin² = 1
        // within 1 ulp).
        std::vector<float> round_trip = x;
        rope_forward_ref(round_trip.data(), T, H, D, pos.data(), spec);
        rope_backward_ref(round_trip.data(), T, H, D, pos.data(), spec);
        const double s2 = spec.attention_factor * spec.attention_factor;
        for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(round_trip[i], s2 * x[i], 2e-6) << "round trip at " << i;
      }
}

// ---- attention ---------------------------------------------------------------------------------------------

struct AttnCase {
  int64_t H, Hkv, D;
  std::vector<int32_t> seqlens;
};

// Causal GQA softmax attention over packed sequences, in double.
std::vector<double> attention_f64(const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, const std::vector<int32_t>& cu, int64_t H,
                                  int64_t Hkv, int64_t D) {
  const int64_t T = cu.back(), group = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> out(T * H * D, 0.0), p;
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t i = cu[s]; i < cu[s + 1]; ++i)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / group, b = cu[s];
        p.assign(i - b + 1, 0.0);
        double mx = -INFINITY, l = 0;
        for (int64_t j = b; j <= i; ++j) {
          double dot_qk = 0;
          for (int64_t d = 0; d < D; ++d) dot_qk += q[(i * H + h) * D + d] * k[(j * Hkv + g) * D + d];
          p[j - b] = dot_qk * scale;
          mx = std::max(mx, p[j - b]);
        }
        for (double& e : p) l += (e = std::exp(e - mx));
        for (int64_t j = b; j <= i; ++j)
          for (int64_t d = 0; d < D; ++d) out[(i * H + h) * D + d] += p[j - b] / l * v[(j * Hkv + g) * D + d];
      }
  return out;
}

struct AttnGrads {
  std::vector<float> dq, dk, dv;
};

// Forward (fp32 kernel, for out and lse) then backward with dout = r.
AttnGrads run_attention_backward(const AttnCase& c, const std::vector<float>& q, const std::vector<float>& k,
                                 const std::vector<float>& v, const std::vector<float>& r) {
  const std::vector<int32_t> cu = test::cu_seqlens_of(c.seqlens);
  const int64_t T = cu.back(), n = static_cast<int64_t>(c.seqlens.size());
  std::vector<float> out(T * c.H * c.D), lse(T * c.H);
  attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), n, c.H, c.Hkv, c.D, out.data(), lse.data());
  AttnGrads g{guarded(q.size(), NAN), guarded(k.size(), NAN), guarded(v.size(), NAN)};
  attention_backward_ref(r.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), cu.data(), n, c.H, c.Hkv,
                         c.D, g.dq.data(), g.dk.data(), g.dv.data());
  return g;
}

TEST(KernelsBackward, AttentionMatchesFiniteDifferences) {
  // GQA ratios 1, 2, 4; packed sequences of lengths 1, 3, 17, an empty one, and 70 rows (more than one block
  // of 32 query rows and of 64 keys in the backward).
  const AttnCase cases[] = {
      {1, 1, 8, {1}},          {2, 1, 8, {3, 1, 17}}, {4, 2, 16, {5, 1, 9}},
      {4, 4, 8, {2, 0, 7}},    {4, 1, 16, {17}},      {2, 2, 8, {70, 1}},
  };
  Headroom hr("attention backward", kAttnGradTol);
  uint64_t seed = 1500;
  for (const AttnCase& c : cases)
    for (double sigma : {1.0, 2.5}) {  // 2.5: peaked softmax, scores up to ~20
      SCOPED_TRACE(testing::Message() << "H=" << c.H << " Hkv=" << c.Hkv << " D=" << c.D << " sigma=" << sigma
                                      << " seed=" << seed + 1);
      const std::vector<int32_t> cu = test::cu_seqlens_of(c.seqlens);
      const int64_t T = cu.back();
      Rng rng(++seed);
      const std::vector<float> q = normal(rng, T * c.H * c.D, sigma), k = normal(rng, T * c.Hkv * c.D, sigma);
      const std::vector<float> v = uniform(rng, T * c.Hkv * c.D, -1.f, 1.f), r = normal(rng, T * c.H * c.D, 1.0);
      const AttnGrads g = run_attention_backward(c, q, k, v, r);
      const std::vector<double> qd = to_double(q), kd = to_double(k), vd = to_double(v);
      const size_t stride = T > 40 ? 7 : 1;  // the 70-row case: a sample of coordinates
      const auto fd_q = fd_gradient(q, sigma, [&](const std::vector<double>& x) {
        return dot(r, attention_f64(x, kd, vd, cu, c.H, c.Hkv, c.D));
      }, stride);
      const auto fd_k = fd_gradient(k, sigma, [&](const std::vector<double>& x) {
        return dot(r, attention_f64(qd, x, vd, cu, c.H, c.Hkv, c.D));
      }, stride);
      const auto fd_v = fd_gradient(v, 1.0, [&](const std::vector<double>& x) {
        return dot(r, attention_f64(qd, kd, x, cu, c.H, c.Hkv, c.D));
      }, stride);
      // Over a single key, softmax is 1 whatever q and k: dq = dk = 0 exactly, and the kernel's dS = P·(dP − δ)
      // is a difference of rounded terms of size |dout|·|v|, times |k| or |q| / sqrt(D) in dq or dk.
      auto max_abs = [](const std::vector<float>& x) {
        double m = 0;
        for (float f : x) m = std::max(m, std::fabs(static_cast<double>(f)));
        return m;
      };
      const double ds_size = max_abs(r) * max_abs(v) / std::sqrt(static_cast<double>(c.D));
      expect_grad_near("dq", g.dq.data(), fd_q, kAttnGradTol, &hr, ds_size * max_abs(k));
      expect_grad_near("dk", g.dk.data(), fd_k, kAttnGradTol, &hr, ds_size * max_abs(q));
      expect_grad_near("dv", g.dv.data(), fd_v, kAttnGradTol, &hr);
      expect_guards(g.dq, "dq");
      expect_guards(g.dk, "dk");
      expect_guards(g.dv, "dv");
    }
}

TEST(KernelsBackward, AttentionSameBitsWithAnyThreadCount) {
  // Several blocks per sequence and head, sequences of very different cost: every output is still computed
  // by one task in a fixed order, so 1, 3 and all threads agree exactly (and nothing is left unwritten).
  ThreadSweep sweep;
  const AttnCase c{4, 2, 32, {150, 1, 45, 200, 3}};
  const int64_t T = test::cu_seqlens_of(c.seqlens).back();
  Rng rng(1600);
  const std::vector<float> q = normal(rng, T * c.H * c.D, 1.0), k = normal(rng, T * c.Hkv * c.D, 1.0);
  const std::vector<float> v = normal(rng, T * c.Hkv * c.D, 1.0), r = normal(rng, T * c.H * c.D, 1.0);
  AttnGrads first;
  for (int threads : sweep.counts()) {
    set_num_threads(threads);
    SCOPED_TRACE(testing::Message() << threads << " threads");
    const AttnGrads g = run_attention_backward(c, q, k, v, r);
    for (const auto* t : {&g.dq, &g.dk, &g.dv})
      for (float f : *t) ASSERT_TRUE(std::isfinite(f));
    expect_guards(g.dq, "dq");
    expect_guards(g.dk, "dk");
    expect_guards(g.dv, "dv");
    if (first.dq.empty()) {
      first = g;
    } else {
      EXPECT_EQ(g.dq, first.dq);
      EXPECT_EQ(g.dk, first.dk);
      EXPECT_EQ(g.dv, first.dv);
    }
  }
}

// Which outputs a non-finite input reaches, from plain causal loops in double that never visit a hidden key:
// the forward (out, lse) and the backward (dq, dk, dv) of the loss Σ dout ⊙ out. Only the NaN pattern is used.
struct AttnNanPattern {
  std::vector<bool> out, lse, dq, dk, dv;
};

AttnNanPattern attention_nan_pattern(const std::vector<float>& q, const std::vector<float>& k,
                                     const std::vector<float>& v, const std::vector<float>& dout,
                                     const std::vector<int32_t>& cu, int64_t H, int64_t Hkv, int64_t D) {
  const int64_t T = cu.back(), group = H / Hkv;
  std::vector<double> out(T * H * D, 0.0), lse(T * H), dq(T * H * D, 0.0), dk(T * Hkv * D, 0.0),
      dv(T * Hkv * D, 0.0);
  auto score = [&](int64_t i, int64_t j, int64_t h) {
    double s = 0;
    for (int64_t d = 0; d < D; ++d) s += static_cast<double>(q[(i * H + h) * D + d]) * k[(j * Hkv + h / group) * D + d];
    return s;
  };
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t i = cu[s]; i < cu[s + 1]; ++i)
      for (int64_t h = 0; h < H; ++h) {
        double l = 0;
        for (int64_t j = cu[s]; j <= i; ++j) l += std::exp(score(i, j, h));  // scores are O(1): no max needed
        lse[i * H + h] = std::log(l);
        for (int64_t j = cu[s]; j <= i; ++j)
          for (int64_t d = 0; d < D; ++d)
            out[(i * H + h) * D + d] += std::exp(score(i, j, h)) / l * v[(j * Hkv + h / group) * D + d];
      }
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t i = cu[s]; i < cu[s + 1]; ++i)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / group;
        double delta = 0;
        for (int64_t d = 0; d < D; ++d) delta += dout[(i * H + h) * D + d] * out[(i * H + h) * D + d];
        for (int64_t j = cu[s]; j <= i; ++j) {
          const double p = std::exp(score(i, j, h) - lse[i * H + h]);
          double dp = 0;
          for (int64_t d = 0; d < D; ++d) dp += static_cast<double>(dout[(i * H + h) * D + d]) * v[(j * Hkv + g) * D + d];
          const double ds = p * (dp - delta);
          for (int64_t d = 0; d < D; ++d) {
            dq[(i * H + h) * D + d] += ds * k[(j * Hkv + g) * D + d];
            dk[(j * Hkv + g) * D + d] += ds * q[(i * H + h) * D + d];
            dv[(j * Hkv + g) * D + d] += p * dout[(i * H + h) * D + d];
          }
        }
      }
  auto nan_of = [](const std::vector<double>& x) {
    std::vector<bool> b(x.size());
    for (size_t i = 0; i < x.size(); ++i) b[i] = std::isnan(x[i]);
    return b;
  };
  return {nan_of(out), nan_of(lse), nan_of(dq), nan_of(dk), nan_of(dv)};
}

// The two sequences (150 and 70 rows, 4/2 heads, D = 16) and seeded inputs that the poisoned-row tests below
// change at row kRow of the first (inside the query block 96..127 and the key block 64..127, so diagonal blocks hide
// it from some rows).
struct PoisonCase {
  static constexpr int64_t kRow = 100;
  struct Outputs {
    std::vector<float> out, lse, dq, dk, dv;
  };
  AttnCase c{4, 2, 16, {150, 70}};
  std::vector<int32_t> cu = test::cu_seqlens_of(c.seqlens);
  int64_t T = cu.back(), n = static_cast<int64_t>(c.seqlens.size());
  std::vector<float> q, k, v, dout;
  explicit PoisonCase(uint64_t seed) {
    Rng rng(seed);
    q = normal(rng, T * c.H * c.D, 1.0);
    k = normal(rng, T * c.Hkv * c.D, 1.0);
    v = normal(rng, T * c.Hkv * c.D, 1.0);
    dout = normal(rng, T * c.H * c.D, 1.0);
  }
  // The inputs with element 3 of head 1 at row kRow of `which` (q, k, v or dout) set to x.
  PoisonCase poisoned(const std::string& which, float x) const {
    PoisonCase p = *this;
    std::vector<float>& t = which == "q" ? p.q : which == "k" ? p.k : which == "v" ? p.v : p.dout;
    const int64_t heads = (which == "k" || which == "v") ? c.Hkv : c.H;
    t[(kRow * heads + 1) * c.D + 3] = x;
    return p;
  }
  Outputs run(bool bf16) const {
    Outputs o{std::vector<float>(T * c.H * c.D), std::vector<float>(T * c.H), std::vector<float>(q.size()),
              std::vector<float>(k.size()), std::vector<float>(v.size())};
    attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), n, c.H, c.Hkv, c.D, o.out.data(), o.lse.data(),
                          bf16);
    attention_backward_ref(dout.data(), q.data(), k.data(), v.data(), o.out.data(), o.lse.data(), cu.data(), n, c.H,
                           c.Hkv, c.D, o.dq.data(), o.dk.data(), o.dv.data(), bf16);
    return o;
  }
  AttnNanPattern nan_pattern() const { return attention_nan_pattern(q, k, v, dout, cu, c.H, c.Hkv, c.D); }
};

TEST(KernelsBackward, AttentionNanStaysCausal) {
  // A NaN in one row of q, k, v or dout, in the middle of a 150-row sequence, must reach exactly the outputs the
  // causal math says, no earlier row and not the other sequence: the block GEMMs once multiplied hidden zeros by it.
  const PoisonCase base(1650);
  // fp32 products, then the bf16 ones (attention_*_ref(..., bf16 = true)) on each path of this CPU.
  struct Mode {
    bool bf16, portable;
  };
  std::vector<Mode> modes = {{false, false}};
  for (bool portable : test::bf16_gemm_paths()) modes.push_back({true, portable});
  for (const Mode mode : modes) {
    for (const char* which : {"q", "k", "v", "dout"}) {
      SCOPED_TRACE(testing::Message() << "NaN in " << which << " row " << PoisonCase::kRow << ", "
                                      << (!mode.bf16 ? "fp32" : mode.portable ? "bf16 portable" : "bf16 avx512_bf16"));
      const test::PortableScope paths(mode.portable);
      const PoisonCase pc = base.poisoned(which, NAN);
      const PoisonCase::Outputs got = pc.run(mode.bf16);
      const AttnNanPattern want = pc.nan_pattern();
      auto expect_pattern = [](const char* name, const std::vector<float>& out, const std::vector<bool>& nan) {
        size_t wrong = 0, first = out.size(), nans = 0;
        for (size_t i = 0; i < out.size(); ++i) {
          nans += nan[i];
          if (std::isnan(out[i]) != nan[i] || (!nan[i] && !std::isfinite(out[i]))) {
            ++wrong;
            first = std::min(first, i);
          }
        }
        EXPECT_EQ(wrong, 0u) << name << ": " << wrong << " entries disagree with the causal NaN pattern (" << nans
                             << " NaN expected), first at " << first;
        return nans;
      };
      expect_pattern("out", got.out, want.out);  // all finite for dout
      expect_pattern("lse", got.lse, want.lse);  // NaN only for q and k
      const size_t dq_nans = expect_pattern("dq", got.dq, want.dq);
      expect_pattern("dk", got.dk, want.dk);
      expect_pattern("dv", got.dv, want.dv);  // all finite for v: P and dout are
      // Every case poisons some dq rows and leaves the earlier rows and the other sequence clean.
      EXPECT_GT(dq_nans, 0u);
      EXPECT_LT(dq_nans, got.dq.size() / 2);
    }
  }
}

TEST(KernelsBackward, AttentionBf16ValuePastItsRangeStaysCausal) {
  // 3.4e38 is finite in fp32 and rounds to inf in bf16, which the bf16 products multiply: a diagonal block that
  // hides a row holding it must take the row-by-row products as for a NaN. Every output the causal pattern of a NaN
  // at that place leaves clean stays finite, and some it reaches do not.
  const PoisonCase base(1660);
  ASSERT_TRUE(std::isinf(bf16_round(3.4e38f)));
  for (bool portable : test::bf16_gemm_paths()) {
    const test::PortableScope paths(portable);
    for (const char* which : {"q", "k", "v", "dout"}) {
      SCOPED_TRACE(testing::Message() << "3.4e38 in " << which << " row " << PoisonCase::kRow << ", "
                                      << (portable ? "portable" : "avx512_bf16"));
      const PoisonCase::Outputs got = base.poisoned(which, 3.4e38f).run(/*bf16=*/true);
      const AttnNanPattern want = base.poisoned(which, NAN).nan_pattern();
      size_t reached = 0;
      auto expect_clean = [&](const char* name, const std::vector<float>& out, const std::vector<bool>& hit) {
        size_t wrong = 0;
        for (size_t i = 0; i < out.size(); ++i) {
          if (!hit[i] && !std::isfinite(out[i])) ++wrong;
          if (hit[i] && !std::isfinite(out[i])) ++reached;
        }
        EXPECT_EQ(wrong, 0u) << name << ": " << wrong << " entries the value cannot reach are not finite";
      };
      expect_clean("out", got.out, want.out);
      expect_clean("lse", got.lse, want.lse);
      expect_clean("dq", got.dq, want.dq);
      expect_clean("dk", got.dk, want.dk);
      expect_clean("dv", got.dv, want.dv);
      EXPECT_GT(reached, 0u) << "the value reached no output";
    }
  }
}

// ---- swiglu ------------------------------------------------------------------------------------------------

TEST(KernelsBackward, SwigluMatchesFiniteDifferences) {
  Headroom hr("swiglu backward", kSwigluGradTol);
  for (int64_t n : {1, 17, 1000}) {
    SCOPED_TRACE(testing::Message() << "n=" << n << " seed=" << 1700 + n);
    Rng rng(1700 + n);
    std::vector<float> gate = uniform(rng, n, -20.f, 20.f);
    const float extremes[] = {-1e4f, -100.f, -88.f, 0.f, 88.f, 100.f, 1e4f, -1.2784645f};  // last: silu' = 0
    for (size_t i = 0; i < 8 && i < gate.size(); ++i) gate[i] = extremes[i];
    const std::vector<float> up = uniform(rng, n, -3.f, 3.f), r = normal(rng, n, 1.0);
    std::vector<float> dgate = guarded(n, NAN), dup = guarded(n, NAN);
    swiglu_backward_ref(r.data(), gate.data(), up.data(), n, dgate.data(), dup.data());
    // Elementwise, so each entry's central difference is taken on its own term r·silu(g)·u (in a loss summed
    // over all elements the 1e-37 terms at gate = -88 would drown), with a step for g that does not grow with
    // |g| (silu's tail is g·e^g: the truncation error is h²/6 relative). Each entry is compared with the size of
    // its terms, |dout·up|·s·(1 + |g|·(1 − s)) and |dout·g·s| (silu' crosses 0 at g ≈ -1.278, where they cancel).
    auto term = [](double g, double u) { return g / (1.0 + std::exp(-g)) * u; };
    for (int64_t i = 0; i < n; ++i) {
      const double g = gate[i], u = up[i];
      const double hg = kFdStep, hu = kFdStep * (1 + std::fabs(u));
      const double fd_gate = r[i] * (term(g + hg, u) - term(g - hg, u)) / (2 * hg);
      const double fd_up = r[i] * (term(g, u + hu) - term(g, u - hu)) / (2 * hu);
      const double s = 1.0 / (1.0 + std::exp(-g)), du = std::fabs(static_cast<double>(r[i]) * up[i]);
      const double mag_gate = du * s * (1 + std::fabs(g) * (1 - s)), mag_up = std::fabs(r[i] * g * s);
      ASSERT_TRUE(hr.ok(std::fabs(dgate[i] - fd_gate), kSwigluGradTol * mag_gate + kTiny))
          << "dgate[" << i << "] = " << dgate[i] << " fd " << fd_gate << " gate " << g;
      ASSERT_TRUE(hr.ok(std::fabs(dup[i] - fd_up), kSwigluGradTol * mag_up + kTiny))
          << "dup[" << i << "] = " << dup[i] << " fd " << fd_up << " gate " << g;
    }
    expect_guards(dgate, "dgate");
    expect_guards(dup, "dup");

    // In place: dgate over gate, dup over up.
    std::vector<float> g2 = gate, u2 = up;
    swiglu_backward_ref(r.data(), g2.data(), u2.data(), n, g2.data(), u2.data());
    EXPECT_TRUE(std::equal(g2.begin(), g2.end(), dgate.begin()));
    EXPECT_TRUE(std::equal(u2.begin(), u2.end(), dup.begin()));
  }
}

// ---- cross entropy -----------------------------------------------------------------------------------------

// scale · Σ over counted rows of (logsumexp − logit[target]), in double.
double xent_loss_f64(const std::vector<double>& l, int64_t rows, int64_t V, const std::vector<int32_t>& targets,
                     double scale) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] == kIgnoreIndex) continue;
    double mx = -INFINITY, sum = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, l[r * V + v]);
    for (int64_t v = 0; v < V; ++v) sum += std::exp(l[r * V + v] - mx);
    total += mx + std::log(sum) - l[r * V + targets[r]];
  }
  return scale * total;
}

TEST(KernelsBackward, CrossEntropyMatchesFiniteDifferences) {
  struct Case {
    int64_t rows, V;
  };
  const Case cases[] = {{1, 1}, {3, 5}, {7, 5}, {5, 33}, {9, 33}};
  Headroom hr("cross entropy backward", kXentGradTol);
  uint64_t seed = 1800;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "rows=" << c.rows << " V=" << c.V << " seed=" << seed + 1);
    Rng rng(++seed);
    std::vector<float> logits = normal(rng, c.rows * c.V, 3.0);
    for (int64_t r = 0; r < c.rows; ++r)  // large offsets: only a max-subtracted softmax survives these
      for (int64_t v = 0; v < c.V; ++v) logits[r * c.V + v] += (r % 3 == 1) ? 80.f : (r % 3 == 2 ? -90.f : 0.f);
    std::vector<int32_t> targets(c.rows);
    int64_t counted = 0;
    for (int64_t r = 0; r < c.rows; ++r) {
      targets[r] = (r % 4 == 3) ? kIgnoreIndex : static_cast<int32_t>(rng.below(c.V));
      counted += targets[r] != kIgnoreIndex;
    }
    const float scale = (seed % 2) ? 1.0f / static_cast<float>(counted) : 0.37f;
    std::vector<float> dl = guarded(c.rows * c.V, NAN);
    cross_entropy_backward_ref(logits.data(), c.rows, c.V, targets.data(), scale, dl.data());
    // Softmax is shift-invariant: the step is set by the logits' spread (3), not by their offsets of 80.
    const std::vector<double> fd = fd_gradient(logits, 3.0, [&](const std::vector<double>& l) {
      return xent_loss_f64(l, c.rows, c.V, targets, scale);
    }, 1, /*relative=*/false);
    expect_grad_near("dlogits", dl.data(), fd, kXentGradTol, &hr);
    expect_guards(dl, "dlogits");
    for (int64_t r = 0; r < c.rows; ++r) {
      if (targets[r] != kIgnoreIndex) continue;
      for (int64_t v = 0; v < c.V; ++v) ASSERT_EQ(dl[r * c.V + v], 0.f) << "ignored row " << r;
    }

    std::vector<float> in_place = logits;  // dlogits may alias logits
    cross_entropy_backward_ref(in_place.data(), c.rows, c.V, targets.data(), scale, in_place.data());
    EXPECT_TRUE(std::equal(in_place.begin(), in_place.end(), dl.begin())) << "in-place dlogits differs";
  }
}

TEST(KernelsBackward, CrossEntropyAtQwenVocabulary) {
  // V = 151936: each entry against scale · (softmax − onehot) in double, relative to its own size.
  const int64_t rows = 2, V = 151936;
  Rng rng(1900);
  const std::vector<float> logits = normal(rng, rows * V, 3.0);
  const std::vector<int32_t> targets = {5, 151935};
  const float scale = 0.5f;
  std::vector<float> dl(rows * V, NAN);
  cross_entropy_backward_ref(logits.data(), rows, V, targets.data(), scale, dl.data());
  Headroom hr("cross entropy backward, V=151936", kXentVocabTol);
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -INFINITY, sum = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(logits[r * V + v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(logits[r * V + v] - mx);
    for (int64_t v = 0; v < V; ++v) {
      const double p = std::exp(logits[r * V + v] - mx) / sum, hot = v == targets[r] ? 1.0 : 0.0;
      const double ref = scale * (p - hot);
      ASSERT_TRUE(hr.ok(std::fabs(dl[r * V + v] - ref), kXentVocabTol * scale * (p + hot) + 1e-45))
          << "row " << r << " v " << v << " got " << dl[r * V + v] << " ref " << ref;
    }
  }
}

// ---- bad arguments -----------------------------------------------------------------------------------------

TEST(KernelsBackward, BackwardRejectsWhatTheForwardRejects) {
  std::vector<float> a(256, 1.f), b(256, 1.f), c(256), d(256), e(256);
  const int32_t pos = 0;
  EXPECT_ERROR_CONTAINS(rmsnorm_backward_ref(a.data(), b.data(), 1, 8, c.data(), DType::I32, 1e-6f, d.data()),
                        "rmsnorm_backward_ref: weight dtype I32 is not supported");
  EXPECT_ERROR_CONTAINS(rmsnorm_backward_ref(a.data(), b.data(), 1, 0, c.data(), DType::F32, 1e-6f, d.data()),
                        "rmsnorm_backward_ref: bad shape rows=1 C=0");
  EXPECT_ERROR_CONTAINS(rmsnorm_backward_ref(a.data(), b.data(), 1, 8, c.data(), DType::F32, -1.f, d.data()),
                        "rmsnorm_backward_ref: eps must be >= 0, got -1");

  EXPECT_ERROR_CONTAINS(linear_backward_input_ref(a.data(), 0, 4, b.data(), DType::F32, 4, c.data()),
                        "linear_backward_input_ref: shapes must be positive, got M=0 K=4 N=4");
  EXPECT_ERROR_CONTAINS(linear_backward_input_ref(a.data(), 2, 4, b.data(), DType::I8, 4, c.data()),
                        "linear_backward_input_ref: weight dtype I8 is not supported (F32, BF16 or F16)");
  EXPECT_ERROR_CONTAINS(linear_backward_input_ref(a.data(), 2, 4, b.data(), DType::F32, 4, a.data() + 4),
                        "linear_backward_input_ref: output dx overlaps input dy");
  EXPECT_ERROR_CONTAINS(linear_backward_weight_ref(a.data(), b.data(), 2, -1, 4, c.data()),
                        "linear_backward_weight_ref: shapes must be positive, got M=2 K=4 N=-1");
  EXPECT_ERROR_CONTAINS(linear_backward_weight_ref(a.data(), b.data(), 2, 4, 4, b.data() + 7),
                        "linear_backward_weight_ref: output dW overlaps input dy or x");

  EXPECT_ERROR_CONTAINS(rope_backward_ref(a.data(), 1, 2, 3, &pos, rope_spec_default(10000.0)),
                        "rope_backward_ref: head dim D=3 must be even");
  EXPECT_ERROR_CONTAINS(rope_backward_ref(a.data(), 1, 0, 2, &pos, rope_spec_default(10000.0)),
                        "rope_backward_ref: bad shape T=1 H=0 D=2");

  const std::vector<int32_t> cu = {0, 2, 5}, bad_start = {1, 5}, decreasing = {0, 4, 3};
  auto attn_bwd = [&](const int32_t* cu_seqlens, int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, const float* lse) {
    attention_backward_ref(a.data(), b.data(), b.data(), b.data(), b.data(), lse, cu_seqlens, n_seqs, H, Hkv, D,
                           c.data(), d.data(), e.data());
  };
  EXPECT_ERROR_CONTAINS(attn_bwd(cu.data(), 2, 3, 2, 8, b.data()),
                        "attention_backward_ref: query heads H=3 must be a multiple of kv heads Hkv=2");
  EXPECT_ERROR_CONTAINS(attn_bwd(bad_start.data(), 1, 2, 1, 8, b.data()),
                        "attention_backward_ref: cu_seqlens[0] must be 0, got 1");
  EXPECT_ERROR_CONTAINS(attn_bwd(decreasing.data(), 2, 2, 1, 8, b.data()),
                        "cu_seqlens must be non-decreasing, got 4 then 3 at sequence 1");
  EXPECT_ERROR_CONTAINS(attn_bwd(cu.data(), 2, 2, 1, 0, b.data()),
                        "attention_backward_ref: bad shape n_seqs=2 H=2 Hkv=1 D=0");
  EXPECT_ERROR_CONTAINS(attn_bwd(cu.data(), 2, 2, 1, 8, nullptr), "dout, q, k, v, out and lse are all required");

  EXPECT_ERROR_CONTAINS(swiglu_backward_ref(a.data(), b.data(), c.data(), -1, d.data(), e.data()),
                        "swiglu_backward_ref: negative size -1");
  EXPECT_ERROR_CONTAINS(swiglu_backward_ref(a.data(), b.data(), c.data(), 4, d.data(), d.data()),
                        "dgate and dup must be different buffers");

  const std::vector<int32_t> too_big = {1, 5};
  EXPECT_ERROR_CONTAINS(cross_entropy_backward_ref(a.data(), 2, 5, too_big.data(), 1.f, c.data()),
                        "cross_entropy_backward_ref: target 5 of row 1 is outside the vocabulary [0, 5) and is not "
                        "the ignore index -100");
  const std::vector<int32_t> ok = {1, 2};
  EXPECT_ERROR_CONTAINS(cross_entropy_backward_ref(a.data(), 2, 5, ok.data(), NAN, c.data()),
                        "cross_entropy_backward_ref: dnll_scale must be finite, got nan");
}

// ---- AdamW -------------------------------------------------------------------------------------------------

struct AdamConfig {
  double lr, beta1, beta2, eps, wd;
};

TEST(KernelsBackward, AdamwMatchesTorchAlgorithmOverSteps) {
  // torch.optim.AdamW's documented algorithm, in double:
  //   θ ← θ(1 − γλ); m ← β1 m + (1 − β1) g; v ← β2 v + (1 − β2) g²; m̂ = m / (1 − β1^t); v̂ = v / (1 − β2^t);
  //   θ ← θ − γ m̂ / (sqrt(v̂) + ε)
  // β1 = 0.5 takes the other branch of torch's lerp (weight 1 − β1 = 0.5 is not < 0.5).
  const AdamConfig configs[] = {
      {1e-3, 0.9, 0.999, 1e-8, 0.01}, {0.05, 0.5, 0.9, 1e-6, 0.1}, {2e-4, 0.9, 0.95, 1e-8, 0.0}};
  const int kSteps = 12;
  Headroom hr("adamw vs double loop", kAdamTol);
  uint64_t seed = 2000;
  for (const AdamConfig& a : configs)
    for (int64_t n : {1, 17, 40000}) {  // 40000: more than one parallel block
      SCOPED_TRACE(testing::Message() << "lr=" << a.lr << " beta1=" << a.beta1 << " beta2=" << a.beta2 << " n=" << n
                                      << " seed=" << seed + 1);
      Rng rng(++seed);
      std::vector<float> p = normal(rng, n, 1.0), m(n, 0.f), v(n, 0.f);
      std::vector<double> pr = to_double(p), mr(n, 0.0), vr(n, 0.0), p_mag(n, 0.0), m_mag(n, 0.0);
      for (int step = 1; step <= kSteps; ++step) {
        std::vector<float> g = normal(rng, n, step % 3 == 0 ? 1e-3 : 1.0);
        if (n > 1) g[1] = 0.f;  // a parameter without gradient: decay only
        adamw_step_ref(p.data(), g.data(), m.data(), v.data(), n, a.lr, a.beta1, a.beta2, a.eps, a.wd, step);
        const double bc1 = 1 - std::pow(a.beta1, step), bc2 = 1 - std::pow(a.beta2, step);
        for (int64_t i = 0; i < n; ++i) {
          pr[i] *= 1 - a.lr * a.wd;
          mr[i] = a.beta1 * mr[i] + (1 - a.beta1) * g[i];
          vr[i] = a.beta2 * vr[i] + (1 - a.beta2) * static_cast<double>(g[i]) * g[i];
          const double denom = std::sqrt(vr[i] / bc2) + a.eps;
          pr[i] -= a.lr * (mr[i] / bc1) / denom;
          // Error scales: m sums terms of size m_mag, the step adds (at most) lr·(m_mag / bc1) / denom to θ.
          m_mag[i] = a.beta1 * m_mag[i] + (1 - a.beta1) * std::fabs(g[i]);
          p_mag[i] += std::fabs(pr[i]) + a.lr * (m_mag[i] / bc1) / denom;
          ASSERT_TRUE(hr.ok(std::fabs(p[i] - pr[i]), kAdamTol * p_mag[i] + 1e-30))
              << "step " << step << " param[" << i << "] = " << p[i] << " ref " << pr[i];
          ASSERT_TRUE(hr.ok(std::fabs(m[i] - mr[i]), kAdamTol * step * m_mag[i] + 1e-30))
              << "step " << step << " m[" << i << "] = " << m[i] << " ref " << mr[i];
          ASSERT_TRUE(hr.ok(std::fabs(v[i] - vr[i]), kAdamTol * step * vr[i] + 1e-30))
              << "step " << step << " v[" << i << "] = " << v[i] << " ref " << vr[i];
        }
      }
    }
}

TEST(KernelsBackward, AdamwGoldenOneElement) {
  // Derived by hand: lr = 0.1, β1 = 0.9, β2 = 0.999, ε = 0.25, λ = 0.5, θ0 = 1, gradients +1, −1, +1.
  //   |g| = 1 every step, so v_t = (1 − β2^t) and v̂ = 1 exactly: v = 0.001, 0.001999, 0.002997001, and the
  //   denominator sqrt(v̂) + ε = 1.25 (ε added after the bias correction; before it would give 1 + ε/sqrt(bc2)).
  //   m = 0.1, 0.9·0.1 − 0.1 = −0.01, 0.9·(−0.01) + 0.1 = 0.091;  1 − β1^t = 0.1, 0.19, 0.271
  //   m̂ = 1, −1/19, 91/271;  decay 1 − lr·λ = 0.95;  update lr·m̂/1.25 = 0.08·m̂
  //   θ1 = 0.95 − 0.08 = 0.87
  //   θ2 = 0.95·0.87 + 0.08/19 = 0.8265 + 0.00421052631578947 = 0.83071052631578947
  //   θ3 = 0.95·θ2 − 0.08·91/271 = 0.789175 − 0.02686346863468635 = 0.76231153136531365
  // Coupled L2 decay (Adam) or decay after the update would give other numbers.
  const double expect_p[] = {0.87, 0.83071052631578947, 0.76231153136531365};
  const double expect_m[] = {0.1, -0.01, 0.091};
  const double expect_v[] = {0.001, 0.001999, 0.002997001};
  const float grads[] = {1.f, -1.f, 1.f};
  float p = 1.f, m = 0.f, v = 0.f;
  for (int t = 1; t <= 3; ++t) {
    adamw_step_ref(&p, &grads[t - 1], &m, &v, 1, 0.1, 0.9, 0.999, 0.25, 0.5, t);
    EXPECT_NEAR(p, expect_p[t - 1], kGoldenTol) << "step " << t;
    EXPECT_NEAR(m, expect_m[t - 1], kGoldenTol * 0.1) << "step " << t;
    EXPECT_NEAR(v, expect_v[t - 1], kGoldenTol * 0.01) << "step " << t;
  }
  // lr = 0: the parameter stays, the moments still move.
  float q = 2.f, mq = 0.f, vq = 0.f;
  const float g = 4.f;
  adamw_step_ref(&q, &g, &mq, &vq, 1, 0.0, 0.9, 0.999, 1e-8, 0.5, 1);
  EXPECT_EQ(q, 2.f);
  EXPECT_NEAR(mq, 0.4, 1e-7);
  EXPECT_NEAR(vq, 0.016, 1e-9);
}

TEST(KernelsBackward, AdamwRejectsBadHyperparameters) {
  float p = 0, g = 0, m = 0, v = 0;
  EXPECT_ERROR_CONTAINS(adamw_step_ref(&p, &g, &m, &v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0),
                        "adamw_step_ref: step must be >= 1 (the count after this update), got 0");
  EXPECT_ERROR_CONTAINS(adamw_step_ref(&p, &g, &m, &v, 1, -1e-3, 0.9, 0.999, 1e-8, 0.0, 1),
                        "adamw_step_ref: invalid learning rate -0.001");
  EXPECT_ERROR_CONTAINS(adamw_step_ref(&p, &g, &m, &v, 1, 1e-3, 1.0, 0.999, 1e-8, 0.0, 1),
                        "adamw_step_ref: invalid beta1 1 (must be in [0, 1))");
  EXPECT_ERROR_CONTAINS(adamw_step_ref(&p, &g, &m, &v, 1, 1e-3, 0.9, -0.5, 1e-8, 0.0, 1), "invalid beta2 -0.5");
  EXPECT_ERROR_CONTAINS(adamw_step_ref(&p, &g, &m, &v, 1, 1e-3, 0.9, 0.999, -1.0, 0.0, 1), "invalid epsilon -1");
  EXPECT_ERROR_CONTAINS(adamw_step_ref(&p, &g, &m, &v, 1, 1e-3, 0.9, 0.999, 1e-8, -0.1, 1),
                        "invalid weight_decay -0.1");
  EXPECT_ERROR_CONTAINS(adamw_step_ref(&p, &g, &m, &v, -2, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1), "negative size -2");
}

// ---- gradient clipping -------------------------------------------------------------------------------------

TEST(KernelsBackward, ClipGradNormGolden) {
  // grads {3, 4}: norm 5 exactly. coef = max_norm / (5 + 1e-6): torch scales even at max_norm = norm.
  for (float max_norm : {1.f, 5.f, 6.f}) {
    float g[] = {3.f, 4.f};
    float* grads[] = {g};
    const int64_t sizes[] = {2};
    EXPECT_EQ(clip_grad_norm_ref(grads, sizes, 1, max_norm), 5.f);
    const double coef = std::min(1.0, max_norm / (5.0 + 1e-6));
    EXPECT_NEAR(g[0], 3 * coef, kClipTol * 3) << "max_norm " << max_norm;
    EXPECT_NEAR(g[1], 4 * coef, kClipTol * 4) << "max_norm " << max_norm;
    if (max_norm == 5.f) {
      EXPECT_LT(g[0], 3.f) << "the 1e-6 in the denominator is missing";
    } else if (max_norm == 6.f) {
      EXPECT_EQ(g[0], 3.f);
    }
  }
}

TEST(KernelsBackward, ClipGradNormOverSeveralTensors) {
  ThreadSweep sweep;
  Rng rng(2100);
  std::vector<std::vector<float>> tensors = {normal(rng, 3, 1.0), {}, normal(rng, 1000, 0.1), normal(rng, 40000, 0.01)};
  double sum_sq = 0;
  for (const auto& t : tensors)
    for (float f : t) sum_sq += static_cast<double>(f) * f;
  const double norm = std::sqrt(sum_sq);
  for (int threads : sweep.counts())
    for (double ratio : {0.5, 2.0}) {
      set_num_threads(threads);
      SCOPED_TRACE(testing::Message() << threads << " threads, max_norm = " << ratio << " x norm");
      std::vector<std::vector<float>> g = tensors;
      std::vector<float*> ptrs;
      std::vector<int64_t> sizes;
      for (auto& t : g) {
        ptrs.push_back(t.empty() ? nullptr : t.data());
        sizes.push_back(static_cast<int64_t>(t.size()));
      }
      const float max_norm = static_cast<float>(ratio * norm);
      const float got = clip_grad_norm_ref(ptrs.data(), sizes.data(), 4, max_norm);
      EXPECT_NEAR(got, norm, kClipTol * norm);
      const double coef = std::min(1.0, max_norm / (norm + 1e-6));
      for (size_t i = 0; i < g.size(); ++i)
        for (size_t j = 0; j < g[i].size(); ++j) {
          if (ratio > 1) {
            ASSERT_EQ(g[i][j], tensors[i][j]) << "a norm below max_norm must leave the gradients as they are";
          } else {
            ASSERT_NEAR(g[i][j], tensors[i][j] * coef, 2 * kClipTol * std::fabs(tensors[i][j]))
                << "tensor " << i << " element " << j;
          }
        }
    }
}

TEST(KernelsBackward, ClipGradNormNonFiniteAndBadArguments) {
  float g[] = {1.f, INFINITY, 2.f};
  float* grads[] = {g};
  const int64_t sizes[] = {3};
  EXPECT_EQ(clip_grad_norm_ref(grads, sizes, 1, 1.f), INFINITY);
  EXPECT_EQ(g[0], 1.f);  // left for the caller to skip the step
  EXPECT_EQ(g[2], 2.f);
  EXPECT_EQ(clip_grad_norm_ref(nullptr, nullptr, 0, 1.f), 0.f);
  EXPECT_ERROR_CONTAINS(clip_grad_norm_ref(grads, sizes, 1, -1.f), "clip_grad_norm_ref: max_norm must be >= 0, got -1");
  const int64_t negative[] = {-3};
  EXPECT_ERROR_CONTAINS(clip_grad_norm_ref(grads, negative, 1, 1.f), "tensor 0 has negative size -3");
  float* null_grads[] = {nullptr};
  EXPECT_ERROR_CONTAINS(clip_grad_norm_ref(null_grads, sizes, 1, 1.f), "tensor 0 of size 3 has a null pointer");
}

}  // namespace
}  // namespace qwenq
