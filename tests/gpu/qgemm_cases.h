// The cases of the two Q4 GEMM GPU tests (test_qgemm_cuda.cpp: the decode kernels, test_qgemm_tc_cuda.cpp: the
// tensor-core ones): the five source formats a Q4Layout comes from, which (K, N) each can hold, a seeded synthetic
// layout of each, seeded bf16 activations, the summation-order tolerance both apply, and the guarded device run.
//
// kQgemmGpuSumTol: two orders of the same fp32 sum of L products differ by at most kQgemmGpuSumTol·u·sqrt(L)·Σ|a·w|,
// u = kU = 2^-24 (the roundings behave like a random walk of L steps of at most u·Σ|a·w| each), as in
// tests/test_qgemm_ref.cpp.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/qgemm.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "tests/gpu/gpu_test.h"

namespace qwenq::test::qgemm_cases {

constexpr double kQgemmGpuSumTol = 8.0;  // multiples of u·sqrt(L)·Σ|a·w|
constexpr double kU = 1.0 / 16777216.0;

enum class Src { GptqV1, GptqV2ActOrder, Awq, Nf4Dq, Fp4 };
inline const char* src_name(Src s) {
  switch (s) {
    case Src::GptqV1: return "gptq";
    case Src::GptqV2ActOrder: return "gptq_v2_act_order";
    case Src::Awq: return "awq";
    case Src::Nf4Dq: return "nf4_dq";
    default: return "fp4";
  }
}

// GPTQ needs K % 8 == 0 and N % 8 == 0, AWQ N % 8 == 0; bnb holds any size whose gcd(K, 64) is a multiple of 8.
inline bool holds(Src s, int64_t K, int64_t N) {
  if (s == Src::Nf4Dq || s == Src::Fp4) return K % 8 == 0;
  if (s == Src::Awq) return N % 8 == 0;
  return K % 8 == 0 && N % 8 == 0;
}

// GPTQ groups of 128 (v2: with act-order), AWQ groups of 64, NF4 blocks of 64 with double quantization, FP4 blocks
// of 64; `exact` makes the integer formats' scales powers of two.
inline Q4Layout make_layout(Src s, int64_t K, int64_t N, uint64_t seed, bool exact = false) {
  switch (s) {
    case Src::GptqV1: return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, K, N, 128, false, seed, exact));
    case Src::GptqV2ActOrder:
      return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV2, K, N, 128, true, seed, exact));
    case Src::Awq: return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, K, N, 64, false, seed, exact));
    case Src::Nf4Dq: return q4_from_nf4(q4_synthetic_nf4(N, K, false, 64, true, seed), N, K);
    default: return q4_from_nf4(q4_synthetic_nf4(N, K, true, 64, false, seed), N, K);
  }
}

// n bf16 values from Rng(seed): uniform in [-1, 1), or with `integer` whole numbers in [-4, 4].
inline std::vector<uint16_t> random_bf16(int64_t n, uint64_t seed, bool integer = false) {
  Rng rng(seed);
  std::vector<uint16_t> a(n);
  for (auto& v : a) {
    v = f32_to_bf16(integer ? static_cast<float>(static_cast<int>(rng.below(9)) - 4) : rng.uniform(-1.0f, 1.0f));
  }
  return a;
}

// Linear shape: K = in features, N = out features.
struct KN {
  int64_t K, N;
};

// The device side of a case: fwd(x, y) and bwd(dy, dx) launch the kernels under test on device copies of x [M, K]
// and dy [M, N] (bf16) into y [M, N] and dx [M, K] (fp32), each followed by kGuardCount guard values that must
// survive (a kernel writing past its output fails here). *y and *dx get the outputs without the guards. Call it
// inside ASSERT_NO_FATAL_FAILURE.
template <typename Fwd, typename Bwd>
void run_guarded(const std::vector<uint16_t>& x, const std::vector<uint16_t>& dy, int64_t M, int64_t K, int64_t N,
                 Fwd fwd, Bwd bwd, std::vector<float>* y, std::vector<float>* dx) {
  constexpr float kGuard = 12345.0f;
  constexpr int64_t kGuardCount = 64;
  DeviceBuffer<uint16_t> d_x(x), d_dy(dy);
  DeviceBuffer<float> d_y(std::vector<float>(M * N + kGuardCount, kGuard));
  DeviceBuffer<float> d_dx(std::vector<float>(M * K + kGuardCount, kGuard));
  fwd(d_x.get(), d_y.get());
  bwd(d_dy.get(), d_dx.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  *y = d_y.download();
  *dx = d_dx.download();
  for (int64_t i = 0; i < kGuardCount; ++i) {
    ASSERT_EQ((*y)[M * N + i], kGuard) << "forward wrote past y";
    ASSERT_EQ((*dx)[M * K + i], kGuard) << "transposed wrote past dx";
  }
  y->resize(M * N);
  dx->resize(M * K);
}

}  // namespace qwenq::test::qgemm_cases
