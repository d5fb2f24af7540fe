// The CUDA twins of the step's kernels (norm, rope, act, loss, optim) against their CPU references, on the same
// seeded inputs, over sweeps mixing real Qwen2.5 shapes (hidden 896/3584/8192, intermediate 4864/18944/29568,
// heads 14/2, 28/4 and 64/8 with D = 64 and 128, vocabularies 151936 and 152064) with awkward sizes (1, 3, 17,
// 5, 7, odd half head dims, misaligned starts), plus the argument errors and the CUDA error messages. Every
// output buffer carries guard elements after it that no kernel may touch. Every test skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/act.h"
#include "kernels/cuda_check.cuh"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/optim.h"
#include "kernels/rope.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;
using test::expect_error;

// ---- tolerances ---------------------------------------------------------------------------------------------
// Both sides compute in fp32 with the same formulas; what differs is the order of the sums, expf (CUDA's within
// 2 ulp, glibc's within 1), and which a·b + c the compilers fuse into one rounding. Each bound is kU (the fp32
// unit roundoff, 2^-24) times a count, times the magnitude of the terms that make the value (not the value, which
// may cancel):
// rmsnorm   |Δy|  <= kU·(kElemUlps + 2·sqrt(C)) · |w·x·r|; |Δdx| <= the same factor · (r·|g| + r³·|x|·Σ|g·x|/C):
//           the sums of C terms (x², g·x) are taken in different orders (the ref: SIMD lanes; the kernel: a thread's
//           columns, then a shuffle tree), each off by ~sqrt(C) ulps of the sum for random rounding; kElemUlps
//           covers the elementwise products, the rsqrt and fused multiply-adds. An emulation of the kernel's order
//           on the CPU against the ref (rows 17 and 512, C up to 8192) peaked at 0.45 of the bound with sqrt(C).
// rope      |Δx'| <= kU·kRopeUlps·(|x_i| + |x_{i+D/2}|): identical inv_freq and angle, cos/sin correctly rounded on
//           both sides (but in rare near-ties: one ulp), then two products and a sum.
// swiglu    |Δout| <= kU·kSwigluUlps·|out|, |Δdgate| <= kU·kSwigluUlps·|dout·up|·s·(1 + |g·(1 − s)|),
//           |Δdup| <= kU·kSwigluUlps·|dup| (expf: 3 ulp apart, carried through 1 + e, the division, 2-3
//           products); plus kTiny where e^-g crosses FLT_MAX and one side may round to inf (|out| < 1e-30 there).
// xent      |Δnll| <= kU·kXentUlps·(1 + |lse| + |l_target|): the sum S differs by a few ulps (exponentials
//           relative to a running max, rescaled; expf), moving log S by that much absolutely, then 3 fp32 roundings
//           of values of size |lse| and |l_target|. |Δdlogit| <= kU·kXentUlps·|scale|·(p_v + [v = target]).
//           Emulated on the CPU (the kernel's thread split and merge tree, expf moved by up to ±2 ulp): 0.37 of
//           the dlogits bound at V = 151936.
// adamw     per step from the same state (m, v before the step): |Δm| <= kU·kAdamUlps·(|m| + |g|),
//           |Δv| <= kU·kAdamUlps·(v + g²), |Δp| <= kU·kAdamUlps·(|p| + lr/(1−β1^t)·(|m| + |g|)/denom): the new m
//           may cancel, so its error is relative to |m| + |g|; the step term then passes ~9 roundings on each side
//           (m: 2, v: 3, sqrt, /, +eps, m/denom, ·step size), differently fused (sqrtf and / are IEEE on both).
// clip      the squares are summed in double on both sides (relative difference ~1e-16), so the fp32 norm is
//           the same but in near-ties: |Δnorm| <= kU·kClipUlps·norm, |Δg| <= kU·2·kClipUlps·|g|.
constexpr double kU = 1.0 / 16777216.0;
constexpr double kElemUlps = 8;
constexpr double kRopeUlps = 4;
constexpr double kSwigluUlps = 16;
constexpr double kTiny = 1e-30;
constexpr double kXentUlps = 16;
constexpr double kAdamUlps = 16;
constexpr double kClipUlps = 1;

// ---- helpers ------------------------------------------------------------------------------------------------

constexpr size_t kGuard = 32;                 // elements after every output
constexpr uint32_t kGuardBits = 0x7fc5a5a5u;  // a quiet NaN with a payload no kernel produces

float guard_value() {
  float f;
  std::memcpy(&f, &kGuardBits, sizeof f);
  return f;
}

// `v` followed by kGuard guard values: upload this, pass the first v.size() elements to the kernel.
std::vector<float> guarded(std::vector<float> v) {
  v.insert(v.end(), kGuard, guard_value());
  return v;
}

void expect_guard_intact(const std::vector<float>& v, size_t n, const std::string& ctx) {
  ASSERT_EQ(v.size(), n + kGuard) << ctx;
  for (size_t i = n; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], sizeof bits);
    if (bits != kGuardBits) {
      ADD_FAILURE() << ctx << ": guard element " << i - n << " after the output was overwritten";
      return;
    }
  }
}

std::vector<float> uniform(Rng& rng, size_t n, float lo, float hi) {
  std::vector<float> v(n);
  for (auto& f : v) f = rng.uniform(lo, hi);
  return v;
}

// Checks |got[i] − want[i]| <= tol(i) for i < n; NaN must face NaN and inf the same inf. Reports the first few
// offenders and the worst error/tolerance ratio.
template <typename Tol>
void expect_close(const float* got, const float* want, size_t n, Tol tol, const std::string& ctx) {
  size_t bad = 0, worst_i = 0;
  double worst = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double g = got[i], w = want[i];
    bool ok;
    double ratio = 0.0, t = 0.0;
    if (std::isnan(g) || std::isnan(w)) {
      ok = std::isnan(g) && std::isnan(w);
    } else if (std::isinf(g) || std::isinf(w)) {
      ok = g == w;
    } else {
      t = tol(i);
      const double e = std::fabs(g - w);
      ok = e <= t;
      ratio = t > 0 ? e / t : (e > 0 ? INFINITY : 0.0);
    }
    if (!ok) {
      if (bad < 5)
        ADD_FAILURE() << ctx << ": element " << i << " is " << g << ", the ref has " << w << " (tolerance " << t << ")";
      ++bad;
      ratio = INFINITY;
    }
    if (ratio > worst) worst = ratio, worst_i = i;
  }
  EXPECT_EQ(bad, 0u) << ctx << ": " << bad << " of " << n << " elements out of tolerance; worst error/tolerance "
                     << worst << " at element " << worst_i;
}

// A CUDA stream for the test's lifetime.
class Stream {
 public:
  Stream() { QWENQ_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const { QWENQ_CUDA_CHECK(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

void sync() { QWENQ_CUDA_CHECK(cudaDeviceSynchronize()); }

// ---- RMSNorm ------------------------------------------------------------------------------------------------

using NormParam = std::tuple<int64_t, int64_t, DType>;  // rows, C, weight dtype

class RmsnormCuda : public ::testing::TestWithParam<NormParam> {};

TEST_P(RmsnormCuda, MatchesRef) {
  QWENQ_REQUIRE_GPU();
  const int64_t rows = std::get<0>(GetParam()), C = std::get<1>(GetParam());
  const DType dtype = std::get<2>(GetParam());
  const uint64_t seed = 1000 + rows * 131 + C * 7 + static_cast<int>(dtype);
  std::ostringstream ctx_os;
  ctx_os << "rows=" << rows << " C=" << C << " weight " << dtype_name(dtype) << " seed " << seed;
  const std::string ctx = ctx_os.str();
  Rng rng(seed);
  const size_t n = static_cast<size_t>(rows * C);
  // Rows of magnitudes 1e-3..1e3 (the statistics are per row), weights of both signs.
  std::vector<float> x = uniform(rng, n, -2.f, 2.f), dy = uniform(rng, n, -1.f, 1.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = std::pow(10.f, static_cast<float>(r % 7) - 3.f);
    for (int64_t c = 0; c < C; ++c) x[r * C + c] *= scale;
  }
  std::vector<float> w_f32 = uniform(rng, static_cast<size_t>(C), -1.5f, 1.5f);
  std::vector<uint8_t> w_bytes(static_cast<size_t>(C) * dtype_size(dtype));
  from_f32(dtype, w_f32.data(), w_bytes.data(), static_cast<size_t>(C));
  to_f32(dtype, w_bytes.data(), w_f32.data(), static_cast<size_t>(C));  // the values the kernels see
  const float eps = 1e-6f;

  std::vector<float> y_ref(n), dx_ref(n);
  rmsnorm_forward_ref(x.data(), rows, C, w_bytes.data(), dtype, eps, y_ref.data());
  rmsnorm_backward_ref(dy.data(), x.data(), rows, C, w_bytes.data(), dtype, eps, dx_ref.data());

  DeviceBuffer<float> d_x(x), d_dy(dy), d_y(guarded(std::vector<float>(n))), d_dx(guarded(std::vector<float>(n)));
  DeviceBuffer<uint8_t> d_w(w_bytes);
  rmsnorm_forward_cuda(d_x.get(), rows, C, d_w.get(), dtype, eps, d_y.get());
  rmsnorm_backward_cuda(d_dy.get(), d_x.get(), rows, C, d_w.get(), dtype, eps, d_dx.get());
  sync();
  const std::vector<float> y = d_y.download(), dx = d_dx.download();

  // Per-row magnitudes in double: r, and Σ|g·x| for the backward.
  std::vector<double> r(static_cast<size_t>(rows)), sum_abs_gx(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    double ss = 0, s = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double xc = x[i * C + c];
      ss += xc * xc;
      s += std::fabs(dy[i * C + c] * static_cast<double>(w_f32[c]) * xc);
    }
    r[i] = 1.0 / std::sqrt(ss / C + eps);
    sum_abs_gx[i] = s;
  }
  const double rel = kU * (kElemUlps + 2 * std::sqrt(static_cast<double>(C)));
  const size_t Cu = static_cast<size_t>(C);
  expect_close(
      y.data(), y_ref.data(), n,
      [&](size_t i) {
        const size_t row = i / Cu, c = i % Cu;
        return rel * std::fabs(static_cast<double>(w_f32[c]) * x[i] * r[row]) + kTiny;
      },
      "rmsnorm forward " + ctx);
  expect_close(
      dx.data(), dx_ref.data(), n,
      [&](size_t i) {
        const size_t row = i / Cu, c = i % Cu;
        const double rr = r[row], g = std::fabs(dy[i] * static_cast<double>(w_f32[c]));
        return rel * (rr * g + rr * rr * rr * std::fabs(x[i]) * sum_abs_gx[row] / C) + kTiny;
      },
      "rmsnorm backward " + ctx);
  expect_guard_intact(y, n, "rmsnorm forward " + ctx);
  expect_guard_intact(dx, n, "rmsnorm backward " + ctx);

  // In place (y over x; dx over dy), as the ref allows: the same numbers.
  DeviceBuffer<float> d_inplace(x), d_grad(dy);
  rmsnorm_forward_cuda(d_inplace.get(), rows, C, d_w.get(), dtype, eps, d_inplace.get());
  rmsnorm_backward_cuda(d_grad.get(), d_x.get(), rows, C, d_w.get(), dtype, eps, d_grad.get());
  sync();
  const std::vector<float> y_in = d_inplace.download(), dx_in = d_grad.download();
  EXPECT_EQ(0, std::memcmp(y_in.data(), y.data(), n * sizeof(float))) << "in-place forward differs, " << ctx;
  EXPECT_EQ(0, std::memcmp(dx_in.data(), dx.data(), n * sizeof(float))) << "in-place backward differs, " << ctx;
}

std::string norm_name(const ::testing::TestParamInfo<NormParam>& info) {
  const auto [rows, C, dtype] = info.param;
  return "rows" + std::to_string(rows) + "_C" + std::to_string(C) + "_" + dtype_name(dtype);
}

INSTANTIATE_TEST_SUITE_P(Sweep, RmsnormCuda,
                         ::testing::Combine(::testing::Values<int64_t>(1, 3, 17, 512),
                                            ::testing::Values<int64_t>(1, 3, 33, 64, 896, 3584, 4099, 8192),
                                            ::testing::Values(DType::F32, DType::BF16, DType::F16)),
                         norm_name);

// ---- RoPE ---------------------------------------------------------------------------------------------------

struct RopeCase {
  int64_t H, D;
  RopeSpec rope;
  const char* what;
};
using RopeParam = std::tuple<int64_t, RopeCase>;  // T, heads
void PrintTo(const RopeCase& c, std::ostream* os) {
  *os << c.what << " H=" << c.H << " D=" << c.D << " theta=" << c.rope.theta << " rope " << rope_type_name(c.rope.type);
}

// Scaled RoPE as Qwen's and Llama's model cards configure it: YaRN factor 4 from 32K (attention scaling
// 0.1·ln 4 + 1 = 1.139), Llama 3.1's llama3 (factor 8 from 8K, θ 500000), linear factor 4.
RopeSpec rope_case_spec(RopeType type, double theta) {
  RopeSpec r = rope_spec_default(theta);
  r.type = type;
  if (type == RopeType::Yarn) {
    r.factor = 4;
    r.original_max_position_embeddings = 32768;
    r.attention_factor = yarn_default_attention_factor(4, 0, 0);
  } else if (type == RopeType::Llama3) {
    r.factor = 8;
    r.original_max_position_embeddings = 8192;
  } else if (type == RopeType::Linear) {
    r.factor = 4;
  }
  return r;
}

class RopeCuda : public ::testing::TestWithParam<RopeParam> {};

TEST_P(RopeCuda, MatchesRef) {
  QWENQ_REQUIRE_GPU();
  const int64_t T = std::get<0>(GetParam());
  const RopeCase rc = std::get<1>(GetParam());
  const uint64_t seed = 2000 + T * 31 + rc.H * 7 + rc.D;
  std::ostringstream ctx_os;
  ctx_os << "T=" << T << " H=" << rc.H << " D=" << rc.D << " theta=" << rc.rope.theta << " rope "
         << rope_type_name(rc.rope.type) << " seed " << seed;
  const std::string ctx = ctx_os.str();
  Rng rng(seed);
  const size_t n = static_cast<size_t>(T * rc.H * rc.D);
  // Packed sequences restarting every 200 tokens, and every 5th token at a far position (up to 128K).
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t)
    pos[t] = t % 5 == 4 ? static_cast<int32_t>(rng.below(131072)) : static_cast<int32_t>(t % 200);
  const std::vector<float> x = uniform(rng, n, -3.f, 3.f);

  DeviceBuffer<int32_t> d_pos(pos);
  for (int dir = 0; dir < 2; ++dir) {
    const std::string what = std::string(dir == 0 ? "rope forward " : "rope backward ") + ctx;
    std::vector<float> want = x;
    if (dir == 0)
      rope_forward_ref(want.data(), T, rc.H, rc.D, pos.data(), rc.rope);
    else
      rope_backward_ref(want.data(), T, rc.H, rc.D, pos.data(), rc.rope);
    DeviceBuffer<float> d_x(guarded(x));
    if (dir == 0)
      rope_forward_cuda(d_x.get(), T, rc.H, rc.D, d_pos.get(), rc.rope);
    else
      rope_backward_cuda(d_x.get(), T, rc.H, rc.D, d_pos.get(), rc.rope);
    sync();
    const std::vector<float> got = d_x.download();
    const size_t D = static_cast<size_t>(rc.D), half = D / 2;
    expect_close(
        got.data(), want.data(), n,
        [&](size_t i) {
          const size_t head = i / D * D, k = i % D, j = k < half ? k + half : k - half;
          return kU * kRopeUlps * rc.rope.attention_factor * (std::fabs(x[i]) + std::fabs(x[head + j]));
        },
        what);
    expect_guard_intact(got, n, what);
  }
}

std::string rope_name(const ::testing::TestParamInfo<RopeParam>& info) {
  const auto& [T, rc] = info.param;
  return std::string(rc.what) + "_T" + std::to_string(T) + "_H" + std::to_string(rc.H) + "_D" + std::to_string(rc.D);
}

// Qwen2.5: 0.5B q/k 14/2 heads of 64, 7B 28/4 of 128, 72B 64/8 of 128, rope theta 1e6; awkward: D = 2, a
// half head dim of 3, one wide head, Llama's theta; scaled: YaRN on the 7B q heads and an awkward shape,
// Llama 3.1 8B's q heads (32 of 128) with llama3 scaling, linear on the 0.5B k heads.
INSTANTIATE_TEST_SUITE_P(
    Sweep, RopeCuda,
    ::testing::Combine(
        ::testing::Values<int64_t>(1, 3, 17, 512),
        ::testing::Values(RopeCase{14, 64, rope_spec_default(1e6), "qwen05b_q"},
                          RopeCase{2, 64, rope_spec_default(1e6), "qwen05b_k"},
                          RopeCase{28, 128, rope_spec_default(1e6), "qwen7b_q"},
                          RopeCase{4, 128, rope_spec_default(1e6), "qwen7b_k"},
                          RopeCase{64, 128, rope_spec_default(1e6), "qwen72b_q"},
                          RopeCase{8, 128, rope_spec_default(1e6), "qwen72b_k"},
                          RopeCase{1, 2, rope_spec_default(1e4), "awkward"},
                          RopeCase{3, 6, rope_spec_default(1e4), "awkward"},
                          RopeCase{1, 512, rope_spec_default(1e4), "awkward"},
                          RopeCase{28, 128, rope_case_spec(RopeType::Yarn, 1e6), "yarn_qwen7b_q"},
                          RopeCase{3, 6, rope_case_spec(RopeType::Yarn, 1e4), "yarn_awkward"},
                          RopeCase{32, 128, rope_case_spec(RopeType::Llama3, 5e5), "llama3_8b_q"},
                          RopeCase{2, 64, rope_case_spec(RopeType::Linear, 1e6), "linear_qwen05b_k"})),
    rope_name);

// ---- SwiGLU -------------------------------------------------------------------------------------------------

using ActParam = std::tuple<int64_t, int64_t>;  // n, offset of the arrays' start in floats (1: not 16-byte aligned)

class SwigluCuda : public ::testing::TestWithParam<ActParam> {};

TEST_P(SwigluCuda, MatchesRef) {
  QWENQ_REQUIRE_GPU();
  const size_t n = static_cast<size_t>(std::get<0>(GetParam())), off = static_cast<size_t>(std::get<1>(GetParam()));
  const uint64_t seed = 3000 + n * 3 + off;
  const std::string ctx = "n=" + std::to_string(n) + " offset=" + std::to_string(off) + " seed " + std::to_string(seed);
  Rng rng(seed);
  std::vector<float> gate = uniform(rng, n, -12.f, 12.f), up = uniform(rng, n, -2.f, 2.f),
                     dout = uniform(rng, n, -1.f, 1.f);
  // The ends of the range: e^-g at and past FLT_MAX, e^-g underflowing, the zero of silu' (g ≈ −1.2785).
  const float special[] = {0.f,    -0.f, 88.f,  -88.f,    88.8f, -88.8f, 89.f,   -89.f,  100.f,
                           -100.f, 1e4f, -1e4f, -1.2785f, 16.f,  -16.f,  1e-20f, -1e-20f};
  for (size_t i = 0; i < n; i += 7) gate[i] = special[(i / 7) % (sizeof special / sizeof special[0])];

  std::vector<float> out_ref(n), dgate_ref(n), dup_ref(n);
  swiglu_forward_ref(gate.data(), up.data(), static_cast<int64_t>(n), out_ref.data());
  swiglu_backward_ref(dout.data(), gate.data(), up.data(), static_cast<int64_t>(n), dgate_ref.data(), dup_ref.data());

  // Each device array starts `off` floats into its buffer.
  auto shifted = [&](const std::vector<float>& v) {
    std::vector<float> s(off, 0.f);
    s.insert(s.end(), v.begin(), v.end());
    return guarded(s);
  };
  const std::vector<float> zeros(n, 0.f);
  DeviceBuffer<float> d_gate(shifted(gate)), d_up(shifted(up)), d_dout(shifted(dout)), d_out(shifted(zeros)),
      d_dgate(shifted(zeros)), d_dup(shifted(zeros));
  swiglu_forward_cuda(d_gate.get() + off, d_up.get() + off, static_cast<int64_t>(n), d_out.get() + off);
  swiglu_backward_cuda(d_dout.get() + off, d_gate.get() + off, d_up.get() + off, static_cast<int64_t>(n),
                       d_dgate.get() + off, d_dup.get() + off);
  sync();
  const std::vector<float> out = d_out.download(), dgate = d_dgate.download(), dup = d_dup.download();

  expect_close(
      out.data() + off, out_ref.data(), n, [&](size_t i) { return kU * kSwigluUlps * std::fabs(out_ref[i]) + kTiny; },
      "swiglu forward " + ctx);
  expect_close(
      dgate.data() + off, dgate_ref.data(), n,
      [&](size_t i) {
        const double g = gate[i], s = 1.0 / (1.0 + std::exp(-g));
        return kU * kSwigluUlps * std::fabs(static_cast<double>(dout[i]) * up[i]) * s *
                   (1.0 + std::fabs(g * (1.0 - s))) +
               kTiny;
      },
      "swiglu backward dgate " + ctx);
  expect_close(
      dup.data() + off, dup_ref.data(), n, [&](size_t i) { return kU * kSwigluUlps * std::fabs(dup_ref[i]) + kTiny; },
      "swiglu backward dup " + ctx);
  expect_guard_intact(std::vector<float>(out.begin() + off, out.end()), n, "swiglu forward " + ctx);
  expect_guard_intact(std::vector<float>(dgate.begin() + off, dgate.end()), n, "swiglu dgate " + ctx);
  expect_guard_intact(std::vector<float>(dup.begin() + off, dup.end()), n, "swiglu dup " + ctx);

  // In place, as the ref allows: out over gate; dgate over gate and dup over up.
  swiglu_forward_cuda(d_gate.get() + off, d_up.get() + off, static_cast<int64_t>(n), d_gate.get() + off);
  sync();
  const std::vector<float> out_in = d_gate.download();
  EXPECT_EQ(0, std::memcmp(out_in.data() + off, out.data() + off, n * sizeof(float))) << "in-place forward, " << ctx;
  d_gate.upload(shifted(gate));
  swiglu_backward_cuda(d_dout.get() + off, d_gate.get() + off, d_up.get() + off, static_cast<int64_t>(n),
                       d_gate.get() + off, d_up.get() + off);
  sync();
  const std::vector<float> dgate_in = d_gate.download(), dup_in = d_up.download();
  EXPECT_EQ(0, std::memcmp(dgate_in.data() + off, dgate.data() + off, n * sizeof(float))) << "in-place dgate, " << ctx;
  EXPECT_EQ(0, std::memcmp(dup_in.data() + off, dup.data() + off, n * sizeof(float))) << "in-place dup, " << ctx;
}

std::string act_name(const ::testing::TestParamInfo<ActParam>& info) {
  const auto [n, off] = info.param;
  return "n" + std::to_string(n) + "_offset" + std::to_string(off);
}

// Qwen2.5 MLP widths times token counts: 0.5B 4864·17, 7B 18944·512, 72B 29568·3; awkward: 1, 3, 17, 4·k+3.
INSTANTIATE_TEST_SUITE_P(Sweep, SwigluCuda,
                         ::testing::Combine(::testing::Values<int64_t>(1, 3, 17, 4864 * 17, 18944 * 512, 29568 * 3,
                                                                       (1 << 20) + 3),
                                            ::testing::Values<int64_t>(0, 1)),
                         act_name);

// ---- cross-entropy ------------------------------------------------------------------------------------------

using XentParam = std::tuple<int64_t, int64_t>;  // rows, V

class CrossEntropyCuda : public ::testing::TestWithParam<XentParam> {};

TEST_P(CrossEntropyCuda, MatchesRef) {
  QWENQ_REQUIRE_GPU();
  const int64_t rows = std::get<0>(GetParam()), V = std::get<1>(GetParam());
  const uint64_t seed = 4000 + rows * 13 + V;
  const std::string ctx = "rows=" + std::to_string(rows) + " V=" + std::to_string(V) + " seed " + std::to_string(seed);
  Rng rng(seed);
  const size_t n = static_cast<size_t>(rows * V);
  std::vector<float> logits = uniform(rng, n, -10.f, 10.f);
  std::vector<int32_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    targets[r] = r % 4 == 2 ? kIgnoreIndex : static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
    float* l = logits.data() + r * V;
    if (r % 3 == 1) l[targets[r] == kIgnoreIndex ? 0 : targets[r]] = 40.f;  // a confident row: p_target ≈ 1
    if (r % 5 == 3 && V > 1) {
      // Masked columns (a padded vocabulary): −inf, never the target.
      for (int64_t v = V - 1; v >= V - std::max<int64_t>(1, V / 512); --v)
        if (v != targets[r]) l[v] = -INFINITY;
    }
  }
  int64_t counted_ref = 0;
  for (int32_t t : targets) counted_ref += t != kIgnoreIndex;
  const float scale = counted_ref > 0 ? 1.0f / static_cast<float>(counted_ref) : 1.0f;

  std::vector<float> nll_ref(static_cast<size_t>(rows)), dl_ref(n);
  EXPECT_EQ(cross_entropy_forward_ref(logits.data(), rows, V, targets.data(), nll_ref.data()), counted_ref);
  cross_entropy_backward_ref(logits.data(), rows, V, targets.data(), scale, dl_ref.data());

  // Magnitudes in double: lse per row, softmax per element.
  std::vector<double> lse(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* l = logits.data() + r * V;
    const double m = *std::max_element(l, l + V);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(l[v] - m);
    lse[r] = m + std::log(s);
  }
  const size_t Vu = static_cast<size_t>(V);
  auto nll_tol = [&](size_t r) {
    const double lt = targets[r] == kIgnoreIndex ? 0.0 : logits[r * Vu + static_cast<size_t>(targets[r])];
    return kU * kXentUlps * (1.0 + std::fabs(lse[r]) + std::fabs(lt));
  };
  auto dl_tol = [&](size_t i) {
    const size_t r = i / Vu, v = i % Vu;
    if (targets[r] == kIgnoreIndex) return 0.0;
    const double p = std::exp(logits[i] - lse[r]) + (static_cast<int64_t>(v) == targets[r] ? 1.0 : 0.0);
    return kU * kXentUlps * std::fabs(static_cast<double>(scale)) * p + kTiny;
  };

  Stream stream;
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_targets(targets);
  {  // forward
    DeviceBuffer<float> d_nll(guarded(std::vector<float>(static_cast<size_t>(rows))));
    EXPECT_EQ(cross_entropy_forward_cuda(d_logits.get(), rows, V, d_targets.get(), d_nll.get(), stream.get()),
              counted_ref);
    stream.sync();
    const std::vector<float> nll = d_nll.download();
    expect_close(nll.data(), nll_ref.data(), static_cast<size_t>(rows), nll_tol, "xent forward " + ctx);
    expect_guard_intact(nll, static_cast<size_t>(rows), "xent forward " + ctx);
  }
  {  // backward into a separate buffer
    DeviceBuffer<float> d_dl(guarded(std::vector<float>(n, 1.f)));
    cross_entropy_backward_cuda(d_logits.get(), rows, V, d_targets.get(), scale, d_dl.get(), stream.get());
    stream.sync();
    const std::vector<float> dl = d_dl.download();
    expect_close(dl.data(), dl_ref.data(), n, dl_tol, "xent backward " + ctx);
    expect_guard_intact(dl, n, "xent backward " + ctx);
  }
  {  // fused, in place over the logits
    DeviceBuffer<float> d_work(guarded(logits));
    DeviceBuffer<float> d_nll(guarded(std::vector<float>(static_cast<size_t>(rows))));
    EXPECT_EQ(cross_entropy_fused_cuda(d_work.get(), rows, V, d_targets.get(), scale, d_nll.get(), stream.get()),
              counted_ref);
    stream.sync();
    const std::vector<float> dl = d_work.download(), nll = d_nll.download();
    expect_close(nll.data(), nll_ref.data(), static_cast<size_t>(rows), nll_tol, "xent fused nll " + ctx);
    expect_close(dl.data(), dl_ref.data(), n, dl_tol, "xent fused dlogits " + ctx);
    expect_guard_intact(dl, n, "xent fused dlogits " + ctx);
    expect_guard_intact(nll, static_cast<size_t>(rows), "xent fused nll " + ctx);
    // With the host's copy of the targets (no wait for the stream): the same count and the same bits.
    DeviceBuffer<float> d_work2(guarded(logits));
    DeviceBuffer<float> d_nll2(guarded(std::vector<float>(static_cast<size_t>(rows))));
    EXPECT_EQ(cross_entropy_fused_cuda(d_work2.get(), rows, V, d_targets.get(), scale, d_nll2.get(), stream.get(),
                                       targets.data()),
              counted_ref);
    DeviceBuffer<float> d_nll3(guarded(std::vector<float>(static_cast<size_t>(rows))));
    EXPECT_EQ(cross_entropy_forward_cuda(d_logits.get(), rows, V, d_targets.get(), d_nll3.get(), stream.get(),
                                         targets.data()),
              counted_ref);
    stream.sync();
    EXPECT_TRUE(d_work2.download() == dl) << "host targets: other dlogits " << ctx;
    EXPECT_TRUE(d_nll2.download() == nll) << "host targets: other nll " << ctx;
    // Per-row scales (row_scale, a sequence-level loss such as DPO's): against the ref's rows at their own scales,
    // each row's tolerance scaled by its own weight.
    std::vector<float> row_scale(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) row_scale[static_cast<size_t>(r)] = (r % 2 ? -0.5f : 2.f) * scale;
    std::vector<float> dl_rows = logits, nll_rows(static_cast<size_t>(rows));
    cross_entropy_fused_ref(dl_rows.data(), rows, V, targets.data(), scale, nll_rows.data(), row_scale.data());
    DeviceBuffer<float> d_work3(guarded(logits)), d_scale(row_scale);
    DeviceBuffer<float> d_nll4(guarded(std::vector<float>(static_cast<size_t>(rows))));
    EXPECT_EQ(cross_entropy_fused_cuda(d_work3.get(), rows, V, d_targets.get(), scale, d_nll4.get(), stream.get(),
                                       targets.data(), d_scale.get()),
              counted_ref);
    stream.sync();
    const std::vector<float> dl4 = d_work3.download();
    expect_close(dl4.data(), dl_rows.data(), n, [&](size_t i) { return 2.0 * dl_tol(i); }, "xent row scales " + ctx);
    expect_guard_intact(dl4, n, "xent row scales " + ctx);
    const std::vector<float> nll3 = d_nll3.download();
    expect_close(nll3.data(), nll_ref.data(), static_cast<size_t>(rows), nll_tol, "xent forward, host targets " + ctx);
  }
}

std::string xent_name(const ::testing::TestParamInfo<XentParam>& info) {
  const auto [rows, V] = info.param;
  return "rows" + std::to_string(rows) + "_V" + std::to_string(V);
}

// Qwen2.5 vocabularies 151936 (0.5B..7B) and 152064 (14B..72B); awkward V = 1, 5 and 7 (scalar path).
INSTANTIATE_TEST_SUITE_P(Sweep, CrossEntropyCuda,
                         ::testing::Combine(::testing::Values<int64_t>(1, 3, 17, 512),
                                            ::testing::Values<int64_t>(1, 5, 151936)),
                         xent_name);
INSTANTIATE_TEST_SUITE_P(More, CrossEntropyCuda,
                         ::testing::Values(XentParam{17, 152064}, XentParam{3, 7}, XentParam{64, 4099}), xent_name);

// A NaN logit must make the row's nll and dlogits NaN (as the ref) even when every other column the kernel's
// thread reads is −inf (masked): that thread's pair is (m = −inf, s = NaN), which the block merge used to drop
// (finite nll, 8.29 in the emulated kernel). Both load paths: V = 1030 (scalar: thread 7 reads columns 7 and 519)
// and V = 2048 (float4: thread 1 reads columns 4..7 only). Row 1 is an ordinary row next to it; its values are
// checked to kXentLooseTol relative (the sweep above checks ordinary rows to the ulp).
TEST(CrossEntropyCudaNan, NanAmongMaskedColumnsOfOneThread) {
  QWENQ_REQUIRE_GPU();
  constexpr double kXentLooseTol = 1e-5;
  for (const int64_t V : {int64_t{1030}, int64_t{2048}}) {
    const std::string ctx = "V=" + std::to_string(V);
    const int64_t rows = 2;
    Rng rng(9100 + V);
    std::vector<float> logits = uniform(rng, static_cast<size_t>(rows * V), -10.f, 10.f);
    const std::vector<int64_t> masked = V == 1030 ? std::vector<int64_t>{519} : std::vector<int64_t>{4, 5, 6};
    for (int64_t v : masked) logits[v] = -INFINITY;
    logits[7] = NAN;
    const std::vector<int32_t> targets = {0, static_cast<int32_t>(V / 3)};
    const size_t n = logits.size();
    std::vector<float> nll_ref(rows), dl_ref(n);
    cross_entropy_forward_ref(logits.data(), rows, V, targets.data(), nll_ref.data());
    cross_entropy_backward_ref(logits.data(), rows, V, targets.data(), 0.5f, dl_ref.data());
    ASSERT_TRUE(std::isnan(nll_ref[0]) && std::isfinite(nll_ref[1])) << ctx;
    const auto nll_tol = [&](size_t i) { return kXentLooseTol * (1.0 + std::fabs(nll_ref[i])); };
    const auto dl_tol = [&](size_t i) { return kXentLooseTol * (1.0 + std::fabs(dl_ref[i])); };
    Stream stream;
    DeviceBuffer<int32_t> d_targets(targets);
    DeviceBuffer<float> d_logits(logits), d_nll(static_cast<size_t>(rows)), d_dl(n);
    cross_entropy_forward_cuda(d_logits.get(), rows, V, d_targets.get(), d_nll.get(), stream.get());
    cross_entropy_backward_cuda(d_logits.get(), rows, V, d_targets.get(), 0.5f, d_dl.get(), stream.get());
    stream.sync();
    expect_close(d_nll.download().data(), nll_ref.data(), rows, nll_tol, "xent nan forward " + ctx);
    expect_close(d_dl.download().data(), dl_ref.data(), n, dl_tol, "xent nan backward " + ctx);
    cross_entropy_fused_cuda(d_logits.get(), rows, V, d_targets.get(), 0.5f, d_nll.get(), stream.get());
    stream.sync();
    expect_close(d_nll.download().data(), nll_ref.data(), rows, nll_tol, "xent nan fused nll " + ctx);
    expect_close(d_logits.download().data(), dl_ref.data(), n, dl_tol, "xent nan fused dlogits " + ctx);
  }
}

// ---- AdamW --------------------------------------------------------------------------------------------------

struct AdamCase {
  double lr, beta1, beta2, eps, wd;
  const char* what;
};
using AdamParam = std::tuple<int64_t, AdamCase>;
void PrintTo(const AdamCase& c, std::ostream* os) {
  *os << c.what << " lr=" << c.lr << " betas=" << c.beta1 << "," << c.beta2 << " eps=" << c.eps << " wd=" << c.wd;
}

class AdamwCuda : public ::testing::TestWithParam<AdamParam> {};

TEST_P(AdamwCuda, MatchesRefEachStep) {
  QWENQ_REQUIRE_GPU();
  const size_t n = static_cast<size_t>(std::get<0>(GetParam()));
  const AdamCase hp = std::get<1>(GetParam());
  const uint64_t seed = 5000 + n;
  const std::string ctx = std::string(hp.what) + " n=" + std::to_string(n) + " seed " + std::to_string(seed);
  Rng rng(seed);
  std::vector<float> p = uniform(rng, n, -0.1f, 0.1f), m(n, 0.f), v(n, 0.f);
  DeviceBuffer<float> d_p(guarded(p)), d_m(guarded(m)), d_v(guarded(v)), d_g(n);
  for (int64_t step : {1, 2, 3, 1000}) {
    const std::string what = ctx + " step " + std::to_string(step);
    const std::vector<float> g = uniform(rng, n, -1e-2f, 1e-2f);
    std::vector<float> p1 = p, m1 = m, v1 = v;
    adamw_step_ref(p1.data(), g.data(), m1.data(), v1.data(), static_cast<int64_t>(n), hp.lr, hp.beta1, hp.beta2,
                   hp.eps, hp.wd, step);
    d_g.upload(g);
    adamw_step_cuda(d_p.get(), d_g.get(), d_m.get(), d_v.get(), static_cast<int64_t>(n), hp.lr, hp.beta1, hp.beta2,
                    hp.eps, hp.wd, step);
    sync();
    const std::vector<float> gp = d_p.download(), gm = d_m.download(), gv = d_v.download();
    const double bc1 = 1.0 - std::pow(hp.beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(hp.beta2, static_cast<double>(step));
    expect_close(
        gm.data(), m1.data(), n, [&](size_t i) { return kU * kAdamUlps * (std::fabs(m[i]) + std::fabs(g[i])); },
        "adamw m " + what);
    expect_close(
        gv.data(), v1.data(), n,
        [&](size_t i) {
          return kU * kAdamUlps * (static_cast<double>(v[i]) + static_cast<double>(g[i]) * g[i]) + kTiny;
        },
        "adamw v " + what);
    expect_close(
        gp.data(), p1.data(), n,
        [&](size_t i) {
          const double denom = std::sqrt(static_cast<double>(v1[i])) / std::sqrt(bc2) + hp.eps;
          return kU * kAdamUlps * (std::fabs(p[i]) + hp.lr / bc1 * (std::fabs(m[i]) + std::fabs(g[i])) / denom);
        },
        "adamw param " + what);
    expect_guard_intact(gp, n, "adamw param " + what);
    expect_guard_intact(gm, n, "adamw m " + what);
    expect_guard_intact(gv, n, "adamw v " + what);
    // Next step from the ref's state on both sides, so each step is checked on its own.
    p = p1, m = m1, v = v1;
    d_p.upload(guarded(p));
    d_m.upload(guarded(m));
    d_v.upload(guarded(v));
  }
}

std::string adam_name(const ::testing::TestParamInfo<AdamParam>& info) {
  const auto& [n, hp] = info.param;
  return std::string(hp.what) + "_n" + std::to_string(n);
}

// LoRA r = 16 on Qwen2.5 shapes (A of q_proj in 0.5B: 16·896; B of down_proj in 7B: 3584·16; A of up_proj in 72B:
// 16·8192) and awkward sizes; torch's defaults and a β1 < 0.5 that takes lerp's other branch.
INSTANTIATE_TEST_SUITE_P(Sweep, AdamwCuda,
                         ::testing::Combine(::testing::Values<int64_t>(1, 3, 17, 16 * 896, 3584 * 16, 16 * 8192,
                                                                       (1 << 20) + 5),
                                            ::testing::Values(AdamCase{2e-4, 0.9, 0.999, 1e-8, 0.01, "torch_defaults"},
                                                              AdamCase{1e-3, 0.3, 0.95, 1e-6, 0.1, "low_beta1"})),
                         adam_name);

// ---- gradient-norm clipping ---------------------------------------------------------------------------------

struct ClipCase {
  std::vector<int64_t> sizes;
  float max_norm;
  const char* what;
};

void PrintTo(const ClipCase& c, std::ostream* os) {
  *os << c.what << ": " << c.sizes.size() << " tensors, max_norm " << c.max_norm;
}

class ClipGradNormCuda : public ::testing::TestWithParam<ClipCase> {};

TEST_P(ClipGradNormCuda, MatchesRef) {
  QWENQ_REQUIRE_GPU();
  const ClipCase& cc = GetParam();
  uint64_t seed = 6000 + cc.sizes.size();
  for (int64_t s : cc.sizes) seed = seed * 31 + static_cast<uint64_t>(s);
  const std::string ctx = std::string(cc.what) + " seed " + std::to_string(seed);
  Rng rng(seed);
  std::vector<std::vector<float>> host;
  for (int64_t s : cc.sizes) host.push_back(uniform(rng, static_cast<size_t>(s), -1.f, 1.f));
  if (std::string(cc.what) == "nan") host.back()[host.back().size() / 2] = NAN;

  std::vector<std::vector<float>> ref = host;
  std::vector<float*> ref_ptrs;
  for (auto& v : ref) ref_ptrs.push_back(v.empty() ? nullptr : v.data());
  const float norm_ref =
      clip_grad_norm_ref(ref_ptrs.data(), cc.sizes.data(), static_cast<int>(cc.sizes.size()), cc.max_norm);

  std::vector<std::unique_ptr<DeviceBuffer<float>>> bufs;
  std::vector<float*> ptrs;
  for (auto& v : host) {
    bufs.push_back(std::make_unique<DeviceBuffer<float>>(guarded(v)));
    ptrs.push_back(v.empty() ? nullptr : bufs.back()->get());
  }
  const float norm = clip_grad_norm_cuda(ptrs.data(), cc.sizes.data(), static_cast<int>(cc.sizes.size()), cc.max_norm);
  if (std::isnan(norm_ref)) {
    EXPECT_TRUE(std::isnan(norm)) << ctx << ": got " << norm;
  } else {
    EXPECT_LE(std::fabs(static_cast<double>(norm) - norm_ref), kU * kClipUlps * norm_ref)
        << ctx << ": norm " << norm << " vs " << norm_ref;
  }
  for (size_t i = 0; i < host.size(); ++i) {
    const std::vector<float> got = bufs[i]->download();
    const std::string what = "clip tensor " + std::to_string(i) + " " + ctx;
    expect_close(
        got.data(), ref[i].data(), ref[i].size(), [&](size_t j) { return kU * 2 * kClipUlps * std::fabs(host[i][j]); },
        what);
    expect_guard_intact(got, ref[i].size(), what);
  }
}

std::string clip_name(const ::testing::TestParamInfo<ClipCase>& info) { return info.param.what; }

// LoRA r = 16 gradients of one Qwen2.5-0.5B block (q, k, v, o, gate, up, down: A then B), awkward sizes with
// empty tensors and chunk boundaries (65536 ± 1), a norm under max_norm (no scaling), and a NaN gradient.
const int64_t kH = 896, kKv = 128, kI = 4864, kR = 16;
INSTANTIATE_TEST_SUITE_P(Sweep, ClipGradNormCuda,
                         ::testing::Values(ClipCase{{kR * kH, kH* kR, kR* kH, kKv* kR, kR* kH, kKv* kR, kR* kH, kH* kR,
                                                     kR* kH, kI* kR, kR* kH, kI* kR, kR* kI, kH* kR},
                                                    1.0f,
                                                    "qwen05b_block_lora"},
                                           ClipCase{{1}, 0.5f, "one"},
                                           ClipCase{{0, 3, 0, 17, 65535, 65536, 65537, 1}, 1.0f, "awkward"},
                                           ClipCase{{3, 17, 1000}, 1e9f, "no_clip"}, ClipCase{{0, 0}, 1.0f, "empty"},
                                           ClipCase{{5, 70000}, 1.0f, "nan"}),
                         clip_name);

// ---- argument and CUDA errors -------------------------------------------------------------------------------

TEST(KernelsCudaErrors, BadArgumentsNameTheValues) {
  QWENQ_REQUIRE_GPU();
  DeviceBuffer<float> buf(1024);
  DeviceBuffer<int32_t> pos(std::vector<int32_t>{0, 1, 2, 3});
  float* p = buf.get();
  expect_error([&] { rmsnorm_forward_cuda(p, 3, 0, p, DType::F32, 1e-6f, p); },
               {"rmsnorm_forward_cuda", "bad shape rows=3 C=0"});
  expect_error([&] { rmsnorm_backward_cuda(p, p, 2, 8, p, DType::I32, 1e-6f, p); },
               {"rmsnorm_backward_cuda", "weight dtype I32 is not supported"});
  expect_error([&] { rmsnorm_forward_cuda(p, 2, 8, p, DType::F32, -1.f, p); }, {"eps must be >= 0, got -1"});
  expect_error([&] { rope_forward_cuda(p, 4, 2, 5, pos.get(), rope_spec_default(1e4)); },
               {"rope_forward_cuda", "D=5 must be even"});
  expect_error([&] { rope_backward_cuda(p, 1, 1, 1024, pos.get(), rope_spec_default(1e4)); },
               {"rope_backward_cuda", "D=1024 exceeds the kernel's limit 512"});
  expect_error([&] { rope_forward_cuda(p, 4, 2, 8, pos.get(), rope_spec_default(0)); }, {"rope theta must be > 0"});
  RopeSpec llama3 = rope_case_spec(RopeType::Llama3, 5e5);
  llama3.high_freq_factor = llama3.low_freq_factor;
  expect_error([&] { rope_forward_cuda(p, 4, 2, 8, pos.get(), llama3); },
               {"rope_forward_cuda", "llama3 needs 0 < low_freq_factor < high_freq_factor"});
  expect_error([&] { swiglu_forward_cuda(p, p, -1, p); }, {"swiglu_forward_cuda: negative size -1"});
  expect_error([&] { swiglu_backward_cuda(p, p, p, 8, p, p); }, {"dgate and dup must be different buffers"});

  DeviceBuffer<int32_t> targets(std::vector<int32_t>{0, 7, kIgnoreIndex});
  expect_error([&] { cross_entropy_forward_cuda(p, 3, 5, targets.get(), p + 100); },
               {"cross_entropy_forward_cuda", "target 7 of row 1 is outside the vocabulary [0, 5)"});
  expect_error([&] { cross_entropy_fused_cuda(p, 3, 5, targets.get(), 1.f, p + 100); }, {"target 7 of row 1"});
  const std::vector<int32_t> host_bad = {0, 1, 9};  // the host copy is what is checked when given
  expect_error([&] { cross_entropy_fused_cuda(p, 3, 5, targets.get(), 1.f, p + 100, nullptr, host_bad.data()); },
               {"target 9 of row 2"});
  expect_error([&] { cross_entropy_backward_cuda(p, 3, 8, targets.get(), NAN, p); },
               {"cross_entropy_backward_cuda", "dnll_scale must be finite"});
  expect_error([&] { cross_entropy_backward_cuda(p, 2, 0, targets.get(), 1.f, p); }, {"bad shape rows=2 V=0"});

  expect_error([&] { adamw_step_cuda(p, p, p, p, 8, 1e-3, 1.0, 0.999, 1e-8, 0.0, 1); },
               {"adamw_step_cuda", "invalid beta1 1"});
  expect_error([&] { adamw_step_cuda(p, p, p, p, 8, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0); }, {"step must be >= 1"});
  float* grads[] = {p, nullptr};
  const int64_t sizes[] = {4, 3};
  expect_error([&] { clip_grad_norm_cuda(grads, sizes, 2, 1.f); },
               {"clip_grad_norm_cuda", "tensor 1 of size 3 has a null pointer"});
  expect_error([&] { clip_grad_norm_cuda(grads, sizes, 1, -1.f); }, {"max_norm must be >= 0"});
  sync();  // nothing was queued by the refused calls
}

TEST(KernelsCudaErrors, CudaFailuresBecomeErrors) {
  QWENQ_REQUIRE_GPU();
  // A failed call: its statement, the error's name, this file; the non-sticky error is cleared, so the next
  // launch check does not blame an innocent kernel.
  expect_error([] { QWENQ_CUDA_CHECK(cudaSetDevice(-1)); },
               {"CUDA error cudaErrorInvalidDevice", "`cudaSetDevice(-1)`", "test_kernels_cuda.cpp"});
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  expect_error([] { DeviceMemory huge(size_t{1} << 62); }, {"CUDA error ", "cudaMallocAsync"});
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  // The launch check reads (and clears) the last error and names the kernel's context.
  (void)cudaSetDevice(-1);  // leaves cudaErrorInvalidDevice as the last error
  expect_error([] { QWENQ_CUDA_CHECK_LAUNCH("some_kernel rows=" << 3 << " C=" << 896); },
               {"some_kernel rows=3 C=896: kernel launch failed: cudaErrorInvalidDevice"});
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  swiglu_forward_cuda(nullptr, nullptr, 0, nullptr);  // n = 0: nothing to check, nothing launched
  // DeviceMemory: zero bytes allocate nothing; moves hand the allocation over.
  DeviceMemory none(0);
  EXPECT_EQ(none.get(), nullptr);
  DeviceMemory a(256);
  void* raw = a.get();
  DeviceMemory b(std::move(a));
  EXPECT_EQ(b.get(), raw);
  EXPECT_EQ(a.get(), nullptr);
  EXPECT_EQ(b.bytes(), 256u);
  sync();
}

}  // namespace
}  // namespace qwenq
