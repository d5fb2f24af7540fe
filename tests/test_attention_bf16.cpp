// The CPU attention on bf16 operands (attention_forward_ref / _suffix_ref / attention_backward_ref with bf16 = true,
// kernels/attention.h: --cpu-matmul bf16's attention, the CPU twin of the GPU's flash attention), on both product
// paths (portable always, AVX512_BF16 where the CPU has it):
//   - FlashAttention's tolerance rule (tests/support/flash_rule.h, the rule the GPU kernels are held to): out, lse,
//     dq, dk, dv within twice a naive bf16 implementation's error against the fp32 reference, on seeded bf16 inputs,
//     over the Qwen2.5 heads (14/2/64, 28/4/128, 64/8/128), MHA, a group of 3 with an odd D, D = 320 (two 256-value
//     slices of the score reduction) and lengths around the 32-row query and 64/128-key blocks, packed sequences with
//     an empty one;
//   - the forward rounds its operands: fp32 inputs give the bits of their bf16 roundings;
//   - the same bits at 1, 2 and 3 threads, forward and backward;
//   - the suffix form over a cache of p0 rows: with p0 = 0 the forward's bits, with p0 > 0 the forward's last rows
//     within kSuffixTol (its query blocks start at p0);
//   - the two paths agree within kPathTol (fp32 summation orders, then a bf16 rounding of P or dS that may flip).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/attention.h"
#include "tests/support/bf16_paths.h"
#include "tests/support/flash_rule.h"
#include "tests/support/scoped_threads.h"

namespace qwenq {
namespace {

// Two fp32 summation orders of the same bf16 products (the two paths; the suffix form's blocks) give scores a few
// 2^-24 apart, and a probability (or dS) that lands near a rounding boundary then rounds to the neighbouring bf16
// value: one bf16 ulp (2^-8 relative) of a term of magnitude <= max|v| ~ 4 (N(0, 1) inputs), on a few terms. Measured:
// paths 3e-4 .. 1e-3, suffix rows below that.
constexpr double kPathTol = 1.0 / 64;
constexpr double kSuffixTol = 1.0 / 64;

struct Case {
  int64_t H, Hkv, D;
  std::vector<int32_t> lens;
};

std::string name_of(const Case& c, bool portable) {
  std::string s = std::string(portable ? "portable" : "avx512_bf16") + " H=" + std::to_string(c.H) +
                  " Hkv=" + std::to_string(c.Hkv) + " D=" + std::to_string(c.D) + " lengths";
  for (int32_t L : c.lens) s += " " + std::to_string(L);
  return s;
}

struct Inputs {
  std::vector<float> q, k, v, dout;
};

Inputs inputs(const Case& c, uint64_t seed, bool round) {
  const int64_t T = test::cu_seqlens_of(c.lens).back();
  Rng rng(seed);
  auto normal = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& f : x) f = round ? bf16_round(static_cast<float>(rng.normal())) : static_cast<float>(rng.normal());
    return x;
  };
  Inputs in;
  in.q = normal(T * c.H * c.D);
  in.k = normal(T * c.Hkv * c.D);
  in.v = normal(T * c.Hkv * c.D);
  in.dout = normal(T * c.H * c.D);
  return in;
}

test::AttentionResult run_bf16(const Case& c, const Inputs& in) {
  const std::vector<int32_t> cu = test::cu_seqlens_of(c.lens);
  const int64_t T = cu.back(), n = static_cast<int64_t>(c.lens.size());
  test::AttentionResult r;
  r.out.assign(static_cast<size_t>(T * c.H * c.D), 0.f);
  r.lse.assign(static_cast<size_t>(T * c.H), 0.f);
  r.dq.assign(r.out.size(), 0.f);
  r.dk.assign(in.k.size(), 0.f);
  r.dv.assign(in.v.size(), 0.f);
  attention_forward_ref(in.q.data(), in.k.data(), in.v.data(), cu.data(), n, c.H, c.Hkv, c.D, r.out.data(),
                        r.lse.data(), /*bf16=*/true);
  attention_backward_ref(in.dout.data(), in.q.data(), in.k.data(), in.v.data(), r.out.data(), r.lse.data(), cu.data(),
                         n, c.H, c.Hkv, c.D, r.dq.data(), r.dk.data(), r.dv.data(), /*bf16=*/true);
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
  return d;
}

const std::vector<Case>& rule_cases() {
  static const std::vector<Case> cases = {
      {14, 2, 64, {1}},          {14, 2, 64, {17}},          {14, 2, 64, {1, 7, 300}},
      {28, 4, 128, {63, 0, 64, 65}}, {28, 4, 128, {129}},    {64, 8, 128, {200}},
      {4, 4, 64, {128}},         {6, 2, 7, {33, 40}},        {2, 1, 320, {70}},
  };
  return cases;
}

TEST(AttentionBf16, WithinTwiceTheNaiveBf16Error) {
  for (bool portable : test::bf16_gemm_paths()) {
    const test::PortableScope scope(portable);
    for (const Case& c : rule_cases()) {
      const std::string ctx = name_of(c, portable);
      SCOPED_TRACE(ctx);
      const Inputs in = inputs(c, 4100 + c.H * 31 + c.D + c.lens.size(), /*round=*/true);
      test::expect_within_flash_rule(run_bf16(c, in), in.q, in.k, in.v, in.dout, test::cu_seqlens_of(c.lens), c.H,
                                     c.Hkv, c.D, "cpu bf16", ctx);
    }
  }
}

TEST(AttentionBf16, ForwardRoundsItsOperands) {
  for (bool portable : test::bf16_gemm_paths()) {
    const test::PortableScope scope(portable);
    const Case c{14, 2, 64, {45, 160}};
    SCOPED_TRACE(name_of(c, portable));
    const Inputs raw = inputs(c, 4200, /*round=*/false);
    Inputs rounded = raw;
    for (auto* v : {&rounded.q, &rounded.k, &rounded.v})
      for (auto& x : *v) x = bf16_round(x);
    const test::AttentionResult a = run_bf16(c, raw), b = run_bf16(c, rounded);
    EXPECT_TRUE(same_bits(a.out, b.out));
    EXPECT_TRUE(same_bits(a.lse, b.lse));
  }
}

TEST(AttentionBf16, SameBitsForAnyThreadCount) {
  for (bool portable : test::bf16_gemm_paths()) {
    const test::PortableScope scope(portable);
    const Case c{28, 4, 128, {100, 0, 33, 170}};
    SCOPED_TRACE(name_of(c, portable));
    const Inputs in = inputs(c, 4300, true);
    test::AttentionResult one;
    {
      const test::ScopedThreads t(1);
      one = run_bf16(c, in);
    }
    for (int threads : {2, 3}) {
      const test::ScopedThreads t(threads);
      const test::AttentionResult r = run_bf16(c, in);
      EXPECT_TRUE(same_bits(r.out, one.out) && same_bits(r.lse, one.lse)) << "forward at " << threads << " threads";
      EXPECT_TRUE(same_bits(r.dq, one.dq) && same_bits(r.dk, one.dk) && same_bits(r.dv, one.dv))
          << "backward at " << threads << " threads";
    }
  }
}

TEST(AttentionBf16, SuffixIsTheForwardsLastRows) {
  for (bool portable : test::bf16_gemm_paths()) {
    const test::PortableScope scope(portable);
    const Case c{14, 2, 64, {300}};
    SCOPED_TRACE(name_of(c, portable));
    const Inputs in = inputs(c, 4400, false);
    const int64_t T = 300, row = c.H * c.D;
    const test::AttentionResult full = run_bf16(c, in);
    for (int64_t p0 : {0, 1, 77, 299}) {
      const int64_t n = T - p0;
      std::vector<float> out(static_cast<size_t>(n * row));
      attention_forward_suffix_ref(in.q.data() + p0 * row, in.k.data(), in.v.data(), p0, n, c.H, c.Hkv, c.D,
                                   out.data(), /*bf16=*/true);
      const std::vector<float> want(full.out.begin() + p0 * row, full.out.end());
      if (p0 == 0) {
        EXPECT_TRUE(same_bits(out, want)) << "p0 = 0";
      } else {
        const double d = max_diff(out, want);
        EXPECT_LE(d, kSuffixTol) << "p0 = " << p0;
        std::printf("[ suffix ] %s p0 = %lld: max |suffix − forward| %.3g\n", portable ? "portable" : "avx512_bf16",
                    static_cast<long long>(p0), d);
      }
    }
  }
}

TEST(AttentionBf16, PathsAgree) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "this CPU has no AVX512_BF16: one path only";
  const Case c{64, 8, 128, {150, 90}};
  const Inputs in = inputs(c, 4500, false);
  test::AttentionResult a, p;
  {
    const test::PortableScope s(false);
    a = run_bf16(c, in);
  }
  {
    const test::PortableScope s(true);
    p = run_bf16(c, in);
  }
  const std::pair<const char*, double> diffs[] = {{"out", max_diff(a.out, p.out)}, {"lse", max_diff(a.lse, p.lse)},
                                                  {"dq", max_diff(a.dq, p.dq)},    {"dk", max_diff(a.dk, p.dk)},
                                                  {"dv", max_diff(a.dv, p.dv)}};
  for (const auto& [what, d] : diffs) {
    EXPECT_LE(d, kPathTol) << what;
    std::printf("[ paths ] %s: max |avx512_bf16 − portable| %.3g\n", what, d);
  }
}

}  // namespace
}  // namespace qwenq
