// kernels/gemm_bf16.h: the linear layer on bf16 operands, both paths (AVX512_BF16 where this CPU has it, and the
// portable one), against double sums of the operands rounded by core/dtype.h's f32_to_bf16:
//   |got − ref| <= kBf16SumTol · Σ|terms|   (fp32 accumulation in slices of 256 values, or Eigen's order)
// over awkward shapes (M around the 12-row tile, N around the 32-column panel, odd and sliced reductions) and
// Qwen2.5-0.5B's; the same bits for any thread count; F32 and BF16 weights holding the same values give the same bits;
// refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/threads.h"
#include "kernels/gemm_bf16.h"
#include "tests/support/scoped_threads.h"
#include "tests/support/bf16_paths.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

constexpr double kBf16SumTol = 1e-6;  // fp32 sums of up to ~5000 exact products, relative to Σ|terms|

struct Shape {
  int64_t M, K, N;
};

// Tile edges: M 1, 11..13, 25 (12-row panels); N 1, 31..33, 65 (32-column panels); K odd, 255..257 (128-pair
// slices), 513; Qwen2.5-0.5B's Linears at 37 tokens; then a packed A past 1 MB (130 rows x 4100: the column blocks
// of a long reduction, forward and backward).
const Shape kShapes[] = {{1, 1, 1},     {1, 2, 33},    {11, 3, 31},  {12, 255, 32}, {13, 256, 33},
                         {25, 257, 65}, {5, 513, 17},  {2, 1000, 1}, {37, 896, 896}, {37, 896, 4864},
                         {37, 4864, 896}, {130, 4100, 70}, {130, 70, 4100}};

struct Operands {
  std::vector<float> a;            // x or dy, fp32
  std::vector<float> w;            // W [N, K] fp32
  std::vector<uint16_t> w_bf16;    // W rounded
  std::vector<double> ar, wr;      // both rounded, in double
};

Operands make(int64_t a_size, int64_t N, int64_t K, uint64_t seed) {
  Operands o;
  o.a = test::normal_vector(a_size, seed);
  o.w = test::normal_vector(N * K, seed + 1, 0.05f);
  o.w_bf16.resize(o.w.size());
  for (size_t i = 0; i < o.w.size(); ++i) o.w_bf16[i] = f32_to_bf16(o.w[i]);
  for (float v : o.a) o.ar.push_back(bf16_round(v));
  for (float v : o.w) o.wr.push_back(bf16_round(v));
  return o;
}

class Headroom {
 public:
  explicit Headroom(std::string what) : what_(std::move(what)) {}
  ~Headroom() { std::printf("[ headroom ] %s: worst error %.3g of the tolerance\n", what_.c_str(), worst_); }
  bool ok(double err, double bound) {
    worst_ = std::max(worst_, err / bound);
    return err <= bound;
  }

 private:
  std::string what_;
  double worst_ = 0;
};

TEST(GemmBf16, ForwardMatchesDoubleSumsOfRoundedOperands) {
  if (!cpu_has_avx512_bf16()) std::printf("[ note ] this CPU lacks AVX512_BF16: only the portable path runs\n");
  uint64_t seed = 100;
  for (bool portable : test::bf16_gemm_paths()) {
    test::PortableScope scope(portable);
    EXPECT_EQ(bf16_gemm_uses_avx512(), !portable);
    Headroom hr(std::string("forward, ") + (portable ? "portable" : "avx512_bf16"));
    for (const Shape& s : kShapes)
      for (DType wt : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(testing::Message() << (portable ? "portable " : "avx512 ") << dtype_name(wt) << " M=" << s.M
                                        << " K=" << s.K << " N=" << s.N);
        const Operands o = make(s.M * s.K, s.N, s.K, ++seed);
        const std::vector<float> bias = test::normal_vector(s.N, seed + 7);
        std::vector<float> y(s.M * s.N + 1, 12345.f);
        const void* w = wt == DType::F32 ? static_cast<const void*>(o.w.data()) : o.w_bf16.data();
        linear_forward_bf16(o.a.data(), s.M, s.K, w, wt, s.N, bias.data(), DType::F32, y.data());
        EXPECT_EQ(y.back(), 12345.f) << "wrote past y";
        for (int64_t m = 0; m < s.M; ++m)
          for (int64_t n = 0; n < s.N; ++n) {
            double ref = bias[n], mag = std::fabs(bias[n]);
            for (int64_t k = 0; k < s.K; ++k) {
              const double p = o.ar[m * s.K + k] * o.wr[n * s.K + k];
              ref += p;
              mag += std::fabs(p);
            }
            ASSERT_TRUE(hr.ok(std::fabs(y[m * s.N + n] - ref), kBf16SumTol * mag + 1e-30))
                << "y[" << m << "," << n << "] = " << y[m * s.N + n] << ", double " << ref;
          }
      }
  }
}

TEST(GemmBf16, BackwardInputMatchesDoubleSumsOfRoundedOperands) {
  uint64_t seed = 200;
  for (bool portable : test::bf16_gemm_paths()) {
    test::PortableScope scope(portable);
    Headroom hr(std::string("backward input, ") + (portable ? "portable" : "avx512_bf16"));
    // dx [M, K] = dy [M, N] · W [N, K]: the shapes' N is the reduction here.
    for (const Shape& s : kShapes)
      for (DType wt : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(testing::Message() << (portable ? "portable " : "avx512 ") << dtype_name(wt) << " M=" << s.M
                                        << " K=" << s.K << " N=" << s.N);
        const Operands o = make(s.M * s.N, s.N, s.K, ++seed);
        std::vector<float> dx(s.M * s.K + 1, 12345.f);
        const void* w = wt == DType::F32 ? static_cast<const void*>(o.w.data()) : o.w_bf16.data();
        linear_backward_input_bf16(o.a.data(), s.M, s.N, w, wt, s.K, dx.data());
        EXPECT_EQ(dx.back(), 12345.f) << "wrote past dx";
        for (int64_t m = 0; m < s.M; ++m)
          for (int64_t k = 0; k < s.K; ++k) {
            double ref = 0, mag = 0;
            for (int64_t n = 0; n < s.N; ++n) {
              const double p = o.ar[m * s.N + n] * o.wr[n * s.K + k];
              ref += p;
              mag += std::fabs(p);
            }
            ASSERT_TRUE(hr.ok(std::fabs(dx[m * s.K + k] - ref), kBf16SumTol * mag + 1e-30))
                << "dx[" << m << "," << k << "] = " << dx[m * s.K + k] << ", double " << ref;
          }
      }
  }
}

// Rounding happens inside: an fp32 weight and its bf16 copy, an fp32 input and its rounded copy, all give the same
// bits (and a different input gives different ones: the comparison can fail).
TEST(GemmBf16, RoundsOperandsToNearestEvenInside) {
  for (bool portable : test::bf16_gemm_paths()) {
    test::PortableScope scope(portable);
    SCOPED_TRACE(portable ? "portable" : "avx512_bf16");
    const int64_t M = 13, K = 300, N = 70;
    const Operands o = make(M * K, N, K, 300);
    std::vector<float> a_rounded(o.a.size());
    for (size_t i = 0; i < o.a.size(); ++i) a_rounded[i] = bf16_round(o.a[i]);
    std::vector<float> y1(M * N), y2(M * N), y3(M * N);
    linear_forward_bf16(o.a.data(), M, K, o.w.data(), DType::F32, N, nullptr, DType::F32, y1.data());
    linear_forward_bf16(a_rounded.data(), M, K, o.w_bf16.data(), DType::BF16, N, nullptr, DType::F32, y2.data());
    EXPECT_EQ(y1, y2);
    std::vector<float> nudged = o.a;
    nudged[5 * K + 7] = bf16_to_f32(static_cast<uint16_t>(f32_to_bf16(nudged[5 * K + 7]) + 1));
    linear_forward_bf16(nudged.data(), M, K, o.w.data(), DType::F32, N, nullptr, DType::F32, y3.data());
    EXPECT_NE(y1, y3);
    // dy·W likewise, both weight dtypes.
    std::vector<float> dx1(M * 70), dx2(M * 70);
    const Operands b = make(M * N, N, 70, 301);  // W [N, 70]
    linear_backward_input_bf16(b.a.data(), M, N, b.w.data(), DType::F32, 70, dx1.data());
    linear_backward_input_bf16(b.a.data(), M, N, b.w_bf16.data(), DType::BF16, 70, dx2.data());
    EXPECT_EQ(dx1, dx2);
  }
}

// The AVX512_BF16 path's order depends on the shape alone. (The portable path's forward has linear_forward_ref's
// thread-dependent tiles; its backward is thread-independent, as linear_backward_input_ref's.)
TEST(GemmBf16, SameBitsForAnyThreadCount) {
  for (bool portable : test::bf16_gemm_paths()) {
    test::PortableScope scope(portable);
    SCOPED_TRACE(portable ? "portable" : "avx512_bf16");
    for (const Shape& sh : {Shape{40, 896, 1000}, Shape{130, 4100, 4100}}) {  // the second: packed A past 1 MB
      const int64_t M = sh.M, K = sh.K, N = sh.N;
      const Operands f = make(M * K, N, K, 400), b = make(M * N, N, K, 401);
      std::vector<float> y_first, dx_first;
      for (int threads : {1, 2, 3, 5}) {
        test::ScopedThreads st(threads);
        std::vector<float> y(M * N), dx(M * K);
        linear_forward_bf16(f.a.data(), M, K, f.w_bf16.data(), DType::BF16, N, nullptr, DType::F32, y.data());
        linear_backward_input_bf16(b.a.data(), M, N, b.w.data(), DType::F32, K, dx.data());
        if (y_first.empty()) {
          y_first = y;
          dx_first = dx;
        } else {
          if (!portable) {
            EXPECT_EQ(y, y_first) << threads << " threads, M=" << M << " K=" << K << " N=" << N;
          }
          EXPECT_EQ(dx, dx_first) << threads << " threads, M=" << M << " K=" << K << " N=" << N;
        }
      }
    }
  }
}

TEST(GemmBf16, RefusesWhatItCannotMultiply) {
  std::vector<float> a(64, 1.f), c(64);
  std::vector<uint16_t> h(64, 0);
  test::expect_error([&] { linear_forward_bf16(a.data(), 2, 4, h.data(), DType::F16, 4, nullptr, DType::F32, c.data()); },
                     {"linear_forward_bf16: weight dtype F16 is not supported", "fp32 products"});
  test::expect_error([&] { linear_backward_input_bf16(a.data(), 2, 4, h.data(), DType::F16, 4, c.data()); },
                     "linear_backward_input_bf16: weight dtype F16 is not supported");
  test::expect_error([&] { linear_forward_bf16(a.data(), 0, 4, a.data(), DType::F32, 4, nullptr, DType::F32, c.data()); },
                     "linear_forward_bf16: shapes must be positive, got M=0 K=4 N=4");
  test::expect_error([&] { linear_forward_bf16(a.data(), 2, 4, a.data(), DType::F32, 4, nullptr, DType::F32, a.data()); },
                     "linear_forward_bf16: output y overlaps input x");
  test::expect_error([&] { linear_backward_input_bf16(a.data(), 2, 4, a.data(), DType::F32, 4, a.data() + 4); },
                     "linear_backward_input_bf16: output dx overlaps input dy");
  test::expect_error([&] { linear_forward_bf16(a.data(), 2, 4, a.data(), DType::F32, 4, a.data(), DType::I8, c.data()); },
                     "linear_forward_bf16: bias dtype I8 is not supported");
}

}  // namespace
}  // namespace qwenq
