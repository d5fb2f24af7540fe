// attention_decode_cuda against its CPU twin attention_decode_ref (kernels/attention_decode.h) on the same seeded
// inputs, over a sweep of head shapes (the Qwen2.5 0.5B/7B/72B heads 14/2/64, 28/4/128, 64/8/128; stories260K's
// 8/4/8; GQA 7:1 and 8:1 at D = 8 and 64; MHA at the largest D = 256; an odd D = 40) and cache lengths (1, 63, 64,
// 65, 1000, 4097), several sequences per call with different lengths, so that both the one-split path and the
// split + merge path run (the splits are printed), including a max_len far above every length (empty splits) and a
// graph decode step's grid (max_len 32768) over 500 and 3000 keys, which kernels/attention_decode_split.h spreads
// over several splits each.
// Cache rows at or past each length are NaN: a kernel that reads one fails.
// The bf16-cache twin attention_decode_bf16_cuda against attention_decode_bf16_ref over the same sweep (D = 40 is
// even: not a multiple of 32 lanes' pairs), the caches rounded from the same seeded values; its refusals (odd D, a
// cache pointer off 4 bytes).
//
// Tolerance: both sides are fp32 softmaxes of the same scores with the max subtracted; they differ by the order of
// the sums (warp butterflies and split merges against key order) and expf against std::exp. v is uniform in
// [-1, 1], so |out| <= 1: kTol = 2e-5 absolute (the CPU test finds ~1e-6 between two fp32 orders at 1000 keys).
// The bf16 twins read the same widened values and differ the same way: the same kTol.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_decode_grouped.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/scoped_env.h"

namespace qwenq {
namespace {

constexpr double kTol = 2e-5;

struct Case {
  int64_t H, Hkv, D;
  std::vector<int32_t> lens;
  int64_t max_len = 0;  // 0: the longest length
};

// bf16 = true: the caches rounded to bf16, the bf16 twins compared (NaN rows stay NaN).
void check(const Case& c, uint64_t seed, bool bf16 = false) {
  const int64_t H = c.H, Hkv = c.Hkv, D = c.D, B = static_cast<int64_t>(c.lens.size());
  const int64_t longest = *std::max_element(c.lens.begin(), c.lens.end());
  const int64_t max_len = c.max_len > 0 ? c.max_len : longest, capacity = max_len + 5;
  SCOPED_TRACE(std::string(bf16 ? "bf16 cache " : "fp32 cache ") + "H=" + std::to_string(H) +
               " Hkv=" + std::to_string(Hkv) + " D=" + std::to_string(D) + " B=" +
               std::to_string(B) + " max_len=" + std::to_string(max_len) + " seed " + std::to_string(seed));
  Rng rng(seed);
  std::vector<float> q(static_cast<size_t>(B * H * D)), kc(static_cast<size_t>(B * capacity * Hkv * D), NAN),
      vc(kc.size(), NAN);
  for (auto& x : q) x = static_cast<float>(rng.normal() * 1.3);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < c.lens[b] * Hkv * D; ++i) {
      kc[b * capacity * Hkv * D + i] = static_cast<float>(rng.normal() * 1.3);
      vc[b * capacity * Hkv * D + i] = rng.uniform(-1.f, 1.f);
    }
  std::vector<float> want(q.size());
  // out has a guard past its end: a kernel writing a padding head (or any row past the last) is caught here, not
  // only under compute-sanitizer.
  constexpr size_t kGuard = 1024;
  constexpr float kGuardValue = -7777.f;
  test::DeviceBuffer<float> dq(q), dout(std::vector<float>(q.size() + kGuard, kGuardValue));
  test::DeviceBuffer<int32_t> dlens(c.lens);
  if (bf16) {
    std::vector<uint16_t> k16(kc.size()), v16(vc.size());
    for (size_t i = 0; i < kc.size(); ++i) {
      k16[i] = f32_to_bf16(kc[i]);
      v16[i] = f32_to_bf16(vc[i]);
    }
    attention_decode_bf16_ref(q.data(), k16.data(), v16.data(), c.lens.data(), B, H, Hkv, D, capacity, max_len,
                              want.data());
    test::DeviceBuffer<uint16_t> dk(k16), dv(v16);
    attention_decode_bf16_cuda(dq.get(), dk.get(), dv.get(), dlens.get(), B, H, Hkv, D, capacity, max_len,
                               dout.get());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  } else {
    attention_decode_ref(q.data(), kc.data(), vc.data(), c.lens.data(), B, H, Hkv, D, capacity, max_len,
                         want.data());
    test::DeviceBuffer<float> dk(kc), dv(vc);
    attention_decode_cuda(dq.get(), dk.get(), dv.get(), dlens.get(), B, H, Hkv, D, capacity, max_len, dout.get());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  const std::vector<float> got = dout.download();
  for (size_t i = q.size(); i < got.size(); ++i)
    ASSERT_EQ(got[i], kGuardValue) << "out was written " << i - q.size() << " floats past its end";
  double max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    max_err = std::isnan(e) ? INFINITY : std::max(max_err, e);
    ASSERT_LE(e, kTol) << "out[" << i << "] (sequence " << i / (H * D) << ", head " << (i / D) % H << ", column "
                       << i % D << "): GPU " << got[i] << ", CPU " << want[i];
  }
  // Whether the grouped kernel ran: the switch and D decide (the caches are cudaMalloc'd, 256-byte aligned, as dq).
  const bool grouped = attention_decode_grouped_enabled() && attention_decode_grouped_takes(D, dq.get(), dq.get());
  std::printf("[ decode %s%s H=%lld Hkv=%lld D=%lld B=%lld max_len=%lld ] splits %lld, max |GPU - CPU| %.2e\n",
              grouped ? "grouped " : "", bf16 ? "bf16" : "fp32", (long long)H, (long long)Hkv, (long long)D,
              (long long)B, (long long)max_len,
              (long long)(grouped ? attention_decode_grouped_splits(B, H, Hkv, D, bf16, max_len)
                                  : attention_decode_splits(B, H, max_len)),
              max_err);
}

// The sweep both cache dtypes run.
const Case kCases[] = {
      {14, 2, 64, {1}},                    // Qwen2.5-0.5B, first token: one split
      {14, 2, 64, {1000, 63, 65}},         // split + merge
      {28, 4, 128, {64, 1, 1000}},         // Qwen2.5-7B
      {64, 8, 128, {4097}},                // Qwen2.5-72B, a long cache
      {64, 8, 128, {1, 2, 3}},             // 72B, short: one split per head
      {8, 4, 8, {1, 63, 64, 65, 1000}},    // stories260K heads
      {7, 1, 8, {1000, 1}},                // GQA 7:1, D = 8
      {8, 1, 64, {63, 64, 65}},            // GQA 8:1
      {4, 4, 256, {300, 17}},              // MHA, the largest D
      {6, 3, 40, {129}},                   // D not a multiple of 32
      {14, 2, 64, {1, 5}, 1000},           // max_len far above the lengths: empty splits
      {28, 4, 128, {500, 3000}, 32768},    // a graph step's grid (the cache's splits): each length cut its own way
};

TEST(AttentionDecodeCuda, MatchesTheCpuTwin) {
  QWENQ_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const Case& c : kCases) check(c, seed++);
}

TEST(AttentionDecodeCuda, Bf16CacheMatchesTheCpuTwin) {
  QWENQ_REQUIRE_GPU();
  uint64_t seed = 200;
  for (const Case& c : kCases) check(c, seed++, /*bf16=*/true);
  check({28, 4, 128, {3000, 1, 1024}}, seed++, true);  // Qwen2.5-7B heads at ~3000 keys
}

// QWENQ_DECODE_GROUPED=1: the grouped kernel (kernels/attention_decode_grouped.cu) where it applies (D = 64, 128,
// 256; the sweep's D = 8 and 40 keep the per-head kernel) against the same twins with the same tolerance, both cache
// dtypes, plus the shapes only it has: query heads in a chunk of 4 (Qwen3's 32/8), two chunks of 8 (a group of 16),
// a group of 5 (Qwen2.5-14B's 40/8), long caches with a partial last step and empty splits.
TEST(AttentionDecodeCuda, GroupedKernelMatchesTheCpuTwin) {
  QWENQ_REQUIRE_GPU();
  const test::ScopedEnv grouped("QWENQ_DECODE_GROUPED", "1");
  ASSERT_TRUE(attention_decode_grouped_enabled());
  uint64_t seed = 300;
  for (const Case& c : kCases) check(c, seed++);
  for (const Case& c : kCases) check(c, seed++, /*bf16=*/true);
  const Case more[] = {
      {32, 8, 128, {3000, 1, 1024}},  // Qwen3-8B heads: 4 query heads per block
      {32, 2, 64, {777, 129}},        // a group of 16: two chunks of 8
      {40, 8, 128, {2049}},           // a group of 5
      {28, 4, 128, {33, 95}, 4000},   // max_len far above the lengths: empty splits and warps without keys
      {8, 8, 256, {600}},             // MHA at D = 256
      {6, 2, 64, {300}},              // a group of 3: a padding head in the chunk of 4
      {12, 4, 128, {129}},            // a group of 3 at D = 128, one key past a step
      {16, 2, 256, {300, 1}},         // D = 256 with 8 query heads per block (Qwen3-Next-style heads)
      {32, 4, 256, {777}},            // the same instance over more blocks, a partial last step
  };
  for (const Case& c : more) {
    check(c, seed++);
    check(c, seed++, /*bf16=*/true);
  }
}

TEST(AttentionDecodeCuda, ErrorsAreTheRefs) {
  QWENQ_REQUIRE_GPU();
  test::DeviceBuffer<float> buf(1024);
  test::DeviceBuffer<int32_t> lens(std::vector<int32_t>{1});
  const auto error_of = [&](int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len) -> std::string {
    try {
      attention_decode_cuda(buf.get(), buf.get(), buf.get(), lens.get(), 1, H, Hkv, D, capacity, max_len, buf.get());
    } catch (const Error& e) {
      return e.what();
    }
    return "<no error>";
  };
  std::string e = error_of(3, 2, 8, 4, 4);
  EXPECT_NE(e.find("attention_decode_cuda: query heads H=3 must be a multiple of kv heads Hkv=2"), std::string::npos)
      << e;
  e = error_of(2, 1, 512, 4, 4);
  EXPECT_NE(e.find("head dim D=512 exceeds the decode kernel's limit 256"), std::string::npos) << e;
  e = error_of(2, 1, 8, 4, 5);
  EXPECT_NE(e.find("max_len=5 must be in [1, capacity=4]"), std::string::npos) << e;
  // The bf16 twin: the ref's checks under its name, an even D, 4-byte aligned caches.
  test::DeviceBuffer<uint16_t> k16(1024);
  const auto error16 = [&](int64_t D, const uint16_t* k) -> std::string {
    try {
      attention_decode_bf16_cuda(buf.get(), k, k16.get(), lens.get(), 1, 2, 1, D, 4, 4, buf.get());
    } catch (const Error& e) {
      return e.what();
    }
    return "<no error>";
  };
  e = error16(7, k16.get());
  EXPECT_NE(e.find("attention_decode_bf16_cuda: head dim D=7 is odd; a bf16 KV cache needs an even D"),
            std::string::npos)
      << e;
  e = error16(8, k16.get() + 1);
  EXPECT_NE(e.find("attention_decode_bf16_cuda: the k and v caches must be 4-byte aligned"), std::string::npos) << e;
  EXPECT_EQ(error16(8, k16.get()), "<no error>");
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace qwenq
