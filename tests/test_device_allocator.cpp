// The caching device allocator (kernels/device_allocator.h) on a fake device of a given capacity: the rounding,
// the per-stream cache and its best-fit and waste rules, the statistics and peaks, empty_cache and
// release_stream, the retry after releasing the cache, the out-of-memory message, the RAII handle, and seeded
// random allocate/free sequences checked against an independent model of the bookkeeping.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/progress.h"
#include "kernels/device_allocator.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

constexpr size_t KiB = 1024, MiB = size_t{1} << 20;

// What the fake device saw; shared with the test because the allocator owns the backend.
struct FakeState {
  uint64_t capacity = 0;
  uint64_t other = 0;  // bytes held by "other processes": not available, not ours
  uint64_t outstanding = 0;
  std::map<uintptr_t, size_t> segments;  // address -> bytes of every allocation not yet released
  int64_t allocs = 0, refused = 0, releases = 0, syncs = 0, trims = 0;
  uintptr_t next = 0x100000;
};

class FakeDevice final : public DeviceMemoryBackend {
 public:
  explicit FakeDevice(std::shared_ptr<FakeState> s) : s_(std::move(s)) {}
  void* allocate(size_t bytes) override {
    ++s_->allocs;
    if (s_->outstanding + s_->other + bytes > s_->capacity) {
      ++s_->refused;
      return nullptr;
    }
    const uintptr_t p = s_->next;
    s_->next += bytes + 4096;  // fake addresses with gaps, never dereferenced
    s_->segments[p] = bytes;
    s_->outstanding += bytes;
    return reinterpret_cast<void*>(p);
  }
  void release(void* p) noexcept override {
    auto it = s_->segments.find(reinterpret_cast<uintptr_t>(p));
    if (it == s_->segments.end()) {
      ADD_FAILURE() << "release of an address the fake device never gave out";
      return;
    }
    s_->outstanding -= it->second;
    s_->segments.erase(it);
    ++s_->releases;
  }
  bool memory_info(size_t* free_bytes, size_t* total_bytes) override {
    *free_bytes = s_->capacity - s_->outstanding - s_->other;
    *total_bytes = s_->capacity;
    return true;
  }
  void synchronize() noexcept override { ++s_->syncs; }
  void release_unused() noexcept override { ++s_->trims; }
  std::string name() const override { return "fake:0"; }

 private:
  std::shared_ptr<FakeState> s_;
};

struct Fixture {
  std::shared_ptr<FakeState> dev = std::make_shared<FakeState>();
  std::unique_ptr<DeviceAllocator> alloc;
  explicit Fixture(uint64_t capacity, uint64_t other = 0) {
    dev->capacity = capacity;
    dev->other = other;
    alloc = std::make_unique<DeviceAllocator>(std::make_unique<FakeDevice>(dev));
  }
};

CudaStream stream(int i) { return reinterpret_cast<CudaStream>(static_cast<uintptr_t>(0x1000 * i)); }

TEST(DeviceAllocator, RoundsSmallRequestsTo512BytesAndLargeOnesTo2MiB) {
  EXPECT_EQ(DeviceAllocator::round_size(1), 512u);
  EXPECT_EQ(DeviceAllocator::round_size(512), 512u);
  EXPECT_EQ(DeviceAllocator::round_size(513), 1024u);
  EXPECT_EQ(DeviceAllocator::round_size(MiB), MiB);  // the largest small request
  EXPECT_EQ(DeviceAllocator::round_size(MiB + 1), 2 * MiB);
  EXPECT_EQ(DeviceAllocator::round_size(2 * MiB), 2 * MiB);
  EXPECT_EQ(DeviceAllocator::round_size(2 * MiB + 1), 4 * MiB);
  EXPECT_EQ(DeviceAllocator::round_size(1000 * MiB + 7), 1002 * MiB);
  // The backend is asked for the rounded size; the handle keeps both.
  Fixture f(64 * MiB);
  DeviceAllocation a = f.alloc->allocate(1, stream(1), MemoryTag::Workspace, "one byte");
  EXPECT_EQ(a.bytes(), 1u);
  EXPECT_EQ(a.block_bytes(), 512u);
  DeviceAllocation b = f.alloc->allocate(3 * MiB + 5, stream(1), MemoryTag::Activations, "three MiB");
  EXPECT_EQ(b.block_bytes(), 4 * MiB);
  EXPECT_EQ(f.dev->outstanding, 512 + 4 * MiB);
  // Zero bytes: an empty handle, no backend call.
  DeviceAllocation z = f.alloc->allocate(0, stream(1), MemoryTag::Workspace, "nothing");
  EXPECT_FALSE(z);
  EXPECT_EQ(z.get(), nullptr);
  EXPECT_EQ(f.dev->allocs, 2);
}

TEST(DeviceAllocator, ReusesAFreedBlockOnTheSameStreamOnly) {
  Fixture f(64 * MiB);
  void* p = nullptr;
  {
    DeviceAllocation a = f.alloc->allocate(1000, stream(1), MemoryTag::Activations, "a");
    p = a.get();
  }  // back to stream 1's cache
  EXPECT_EQ(f.alloc->stats().cached, 1024u);
  // Another stream never takes it: a new block.
  DeviceAllocation b = f.alloc->allocate(1000, stream(2), MemoryTag::Activations, "b");
  EXPECT_NE(b.get(), p);
  EXPECT_EQ(f.dev->allocs, 2);
  EXPECT_EQ(f.alloc->stats().cache_hits, 0);
  // The same stream does, for any request that rounds to a size it fits (here 1024 B).
  DeviceAllocation c = f.alloc->allocate(600, stream(1), MemoryTag::Logits, "c");
  EXPECT_EQ(c.get(), p);
  EXPECT_EQ(c.bytes(), 600u);
  EXPECT_EQ(c.block_bytes(), 1024u);
  EXPECT_EQ(f.dev->allocs, 2);
  EXPECT_EQ(f.alloc->stats().cache_hits, 1);
  EXPECT_EQ(f.alloc->stats().cached, 0u);
}

TEST(DeviceAllocator, TakesTheSmallestFittingBlockThenTheLowestAddress) {
  Fixture f(64 * MiB);
  std::map<size_t, void*> at;
  void* first2k = nullptr;
  void* second2k = nullptr;
  {
    DeviceAllocation a = f.alloc->allocate(4096, stream(1), MemoryTag::Activations, "4k");
    DeviceAllocation b = f.alloc->allocate(2048, stream(1), MemoryTag::Activations, "2k");
    DeviceAllocation c = f.alloc->allocate(3072, stream(1), MemoryTag::Activations, "3k");
    DeviceAllocation d = f.alloc->allocate(2048, stream(1), MemoryTag::Activations, "2k again");
    at[4096] = a.get();
    at[3072] = c.get();
    first2k = std::min(b.get(), d.get());
    second2k = std::max(b.get(), d.get());
  }
  ASSERT_EQ(f.alloc->stats().cached_blocks, 4);
  DeviceAllocation x = f.alloc->allocate(2000, stream(1), MemoryTag::Activations, "x");  // R = 2048
  EXPECT_EQ(x.get(), first2k);
  DeviceAllocation y = f.alloc->allocate(1800, stream(1), MemoryTag::Activations, "y");  // R = 2048
  EXPECT_EQ(y.get(), second2k);
  DeviceAllocation z = f.alloc->allocate(2600, stream(1), MemoryTag::Activations, "z");  // R = 3072: not 4096
  EXPECT_EQ(z.get(), at[3072]);
  DeviceAllocation w = f.alloc->allocate(2100, stream(1), MemoryTag::Activations, "w");  // R = 2560: 4096 fits
  EXPECT_EQ(w.get(), at[4096]);
  EXPECT_EQ(w.block_bytes(), 4096u);
  EXPECT_EQ(f.dev->allocs, 4);
  EXPECT_EQ(f.alloc->stats().cache_hits, 4);
}

TEST(DeviceAllocator, BoundsTheWasteOfAReusedBlock) {
  // Waste B − R may be at most min(R, 64 MiB).
  EXPECT_TRUE(DeviceAllocator::reusable(4096, 2048));
  EXPECT_FALSE(DeviceAllocator::reusable(4096, 1536));
  EXPECT_FALSE(DeviceAllocator::reusable(2048, 4096));
  EXPECT_TRUE(DeviceAllocator::reusable(200 * MiB, 136 * MiB));
  EXPECT_FALSE(DeviceAllocator::reusable(200 * MiB, 134 * MiB));
  Fixture f(1024 * MiB);
  void* small = nullptr;
  void* large = nullptr;
  {
    DeviceAllocation a = f.alloc->allocate(4096, stream(1), MemoryTag::Activations, "4k");
    DeviceAllocation b = f.alloc->allocate(200 * MiB, stream(1), MemoryTag::Activations, "200M");
    small = a.get();
    large = b.get();
  }
  DeviceAllocation c = f.alloc->allocate(1024, stream(1), MemoryTag::Activations, "1k");  // 3 KiB idle: refused
  EXPECT_NE(c.get(), small);
  DeviceAllocation d = f.alloc->allocate(130 * MiB, stream(1), MemoryTag::Activations, "130M");  // 70 MiB idle
  EXPECT_NE(d.get(), large);
  EXPECT_NE(d.get(), small);
  EXPECT_EQ(f.dev->allocs, 4);
  DeviceAllocation e = f.alloc->allocate(140 * MiB, stream(1), MemoryTag::Activations, "140M");  // 60 MiB idle
  EXPECT_EQ(e.get(), large);
  DeviceAllocation g = f.alloc->allocate(2048, stream(1), MemoryTag::Activations, "2k");  // 2 KiB idle = R
  EXPECT_EQ(g.get(), small);
  EXPECT_EQ(f.dev->allocs, 4);
}

TEST(DeviceAllocator, CountsBytesPeaksAndTags) {
  Fixture f(64 * MiB);
  DeviceAllocation w = f.alloc->allocate(3 * MiB, stream(1), MemoryTag::Weights, "w");     // 4 MiB block
  DeviceAllocation a = f.alloc->allocate(100, stream(1), MemoryTag::Activations, "a");     // 512 B
  DeviceAllocation o = f.alloc->allocate(5000, stream(2), MemoryTag::Optimizer, "o");      // 5120 B
  DeviceAllocatorStats s = f.alloc->stats();
  EXPECT_EQ(s.allocated, 4 * MiB + 512 + 5120);
  EXPECT_EQ(s.requested, 3 * MiB + 100 + 5000);
  EXPECT_EQ(s.reserved, s.allocated);
  EXPECT_EQ(s.cached, 0u);
  EXPECT_EQ(s.live_allocations, 3);
  EXPECT_EQ(s.bytes_of(MemoryTag::Weights), 4 * MiB);
  EXPECT_EQ(s.bytes_of(MemoryTag::Activations), 512u);
  EXPECT_EQ(s.bytes_of(MemoryTag::Optimizer), 5120u);
  EXPECT_EQ(s.bytes_of(MemoryTag::Adapter), 0u);
  EXPECT_EQ(s.backend_allocations, 3);
  w.reset();
  s = f.alloc->stats();
  EXPECT_EQ(s.allocated, 512u + 5120);
  EXPECT_EQ(s.reserved, 4 * MiB + 512 + 5120);
  EXPECT_EQ(s.cached, 4 * MiB);
  EXPECT_EQ(s.cached_blocks, 1);
  EXPECT_EQ(s.bytes_of(MemoryTag::Weights), 0u);
  EXPECT_EQ(s.peak_allocated, 4 * MiB + 512 + 5120);
  EXPECT_EQ(s.peak_reserved, 4 * MiB + 512 + 5120);
  f.alloc->reset_peak();
  s = f.alloc->stats();
  EXPECT_EQ(s.peak_allocated, 512u + 5120);
  EXPECT_EQ(s.peak_reserved, 4 * MiB + 512 + 5120);  // the cache is still held
  DeviceAllocation l = f.alloc->allocate(4 * MiB, stream(1), MemoryTag::Logits, "l");  // a hit: reserved unchanged
  s = f.alloc->stats();
  EXPECT_EQ(s.cache_hits, 1);
  EXPECT_EQ(s.peak_allocated, 4 * MiB + 512 + 5120);
  EXPECT_EQ(s.peak_reserved, 4 * MiB + 512 + 5120);
  EXPECT_EQ(s.bytes_of(MemoryTag::Logits), 4 * MiB);
}

TEST(DeviceAllocator, EmptyCacheAndReleaseStreamReturnCachedBlocksOnly) {
  Fixture f(64 * MiB);
  DeviceAllocation keep = f.alloc->allocate(1 * MiB, stream(1), MemoryTag::Weights, "keep");
  {
    DeviceAllocation a = f.alloc->allocate(8 * MiB, stream(1), MemoryTag::Activations, "a");
    DeviceAllocation b = f.alloc->allocate(2 * MiB, stream(2), MemoryTag::Activations, "b");
    DeviceAllocation c = f.alloc->allocate(4096, stream(2), MemoryTag::Activations, "c");
  }
  EXPECT_EQ(f.dev->outstanding, 1 * MiB + 8 * MiB + 2 * MiB + 4096);
  // release_stream: stream 2's cache only, after one synchronize.
  f.alloc->release_stream(stream(2));
  EXPECT_EQ(f.dev->syncs, 1);
  EXPECT_EQ(f.dev->releases, 2);
  EXPECT_EQ(f.dev->outstanding, 1 * MiB + 8 * MiB);
  EXPECT_EQ(f.alloc->stats().reserved, 1 * MiB + 8 * MiB);
  f.alloc->release_stream(stream(2));  // nothing cached there: no synchronize
  EXPECT_EQ(f.dev->syncs, 1);
  f.alloc->empty_cache();
  EXPECT_EQ(f.dev->syncs, 2);
  EXPECT_EQ(f.dev->trims, 1);
  EXPECT_EQ(f.dev->releases, 3);
  EXPECT_EQ(f.dev->outstanding, 1 * MiB);  // the live allocation stays
  const DeviceAllocatorStats s = f.alloc->stats();
  EXPECT_EQ(s.reserved, 1 * MiB);
  EXPECT_EQ(s.allocated, 1 * MiB);
  EXPECT_EQ(s.cached, 0u);
  EXPECT_EQ(s.cached_blocks, 0);
  EXPECT_EQ(s.backend_releases, 3);
  keep.reset();
  f.alloc->empty_cache();
  EXPECT_EQ(f.dev->outstanding, 0u);
  EXPECT_TRUE(f.dev->segments.empty());
}

TEST(DeviceAllocator, ReleasesTheCacheAndRetriesWhenTheDeviceIsFull) {
  Fixture f(10 * MiB);
  { DeviceAllocation a = f.alloc->allocate(6 * MiB, stream(1), MemoryTag::Activations, "old batch"); }
  ASSERT_EQ(f.alloc->stats().cached, 6 * MiB);
  // 6 MiB cached on stream 1 + 8 MiB asked on stream 2 > 10 MiB: refused, the cache goes back, the retry works.
  DeviceAllocation b = f.alloc->allocate(8 * MiB, stream(2), MemoryTag::Activations, "new batch");
  ASSERT_TRUE(b);
  EXPECT_EQ(f.dev->refused, 1);
  EXPECT_EQ(f.dev->allocs, 3);
  EXPECT_EQ(f.dev->syncs, 1);
  EXPECT_EQ(f.dev->releases, 1);
  const DeviceAllocatorStats s = f.alloc->stats();
  EXPECT_EQ(s.oom_retries, 1);
  EXPECT_EQ(s.oom_failures, 0);
  EXPECT_EQ(s.reserved, 8 * MiB);
  EXPECT_EQ(s.peak_reserved, 8 * MiB);  // never 14 MiB: the refused request held nothing
  EXPECT_EQ(s.backend_allocations, 3);
}

TEST(DeviceAllocator, OutOfMemoryNamesTheRequestTheDeviceAndTheLiveBytesPerTag) {
  Fixture f(4 * MiB, /*other=*/MiB);
  DeviceAllocation w = f.alloc->allocate(MiB, stream(1), MemoryTag::Weights, "tensor 'model.embed_tokens.weight'");
  DeviceAllocation o = f.alloc->allocate(256 * KiB, stream(1), MemoryTag::Optimizer, "AdamW's m");
  { DeviceAllocation t = f.alloc->allocate(512 * KiB, stream(1), MemoryTag::Activations, "gone"); }  // cached
  const DeviceAllocatorStats before = f.alloc->stats();
  bool thrown = false;
  try {
    f.alloc->allocate(3 * MiB, stream(1), MemoryTag::Activations,
                      "LoraModelCuda: the residual stream [4096, 896] fp32");
  } catch (const OutOfMemoryError& e) {
    thrown = true;
    const std::string m = e.what();
    SCOPED_TRACE(m);
    for (const std::string& part :
         {std::string("out of memory on fake:0: cannot allocate 3.00 MiB (3145728 bytes) for LoraModelCuda: the "
                      "residual stream [4096, 896] fp32 [activations]"),
          std::string("the device reports 1.75 MiB free of 4.00 MiB"),  // 4 − 1 (other) − 1 − 0.25 (ours)
          std::string("this allocator holds 1.25 MiB (allocated 1.25 MiB in 2 buffers, 0 B cached)"),
          std::string("the rest of the device (CUDA context, kernel scratch, other processes) 1.00 MiB"),
          std::string("live by tag: weights 1.00 MiB, optimizer 256.00 KiB"),
          std::string("largest: tensor 'model.embed_tokens.weight' 1.00 MiB, AdamW's m 256.00 KiB"),
          std::string("Hint: activations grow with the tokens per step: lower --seq-len or --batch-size")}) {
      EXPECT_NE(m.find(part), std::string::npos) << "missing: " << part;
    }
    const OutOfMemoryFacts& facts = e.facts();
    EXPECT_EQ(facts.requested, 3 * MiB);
    EXPECT_EQ(facts.tag, MemoryTag::Activations);
    EXPECT_TRUE(facts.device_known);
    EXPECT_EQ(facts.device_total, 4 * MiB);
    EXPECT_EQ(facts.device_free, 4 * MiB - MiB - MiB - 256 * KiB);
    EXPECT_EQ(facts.stats.allocated, MiB + 256 * KiB);
    EXPECT_EQ(facts.stats.bytes_of(MemoryTag::Weights), MiB);
  }
  EXPECT_TRUE(thrown);
  // The cache was released for the retry; nothing else changed, and the allocator still works.
  const DeviceAllocatorStats s = f.alloc->stats();
  EXPECT_EQ(s.allocated, before.allocated);
  EXPECT_EQ(s.live_allocations, before.live_allocations);
  EXPECT_EQ(s.cached, 0u);
  EXPECT_EQ(s.reserved, MiB + 256 * KiB);
  EXPECT_EQ(s.oom_retries, 1);
  EXPECT_EQ(s.oom_failures, 1);
  EXPECT_EQ(f.dev->refused, 2);
  DeviceAllocation ok = f.alloc->allocate(MiB, stream(1), MemoryTag::Activations, "fits");
  EXPECT_TRUE(ok);
  // Each tag has its own hint.
  const std::string wm = f.alloc->out_of_memory_error(10 * MiB, MemoryTag::Weights, "w").what();
  EXPECT_NE(wm.find("use a 4-bit base"), std::string::npos) << wm;
  const std::string am = f.alloc->out_of_memory_error(10 * MiB, MemoryTag::Gradients, "g").what();
  EXPECT_NE(am.find("lower --lora-r"), std::string::npos) << am;
}

TEST(DeviceAllocator, HandlesReturnTheirBlockOnceWhenDestroyedMovedOrReset) {
  Fixture f(64 * MiB);
  DeviceAllocation a = f.alloc->allocate(1000, stream(1), MemoryTag::Adapter, "a");
  void* p = a.get();
  DeviceAllocation b(std::move(a));
  EXPECT_EQ(a.get(), nullptr);  // NOLINT(bugprone-use-after-move): a moved-from handle is empty
  EXPECT_EQ(b.get(), p);
  EXPECT_EQ(b.bytes(), 1000u);
  EXPECT_EQ(b.tag(), MemoryTag::Adapter);
  EXPECT_EQ(b.stream(), stream(1));
  EXPECT_EQ(f.alloc->stats().live_allocations, 1);
  DeviceAllocation c = f.alloc->allocate(2000, stream(1), MemoryTag::Adapter, "c");
  c = std::move(b);  // c's own block goes back, b's moves in
  EXPECT_EQ(c.get(), p);
  EXPECT_EQ(f.alloc->stats().live_allocations, 1);
  EXPECT_EQ(f.alloc->stats().cached_blocks, 1);
  DeviceAllocation& same = c;
  c = std::move(same);  // self-move keeps it
  EXPECT_EQ(c.get(), p);
  c.reset();
  c.reset();  // no-op
  EXPECT_EQ(f.alloc->stats().live_allocations, 0);
  EXPECT_EQ(f.alloc->stats().cached_blocks, 2);
  EXPECT_EQ(f.alloc->stats().allocated, 0u);
  {
    DeviceAllocation d = f.alloc->allocate(100, stream(3), MemoryTag::Logits, "d");
    EXPECT_EQ(f.alloc->stats().live_allocations, 1);
  }
  EXPECT_EQ(f.alloc->stats().live_allocations, 0);
  EXPECT_EQ(f.alloc->stats().cached_blocks, 3);
  // The allocator's destructor returns every cached block.
  f.alloc.reset();
  EXPECT_EQ(f.dev->outstanding, 0u);
  EXPECT_TRUE(f.dev->segments.empty());
}

// An independent model of the policy and its bookkeeping: plain vectors and linear scans.
struct ModelBlock {
  uintptr_t p;
  size_t block;
  CudaStream stream;
};
struct ModelLive {
  uintptr_t p;
  size_t block, bytes;
  CudaStream stream;
  int tag;
};

size_t model_round(size_t n) {
  if (n <= 1048576) return (n + 511) / 512 * 512;
  const size_t g = 2097152;
  return (n + g - 1) / g * g;
}

TEST(DeviceAllocator, RandomSequencesMatchAnIndependentModel) {
  for (uint64_t seed = 1; seed <= 24; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const uint64_t capacity = (seed % 3 == 0 ? 96 : 1024) * MiB;  // small ones run out often
    const size_t large_max = (seed % 2 == 0 ? 200 : 40) * MiB;   // up to 200: the 64 MiB waste cap matters
    Fixture f(capacity);
    std::vector<DeviceAllocation> handles;
    std::vector<ModelLive> live;  // parallel to handles
    std::vector<ModelBlock> cache;
    uint64_t reserved = 0, peak_alloc = 0, peak_res = 0;
    int64_t hits = 0, backend_allocs = 0, backend_releases = 0, retries = 0, failures = 0, syncs = 0;
    const auto allocated = [&] {
      uint64_t a = 0;
      for (const auto& l : live) a += l.block;
      return a;
    };
    const auto release_cache = [&](bool all, CudaStream s) {
      bool any = false;
      for (const auto& c : cache) any = any || all || c.stream == s;
      if (!any) return;
      ++syncs;
      std::vector<ModelBlock> kept;
      for (const auto& c : cache) {
        if (all || c.stream == s) {
          reserved -= c.block;
          ++backend_releases;
        } else {
          kept.push_back(c);
        }
      }
      cache = kept;
    };
    for (int step = 0; step < 400; ++step) {
      const int op = static_cast<int>(rng() % 100);
      if (op < 55) {  // allocate
        const bool large = rng() % 4 == 0;
        const size_t n = large ? MiB + 1 + rng() % large_max : 1 + rng() % (MiB);
        const CudaStream s = stream(1 + static_cast<int>(rng() % 3));
        const int tag = static_cast<int>(rng() % kNumMemoryTags);
        const size_t R = model_round(n);
        int best = -1;
        for (size_t i = 0; i < cache.size(); ++i) {
          const ModelBlock& c = cache[i];
          if (c.stream != s || c.block < R || c.block - R > std::min<size_t>(R, 64 * MiB)) continue;
          if (best < 0 || c.block < cache[best].block || (c.block == cache[best].block && c.p < cache[best].p)) {
            best = static_cast<int>(i);
          }
        }
        bool expect_fail = false;
        size_t block = R;
        uintptr_t expect_p = 0;
        if (best >= 0) {
          block = cache[best].block;
          expect_p = cache[best].p;
          cache.erase(cache.begin() + best);
          ++hits;
        } else {
          ++backend_allocs;
          if (reserved + R > capacity) {
            ++retries;
            release_cache(true, nullptr);
            ++backend_allocs;
            if (reserved + R > capacity) expect_fail = true;
          }
          if (!expect_fail) reserved += R;
        }
        if (expect_fail) {
          ++failures;
          EXPECT_THROW(f.alloc->allocate(n, s, static_cast<MemoryTag>(tag), "random"), OutOfMemoryError);
        } else {
          DeviceAllocation h = f.alloc->allocate(n, s, static_cast<MemoryTag>(tag), "random");
          const uintptr_t p = reinterpret_cast<uintptr_t>(h.get());
          if (best >= 0) {
            EXPECT_EQ(p, expect_p) << "step " << step;
          }
          EXPECT_EQ(h.block_bytes(), block) << "step " << step;
          live.push_back({p, block, n, s, tag});
          handles.push_back(std::move(h));
        }
      } else if (op < 92) {  // free a random live allocation
        if (live.empty()) continue;
        const size_t i = rng() % live.size();
        cache.push_back({live[i].p, live[i].block, live[i].stream});
        handles[i].reset();
        handles.erase(handles.begin() + static_cast<std::ptrdiff_t>(i));
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      } else if (op < 95) {
        release_cache(true, nullptr);
        f.alloc->empty_cache();
      } else if (op < 98) {
        const CudaStream s = stream(1 + static_cast<int>(rng() % 3));
        release_cache(false, s);
        f.alloc->release_stream(s);
      } else {
        f.alloc->reset_peak();
        peak_alloc = allocated();
        peak_res = reserved;
      }
      peak_alloc = std::max(peak_alloc, allocated());
      peak_res = std::max(peak_res, reserved);
      // Everything the allocator reports against the model and the fake device.
      const DeviceAllocatorStats st = f.alloc->stats();
      ASSERT_EQ(st.allocated, allocated()) << "step " << step;
      uint64_t requested = 0, tags[kNumMemoryTags] = {};
      for (const auto& l : live) requested += l.bytes, tags[l.tag] += l.block;
      EXPECT_EQ(st.requested, requested);
      ASSERT_EQ(st.reserved, reserved) << "step " << step;
      EXPECT_EQ(st.cached, reserved - allocated());
      EXPECT_EQ(st.cached_blocks, static_cast<int64_t>(cache.size()));
      EXPECT_EQ(st.live_allocations, static_cast<int64_t>(live.size()));
      EXPECT_EQ(st.peak_allocated, peak_alloc);
      EXPECT_EQ(st.peak_reserved, peak_res);
      EXPECT_EQ(st.cache_hits, hits);
      EXPECT_EQ(st.backend_allocations, backend_allocs);
      EXPECT_EQ(st.backend_releases, backend_releases);
      EXPECT_EQ(st.oom_retries, retries);
      EXPECT_EQ(st.oom_failures, failures);
      for (int t = 0; t < kNumMemoryTags; ++t) EXPECT_EQ(st.tag_bytes[t], tags[t]);
      EXPECT_EQ(f.dev->outstanding, reserved);
      EXPECT_EQ(f.dev->syncs, syncs);
      // Every live and cached block is a distinct segment the device gave out, of the block's size.
      ASSERT_EQ(f.dev->segments.size(), live.size() + cache.size());
      for (const auto& l : live) {
        auto it = f.dev->segments.find(l.p);
        ASSERT_TRUE(it != f.dev->segments.end());
        EXPECT_EQ(it->second, l.block);
      }
      for (const auto& c : cache) {
        auto it = f.dev->segments.find(c.p);
        ASSERT_TRUE(it != f.dev->segments.end());
        EXPECT_EQ(it->second, c.block);
      }
      if (::testing::Test::HasFatalFailure()) return;
    }
    EXPECT_GT(hits, 0);
    if (capacity == 96 * MiB) {
      EXPECT_GT(retries, 0);
    }
  }
}

}  // namespace
}  // namespace qwenq
