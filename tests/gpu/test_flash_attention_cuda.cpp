// attention_forward_cuda / attention_backward_cuda (kernels/flash_attention.cu) and the Hopper kernels
// attention_forward_wgmma_cuda / attention_backward_wgmma_cuda (kernels/flash_attention_wgmma.cu) against the fp32
// CPU reference under FlashAttention's tolerance rule (tests/support/flash_rule.h: at most twice the error of a naive bf16
// implementation against the fp32 reference, plus a tiny term), on seeded bf16 inputs q, k, v, dout (N(0, 1)).
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
#include "tests/support/flash_rule.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using test::AttentionResult;
using test::DeviceBuffer;
using test::expect_within_flash_rule;
using test::expect_error;

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
  const int64_t H = sh.H, Hkv = sh.Hkv, D = sh.D;
  if (!flash_attention_compiled(D))
    GTEST_SKIP() << "head dim " << D << " is not in this build's QWENQ_FLASH_HEAD_DIMS ("
                 << flash_attention_compiled_dims() << ")";
  const std::vector<int32_t> cu = test::cu_seqlens_of(lens);
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

  const AttentionResult got{std::move(out_k), lse_k, dq_k, dk_k, dv_k};
  expect_within_flash_rule(got, q, k, v, dout, cu, H, Hkv, D, "flash", ctx);
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
