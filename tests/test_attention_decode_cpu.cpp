// attention_decode_cpu / attention_decode_bf16_cpu (kernels/attention_decode.h), the CPU model's decode step,
// against a double-precision softmax on the same cache rows and against attention_decode_ref (plain loops, the GPU
// kernels' twin): several sequences of awkward lengths share one cache whose rows past each length are NaN (a read
// of them would poison the output). Lengths around the 256-key block and the split boundaries (257: two splits;
// 8193 and 9000: more than 32 blocks, so 32 splits of 257 and 282 keys whose last block is short), the Qwen2.5
// heads (14/2/64, 28/4/128, 64/8/128), GQA 7:1 and 8:1 at small D, MHA, D = 256 and D = 320 (past the GPU kernels'
// limit: the CPU variants take any D). Then: the same bits at 1, 2, 3 and 5 threads; the bf16 variant = the fp32 one
// on the widened cache, bit for bit (odd D included); the argument checks under the variants' names.
//
// Tolerances: v is uniform in [-1, 1], so |out| <= 1. The variant's sums run over blocks of 256 keys in fp32 with
// Eigen's vectorized exp (a few ulp), the ref's key by key with std::exp; each carries a relative error of a few
// L·2^-24 at worst, under 1e-6 measured up to L = 9000 (printed): kDoubleTol = 1e-5 against the double oracle, and
// kRefTol = 2e-5 against the ref (the sum of both errors).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/attention_decode.h"
#include "tests/support/scoped_threads.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

constexpr double kDoubleTol = 1e-5;
constexpr double kRefTol = 2e-5;

struct CpuCase {
  int64_t H, Hkv, D;
  std::vector<int32_t> lens;
};

// Seeded inputs of a case: q [B, H, D] ~ N(0, 1.3²), k ~ N(0, 1.3²) and v ~ U(-1, 1) in the first lens[b] rows of
// each sequence's [capacity, Hkv, D] cache, NaN past them.
struct CpuInputs {
  int64_t B, capacity, max_len;
  std::vector<float> q, k, v;
};

CpuInputs make_inputs(const CpuCase& c, uint64_t seed) {
  CpuInputs in;
  in.B = static_cast<int64_t>(c.lens.size());
  in.max_len = *std::max_element(c.lens.begin(), c.lens.end());
  in.capacity = in.max_len + 5;
  Rng rng(seed);
  in.q.resize(static_cast<size_t>(in.B * c.H * c.D));
  for (auto& x : in.q) x = static_cast<float>(rng.normal() * 1.3);
  const int64_t row = c.Hkv * c.D;
  in.k.assign(static_cast<size_t>(in.B * in.capacity * row), NAN);
  in.v.assign(in.k.size(), NAN);
  for (int64_t b = 0; b < in.B; ++b)
    for (int64_t i = 0; i < c.lens[b] * row; ++i) {
      in.k[b * in.capacity * row + i] = static_cast<float>(rng.normal() * 1.3);
      in.v[b * in.capacity * row + i] = rng.uniform(-1.f, 1.f);
    }
  return in;
}

std::vector<float> run_cpu(const CpuCase& c, const CpuInputs& in) {
  std::vector<float> out(in.q.size(), NAN);
  attention_decode_cpu(in.q.data(), in.k.data(), in.v.data(), c.lens.data(), in.B, c.H, c.Hkv, c.D, in.capacity,
                       in.max_len, out.data());
  return out;
}

// The softmax in double on the cache's rows [0, lens[b]).
std::vector<double> double_oracle(const CpuCase& c, const CpuInputs& in) {
  const int64_t H = c.H, Hkv = c.Hkv, D = c.D, G = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> out(in.q.size()), s;
  for (int64_t b = 0; b < in.B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const float* q = in.q.data() + (b * H + h) * D;
      const int64_t base = (b * in.capacity * Hkv + h / G) * D, len = c.lens[b];
      s.assign(static_cast<size_t>(len), 0.0);
      double mx = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * in.k[base + j * Hkv * D + d];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double l = 0;
      for (double& e : s) l += (e = std::exp(e - mx));
      double* o = out.data() + (b * H + h) * D;
      for (int64_t j = 0; j < len; ++j)
        for (int64_t d = 0; d < D; ++d) o[d] += s[j] / l * in.v[base + j * Hkv * D + d];
    }
  return out;
}

TEST(AttentionDecodeCpu, MatchesADoubleSoftmaxAndTheRef) {
  const CpuCase cases[] = {
      {7, 1, 8, {1, 63, 255, 256, 257, 1000}},  // GQA 7:1 at stories260K's D = 8, around one block
      {8, 1, 64, {512, 513, 65}},               // GQA 8:1, two blocks and a key more
      {14, 2, 64, {1, 3000}},                   // Qwen2.5-0.5B heads
      {28, 4, 128, {129, 8193, 9000}},          // Qwen2.5-7B heads, 32 splits with a short last block
      {64, 8, 128, {2048}},                     // Qwen2.5-72B heads
      {4, 4, 128, {700, 3}},                    // MHA
      {2, 1, 256, {17, 600}},                   // the GPU kernels' largest head dim
      {2, 1, 320, {300}},                       // past it: the CPU variant only
  };
  uint64_t seed = 71;
  for (const CpuCase& c : cases) {
    SCOPED_TRACE("H=" + std::to_string(c.H) + " Hkv=" + std::to_string(c.Hkv) + " D=" + std::to_string(c.D));
    const CpuInputs in = make_inputs(c, seed++);
    const std::vector<float> got = run_cpu(c, in);
    const std::vector<double> want = double_oracle(c, in);
    std::vector<float> ref(in.q.size(), NAN);
    const bool has_ref = c.D <= kAttentionDecodeMaxHeadDim;
    if (has_ref)
      attention_decode_ref(in.q.data(), in.k.data(), in.v.data(), c.lens.data(), in.B, c.H, c.Hkv, c.D, in.capacity,
                           in.max_len, ref.data());
    double worst_dbl = 0, worst_ref = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_FALSE(std::isnan(got[i])) << "out[" << i << "] is NaN: a row past the length was read";
      const double e = std::fabs(got[i] - want[i]);
      ASSERT_LE(e, kDoubleTol) << "out[" << i << "]: " << got[i] << ", double softmax " << want[i];
      worst_dbl = std::max(worst_dbl, e);
      if (!has_ref) continue;
      const double r = std::fabs(static_cast<double>(got[i]) - ref[i]);
      ASSERT_LE(r, kRefTol) << "out[" << i << "]: " << got[i] << ", attention_decode_ref " << ref[i];
      worst_ref = std::max(worst_ref, r);
    }
    std::printf("[ decode cpu H=%lld Hkv=%lld D=%lld ] max |cpu - double| %.2e, max |cpu - ref| %s\n",
                (long long)c.H, (long long)c.Hkv, (long long)c.D, worst_dbl,
                has_ref ? std::to_string(worst_ref).c_str() : "(no ref at this D)");
  }
}

TEST(AttentionDecodeCpu, SameBitsForAnyThreadCount) {
  const CpuCase c{28, 4, 128, {9000, 1, 300, 2600}};
  const CpuInputs in = make_inputs(c, 5);
  std::vector<float> one;
  {
    test::ScopedThreads threads(1);
    one = run_cpu(c, in);
  }
  for (int n : {2, 3, 5}) {
    test::ScopedThreads threads(n);
    const std::vector<float> got = run_cpu(c, in);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], one[i]) << "out[" << i << "] at " << n << " threads: " << got[i] << ", at 1 thread " << one[i];
  }
}

TEST(AttentionDecodeCpu, Bf16IsTheFp32OnTheWidenedCache) {
  const CpuCase cases[] = {{14, 2, 64, {1, 257, 3000}}, {64, 8, 128, {2, 9000}}, {6, 3, 7, {5, 600}}};
  uint64_t seed = 91;
  for (const CpuCase& c : cases) {
    SCOPED_TRACE("H=" + std::to_string(c.H) + " Hkv=" + std::to_string(c.Hkv) + " D=" + std::to_string(c.D));
    CpuInputs in = make_inputs(c, seed++);
    std::vector<uint16_t> k16(in.k.size()), v16(in.v.size());
    for (size_t i = 0; i < in.k.size(); ++i) {
      k16[i] = f32_to_bf16(in.k[i]);
      v16[i] = f32_to_bf16(in.v[i]);
      in.k[i] = bf16_to_f32(k16[i]);
      in.v[i] = bf16_to_f32(v16[i]);
    }
    std::vector<float> got(in.q.size(), NAN);
    attention_decode_bf16_cpu(in.q.data(), k16.data(), v16.data(), c.lens.data(), in.B, c.H, c.Hkv, c.D,
                              in.capacity, in.max_len, got.data());
    const std::vector<float> widened = run_cpu(c, in);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_FALSE(std::isnan(got[i])) << "out[" << i << "] is NaN";
      ASSERT_EQ(got[i], widened[i]) << "out[" << i << "]: bf16 cache " << got[i] << ", its widening " << widened[i];
    }
  }
}

TEST(AttentionDecodeCpu, ErrorsNameTheVariant) {
  const int64_t H = 2, Hkv = 1, cap = 4;
  std::vector<float> q(2 * H * 512, 0.f), kc(2 * cap * Hkv * 512, 0.f), vc(kc.size(), 0.f), out(q.size());
  std::vector<uint16_t> k16(kc.size(), 0), v16(kc.size(), 0);
  std::vector<int32_t> lens = {4, 0};
  const auto run = [&](int64_t h, int64_t hkv, int64_t d, int64_t max_len) {
    return test::error_of([&] {
      attention_decode_cpu(q.data(), kc.data(), vc.data(), lens.data(), 2, h, hkv, d, cap, max_len, out.data());
    });
  };
  const auto run16 = [&](int64_t h, int64_t hkv, int64_t d) {
    return test::error_of([&] {
      attention_decode_bf16_cpu(q.data(), k16.data(), v16.data(), lens.data(), 2, h, hkv, d, cap, 4, out.data());
    });
  };
  std::string e = run(H, Hkv, 8, 4);
  EXPECT_NE(e.find("attention_decode_cpu: lens[1]=0 must be in [1, max_len=4]"), std::string::npos) << e;
  lens[1] = 2;
  EXPECT_EQ(run(H, Hkv, 8, 4), "<no error>");
  EXPECT_EQ(run(H, Hkv, 512, 4), "<no error>");  // no head-dim bound on the CPU
  EXPECT_EQ(run16(H, Hkv, 7), "<no error>");     // nor an even one for a bf16 cache
  e = run(3, 2, 8, 4);
  EXPECT_NE(e.find("attention_decode_cpu: query heads H=3 must be a multiple of kv heads Hkv=2"), std::string::npos)
      << e;
  e = run(H, Hkv, 8, 5);
  EXPECT_NE(e.find("max_len=5 must be in [1, capacity=4]"), std::string::npos) << e;
  e = run16(H, Hkv, 0);
  EXPECT_NE(e.find("attention_decode_bf16_cpu: bad shape B=2 H=2 Hkv=1 D=0"), std::string::npos) << e;
}

}  // namespace
}  // namespace qwenq
