// The caching allocator on the real device (kernels/device_allocator_cuda.cu): a block is usable memory (a
// pattern written and read back), it is reused on its stream without a new cudaMalloc, the driver's free memory
// moves by the reserved bytes (cudaMemGetInfo), release_stream gives it back, an impossible request throws
// OutOfMemoryError naming it and leaves no CUDA error behind; the default pool keeps DeviceMemory's freed scratch
// mapped until the allocator trims it; QwenModelCuda's buffers are tagged and all come back
// when it is destroyed. The policy itself is tested on the CPU (tests/test_device_allocator.cpp).
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/device_allocator.h"
#include "tests/gpu/gpu_test.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_model_cuda.h"
#include "trainer/random_model.h"

namespace qwenq {
namespace {

constexpr size_t MiB = size_t{1} << 20;

void ok(cudaError_t e) { ASSERT_EQ(e, cudaSuccess) << cudaGetErrorString(e); }

size_t free_bytes() {
  size_t f = 0, t = 0;
  EXPECT_EQ(cudaMemGetInfo(&f, &t), cudaSuccess);
  return f;
}

TEST(DeviceAllocatorCuda, AllocatesReusesAndReturnsRealMemory) {
  QWENQ_REQUIRE_GPU();
  DeviceAllocator& a = cuda_device_allocator();
  a.empty_cache();  // earlier tests' cached blocks: none may serve the first request below
  cudaStream_t s = nullptr;
  ok(cudaStreamCreate(&s));
  const DeviceAllocatorStats s0 = a.stats();
  const size_t free0 = free_bytes();
  void* p = nullptr;
  const size_t n = 64 * MiB + 3;
  {
    DeviceAllocation x = a.allocate(n, s, MemoryTag::Activations, "allocator smoke test");
    ASSERT_TRUE(x);
    EXPECT_EQ(x.block_bytes(), 66 * MiB);
    ok(cudaMemsetAsync(x.get(), 0x5a, n, s));
    std::vector<uint8_t> back(n);
    ok(cudaMemcpyAsync(back.data(), x.get(), n, cudaMemcpyDeviceToHost, s));
    ok(cudaStreamSynchronize(s));
    EXPECT_EQ(back.front(), 0x5a);
    EXPECT_EQ(back.back(), 0x5a);
    const DeviceAllocatorStats s1 = a.stats();
    EXPECT_EQ(s1.reserved - s0.reserved, 66 * MiB);
    EXPECT_EQ(s1.bytes_of(MemoryTag::Activations) - s0.bytes_of(MemoryTag::Activations), 66 * MiB);
    // The driver saw at least the block leave (its own granularity may round further up).
    const size_t used = free0 - free_bytes();
    EXPECT_GE(used, 66 * MiB);
    EXPECT_LE(used, 66 * MiB + 64 * MiB);
    p = x.get();
  }
  const int64_t allocs = a.stats().backend_allocations;
  DeviceAllocation y = a.allocate(60 * MiB, s, MemoryTag::Logits, "reuse");  // 64 MiB <= 66 MiB, waste 2 MiB
  EXPECT_EQ(y.get(), p);
  EXPECT_EQ(a.stats().backend_allocations, allocs);
  y.reset();
  a.release_stream(s);
  EXPECT_EQ(a.stats().reserved, s0.reserved);
  EXPECT_LE(free0 - std::min(free0, free_bytes()), 8 * MiB);  // the block went back to the driver
  // Far more than the device has: one message, no CUDA error left behind.
  size_t f = 0, total = 0;
  ok(cudaMemGetInfo(&f, &total));
  try {
    a.allocate(2 * total, s, MemoryTag::Weights, "an impossible buffer");
    ADD_FAILURE() << "no OutOfMemoryError";
  } catch (const OutOfMemoryError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of memory on cuda:"), std::string::npos) << m;
    EXPECT_NE(m.find("an impossible buffer [weights]"), std::string::npos) << m;
    EXPECT_NE(m.find("the device reports"), std::string::npos) << m;
    EXPECT_EQ(e.facts().device_total, total);
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  ok(cudaStreamDestroy(s));
}

uint64_t default_pool_reserved() {
  int dev = 0;
  EXPECT_EQ(cudaGetDevice(&dev), cudaSuccess);
  cudaMemPool_t pool = nullptr;
  EXPECT_EQ(cudaDeviceGetDefaultMemPool(&pool, dev), cudaSuccess);
  uint64_t v = 0;
  EXPECT_EQ(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &v), cudaSuccess);
  return v;
}

// DeviceMemory's scratch (the kernels' split-K sums, the dense path's bf16 Ŵ) stays mapped in the default pool
// across synchronizations (kernels/cuda_check.cu: with the driver's default threshold every call after a sync
// mapped new memory), the next allocation of that size maps nothing new, and the caching allocator's trim gives
// it all back.
TEST(DeviceAllocatorCuda, FreedScratchStaysMappedUntilTheAllocatorTrims) {
  QWENQ_REQUIRE_GPU();
  DeviceAllocator& a = cuda_device_allocator();
  a.empty_cache();
  EXPECT_EQ(default_pool_reserved(), 0u);
  { const DeviceMemory m(32 * MiB); }  // freed in stream order on the default stream
  ok(cudaDeviceSynchronize());
  const uint64_t kept = default_pool_reserved();
  EXPECT_GE(kept, 32 * MiB) << "the default pool handed freed scratch back at the synchronization";
  {
    const DeviceMemory m(32 * MiB);
    ok(cudaMemsetAsync(m.get(), 0, 32 * MiB));
  }
  ok(cudaDeviceSynchronize());
  EXPECT_EQ(default_pool_reserved(), kept) << "the same size again mapped new memory";
  a.empty_cache();
  EXPECT_EQ(default_pool_reserved(), 0u) << "empty_cache did not trim the default pool";
}

TEST(DeviceAllocatorCuda, QwenModelCudaTagsItsBuffersAndGivesThemBack) {
  QWENQ_REQUIRE_GPU();
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("qwenq_alloc_" + std::to_string(::getpid()))).string();
  RandomModelOptions o;
  o.out_dir = dir;
  o.dtype = DType::BF16;
  o.seed = 7;
  o.overwrite = true;
  write_random_model(o);
  DeviceAllocator& a = cuda_device_allocator();
  a.empty_cache();
  const DeviceAllocatorStats s0 = a.stats();
  {
    const QwenModel model(dir);
    QwenModelCuda gpu(model);
    const DeviceAllocatorStats s1 = a.stats();
    const uint64_t weights = s1.bytes_of(MemoryTag::Weights) - s0.bytes_of(MemoryTag::Weights);
    EXPECT_GE(weights, static_cast<uint64_t>(gpu.weight_bytes()));
    EXPECT_LE(weights, static_cast<uint64_t>(gpu.weight_bytes()) + 512 * 64 * model.config().num_layers + 8 * MiB);
    const PackedBatch b = PackedBatch::from_sequences({{1, 2, 3, 4, 5, 6, 7, 8}, {9, 10, 11}});
    std::vector<float> nll;
    gpu.next_token_nll(b, &nll);
    const DeviceAllocatorStats s2 = a.stats();
    EXPECT_GT(s2.bytes_of(MemoryTag::Activations), s0.bytes_of(MemoryTag::Activations));
    EXPECT_GT(s2.bytes_of(MemoryTag::Logits), s0.bytes_of(MemoryTag::Logits));
    EXPECT_GE(s2.peak_allocated, s2.allocated);
  }
  // Every buffer came back, and the model's stream's cache went back to the driver with the stream.
  const DeviceAllocatorStats s3 = a.stats();
  EXPECT_EQ(s3.allocated, s0.allocated);
  EXPECT_EQ(s3.reserved, s0.reserved);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qwenq
