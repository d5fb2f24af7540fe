// FlashAttention's tolerance rule (tests/support/flash_rule.h): the naive bf16 attention and the per-group check.
#include "tests/support/flash_rule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/dtype.h"
#include "core/threads.h"
#include "kernels/attention.h"

namespace qwenq::test {

namespace {

float max_abs(const std::vector<float>& x) {
  float m = 0.f;
  for (float f : x) m = std::max(m, std::fabs(f));
  return m;
}

// max |got − truth|; a non-finite `got` counts as infinite error.
double max_err(const std::vector<float>& got, const std::vector<float>& truth) {
  double e = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    e = std::max(e, std::fabs(static_cast<double>(got[i]) - truth[i]));
  }
  return e;
}

// The bf16 probabilities of query row i of head h (keys b..i): p[j − b]; returns the fp32 lse of the bf16 scores.
float naive_probs(const std::vector<float>& q, const std::vector<float>& k, int64_t H, int64_t Hkv, int64_t D,
                  int64_t b, int64_t i, int64_t h, float scale, std::vector<float>* p) {
  const int64_t g = h / (H / Hkv);
  const float* qi = &q[(i * H + h) * D];
  p->resize(static_cast<size_t>(i - b + 1));
  float m = -INFINITY;
  for (int64_t j = b; j <= i; ++j) {
    const float* kj = &k[(j * Hkv + g) * D];
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s += qi[d] * kj[d];
    s = bf16_round(bf16_round(s) * scale);
    (*p)[j - b] = s;
    m = std::max(m, s);
  }
  float l = 0.f;
  for (auto& x : *p) l += (x = std::exp(x - m));
  for (auto& x : *p) x = bf16_round(x / l);
  return m + std::log(l);
}

}  // namespace

std::vector<float> slice_heads(const std::vector<float>& x, int64_t T, int64_t heads, int64_t D, int64_t h0,
                               int64_t nh) {
  std::vector<float> r(static_cast<size_t>(T * nh * D));
  for (int64_t t = 0; t < T; ++t)
    std::copy_n(x.begin() + (t * heads + h0) * D, nh * D, r.begin() + t * nh * D);
  return r;
}

AttentionResult naive_bf16_attention(const std::vector<float>& q, const std::vector<float>& k,
                                     const std::vector<float>& v, const std::vector<float>& dout,
                                     const std::vector<int32_t>& cu, int64_t H, int64_t Hkv, int64_t D) {
  const int64_t n_seqs = static_cast<int64_t>(cu.size()) - 1, T = cu.back(), group = H / Hkv;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  AttentionResult r;
  r.out.assign(static_cast<size_t>(T * H * D), 0.f);
  r.lse.assign(static_cast<size_t>(T * H), 0.f);
  r.dq.assign(static_cast<size_t>(T * H * D), 0.f);
  // Per query head: dk_h, dv_h in fp32, rounded to bf16 once the head is done, then summed over the group.
  std::vector<float> dk_h(static_cast<size_t>(T * H * D), 0.f), dv_h(static_cast<size_t>(T * H * D), 0.f);
  parallel_for(H, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> p, dp, acc(static_cast<size_t>(D));
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t g = h / group;
      for (int64_t s = 0; s < n_seqs; ++s)
        for (int64_t i = cu[s]; i < cu[s + 1]; ++i) {
          const int64_t b = cu[s];
          r.lse[i * H + h] = naive_probs(q, k, H, Hkv, D, b, i, h, scale, &p);
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int64_t j = b; j <= i; ++j)
            for (int64_t d = 0; d < D; ++d) acc[d] += p[j - b] * v[(j * Hkv + g) * D + d];
          for (int64_t d = 0; d < D; ++d) r.out[(i * H + h) * D + d] = bf16_round(acc[d]);
          // backward of row i
          const float* doi = &dout[(i * H + h) * D];
          const float* qi = &q[(i * H + h) * D];
          dp.resize(p.size());
          float dot = 0.f;
          for (int64_t j = b; j <= i; ++j) {
            float x = 0.f;
            for (int64_t d = 0; d < D; ++d) x += doi[d] * v[(j * Hkv + g) * D + d];
            dp[j - b] = bf16_round(x);
            dot += p[j - b] * dp[j - b];
          }
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int64_t j = b; j <= i; ++j) {
            const float ds = bf16_round(bf16_round(p[j - b] * (dp[j - b] - dot)) * scale);
            const float* kj = &k[(j * Hkv + g) * D];
            float* dkj = &dk_h[(j * H + h) * D];
            float* dvj = &dv_h[(j * H + h) * D];
            for (int64_t d = 0; d < D; ++d) {
              acc[d] += ds * kj[d];
              dkj[d] += ds * qi[d];
              dvj[d] += p[j - b] * doi[d];
            }
          }
          for (int64_t d = 0; d < D; ++d) r.dq[(i * H + h) * D + d] = bf16_round(acc[d]);
        }
    }
  });
  r.dk.assign(static_cast<size_t>(T * Hkv * D), 0.f);
  r.dv.assign(static_cast<size_t>(T * Hkv * D), 0.f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < Hkv; ++g)
      for (int64_t d = 0; d < D; ++d) {
        float sk = 0.f, sv = 0.f;
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          sk += bf16_round(dk_h[(t * H + h) * D + d]);
          sv += bf16_round(dv_h[(t * H + h) * D + d]);
        }
        r.dk[(t * Hkv + g) * D + d] = bf16_round(sk);
        r.dv[(t * Hkv + g) * D + d] = bf16_round(sv);
      }
  return r;
}

void expect_within_flash_rule(const AttentionResult& got, const std::vector<float>& q, const std::vector<float>& k,
                              const std::vector<float>& v, const std::vector<float>& dout,
                              const std::vector<int32_t>& cu, int64_t H, int64_t Hkv, int64_t D,
                              const std::string& tag, const std::string& ctx) {
  const int64_t T = cu.back(), n_seqs = static_cast<int64_t>(cu.size()) - 1, group = H / Hkv;
  // The references, one kv group at a time (H' = group query heads, Hkv' = 1).
  std::vector<int64_t> groups;
  if (T >= 1024)
    groups = Hkv > 1 ? std::vector<int64_t>{0, Hkv - 1} : std::vector<int64_t>{0};
  else
    for (int64_t g = 0; g < Hkv; ++g) groups.push_back(g);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  for (int64_t g : groups) {
    const int64_t h0 = g * group;
    const std::vector<float> qg = slice_heads(q, T, H, D, h0, group), dog = slice_heads(dout, T, H, D, h0, group);
    const std::vector<float> kg = slice_heads(k, T, Hkv, D, g, 1), vg = slice_heads(v, T, Hkv, D, g, 1);
    const size_t n = qg.size(), n1 = kg.size();
    std::vector<float> out_t(n), lse_t(static_cast<size_t>(T * group)), dq_t(n), dk_t(n1), dv_t(n1);
    attention_forward_ref(qg.data(), kg.data(), vg.data(), cu.data(), n_seqs, group, 1, D, out_t.data(), lse_t.data());
    attention_backward_ref(dog.data(), qg.data(), kg.data(), vg.data(), out_t.data(), lse_t.data(), cu.data(), n_seqs,
                           group, 1, D, dq_t.data(), dk_t.data(), dv_t.data());
    const AttentionResult nv = naive_bf16_attention(qg, kg, vg, dog, cu, group, 1, D);

    const double mq = max_abs(qg), mk = max_abs(kg), mv = max_abs(vg), mdo = max_abs(dog);
    struct Check {
      const char* name;
      std::vector<float> kernel;
      const std::vector<float>* naive;
      const std::vector<float>* truth;
      double magnitude;
    };
    const Check checks[] = {
        {"out", slice_heads(got.out, T, H, D, h0, group), &nv.out, &out_t, mv},
        {"lse", slice_heads(got.lse, T, H, 1, h0, group), &nv.lse, &lse_t, 1.0 + max_abs(lse_t)},
        {"dq", slice_heads(got.dq, T, H, D, h0, group), &nv.dq, &dq_t, scale * D * mk * mdo * mv},
        {"dk", slice_heads(got.dk, T, Hkv, D, g, 1), &nv.dk, &dk_t, scale * D * mq * mdo * mv},
        {"dv", slice_heads(got.dv, T, Hkv, D, g, 1), &nv.dv, &dv_t, mdo},
    };
    for (const Check& c : checks) {
      const double err_kernel = max_err(c.kernel, *c.truth), err_naive = max_err(*c.naive, *c.truth);
      const double bound = kNaiveFactor * err_naive + kTinyUlps * kFlashU * c.magnitude;
      std::printf("[ %-8s ] %s kv group %lld %-3s: kernel err %.3e, naive bf16 err %.3e, bound %.3e (%.2f)\n",
                  tag.c_str(), ctx.c_str(), static_cast<long long>(g), c.name, err_kernel, err_naive, bound,
                  err_kernel / bound);
      EXPECT_LE(err_kernel, bound) << c.name << " of kv group " << g << ", " << ctx << ": error " << err_kernel
                                   << " > " << kNaiveFactor << " x naive bf16 error " << err_naive << " + tiny";
    }
  }
}

}  // namespace qwenq::test
