// kernels/moe_combine.h: the CUDA twin against the CPU twin, bit for bit (both are the same chain of fused
// multiply-adds), over tokens 1 .. 2048 and one slice past the grid's 65535-row limit, widths from 1 to Qwen MoE
// hidden sizes (2048: Qwen3-30B-A3B and Qwen1.5-MoE; 3584: Qwen2-57B-A14B; 4096: Qwen3-235B-A22B), k 1..8, with and
// without the shared expert; the refusal of a row index outside the experts' rows, with the ref's message.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/rng.h"
#include "kernels/cuda_check.cuh"
#include "kernels/moe_combine.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;

TEST(MoeCombineCuda, MatchesTheTwinBitForBit) {
  QWENQ_REQUIRE_GPU();
  struct Case {
    int64_t T, C, k;
  };
  const Case cases[] = {{1, 1, 1},      {3, 7, 2},      {37, 64, 2},   {37, 2048, 8}, {512, 2048, 8},
                        {129, 3584, 8}, {64, 4096, 8},  {2048, 896, 4}, {70000, 8, 1}};
  for (const Case& cs : cases) {
    for (bool shared : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "T " << cs.T << " C " << cs.C << " k " << cs.k << " shared " << shared);
      const int64_t R = cs.T * cs.k;
      const std::vector<float> y = test::normal_vector(R * cs.C, 3 + cs.C), s = test::normal_vector(cs.T * cs.C, 4);
      std::vector<int32_t> rows(static_cast<size_t>(R));
      std::vector<float> w(static_cast<size_t>(R)), sw(static_cast<size_t>(cs.T));
      Rng rng(5 + cs.T);
      for (int64_t i = 0; i < R; ++i) {
        rows[i] = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(R));
        w[i] = static_cast<float>(rng.uniform());
      }
      for (float& x : sw) x = static_cast<float>(rng.uniform());
      std::vector<float> want(static_cast<size_t>(cs.T * cs.C));
      moe_combine_ref(y.data(), R, cs.C, rows.data(), w.data(), cs.T, cs.k, shared ? s.data() : nullptr,
                      shared ? sw.data() : nullptr, want.data());
      DeviceBuffer<float> dy(y), ds(s), dw(w), dsw(sw), dout(want.size());
      DeviceBuffer<int32_t> drows(rows);
      moe_combine_cuda(dy.get(), R, cs.C, drows.get(), dw.get(), cs.T, cs.k, shared ? ds.get() : nullptr,
                       shared ? dsw.get() : nullptr, dout.get());
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> got = dout.download();
      EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0);
      DeviceBuffer<float> dout2(want.size());  // the rows checked on the host copy: the same bits
      moe_combine_cuda(dy.get(), R, cs.C, drows.get(), dw.get(), cs.T, cs.k, shared ? ds.get() : nullptr,
                       shared ? dsw.get() : nullptr, dout2.get(), nullptr, rows.data());
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> got2 = dout2.download();
      EXPECT_EQ(std::memcmp(got2.data(), want.data(), want.size() * sizeof(float)), 0) << "host copy of the rows";
    }
  }
}

TEST(MoeCombineCuda, RefusesRowsOutsideTheExpertsOutput) {
  QWENQ_REQUIRE_GPU();
  DeviceBuffer<float> y(std::vector<float>(6, 1.f)), w(std::vector<float>(4, 0.5f)), out(6);
  DeviceBuffer<int32_t> rows(std::vector<int32_t>{0, 1, 2, 3});
  test::expect_error([&] { moe_combine_cuda(y.get(), 3, 2, rows.get(), w.get(), 2, 2, nullptr, nullptr, out.get()); },
                     {"moe_combine_cuda", "row 3 of choice 1 of token 1", "the experts' 3 rows"});
  // The caller's host copy is what is checked (here bad on the host only).
  DeviceBuffer<int32_t> good(std::vector<int32_t>{0, 1, 2, 2});
  const std::vector<int32_t> bad = {0, 1, 2, 3};
  test::expect_error(
      [&] {
        moe_combine_cuda(y.get(), 3, 2, good.get(), w.get(), 2, 2, nullptr, nullptr, out.get(), nullptr, bad.data());
      },
      {"moe_combine_cuda", "row 3 of choice 1 of token 1"});
  moe_combine_cuda(nullptr, 0, 2, nullptr, nullptr, 0, 2, nullptr, nullptr, nullptr);  // no tokens: no launch
}

}  // namespace
}  // namespace qwenq
