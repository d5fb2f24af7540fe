// The CUDA ops of quant/awq_search.h against their CPU twins (quant/awq_search_ref.cpp):
//   - awq_candidate_cuda, awq_clip_inputs_cuda: byte for byte (the contract: per-element decisions from the same
//     float operations), outputs followed by guard bytes no kernel may touch;
//   - awq_clip_search_cuda: bit for bit against its arithmetic replayed on the CPU (tests/support/awq_search_cases.h:
//     fp32 fma dot products in k order, double squares in the kernel's fixed order); against the twin, which is
//     Eigen's fp32 search, a bound may differ at a near tie. Measured and bounded: the share of differing bounds
//     (kClipFlipShare, at least kClipFlipFloor of them allowed on the tiny cases) and, for each differing bound,
//     the double-precision error of both choices (tests/support/awq_search_cases.h): within kClipNearTie of each
//     other, i.e. either choice is as good — which is the effect on the quantized weights that matters (the
//     Linear's output error on the calibration tokens).
// Shapes: awkward (N = 1, K < G, K not a multiple of G, group -1, G = 32/64/128, S = 1 and S not a multiple of the
// kernel's 128-token chunk, N not a multiple of its 32-row tile) and real Qwen2.5 ones (0.5B: N = 896 / K = 4864 and
// back; 7B: N = 3584 / K = 18944 with a small S). Every test skips without a device.
//
// Tolerances:
//   kClipNearTie     relative gap of two choices' double errors that counts as a tie: the CPU's fp32 errors carry
//                    ≤ ~2e-4 relative error (G ≤ 128-term dot products, S-term squared norms), the GPU's ≤ ~1e-5;
//                    1e-3 (as tests/test_awq_search.cpp's CPU-vs-brute-force bound).
//   kClipFlipShare   share of (row, group) bounds allowed to differ: a flip needs two shrinks' errors within
//                    ~2e-4 of each other, which the ~1e-2 gaps between neighbouring shrinks make rare; 1 %.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/awq_search.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/awq_search_cases.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

using test::error_of;

constexpr uint64_t kSeed = 20261201;
constexpr double kClipNearTie = 1e-3;
constexpr double kClipFlipShare = 1e-2;
constexpr int64_t kClipFlipFloor = 2;
constexpr size_t kGuardFloats = 16;
constexpr float kGuard = -12345.f;

// A device float buffer of n values plus guard values, all kGuard.
struct GuardedFloats {
  explicit GuardedFloats(size_t n) : n(n), buf(std::vector<float>(n + kGuardFloats, kGuard)) {}
  float* get() const { return buf.get(); }
  // The first n values; flags a touched guard.
  std::vector<float> download(const std::string& ctx) const {
    std::vector<float> all = buf.download();
    for (size_t i = n; i < n + kGuardFloats; ++i)
      if (std::memcmp(&all[i], &kGuard, sizeof(float)) != 0) {
        ADD_FAILURE() << ctx << ": guard value " << i - n << " past the output was written";
        break;
      }
    all.resize(n);
    return all;
  }
  size_t n;
  test::DeviceBuffer<float> buf;
};

int64_t first_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return static_cast<int64_t>(i);
  return -1;
}

struct Shape {
  int64_t N, K, G;
  int bits;
};

std::string name_of(const Shape& c) {
  return "N " + std::to_string(c.N) + " K " + std::to_string(c.K) + " G " + std::to_string(c.G) + " bits " +
         std::to_string(c.bits);
}

void check_candidate(const Shape& c, uint64_t seed) {
  SCOPED_TRACE(name_of(c));
  const std::vector<float> W = test::awq_weight(c.N, c.K, seed), s = test::awq_scales(c.K, seed + 1);
  std::vector<float> expect(W.size());
  awq_candidate_ref(W.data(), c.N, c.K, s.data(), c.bits, c.G, expect.data());
  test::DeviceBuffer<float> dW(W), ds(s);
  GuardedFloats out(W.size());
  awq_candidate_cuda(dW.get(), c.N, c.K, ds.get(), c.bits, c.G, out.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got = out.download("awq_candidate_cuda");
  const int64_t d = first_difference(got, expect);
  EXPECT_EQ(d, -1) << "first difference at [" << d / c.K << ", " << d % c.K << "]: " << got[std::max<int64_t>(d, 0)]
                   << " vs " << expect[std::max<int64_t>(d, 0)];
}

TEST(AwqSearchCuda, CandidateAwkward) {
  QWENQ_REQUIRE_GPU();
  const Shape shapes[] = {{1, 7, 32, 4},   {1, 1, 128, 4},  {5, 20, 8, 4},  {17, 100, 32, 4}, {33, 96, 64, 4},
                          {4, 130, 128, 4}, {9, 64, -1, 4},  {6, 40, 16, 2}, {6, 40, 16, 3},   {6, 40, 16, 8},
                          {3, 1000, 128, 4}};
  uint64_t seed = kSeed;
  for (const Shape& c : shapes) check_candidate(c, seed += 10);
}

TEST(AwqSearchCuda, CandidateQwenShapes) {
  QWENQ_REQUIRE_GPU();
  const Shape shapes[] = {{896, 4864, 128, 4}, {4864, 896, 128, 4}, {3584, 18944, 128, 4}, {18944, 3584, 128, 4}};
  uint64_t seed = kSeed + 1000;
  for (const Shape& c : shapes) check_candidate(c, seed += 10);
}

TEST(AwqSearchCuda, ClipInputsAwkward) {
  QWENQ_REQUIRE_GPU();
  const int64_t T = 301, K0 = 37;
  const std::vector<float> x = test::normal_vector(T * K0, kSeed + 50), s = test::awq_scales(K0, kSeed + 51);
  test::DeviceBuffer<float> dx(x), ds(s);
  for (int64_t step : {1, 2, 7, 301, 400}) {
    for (int64_t K : {K0, K0 + 11}) {
      for (bool scaled : {false, true}) {
        SCOPED_TRACE("step " + std::to_string(step) + " K " + std::to_string(K) + (scaled ? " scaled" : ""));
        const int64_t S = awq_clip_rows(T, step);
        std::vector<float> expect(static_cast<size_t>(S * K));
        awq_clip_inputs_ref(x.data(), T, K0, step, scaled ? s.data() : nullptr, K, expect.data());
        GuardedFloats out(expect.size());
        awq_clip_inputs_cuda(dx.get(), T, K0, step, scaled ? ds.get() : nullptr, K, out.get());
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        EXPECT_EQ(first_difference(out.download("awq_clip_inputs_cuda"), expect), -1);
      }
    }
  }
}

// Both searches on the same W [N, K] and sampled rows x [S, K]; prints the agreement and times.
void check_clip(const Shape& c, int64_t S, uint64_t seed) {
  SCOPED_TRACE(name_of(c) + " S " + std::to_string(S));
  const std::vector<float> W = test::awq_weight(c.N, c.K, seed), x = test::normal_vector(S * c.K, seed + 1);
  AwqSearchOptions o;
  o.bits = c.bits;
  o.group_size = c.G;
  const int64_t G = c.G > 0 ? c.G : c.K, groups = (c.K + G - 1) / G;
  std::vector<float> expect(static_cast<size_t>(c.N * groups));
  const auto t0 = std::chrono::steady_clock::now();
  awq_clip_search_ref(W.data(), c.N, c.K, x.data(), S, o, expect.data());
  const auto t1 = std::chrono::steady_clock::now();
  test::DeviceBuffer<float> dW(W), dx(x);
  GuardedFloats out(expect.size());
  awq_clip_search_cuda(dW.get(), c.N, c.K, dx.get(), S, o, out.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto t2 = std::chrono::steady_clock::now();
  const std::vector<float> got = out.download("awq_clip_search_cuda");
  std::vector<float> replay(expect.size());
  test::awq_clip_search_replay(W.data(), c.N, c.K, x.data(), S, o, replay.data());
  const int64_t d = first_difference(got, replay);
  EXPECT_EQ(d, -1) << "bound [" << d / groups << ", " << d % groups << "]: " << got[std::max<int64_t>(d, 0)]
                   << " vs the replay's " << replay[std::max<int64_t>(d, 0)];
  const test::AwqClipAgreement a = test::awq_compare_clips(got, expect, W.data(), c.N, c.K, x.data(), S, c.bits, G);
  int64_t clipped = 0;  // bounds below m0 (the outliers make clipping pay off): the search did choose
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      float m0 = 0.f;
      for (int64_t k = g * G; k < std::min(c.K, g * G + G); ++k) m0 = std::max(m0, std::fabs(W[n * c.K + k]));
      clipped += got[n * groups + g] < m0;
    }
  std::printf("  clip %s S %lld: %lld of %lld bounds differ (worst error gap %.2e), %lld clipped; CPU %.3f s, GPU %.3f s\n",
              name_of(c).c_str(), (long long)S, (long long)a.differing, (long long)a.total, a.worst_excess,
              (long long)clipped, std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double>(t2 - t1).count());
  EXPECT_LE(a.differing, std::max<int64_t>(kClipFlipFloor, static_cast<int64_t>(kClipFlipShare * a.total)));
  EXPECT_LE(a.worst_excess, kClipNearTie);
  if (a.total >= 50) {
    EXPECT_GT(clipped, 0);
  }
}

TEST(AwqSearchCuda, ClipSearchAwkward) {
  QWENQ_REQUIRE_GPU();
  const Shape shapes[] = {{1, 7, 32, 4},   {1, 200, 64, 4},  {33, 100, 32, 4}, {70, 40, 16, 4},
                          {31, 256, 128, 4}, {65, 384, 128, 4}, {5, 48, -1, 4},   {40, 96, 32, 3}};
  uint64_t seed = kSeed + 2000;
  for (const Shape& c : shapes)
    for (int64_t S : {1, 5, 129, 300}) check_clip(c, S, seed += 10);
}

TEST(AwqSearchCuda, ClipSearchQwenShapes) {
  QWENQ_REQUIRE_GPU();
  check_clip({896, 4864, 128, 4}, 64, kSeed + 3000);
  check_clip({4864, 896, 128, 4}, 512, kSeed + 3010);
  check_clip({3584, 18944, 128, 4}, 16, kSeed + 3020);
}

// The launchers refuse bad arguments with the twins' messages, before launching anything.
TEST(AwqSearchCuda, RefusalsLikeTheTwins) {
  QWENQ_REQUIRE_GPU();
  test::DeviceBuffer<float> buf(64);
  float* p = buf.get();
  EXPECT_NE(error_of([&] { awq_candidate_cuda(p, 0, 4, p, 4, 2, p); }).find("awq_candidate: empty weight [0, 4]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { awq_clip_inputs_cuda(p, 4, 4, 0, nullptr, 4, p); }).find("token step must be >= 1"),
            std::string::npos);
  AwqSearchOptions o;
  EXPECT_NE(error_of([&] { awq_clip_search_cuda(p, 2, 4, p, 0, o, p); }).find("awq_clip_search: no sampled tokens"),
            std::string::npos);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace qwenq
