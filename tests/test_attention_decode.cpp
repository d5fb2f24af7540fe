// attention_decode_ref (kernels/attention_decode.h) against attention_forward_ref: the last row of a causal
// attention over a whole sequence is the decode attention of that row's query against the sequence's keys and
// values in the cache. Several sequences of awkward lengths (1, 63, 64, 65, 1000) share one [B, capacity, Hkv, D]
// cache whose rows past each length are NaN (a read of them would poison the output), with GQA 7:1 and 8:1, the
// Qwen2.5 ratios 7:1 (14/2, 28/4) and MHA, head dims 8, 64, 128. Also against a double-precision softmax on the
// same rows, and the argument checks' messages.
// The bf16-cache twin attention_decode_bf16_ref: on caches rounded to bf16 it equals attention_decode_ref on the
// widened caches bit for bit (the contract: widening is exact and every operation and order is the fp32 twin's),
// over the Qwen2.5 heads 14/2/64, 28/4/128, 64/8/128, GQA 7:1 at D = 8, D = 2 and 256, lengths 1..3000; and its
// distance to the fp32 twin on the unrounded caches stays within the bound the rounding implies (kBf16 below), and
// is not zero (the rounding is really applied).
//
// Tolerances: both refs are fp32 softmaxes of the same scores with the max subtracted; they differ by the order of
// the sums (attention_forward_ref: Eigen GEMM blocks of 128 keys with online rescaling; the decode ref: keys in
// order) and Eigen's vectorized exp. v is uniform in [-1, 1], so |out| <= 1 and each sum of L terms carries a
// relative error of about L·2^-24 in the worst case, ~1e-6 in practice at L = 1000: kFwdTol = 2e-5 absolute. The
// double oracle sees only the decode ref's fp32 roundings: kDoubleTol = 1e-5.
// bf16 against fp32 on the unrounded caches, per (sequence, head): rounding moves each k and v element by at most
// 2^-9 of itself; the test measures the moves (dk, dv) and bounds the scores' move by
// ε = max_j scale·Σ_d |q_d|·|dk_jd|. Each softmax weight is then scaled by a factor in [e^-2ε, e^2ε], so
// Σ_j |p'_j − p_j| <= e^2ε − 1, and |out' − out| <= (e^2ε − 1)·max |v| + max |dv| + kFwdTol (fp32 noise).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_decode_split.h"

namespace qwenq {
namespace {

constexpr double kFwdTol = 2e-5;
constexpr double kDoubleTol = 1e-5;

struct DecodeCase {
  int64_t H, Hkv, D;
  std::vector<int32_t> lens;
};

std::vector<float> normal(Rng& rng, int64_t n, double sigma) {
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.normal() * sigma);
  return v;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

void check_case(const DecodeCase& c, uint64_t seed) {
  const int64_t H = c.H, Hkv = c.Hkv, D = c.D, B = static_cast<int64_t>(c.lens.size()), group = H / Hkv;
  SCOPED_TRACE("H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " D=" + std::to_string(D) + " seed " +
               std::to_string(seed));
  std::vector<int32_t> cu = {0};
  for (int32_t L : c.lens) cu.push_back(cu.back() + L);
  const int64_t T = cu.back();
  Rng rng(seed);
  const std::vector<float> q = normal(rng, T * H * D, 1.3), k = normal(rng, T * Hkv * D, 1.3);
  std::vector<float> v(static_cast<size_t>(T * Hkv * D));
  for (auto& x : v) x = rng.uniform(-1.f, 1.f);
  std::vector<float> full(static_cast<size_t>(T * H * D));
  attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), B, H, Hkv, D, full.data(), nullptr);

  // The decode inputs: the last query of each sequence, its keys/values in a NaN-filled cache.
  const int64_t max_len = *std::max_element(c.lens.begin(), c.lens.end()), capacity = max_len + 3;
  std::vector<float> qd(static_cast<size_t>(B * H * D)), kc(static_cast<size_t>(B * capacity * Hkv * D), NAN),
      vc(kc.size(), NAN);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t last = cu[b + 1] - 1;
    std::copy_n(q.begin() + last * H * D, H * D, qd.begin() + b * H * D);
    const int64_t rows = c.lens[b] * Hkv * D;
    std::copy_n(k.begin() + cu[b] * Hkv * D, rows, kc.begin() + b * capacity * Hkv * D);
    std::copy_n(v.begin() + cu[b] * Hkv * D, rows, vc.begin() + b * capacity * Hkv * D);
  }
  std::vector<float> out(qd.size(), NAN);
  attention_decode_ref(qd.data(), kc.data(), vc.data(), c.lens.data(), B, H, Hkv, D, capacity, max_len, out.data());

  double max_fwd = 0, max_dbl = 0;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> s, o(static_cast<size_t>(D));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t last = cu[b + 1] - 1, len = c.lens[b];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      s.assign(static_cast<size_t>(len), 0.0);
      double mx = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d)
          dot += static_cast<double>(qd[(b * H + h) * D + d]) * k[((cu[b] + j) * Hkv + g) * D + d];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double l = 0;
      for (double& e : s) l += (e = std::exp(e - mx));
      std::fill(o.begin(), o.end(), 0.0);
      for (int64_t j = 0; j < len; ++j)
        for (int64_t d = 0; d < D; ++d) o[d] += s[j] / l * v[((cu[b] + j) * Hkv + g) * D + d];
      for (int64_t d = 0; d < D; ++d) {
        const double got = out[(b * H + h) * D + d], want = full[(last * H + h) * D + d];
        const double e_fwd = std::fabs(got - want), e_dbl = std::fabs(got - o[d]);
        max_fwd = std::isnan(e_fwd) ? INFINITY : std::max(max_fwd, e_fwd);
        max_dbl = std::isnan(e_dbl) ? INFINITY : std::max(max_dbl, e_dbl);
        ASSERT_LE(e_fwd, kFwdTol) << "sequence " << b << " (len " << len << "), head " << h << ", column " << d
                                  << ": decode " << got << ", last row of the causal forward " << want;
        ASSERT_LE(e_dbl, kDoubleTol) << "sequence " << b << " (len " << len << "), head " << h << ", column " << d
                                     << ": decode " << got << ", double oracle " << o[d];
      }
    }
  }
  std::printf("[ decode H=%lld Hkv=%lld D=%lld ] max |decode - forward last row| %.2e, max |decode - double| %.2e\n",
              (long long)H, (long long)Hkv, (long long)D, max_fwd, max_dbl);
}

TEST(AttentionDecodeRef, IsTheLastRowOfTheCausalForward) {
  const DecodeCase cases[] = {
      {7, 1, 8, {1, 63, 64, 65, 1000}},   // GQA 7:1, stories260K's D = 8
      {8, 1, 64, {1, 63, 64, 65, 1000}},  // GQA 8:1
      {14, 2, 64, {65, 1, 200}},          // Qwen2.5-0.5B heads
      {28, 4, 128, {1, 64, 130}},         // Qwen2.5-7B heads
      {4, 4, 128, {1000, 3}},             // MHA, a long and a short sequence
      {2, 1, 256, {17}},                  // the largest head dim
  };
  uint64_t seed = 11;
  for (const DecodeCase& c : cases) check_case(c, seed++);
}

// The bf16 twin on a rounded cache vs the fp32 twin on its widening (bit for bit) and on the unrounded cache (the
// rounding's bound). Cache rows past each length are NaN in both (f32_to_bf16 keeps a NaN).
void check_bf16_case(const DecodeCase& c, uint64_t seed) {
  const int64_t H = c.H, Hkv = c.Hkv, D = c.D, B = static_cast<int64_t>(c.lens.size()), group = H / Hkv;
  SCOPED_TRACE("bf16 H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " D=" + std::to_string(D) +
               " seed " + std::to_string(seed));
  const int64_t max_len = *std::max_element(c.lens.begin(), c.lens.end()), capacity = max_len + 2;
  Rng rng(seed);
  const std::vector<float> q = normal(rng, B * H * D, 1.3);
  std::vector<float> kc(static_cast<size_t>(B * capacity * Hkv * D), NAN), vc(kc.size(), NAN);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < c.lens[b] * Hkv * D; ++i) {
      kc[b * capacity * Hkv * D + i] = static_cast<float>(rng.normal() * 1.3);
      vc[b * capacity * Hkv * D + i] = rng.uniform(-1.f, 1.f);
    }
  std::vector<uint16_t> k16(kc.size()), v16(vc.size());
  std::vector<float> kw(kc.size()), vw(vc.size());
  for (size_t i = 0; i < kc.size(); ++i) {
    k16[i] = f32_to_bf16(kc[i]);
    v16[i] = f32_to_bf16(vc[i]);
    kw[i] = bf16_to_f32(k16[i]);
    vw[i] = bf16_to_f32(v16[i]);
  }
  std::vector<float> got(q.size(), NAN), widened(q.size(), NAN), exact(q.size(), NAN);
  attention_decode_bf16_ref(q.data(), k16.data(), v16.data(), c.lens.data(), B, H, Hkv, D, capacity, max_len,
                            got.data());
  attention_decode_ref(q.data(), kw.data(), vw.data(), c.lens.data(), B, H, Hkv, D, capacity, max_len,
                       widened.data());
  attention_decode_ref(q.data(), kc.data(), vc.data(), c.lens.data(), B, H, Hkv, D, capacity, max_len, exact.data());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << "out[" << i << "] is NaN: a row past the length was read";
    ASSERT_EQ(got[i], widened[i]) << "out[" << i << "]: bf16 cache " << got[i] << ", fp32 cache widened from it "
                                  << widened[i];
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  double worst = 0, worst_ratio = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      double eps = 0, dv = 0;
      for (int64_t j = 0; j < c.lens[b]; ++j) {
        const size_t row = static_cast<size_t>(((b * capacity + j) * Hkv + g) * D);
        double ds = 0;
        for (int64_t d = 0; d < D; ++d) {
          ds += std::fabs(static_cast<double>(q[(b * H + h) * D + d])) * std::fabs(double(kw[row + d]) - kc[row + d]);
          dv = std::max(dv, std::fabs(static_cast<double>(vw[row + d]) - vc[row + d]));
        }
        eps = std::max(eps, scale * ds);
      }
      const double bound = std::expm1(2 * eps) * 1.0 + dv + kFwdTol;  // max |v| <= 1
      for (int64_t d = 0; d < D; ++d) {
        const size_t i = static_cast<size_t>((b * H + h) * D + d);
        const double e = std::fabs(static_cast<double>(got[i]) - exact[i]);
        ASSERT_LE(e, bound) << "sequence " << b << ", head " << h << ", column " << d << ": bf16 cache " << got[i]
                            << ", fp32 cache " << exact[i] << ", score move bound " << eps;
        worst = std::max(worst, e);
        worst_ratio = std::max(worst_ratio, e / bound);
      }
    }
  EXPECT_GT(worst, 0.0) << "the bf16 cache gave the fp32 cache's output exactly: no rounding was applied";
  std::printf("[ decode bf16 H=%lld Hkv=%lld D=%lld ] = fp32 twin on the widened cache bit for bit; max |bf16 - fp32 "
              "cache| %.2e (%.2f of the bound)\n",
              (long long)H, (long long)Hkv, (long long)D, worst, worst_ratio);
}

TEST(AttentionDecodeRef, Bf16CacheIsTheFp32TwinOnTheRoundedCache) {
  const DecodeCase cases[] = {
      {7, 1, 8, {1, 63, 64, 65, 1000}},  // GQA 7:1, stories260K's D = 8
      {14, 2, 64, {1, 65, 3000}},        // Qwen2.5-0.5B heads, up to 3000 keys
      {28, 4, 128, {1, 129, 3000}},      // Qwen2.5-7B heads
      {64, 8, 128, {2, 2048}},           // Qwen2.5-72B heads
      {2, 1, 256, {17}},                 // the largest head dim
      {6, 3, 2, {5, 1}},                 // the smallest even head dim
  };
  uint64_t seed = 41;
  for (const DecodeCase& c : cases) check_bf16_case(c, seed++);
}

// The GPU kernels' cut of a sequence's keys into splits (kernels/attention_decode_split.h), checked here because
// the twins' results cannot show it (any cut gives the same softmax up to rounding): the splits partition
// [0, len) in order; at most n = min(splits, ceil(len / min_keys)) of them take keys; with len == max_len the cut
// is the launcher's equal cut ceil(max_len / splits); and a short sequence in a long grid (a graph-captured decode
// step at 500 of 32768 cached keys) still spreads over several splits.
TEST(AttentionDecodeSplit, EachSequenceCutsItsOwnLength) {
  const auto nonempty_after_partition = [](int64_t len, int64_t splits, int64_t min_keys) {
    int64_t next = 0, taking = 0;
    for (int64_t s = 0; s < splits; ++s) {
      const DecodeSplitKeys k = decode_split_keys(len, splits, min_keys, s);
      if (k.k1 <= k.k0) continue;
      EXPECT_EQ(k.k0, next) << "len " << len << " splits " << splits << " min " << min_keys << " split " << s;
      next = k.k1;
      ++taking;
    }
    EXPECT_EQ(next, len) << "len " << len << " splits " << splits << " min " << min_keys;
    return taking;
  };
  for (const int64_t min_keys : {int64_t{64}, int64_t{128}}) {
    for (int64_t max_len : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{65}, int64_t{1000}, int64_t{4097},
                            int64_t{32768}}) {
      const int64_t most = (max_len + min_keys - 1) / min_keys;
      for (int64_t splits : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{9}, int64_t{19}, int64_t{100}}) {
        if (splits > most) continue;  // the launchers never ask for more
        for (int64_t len = 0; len <= max_len; len += len < 300 ? 1 : 97) {
          const int64_t n = std::min(splits, std::max<int64_t>(1, (len + min_keys - 1) / min_keys));
          EXPECT_LE(nonempty_after_partition(len, splits, min_keys), n) << "len " << len << " splits " << splits;
        }
        const int64_t per = (max_len + splits - 1) / splits;
        for (int64_t s = 0; s < splits; ++s) {
          const DecodeSplitKeys k = decode_split_keys(max_len, splits, min_keys, s);
          EXPECT_EQ(k.k0, s * per) << "max_len " << max_len << " splits " << splits << " split " << s;
          EXPECT_EQ(k.k1, std::min(max_len, (s + 1) * per)) << "max_len " << max_len << " split " << s;
        }
      }
    }
  }
  EXPECT_EQ(nonempty_after_partition(500, 9, 64), 8);  // the old cut of 32768 keys: one split of 3641
  EXPECT_EQ(nonempty_after_partition(0, 9, 64), 0);
}

TEST(AttentionDecodeRef, ErrorsAreClear) {
  const int64_t H = 2, Hkv = 1, D = 8, cap = 4;
  std::vector<float> q(2 * H * D, 0.f), kc(2 * cap * Hkv * D, 0.f), vc(kc.size(), 0.f), out(2 * H * D);
  std::vector<int32_t> lens = {4, 0};
  auto run = [&](int64_t h, int64_t hkv, int64_t d, int64_t capacity, int64_t max_len) {
    return error_of([&] {
      attention_decode_ref(q.data(), kc.data(), vc.data(), lens.data(), 2, h, hkv, d, capacity, max_len, out.data());
    });
  };
  std::string e = run(H, Hkv, D, cap, 4);
  EXPECT_NE(e.find("attention_decode_ref: lens[1]=0 must be in [1, max_len=4]"), std::string::npos) << e;
  lens[1] = 5;
  e = run(H, Hkv, D, cap, 4);
  EXPECT_NE(e.find("lens[1]=5 must be in [1, max_len=4]"), std::string::npos) << e;
  lens[1] = 2;
  EXPECT_EQ(run(H, Hkv, D, cap, 4), "<no error>");
  e = run(3, 2, D, cap, 4);
  EXPECT_NE(e.find("query heads H=3 must be a multiple of kv heads Hkv=2"), std::string::npos) << e;
  e = run(H, Hkv, 512, cap, 4);
  EXPECT_NE(e.find("head dim D=512 exceeds the decode kernel's limit 256"), std::string::npos) << e;
  e = run(H, Hkv, D, cap, 5);
  EXPECT_NE(e.find("max_len=5 must be in [1, capacity=4]"), std::string::npos) << e;
  e = run(H, Hkv, 0, cap, 4);
  EXPECT_NE(e.find("bad shape B=2 H=2 Hkv=1 D=0"), std::string::npos) << e;
  // The bf16 twin: the same checks under its name, plus an even D; D = 7 is fine for the fp32 twin.
  std::vector<uint16_t> k16(kc.size(), 0), v16(kc.size(), 0);
  const auto run16 = [&](int64_t h, int64_t hkv, int64_t d) {
    return error_of([&] {
      attention_decode_bf16_ref(q.data(), k16.data(), v16.data(), lens.data(), 2, h, hkv, d, cap, 4, out.data());
    });
  };
  EXPECT_EQ(run(H, Hkv, 7, cap, 4), "<no error>");
  e = run16(H, Hkv, 7);
  EXPECT_NE(e.find("attention_decode_bf16_ref: head dim D=7 is odd; a bf16 KV cache needs an even D"),
            std::string::npos)
      << e;
  EXPECT_EQ(run16(H, Hkv, D), "<no error>");
  e = run16(3, 2, D);
  EXPECT_NE(e.find("attention_decode_bf16_ref: query heads H=3 must be a multiple of kv heads Hkv=2"),
            std::string::npos)
      << e;
}

}  // namespace
}  // namespace qwenq
