// dropout_forward_cuda / dropout_backward_cuda (kernels/dropout.cu) against their CPU twins, bit for bit: the
// mask is the same integer hash on both sides, the forward one fp32 product and the backward one fma, so there
// is no tolerance. Sweep: awkward n (1, 3, 7, 17, 4097, 4·k + 3, past the grid-stride limit) and real Qwen2.5
// LoRA inputs [T, K] (K = 896, 3584, 4864, 18944, 29568 with T from 1 to 512), arrays 16-byte aligned and not
// (offset 1: the scalar path), p from 0 to 0.9, guard elements after every output, in place; the argument errors.
// uniform_noise_add_cuda (NEFTune's embedding noise) over the same sweep, bit for bit with uniform_noise_add_ref.
// Inputs carry NaN, ±inf and -0, which must land where the ref puts them. Every test skips without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/cuda_check.cuh"
#include "kernels/dropout.h"
#include "kernels/dropout_mask.h"
#include "tests/gpu/gpu_test.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;

constexpr size_t kGuard = 32;
constexpr uint32_t kGuardBits = 0x7fc5a5a5u;  // a quiet NaN with a payload no kernel produces

float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// `off` zeros, then v, then kGuard guard values.
std::vector<float> placed(const std::vector<float>& v, size_t off) {
  std::vector<float> out(off, 0.f);
  out.insert(out.end(), v.begin(), v.end());
  out.insert(out.end(), kGuard, bits_to_float(kGuardBits));
  return out;
}

// got[off .. off + n) bit-identical to want, and the guards after it untouched. A NaN only has to face a NaN:
// x86 passes an input NaN's payload through (and makes 0·inf the negative default NaN), the GPU always writes
// its canonical 0x7fffffff.
void expect_bits(const std::vector<float>& got, size_t off, const std::vector<float>& want, const std::string& ctx) {
  const size_t n = want.size();
  ASSERT_EQ(got.size(), off + n + kGuard) << ctx;
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t g, w;
    std::memcpy(&g, &got[off + i], 4);
    std::memcpy(&w, &want[i], 4);
    if (g != w && !(std::isnan(got[off + i]) && std::isnan(want[i])) && bad++ < 5) {
      ADD_FAILURE() << ctx << ": element " << i << " is " << got[off + i] << " (0x" << std::hex << g
                    << "), the ref has " << want[i] << " (0x" << w << std::dec << ")";
    }
  }
  EXPECT_EQ(bad, 0u) << ctx << ": " << bad << " of " << n << " elements differ";
  for (size_t i = 0; i < kGuard; ++i) {
    uint32_t b;
    std::memcpy(&b, &got[off + n + i], 4);
    if (b != kGuardBits) {
      ADD_FAILURE() << ctx << ": guard element " << i << " after the output was overwritten";
      return;
    }
  }
}

void sync() { QWENQ_CUDA_CHECK(cudaDeviceSynchronize()); }

using DropParam = std::tuple<int64_t, int64_t, float>;  // n, offset in floats (1: not 16-byte aligned), p

class DropoutCuda : public ::testing::TestWithParam<DropParam> {};

TEST_P(DropoutCuda, BitExactWithRef) {
  QWENQ_REQUIRE_GPU();
  const auto [n64, off64, p] = GetParam();
  const size_t n = static_cast<size_t>(n64), off = static_cast<size_t>(off64);
  const uint64_t seed = 7000 + n * 5 + off;
  const uint64_t key = dropout_key(seed, static_cast<int64_t>(n % 97), static_cast<int>(n % 7));
  const std::string ctx = "n=" + std::to_string(n) + " offset=" + std::to_string(off) + " p=" + std::to_string(p) +
                          " seed " + std::to_string(seed);
  Rng rng(seed);
  std::vector<float> x(n), g(n), dx0(n);
  for (auto& v : x) v = static_cast<float>(rng.normal());
  for (auto& v : g) v = static_cast<float>(rng.normal());
  for (auto& v : dx0) v = static_cast<float>(rng.normal());
  const float special[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(), -0.0f, 3e38f, 1e-40f};
  for (size_t i = 0; i < n; i += 11) x[i] = g[i] = special[(i / 11) % 6];

  std::vector<float> xd_ref(n), dx_ref = dx0;
  dropout_forward_ref(x.data(), n64, p, key, xd_ref.data());
  dropout_backward_ref(g.data(), n64, p, key, dx_ref.data());

  const std::vector<float> zeros(n, 0.f);
  DeviceBuffer<float> d_x(placed(x, off)), d_g(placed(g, off)), d_xd(placed(zeros, off)), d_dx(placed(dx0, off));
  dropout_forward_cuda(d_x.get() + off, n64, p, key, d_xd.get() + off);
  dropout_backward_cuda(d_g.get() + off, n64, p, key, d_dx.get() + off);
  sync();
  expect_bits(d_xd.download(), off, xd_ref, "forward " + ctx);
  expect_bits(d_dx.download(), off, dx_ref, "backward " + ctx);

  // In place, as the ref allows (x_drop over x; dx over dx_drop), on a stream.
  cudaStream_t s = nullptr;
  QWENQ_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  dropout_forward_cuda(d_x.get() + off, n64, p, key, d_x.get() + off, s);
  d_g.upload(placed(g, off));
  dropout_backward_cuda(d_g.get() + off, n64, p, key, d_g.get() + off, s);
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
  QWENQ_CUDA_CHECK(cudaStreamDestroy(s));
  std::vector<float> g2_ref = g;
  dropout_backward_ref(g2_ref.data(), n64, p, key, g2_ref.data());
  expect_bits(d_x.download(), off, xd_ref, "in-place forward " + ctx);
  expect_bits(d_g.download(), off, g2_ref, "in-place backward " + ctx);

  // NEFTune's uniform noise (in place), half-width from p (0: x unchanged), NaN/inf carried as the ref carries them.
  const float half_width = 0.5f * p;
  std::vector<float> noisy_ref = x;
  uniform_noise_add_ref(noisy_ref.data(), n64, half_width, noise_key(seed));
  DeviceBuffer<float> d_n(placed(x, off));
  uniform_noise_add_cuda(d_n.get() + off, n64, half_width, noise_key(seed));
  sync();
  expect_bits(d_n.download(), off, noisy_ref, "uniform noise " + ctx);
}

std::string drop_name(const ::testing::TestParamInfo<DropParam>& info) {
  const auto [n, off, p] = info.param;
  return "n" + std::to_string(n) + "_offset" + std::to_string(off) + "_p" + std::to_string(static_cast<int>(p * 100));
}

INSTANTIATE_TEST_SUITE_P(Awkward, DropoutCuda,
                         ::testing::Combine(::testing::Values<int64_t>(1, 3, 7, 17, 4097, 4 * 1001 + 3,
                                                                       (int64_t{4096} * 256 * 4) + 5),
                                            ::testing::Values<int64_t>(0, 1),
                                            ::testing::Values(0.0f, 0.05f, 0.1f, 0.9f)),
                         drop_name);
// Qwen2.5 LoRA inputs T·K: 0.5B (C 896, I 4864), 7B (C 3584, I 18944), 72B (I 29568); T = 1, 17, 512.
INSTANTIATE_TEST_SUITE_P(QwenShapes, DropoutCuda,
                         ::testing::Combine(::testing::Values<int64_t>(896 * 1, 896 * 512, 4864 * 17, 3584 * 17,
                                                                       18944 * 512, 29568 * 3),
                                            ::testing::Values<int64_t>(0, 1), ::testing::Values(0.1f)),
                         drop_name);

TEST(DropoutCudaErrors, BadArgumentsNameTheValues) {
  QWENQ_REQUIRE_GPU();
  float* p = nullptr;
  const auto message = [](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { dropout_forward_cuda(p, 4, 1.0f, 0, p); })
                .find("dropout_forward_cuda: dropout probability must be in [0, 1), got 1"),
            std::string::npos);
  EXPECT_NE(message([&] { dropout_backward_cuda(p, -1, 0.1f, 0, p); }).find("dropout_backward_cuda: negative size -1"),
            std::string::npos);
  EXPECT_NE(message([&] { dropout_backward_cuda(p, 3, 0.1f, 0, p); }).find("null pointer"), std::string::npos);
  EXPECT_NE(message([&] { uniform_noise_add_cuda(p, 4, -1.0f, 0); })
                .find("uniform_noise_add_cuda: the half-width must be finite and >= 0, got -1"),
            std::string::npos);
  EXPECT_NE(message([&] { uniform_noise_add_cuda(p, 3, 0.1f, 0); }).find("null pointer"), std::string::npos);
  dropout_forward_cuda(nullptr, 0, 0.1f, 0, nullptr);  // n = 0: nothing checked beyond p, nothing launched
  sync();
}

}  // namespace
}  // namespace qwenq
