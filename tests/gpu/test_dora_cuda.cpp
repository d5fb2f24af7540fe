// kernels/dora.h: the CUDA twins against the CPU twins (tests/test_dora_kernels.cpp holds those to the formulas, to
// trainer/lora_model's DoRA and to the definitions in long double). The elementwise outputs (g, the scaled rows, the
// combined y, dz, dv) bit for bit; the row norms and dm within named bounds, since only the order of their double sums
// differs; both the same bits from two launches (no atomics). Row norms over dense F32/BF16/F16 and Q4 weights (GPTQ,
// GPTQ act-order, AWQ, NF4 with double quantization, FP4, and hand-made layouts of awkward shapes with garbage in
// every pad, which the kernel must never decode), N and K not multiples of 8 or 32, r = 1 .. 130 (past the kernel's
// 64-rank steps) and the Qwen2.5 shapes K, N in {896, 4864, 3584, 18944}; the elementwise kernels over rows 1 .. 70000
// (past the 1024 row strides of their grid) and N 1 .. 18944; each output followed by guard values that must survive.
// The refusals with the ref's messages under the _cuda names (host checks only: they run without a device too).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/cuda_check.cuh"
#include "kernels/dora.h"
#include "kernels/qgemm.h"
#include "tests/gpu/gpu_test.h"
#include "tests/gpu/qgemm_cases.h"
#include "tests/support/dora_cases.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

using test::padded_q4;

using test::DeviceBuffer;

// Row norms: e[j, k] is the same fp32 value in both twins and Σ e² has non-negative terms, so the two double sums
// differ by at most 2K·2⁻⁵³ of Σ (< 1e-11 here) and the norms by one fp32 rounding boundary: at most an ulp, 2⁻²³ of
// n; 2⁻²² leaves room.
constexpr double kNormRelTol = 0x1p-22;
// dm: two double sums of the same exact products in different orders differ by at most rows·2⁻⁵² of Σ|terms|; then
// / n, and the roundings to float of the quotient and of dm's addition (an ulp of each).
constexpr double kSumTolPerRow = 0x1p-52;
constexpr int64_t kGuardCount = 64;
constexpr float kGuard = 12345.5f;

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double ulp_of(float x) {
  const float a = std::fabs(x);
  return static_cast<double>(std::nextafter(a, INFINITY)) - a;
}

// A device buffer of `values` followed by kGuardCount guards; take() checks the guards and returns the values.
class Guarded {
 public:
  explicit Guarded(std::vector<float> values) : n_(values.size()) {
    values.resize(n_ + kGuardCount, kGuard);
    buf_ = std::make_unique<DeviceBuffer<float>>(values);
  }
  float* get() const { return buf_->get(); }
  std::vector<float> take(const char* what) const {
    std::vector<float> all = buf_->download();
    for (int64_t i = 0; i < kGuardCount; ++i) EXPECT_EQ(all[n_ + i], kGuard) << what << ": written past the end";
    all.resize(n_);
    return all;
  }

 private:
  size_t n_;
  std::unique_ptr<DeviceBuffer<float>> buf_;
};

// ---------------------------------------------------------------------------------------------------------------
// Row norms


// A dense weight [N, K] as `dtype` bits, N(0, 0.05²).
std::vector<uint8_t> dense_bytes(int64_t N, int64_t K, DType dtype, uint64_t seed) {
  const std::vector<float> v = test::normal_vector(N * K, seed, 0.05f);
  std::vector<uint8_t> bytes(static_cast<size_t>(N * K) * dtype_size(dtype));
  for (int64_t i = 0; i < N * K; ++i) {
    if (dtype == DType::F32) {
      std::memcpy(bytes.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  return bytes;
}

// The twins' norms of one weight (host W for the ref, device W for CUDA) with seeded A, B; CUDA run twice.
void expect_norms_match(const DoraBaseWeight& host_w, const DoraBaseWeight& dev_w, int64_t N, int64_t K, int64_t r,
                        float s, uint64_t seed) {
  const std::vector<float> A = test::normal_vector(r * K, seed, 0.1f), B = test::normal_vector(N * r, seed + 1, 0.1f);
  std::vector<float> want(static_cast<size_t>(N));
  dora_row_norms_ref(host_w, N, K, A.data(), B.data(), r, s, want.data());
  DeviceBuffer<float> d_A(A), d_B(B);
  Guarded d_n(std::vector<float>(static_cast<size_t>(N), -1.f));
  dora_row_norms_cuda(dev_w, N, K, d_A.get(), d_B.get(), r, s, d_n.get());
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = d_n.take("n");
  int64_t bad = 0;
  for (int64_t j = 0; j < N; ++j) {
    const double tol = kNormRelTol * std::fabs(static_cast<double>(want[j]));
    if (!(std::fabs(static_cast<double>(got[j]) - want[j]) <= tol) && ++bad <= 5)
      ADD_FAILURE() << "row " << j << ": " << got[j] << " vs the ref's " << want[j] << " (tolerance " << tol << ")";
  }
  EXPECT_EQ(bad, 0);
  dora_row_norms_cuda(dev_w, N, K, d_A.get(), d_B.get(), r, s, d_n.get());
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(same_bits(d_n.take("n"), got)) << "the norms changed between two launches";
}

TEST(DoraCuda, RowNormsOfDenseWeightsMatchTheTwin) {
  QWENQ_REQUIRE_GPU();
  struct Case {
    DType dtype;
    int64_t N, K, r;
  };
  std::vector<Case> cases;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (const auto& nkr : std::vector<std::array<int64_t, 3>>{
             {1, 1, 1}, {13, 37, 1}, {33, 70, 8}, {100, 129, 16}, {7, 300, 64}, {40, 200, 65}, {96, 1000, 130},
             {45, 4864, 16}}) {
      cases.push_back({dt, nkr[0], nkr[1], nkr[2]});
    }
  }
  // Qwen2.5 shapes (0.5B: 896 / 4864, 7B: 3584 / 18944), both orientations.
  cases.push_back({DType::F32, 896, 4864, 16});
  cases.push_back({DType::BF16, 4864, 896, 8});
  cases.push_back({DType::BF16, 18944, 3584, 64});
  cases.push_back({DType::F16, 3584, 18944, 32});
  cases.push_back({DType::F32, 896, 896, 64});
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << dtype_name(c.dtype) << " N " << c.N << " K " << c.K << " r " << c.r);
    const std::vector<uint8_t> W = dense_bytes(c.N, c.K, c.dtype, 10 + c.N + c.K);
    DeviceBuffer<uint8_t> d_W(W);
    ASSERT_NO_FATAL_FAILURE(expect_norms_match(DoraBaseWeight{W.data(), c.dtype, nullptr},
                                               DoraBaseWeight{d_W.get(), c.dtype, nullptr}, c.N, c.K, c.r, 0.75f,
                                               20 + c.r));
  }
}

TEST(DoraCuda, RowNormsOfQ4WeightsMatchTheTwin) {
  QWENQ_REQUIRE_GPU();
  using test::qgemm_cases::Src;
  struct FormatCase {
    Src src;
    int64_t N, K, r;
  };
  const FormatCase formats[] = {
      {Src::GptqV1, 24, 128, 8},     {Src::GptqV2ActOrder, 40, 256, 16}, {Src::Awq, 16, 200, 4},
      {Src::Nf4Dq, 9, 128, 16},      {Src::Fp4, 11, 64, 1},              {Src::GptqV1, 4864, 896, 8},
      {Src::GptqV2ActOrder, 18944, 3584, 16}, {Src::Awq, 3584, 18944, 32}, {Src::Nf4Dq, 896, 4864, 64},
      {Src::Fp4, 896, 896, 1}};
  for (const FormatCase& c : formats) {
    SCOPED_TRACE(::testing::Message() << test::qgemm_cases::src_name(c.src) << " N " << c.N << " K " << c.K << " r " << c.r);
    ASSERT_TRUE(test::qgemm_cases::holds(c.src, c.K, c.N));
    const Q4Layout q = test::qgemm_cases::make_layout(c.src, c.K, c.N, 30 + c.N);
    const Q4DeviceWeight dq(q, "dora test weight");
    const Q4View host_view = q.view();
    ASSERT_NO_FATAL_FAILURE(expect_norms_match(DoraBaseWeight{nullptr, DType::F32, &host_view},
                                               DoraBaseWeight{nullptr, DType::F32, &dq.view()}, c.N, c.K, c.r, 2.f,
                                               40 + c.K));
  }
  struct PaddedCase {
    Q4Kind kind;
    int64_t N, K, group, r;
    bool act_order;
  };
  const PaddedCase padded[] = {{Q4Kind::Int, 1, 1, 8, 1, false},      {Q4Kind::Int, 13, 37, 16, 8, true},
                               {Q4Kind::Nf4, 7, 45, 24, 16, true},    {Q4Kind::Fp4, 30, 130, 136, 65, false},
                               {Q4Kind::Int, 50, 70, 8, 64, false},   {Q4Kind::Int, 99, 1001, 32, 130, true},
                               {Q4Kind::Nf4, 1001, 63, 64, 8, false}};
  for (const PaddedCase& c : padded) {
    SCOPED_TRACE(::testing::Message() << "hand-made " << q4_kind_name(c.kind) << " N " << c.N << " K " << c.K
                                      << " group " << c.group << " r " << c.r << (c.act_order ? " act-order" : ""));
    const Q4Layout q = padded_q4(c.kind, c.N, c.K, c.group, c.act_order, 50 + c.N);
    const Q4DeviceWeight dq(q, "dora test weight");
    const Q4View host_view = q.view();
    ASSERT_NO_FATAL_FAILURE(expect_norms_match(DoraBaseWeight{nullptr, DType::F32, &host_view},
                                               DoraBaseWeight{nullptr, DType::F32, &dq.view()}, c.N, c.K, c.r, 0.5f,
                                               60 + c.K));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Gain, scale rows, combine, split grad

TEST(DoraCuda, ElementwiseMatchTheTwinBitForBit) {
  QWENQ_REQUIRE_GPU();
  struct Case {
    int64_t rows, N;
  };
  const Case cases[] = {{1, 1},     {1, 13},     {7, 96},     {7, 257},   {300, 13}, {300, 896},
                        {2048, 896}, {300, 4864}, {64, 18944}, {70000, 3}, {1, 18944}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " N " << c.N);
    const int64_t rows = c.rows, N = c.N, total = rows * N;
    std::vector<float> n = test::normal_vector(N, 70 + N), m = test::normal_vector(N, 71 + N, 0.3f);
    for (int64_t j = 0; j < N; ++j) {
      n[j] = std::fabs(n[j]) + 0.5f;
      m[j] = n[j] * (1.f + m[j]);
    }
    const std::vector<float> z = test::normal_vector(total, 72 + rows), v = test::normal_vector(total, 73 + rows, 0.2f),
                             y0 = test::normal_vector(total, 74 + rows), dy = test::normal_vector(total, 75 + rows),
                             dm0 = test::normal_vector(N, 76 + N);
    DeviceBuffer<float> d_m(m), d_n(n), d_z(z), d_v(v), d_dy(dy);

    // gain
    std::vector<float> g(static_cast<size_t>(N));
    dora_gain_ref(m.data(), n.data(), N, g.data());
    Guarded d_g(std::vector<float>(static_cast<size_t>(N), 0.f));
    dora_gain_cuda(d_m.get(), d_n.get(), N, d_g.get());
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(same_bits(d_g.take("g"), g)) << "gain";

    // scale rows, without a bias and with one of each dtype
    DeviceBuffer<float> d_gain(g);
    for (int bias_kind = 0; bias_kind < 4; ++bias_kind) {
      const DType dtype = bias_kind == 2 ? DType::BF16 : bias_kind == 3 ? DType::F16 : DType::F32;
      const std::vector<float> b = test::normal_vector(N, 77 + bias_kind);
      std::vector<uint8_t> bias(static_cast<size_t>(N) * dtype_size(dtype));
      for (int64_t j = 0; j < N; ++j) {
        if (dtype == DType::F32) {
          std::memcpy(bias.data() + 4 * j, &b[j], 4);
        } else {
          const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(b[j]) : f32_to_f16(b[j]);
          std::memcpy(bias.data() + 2 * j, &h, 2);
        }
      }
      DeviceBuffer<uint8_t> d_bias(bias);
      std::vector<float> want = y0;
      dora_scale_rows_ref(want.data(), rows, N, g.data(), bias_kind ? bias.data() : nullptr, dtype);
      Guarded d_y(y0);
      dora_scale_rows_cuda(d_y.get(), rows, N, d_gain.get(), bias_kind ? d_bias.get() : nullptr, dtype);
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(same_bits(d_y.take("y"), want)) << "scale rows, bias " << (bias_kind ? dtype_name(dtype) : "none");
    }

    // combine
    {
      std::vector<float> want = y0;
      dora_combine_ref(m.data(), n.data(), z.data(), v.data(), rows, N, want.data());
      Guarded d_y(y0);
      dora_combine_cuda(d_m.get(), d_n.get(), d_z.get(), d_v.get(), rows, N, d_y.get());
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(same_bits(d_y.take("y"), want)) << "combine";
    }

    // split grad
    std::vector<float> dm = dm0, dz(static_cast<size_t>(total)), dv(static_cast<size_t>(total));
    dora_split_grad_ref(m.data(), n.data(), z.data(), v.data(), dy.data(), rows, N, dm.data(), dz.data(), dv.data());
    Guarded d_dm(dm0), d_dz(std::vector<float>(static_cast<size_t>(total), -7.f)),
        d_dv(std::vector<float>(static_cast<size_t>(total), -7.f));
    dora_split_grad_cuda(d_m.get(), d_n.get(), d_z.get(), d_v.get(), d_dy.get(), rows, N, d_dm.get(), d_dz.get(),
                         d_dv.get());
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(same_bits(d_dz.take("dz"), dz)) << "dz";
    EXPECT_TRUE(same_bits(d_dv.take("dv"), dv)) << "dv";
    const std::vector<float> got_dm = d_dm.take("dm");
    int64_t bad = 0;
    for (int64_t j = 0; j < N; ++j) {
      double mass = 0, sum = 0;
      for (int64_t t = 0; t < rows; ++t) {
        const double term = static_cast<double>(dy[t * N + j]) * (z[t * N + j] + v[t * N + j]);
        mass += std::fabs(term);
        sum += term;
      }
      const float q = static_cast<float>(sum / n[j]);
      const double tol = rows * kSumTolPerRow * mass / n[j] + ulp_of(q) + std::max(ulp_of(dm[j]), ulp_of(got_dm[j]));
      if (!(std::fabs(static_cast<double>(got_dm[j]) - dm[j]) <= tol) && ++bad <= 5)
        ADD_FAILURE() << "dm " << j << ": " << got_dm[j] << " vs the ref's " << dm[j] << " (tolerance " << tol << ")";
    }
    EXPECT_EQ(bad, 0);
    // Run to run: the same bits (fixed-order sums). dm accumulates, so from dm0 again.
    d_dm = Guarded(dm0);
    dora_split_grad_cuda(d_m.get(), d_n.get(), d_z.get(), d_v.get(), d_dy.get(), rows, N, d_dm.get(), d_dz.get(),
                         d_dv.get());
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(same_bits(d_dm.take("dm"), got_dm)) << "dm changed between two launches";
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Refusals: host-side checks before anything touches the device (so no GPU is needed; the pointers are never read).

TEST(DoraCuda, RefusesBadArguments) {
  const int64_t N = 12, K = 16, r = 2;
  std::vector<float> host(1024, 1.f);
  float* p = host.data();
  const DoraBaseWeight dense{p, DType::F32, nullptr};
  const char* fn = "dora_row_norms_cuda";
  test::expect_error([&] { dora_row_norms_cuda(dense, 0, K, p, p, r, 1.f, p); }, {fn, "bad shape", "N=0"});
  test::expect_error([&] { dora_row_norms_cuda(dense, N, K, p, p, 0, 1.f, p); }, {fn, "bad shape", "r=0"});
  test::expect_error([&] { dora_row_norms_cuda(dense, N, K, nullptr, p, r, 1.f, p); }, {fn, "null pointer (A)"});
  test::expect_error([&] { dora_row_norms_cuda(dense, N, K, p, p, r, 1.f, nullptr); }, {fn, "null pointer (n)"});
  test::expect_error([&] { dora_row_norms_cuda(DoraBaseWeight{p, DType::BOOL, nullptr}, N, K, p, p, r, 1.f, p); },
                     {fn, "weight dtype", dtype_name(DType::BOOL), "not supported"});
  const Q4Layout q = padded_q4(Q4Kind::Int, N, K, 8, false, 1);
  const Q4View view = q.view();
  test::expect_error([&] { dora_row_norms_cuda(DoraBaseWeight{nullptr, DType::F32, &view}, N, K + 8, p, p, r, 1.f, p); },
                     {fn, "Q4 weight is [N=12, K=16]", "[N=12, K=24]"});
  Q4View no_meta = view;
  no_meta.meta = nullptr;
  test::expect_error([&] { dora_row_norms_cuda(DoraBaseWeight{nullptr, DType::F32, &no_meta}, N, K, p, p, r, 1.f, p); },
                     {fn, "null qweight or meta"});
  test::expect_error([&] { dora_gain_cuda(p, p, -1, p); }, {"dora_gain_cuda", "N=-1"});
  test::expect_error([&] { dora_gain_cuda(nullptr, p, N, p); }, {"dora_gain_cuda", "null pointer (m)"});
  test::expect_error([&] { dora_scale_rows_cuda(p, 0, N, p, nullptr, DType::F32); }, {"dora_scale_rows_cuda", "rows=0"});
  test::expect_error([&] { dora_scale_rows_cuda(p, 3, N, p, p, DType::I8); },
                     {"dora_scale_rows_cuda", "bias dtype", dtype_name(DType::I8)});
  test::expect_error([&] { dora_combine_cuda(p, nullptr, p, p, 3, N, p); }, {"dora_combine_cuda", "null pointer (n)"});
  test::expect_error([&] { dora_combine_cuda(p, p, p, p, 3, 0, p); }, {"dora_combine_cuda", "N=0"});
  test::expect_error([&] { dora_split_grad_cuda(p, p, p, p, p, 3, N, nullptr, p, p); },
                     {"dora_split_grad_cuda", "null pointer (dm)"});
  test::expect_error([&] { dora_split_grad_cuda(p, p, p, p, p, -3, N, p, p, p); },
                     {"dora_split_grad_cuda", "rows=-3"});
}

}  // namespace
}  // namespace qwenq
