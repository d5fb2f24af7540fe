// attention_forward_cuda / attention_backward_cuda (kernels/flash_attention.cu) and the Hopper kernels
// attention_forward_wgmma_cuda / attention_backward_wgmma_cuda (kernels/flash_attention_wgmma.cu) against the fp32
// CPU reference,
// with FlashAttention's tolerance rule: the kernel's error may be at most twice the error of a naive
// implementation in the same precision (bf16), plus a tiny term for the cases where the naive one is exact.
//
// For each case, on the same seeded bf16 inputs q, k, v, dout (N(0, 1), rounded to bf16):
//   truth  attention_forward_ref / attention_backward_ref (fp32, kernels/attention_ref.cpp) on the bf16 values,
//          the backward fed the truth's own out and lse;
//   naive  the attention a straightforward bf16 implementation computes (torch in bf16 without a fused kernel):
//          scores = bf16(bf16(q·k) · scale), softmax in fp32 over the bf16 scores, P = bf16(softmax),
//          out = bf16(P·v), lse = fp32 logsumexp of the bf16 scores; backward dP = bf16(dout·vᵀ),
//          dS = bf16(P ⊙ (dP − Σ P·dP)), dS' = bf16(dS · scale), dq = bf16(dS'·k), per head
//          dk_h = bf16(dS'ᵀ·q), dv_h = bf16(Pᵀ·dout), then dk, dv = bf16(Σ over the group's heads).
//          Every product accumulates in fp32 (as the tensor cores do); the roundings are at the points where such
//          an implementation writes a bf16 tensor.
//   kernel the CUDA twin: forward on the bf16 inputs, backward fed the kernel's own out (bf16) and lse.
// Rule, per tensor (out, lse, dq, dk, dv), with err = max |x − truth| over the compared elements:
//   err(kernel) <= kNaiveFactor · err(naive) + kTinyUlps · kU · M
// where M is the magnitude of the terms that make the tensor (out: max|v|; lse: 1 + max|lse|; dq: scale · D ·
// max|k|·max|dout|·max|v|; dk: the same with q; dv: max|dout|). The tiny term matters only where the naive
// computation is exact (a length-1 sequence: P = 1, out = v, dS = 0 exactly) while the fp32 kernel and the
// truth differ in the last bits of their sums; elsewhere it is far below the naive error.
// Cost of the CPU side: both references are O(T²); for T >= 1024 only kv groups 0 and Hkv − 1 (all their query
// heads) are compared, heads being independent.
// Every output carries guard elements after it that the kernels must not touch; the backward must give the same
// bits twice. Every test skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "kernels/attention.h"
#include "kernels/cuda_check.cuh"
#include "kernels/flash_attention.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;
using test::expect_error;

// ---- tolerances -----------------------------------------------------------------------------------------------
constexpr double kU = 1.0 / 16777216.0;  // fp32 unit roundoff
constexpr double kNaiveFactor = 2.0;     // FlashAttention's rule
constexpr double kTinyUlps = 8;          // fp32 sums in another order (see the header)

// ---- helpers ------------------------------------------------------------------------------------------------------

constexpr size_t kGuard = 32;
constexpr uint32_t kGuardF32 = 0x7fc5a5a5u;  // quiet NaNs with payloads no kernel produces
constexpr uint16_t kGuardBF16 = 0x7fc5u;

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = f32_to_bf16(v[i]);
  return r;
}

std::vector<float> guarded_f32(size_t n) {
  std::vector<float> v(n + kGuard, 0.f);
  for (size_t i = n; i < v.size(); ++i) std::memcpy(&v[i], &kGuardF32, sizeof(float));
  return v;
}

std::vector<uint16_t> guarded_bf16(size_t n) {
  std::vector<uint16_t> v(n + kGuard, 0);
  for (size_t i = n; i < v.size(); ++i) v[i] = kGuardBF16;
  return v;
}

template <typename T>
void expect_guard_intact(const std::vector<T>& v, size_t n, const std::string& ctx) {
  ASSERT_EQ(v.size(), n + kGuard) << ctx;
  for (size_t i = n; i < v.size(); ++i) {
    const bool ok = sizeof(T) == 4 ? std::memcmp(&v[i], &kGuardF32, 4) == 0 : std::memcmp(&v[i], &kGuardBF16, 2) == 0;
    if (!ok) {
      ADD_FAILURE() << ctx << ": guard element " << i - n << " after the output was overwritten";
      return;
    }
  }
}

// Heads [h0, h0 + nh) of a [T, heads, D] tensor, as a [T, nh, D] tensor.
std::vector<float> slice_heads(const std::vector<float>& x, int64_t T, int64_t heads, int64_t D, int64_t h0,
                               int64_t nh) {
  std::vector<float> r(static_cast<size_t>(T * nh * D));
  for (int64_t t = 0; t < T; ++t)
    std::copy_n(x.begin() + (t * heads + h0) * D, nh * D, r.begin() + t * nh * D);
  return r;
}

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

// ---- the naive bf16 attention (see the header) --------------------------------------------------------------------

struct NaiveOut {
  std::vector<float> out, lse, dq, dk, dv;
};

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

NaiveOut naive_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                         const std::vector<float>& dout, const std::vector<int32_t>& cu, int64_t H, int64_t Hkv,
                         int64_t D) {
  const int64_t n_seqs = static_cast<int64_t>(cu.size()) - 1, T = cu.back(), group = H / Hkv;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  NaiveOut r;
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

// ---- the sweep ----------------------------------------------------------------------------------------------------

struct Shape {
  int64_t H, Hkv, D;
};
void PrintTo(const Shape& s, std::ostream* os) { *os << "H=" << s.H << " Hkv=" << s.Hkv << " D=" << s.D; }
using Lengths = std::vector<int32_t>;
using FlashParam = std::tuple<Shape, Lengths>;

std::string lengths_str(const Lengths& lens) {
  std::string s;
  for (size_t i = 0; i < lens.size(); ++i) s += (i ? "_" : "") + std::to_string(lens[i]);
  return s;
}

// Runs one case: the kernels on the whole problem, the references on the compared kv groups. wgmma: the Hopper
// kernels (attention_forward_wgmma_cuda, run twice for the same bits, and attention_backward_wgmma_cuda).
void check_case(const Shape& sh, const Lengths& lens, bool wgmma = false) {
  const int64_t H = sh.H, Hkv = sh.Hkv, D = sh.D, group = H / Hkv;
  if (!flash_attention_compiled(D))
    GTEST_SKIP() << "head dim " << D << " is not in this build's QWENQ_FLASH_HEAD_DIMS ("
                 << flash_attention_compiled_dims() << ")";
  std::vector<int32_t> cu{0};
  for (int32_t L : lens) cu.push_back(cu.back() + L);
  const int64_t T = cu.back(), n_seqs = static_cast<int64_t>(lens.size());
  const uint64_t seed = 7000 + static_cast<uint64_t>(H * 1009 + Hkv * 101 + D * 7 + T);
  std::ostringstream ctx_os;
  ctx_os << (wgmma ? "wgmma " : "") << "H=" << H << " Hkv=" << Hkv << " D=" << D << " lengths " << lengths_str(lens) << " seed " << seed;
  const std::string ctx = ctx_os.str();

  Rng rng(seed);
  auto normal_bf16 = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& f : x) f = bf16_round(static_cast<float>(rng.normal()));
    return x;
  };
  const std::vector<float> q = normal_bf16(T * H * D), k = normal_bf16(T * Hkv * D), v = normal_bf16(T * Hkv * D),
                           dout = normal_bf16(T * H * D);

  // The kernel, on the whole problem.
  const size_t nq = static_cast<size_t>(T * H * D), nkv = static_cast<size_t>(T * Hkv * D),
               nl = static_cast<size_t>(T * H);
  DeviceBuffer<uint16_t> d_q(to_bf16(q)), d_k(to_bf16(k)), d_v(to_bf16(v)), d_dout(to_bf16(dout));
  DeviceBuffer<uint16_t> d_out(guarded_bf16(nq));
  DeviceBuffer<float> d_lse(guarded_f32(nl)), d_dq(guarded_f32(nq)), d_dk(guarded_f32(nkv)), d_dv(guarded_f32(nkv));
  if (wgmma) {
    attention_forward_wgmma_cuda(d_q.get(), d_k.get(), d_v.get(), cu.data(), n_seqs, H, Hkv, D, d_out.get(),
                                 d_lse.get(), DType::BF16);
  } else {
    attention_forward_cuda(d_q.get(), d_k.get(), d_v.get(), cu.data(), n_seqs, H, Hkv, D, d_out.get(), d_lse.get(),
                           DType::BF16);
  }
  const auto backward = [&] {
    (wgmma ? attention_backward_wgmma_cuda : attention_backward_cuda)(
        d_dout.get(), d_q.get(), d_k.get(), d_v.get(), d_out.get(), d_lse.get(), cu.data(), n_seqs, H, Hkv, D,
        d_dq.get(), d_dk.get(), d_dv.get(), DType::BF16, nullptr);
  };
  backward();
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> out_bits = d_out.download();
  const std::vector<float> lse_k = d_lse.download(), dq_k = d_dq.download(), dk_k = d_dk.download(),
                           dv_k = d_dv.download();
  expect_guard_intact(out_bits, nq, "out " + ctx);
  expect_guard_intact(lse_k, nl, "lse " + ctx);
  expect_guard_intact(dq_k, nq, "dq " + ctx);
  expect_guard_intact(dk_k, nkv, "dk " + ctx);
  expect_guard_intact(dv_k, nkv, "dv " + ctx);
  std::vector<float> out_k(nq);
  for (size_t i = 0; i < nq; ++i) out_k[i] = bf16_to_f32(out_bits[i]);
  if (wgmma) {
    DeviceBuffer<uint16_t> d_out2(guarded_bf16(nq));
    DeviceBuffer<float> d_lse2(guarded_f32(nl));
    attention_forward_wgmma_cuda(d_q.get(), d_k.get(), d_v.get(), cu.data(), n_seqs, H, Hkv, D, d_out2.get(),
                                 d_lse2.get(), DType::BF16);
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(d_out2.download(), out_bits) << "wgmma out not deterministic, " << ctx;
    EXPECT_EQ(0, std::memcmp(d_lse2.download().data(), lse_k.data(), nl * sizeof(float)))
        << "wgmma lse not deterministic, " << ctx;
  }

  // The same backward again: the same bits (no atomics, fixed order).
  backward();
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(0, std::memcmp(d_dq.download().data(), dq_k.data(), nq * sizeof(float))) << "dq not deterministic, " << ctx;
  EXPECT_EQ(0, std::memcmp(d_dk.download().data(), dk_k.data(), nkv * sizeof(float))) << "dk not deterministic, " << ctx;
  EXPECT_EQ(0, std::memcmp(d_dv.download().data(), dv_k.data(), nkv * sizeof(float))) << "dv not deterministic, " << ctx;

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
    const NaiveOut nv = naive_attention(qg, kg, vg, dog, cu, group, 1, D);

    const double mq = max_abs(qg), mk = max_abs(kg), mv = max_abs(vg), mdo = max_abs(dog);
    struct Check {
      const char* name;
      std::vector<float> kernel;
      const std::vector<float>* naive;
      const std::vector<float>* truth;
      double magnitude;
    };
    const Check checks[] = {
        {"out", slice_heads(out_k, T, H, D, h0, group), &nv.out, &out_t, mv},
        {"lse", slice_heads(lse_k, T, H, 1, h0, group), &nv.lse, &lse_t, 1.0 + max_abs(lse_t)},
        {"dq", slice_heads(dq_k, T, H, D, h0, group), &nv.dq, &dq_t, scale * D * mk * mdo * mv},
        {"dk", slice_heads(dk_k, T, Hkv, D, g, 1), &nv.dk, &dk_t, scale * D * mq * mdo * mv},
        {"dv", slice_heads(dv_k, T, Hkv, D, g, 1), &nv.dv, &dv_t, mdo},
    };
    for (const Check& c : checks) {
      const double err_kernel = max_err(c.kernel, *c.truth), err_naive = max_err(*c.naive, *c.truth);
      const double bound = kNaiveFactor * err_naive + kTinyUlps * kU * c.magnitude;
      std::printf("[ flash    ] %s kv group %lld %-3s: kernel err %.3e, naive bf16 err %.3e, bound %.3e (%.2f)\n",
                  ctx.c_str(), static_cast<long long>(g), c.name, err_kernel, err_naive, bound, err_kernel / bound);
      EXPECT_LE(err_kernel, bound) << c.name << " of kv group " << g << ", " << ctx << ": kernel error " << err_kernel
                                   << " > " << kNaiveFactor << " x naive bf16 error " << err_naive << " + tiny";
    }
  }
}

// Two suites of the same check: the short sequences (cheap enough for a compute-sanitizer pass) and the long one.
class FlashAttentionCudaSmall : public ::testing::TestWithParam<FlashParam> {};
class FlashAttentionCudaLong : public ::testing::TestWithParam<FlashParam> {};

TEST_P(FlashAttentionCudaSmall, WithinTwiceTheNaiveBf16Error) {
  QWENQ_REQUIRE_GPU();
  check_case(std::get<0>(GetParam()), std::get<1>(GetParam()));
}

TEST_P(FlashAttentionCudaLong, WithinTwiceTheNaiveBf16Error) {
  QWENQ_REQUIRE_GPU();
  check_case(std::get<0>(GetParam()), std::get<1>(GetParam()));
}

// The Hopper kernels under the same rule (skipped unless the device is sm_90 running the sm_90a build).
class FlashAttentionWgmmaCudaSmall : public ::testing::TestWithParam<FlashParam> {};
class FlashAttentionWgmmaCudaLong : public ::testing::TestWithParam<FlashParam> {};

TEST_P(FlashAttentionWgmmaCudaSmall, WithinTwiceTheNaiveBf16Error) {
  QWENQ_REQUIRE_WGMMA();
  check_case(std::get<0>(GetParam()), std::get<1>(GetParam()), /*wgmma=*/true);
}

TEST_P(FlashAttentionWgmmaCudaLong, WithinTwiceTheNaiveBf16Error) {
  QWENQ_REQUIRE_WGMMA();
  check_case(std::get<0>(GetParam()), std::get<1>(GetParam()), /*wgmma=*/true);
}

std::string flash_name(const ::testing::TestParamInfo<FlashParam>& info) {
  const Shape sh = std::get<0>(info.param);
  return "H" + std::to_string(sh.H) + "_Hkv" + std::to_string(sh.Hkv) + "_D" + std::to_string(sh.D) + "_len" +
         lengths_str(std::get<1>(info.param));
}

// Qwen2.5-0.5B (14/2, D 64), 7B (28/4, D 128), 72B (64/8, D 128) and plain multi-head attention; single rows, a
// short odd length, one full tile, mixed lengths, an empty sequence between lengths around the 64-row tile, and a
// long sequence.
const auto kShapes = ::testing::Values(Shape{14, 2, 64}, Shape{28, 4, 128}, Shape{64, 8, 128}, Shape{4, 4, 64});
INSTANTIATE_TEST_SUITE_P(Sweep, FlashAttentionCudaSmall,
                         ::testing::Combine(kShapes, ::testing::Values(Lengths{1}, Lengths{17}, Lengths{128},
                                                                       Lengths{1, 7, 300}, Lengths{63, 0, 64, 65})),
                         flash_name);
INSTANTIATE_TEST_SUITE_P(Sweep, FlashAttentionCudaLong, ::testing::Combine(kShapes, ::testing::Values(Lengths{2048})),
                         flash_name);
INSTANTIATE_TEST_SUITE_P(Sweep, FlashAttentionWgmmaCudaSmall,
                         ::testing::Combine(kShapes, ::testing::Values(Lengths{1}, Lengths{17}, Lengths{128},
                                                                       Lengths{1, 7, 300}, Lengths{63, 0, 64, 65})),
                         flash_name);
INSTANTIATE_TEST_SUITE_P(Sweep, FlashAttentionWgmmaCudaLong,
                         ::testing::Combine(kShapes, ::testing::Values(Lengths{2048})), flash_name);

// ---- argument errors ------------------------------------------------------------------------------------------------

// The Hopper kernels check what the mma.sync ones check, with their own names; and refuse a device or build
// without sm_90a code.
TEST(FlashAttentionCudaErrors, WgmmaKernelsNameThemselves) {
  QWENQ_REQUIRE_GPU();
  DeviceBuffer<uint16_t> x(4 * 4 * 128);
  DeviceBuffer<float> f(4 * 4 * 128);
  void* p = x.get();
  float* fp = f.get();
  const std::vector<int32_t> cu{0, 4};
  expect_error([&] { attention_forward_wgmma_cuda(p, p, p, cu.data(), 1, 4, 2, 96, p, fp, DType::BF16); },
               {"attention_forward_wgmma_cuda", "head dim D=96 is not compiled (this build has"});
  expect_error([&] { attention_forward_wgmma_cuda(p, p, p, cu.data(), 1, 4, 2, 64, p, fp, DType::F32); },
               {"attention_forward_wgmma_cuda", "dtype F32 is not supported (BF16 only)"});
  expect_error(
      [&] { attention_backward_wgmma_cuda(p, p, p, p, p, nullptr, cu.data(), 1, 4, 2, 64, fp, fp, fp, DType::BF16); },
      {"attention_backward_wgmma_cuda", "null lse"});
  if (!cuda_wgmma_supported()) {
    expect_error([&] { attention_forward_wgmma_cuda(p, p, p, cu.data(), 1, 4, 2, 64, p, fp, DType::BF16); },
                 {"attention_forward_wgmma_cuda", "needs an sm_90 GPU (H100/H200)"});
    expect_error(
        [&] { attention_backward_wgmma_cuda(p, p, p, p, p, fp, cu.data(), 1, 4, 2, 64, fp, fp, fp, DType::BF16); },
        {"attention_backward_wgmma_cuda", "needs an sm_90 GPU (H100/H200)"});
  }
}

TEST(FlashAttentionCudaErrors, BadArgumentsNameTheValues) {
  QWENQ_REQUIRE_GPU();
  DeviceBuffer<uint16_t> x(4 * 4 * 128);
  DeviceBuffer<float> f(4 * 4 * 128);
  void* p = x.get();
  float* fp = f.get();
  const std::vector<int32_t> cu{0, 4};
  expect_error([&] { attention_forward_cuda(p, p, p, cu.data(), 1, 4, 2, 96, p, fp, DType::BF16); },
               {"attention_forward_cuda", "head dim D=96 is not compiled (this build has"});
  expect_error([&] { attention_backward_cuda(p, p, p, p, p, fp, cu.data(), 1, 4, 2, 32, fp, fp, fp, DType::BF16); },
               {"attention_backward_cuda", "head dim D=32"});
  expect_error([&] { attention_forward_cuda(p, p, p, cu.data(), 1, 6, 4, 64, p, fp, DType::BF16); },
               {"query heads H=6 must be a multiple of kv heads Hkv=4"});
  expect_error([&] { attention_backward_cuda(p, p, p, p, p, fp, cu.data(), 1, 14, 4, 64, fp, fp, fp, DType::BF16); },
               {"attention_backward_cuda", "H=14 must be a multiple of kv heads Hkv=4"});
  // cu_seqlens define T: they must start at 0 and never decrease (a decreasing entry would end the rows before a
  // sequence that was already counted).
  const std::vector<int32_t> not_from_zero{1, 4}, decreasing{0, 5, 3};
  expect_error([&] { attention_forward_cuda(p, p, p, not_from_zero.data(), 1, 4, 2, 64, p, fp, DType::BF16); },
               {"cu_seqlens[0] must be 0, got 1"});
  expect_error(
      [&] { attention_backward_cuda(p, p, p, p, p, fp, decreasing.data(), 2, 4, 2, 64, fp, fp, fp, DType::BF16); },
      {"attention_backward_cuda", "cu_seqlens must be non-decreasing, got 5 then 3 at sequence 1"});
  expect_error([&] { attention_forward_cuda(p, p, p, cu.data(), 1, 4, 2, 64, p, fp, DType::F32); },
               {"dtype F32 is not supported (BF16 only)"});
  expect_error([&] { attention_forward_cuda(p, static_cast<uint16_t*>(p) + 1, p, cu.data(), 1, 4, 2, 64, p, fp,
                                            DType::BF16); },
               {"k must be 16-byte aligned"});
  expect_error([&] { attention_backward_cuda(p, p, p, p, p, nullptr, cu.data(), 1, 4, 2, 64, fp, fp, fp, DType::BF16); },
               {"null lse"});
  // Nothing is queued by refused calls; an empty problem is a no-op.
  const std::vector<int32_t> empty{0, 0};
  attention_forward_cuda(nullptr, nullptr, nullptr, empty.data(), 1, 4, 2, 64, nullptr, nullptr, DType::BF16);
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace qwenq
