// A caching device allocator: every long-lived device buffer of the GPU model and trainer (weights, adapters,
// gradients, AdamW state, activations, logits) is taken from it, so that a buffer freed and asked for again
// (a larger batch, a temporary [T, V] logits array) costs no cudaMalloc/cudaFree, and so that running out of
// memory ends in one message that says what was asked for and where the memory went.
//
// The policy is plain host C++ behind a three-call backend (raw allocate / release / memory info, plus a
// synchronize before anything goes back), so the CPU tests drive it with a fake device of a given capacity;
// the CUDA backend (cudaMalloc / cudaFree / cudaMemGetInfo, kernels/device_allocator_cuda.cu) is one of them.
//
// POLICY (the numbers are the k* constants below)
//   rounding    a request of n > 0 bytes takes a block of R = round(n) bytes:
//                 n <= 1 MiB (kSmallRequestBytes): n rounded up to a multiple of 512 B (kSmallGranularity)
//                 n >  1 MiB:                      n rounded up to a multiple of 2 MiB (kLargeGranularity)
//               Blocks are never split or merged: each backend allocation is one block of exactly R bytes, so
//               every pointer keeps the backend's alignment (cudaMalloc: 256 B, what the 16-byte vector
//               loads of the kernels need).
//               n = 0 allocates nothing (an empty handle, as DeviceMemory(0)).
//   streams     every block belongs to the stream it was allocated on. A freed block goes to that stream's
//               cache and is reused only by a later request on the same stream: work queued on a stream runs
//               in order, so the new owner's work starts after the old owner's has finished. A request on
//               another stream never takes it (it would need an event; nothing here needs that). A buffer
//               used on a second stream must be freed only once that stream's work on it is done.
//   reuse       best fit among the stream's cached blocks: the smallest block B >= R (equal sizes: the lowest
//               address), used only if its waste B − R <= min(R, 64 MiB) (kMaxReuseWasteBytes): at most 2x
//               the request and never more than 64 MiB idle inside a block. Otherwise a new block comes
//               from the backend.
//   release     empty_cache(): synchronize, then every cached block goes back to the backend (and the
//               backend drops what it keeps itself, e.g. the stream-ordered pool of kernel scratch).
//               release_stream(s): the same for stream s's cached blocks (a stream about to be destroyed).
//   failure     when the backend refuses a block: empty_cache() (every stream), then one retry; when that
//               fails too, OutOfMemoryError with the request (description, tag, bytes), what the backend
//               reports free/total, allocated/reserved, the live bytes per tag, the largest live buffers
//               and a hint. A failed request leaves the cache released and nothing else changed.
//   statistics  allocated = Σ block bytes of live allocations (R, or the reused block's B); requested = Σ n of
//               them; reserved = Σ bytes of every block held from the backend (allocated + cached); peaks of allocated and reserved since the
//               start or reset_peak(); counts of backend allocations / releases, cache hits, retries after
//               a release, failures; allocated bytes per tag.
//
// Every allocation carries a MemoryTag and a human description ("QwenModelCuda: tensor 'model.layers.3.mlp.
// down_proj.weight' [896, 4864] BF16"); the handle, DeviceAllocation, is move-only and returns its block to the
// cache when destroyed or reset. Thread-safe (one mutex). The allocator must outlive its allocations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "core/error.h"
#include "kernels/cuda_check.h"

namespace qwenq {

constexpr size_t kSmallRequestBytes = size_t{1} << 20;  // 1 MiB: up to here, 512 B granularity
constexpr size_t kSmallGranularity = 512;
constexpr size_t kLargeGranularity = size_t{2} << 20;   // 2 MiB
constexpr size_t kMaxReuseWasteBytes = size_t{64} << 20;

// What a buffer is for: the categories of `qwen-qlora plan` (trainer/memory_plan.h), logits apart.
enum class MemoryTag : int { Weights, Adapter, Gradients, Optimizer, Activations, Logits, Workspace };
constexpr int kNumMemoryTags = 7;
const char* memory_tag_name(MemoryTag tag);  // "weights", "adapter", ...

struct DeviceAllocatorStats {
  uint64_t allocated = 0;  // Σ block bytes of live allocations
  uint64_t requested = 0;  // Σ requested bytes of live allocations
  uint64_t reserved = 0;   // Σ block bytes held from the backend (allocated + cached)
  uint64_t cached = 0;     // reserved − allocated
  uint64_t peak_allocated = 0, peak_reserved = 0;
  int64_t live_allocations = 0, cached_blocks = 0;
  int64_t backend_allocations = 0, backend_releases = 0;
  int64_t cache_hits = 0;   // requests served from the cache
  int64_t oom_retries = 0;  // backend refusals followed by empty_cache() and a retry
  int64_t oom_failures = 0; // requests that ended in OutOfMemoryError
  uint64_t tag_bytes[kNumMemoryTags] = {};  // allocated, per MemoryTag
  uint64_t bytes_of(MemoryTag t) const { return tag_bytes[static_cast<int>(t)]; }
};

// What an out-of-memory failure knew, for callers that add to the message (the trainer appends its plan).
struct OutOfMemoryFacts {
  size_t requested = 0;  // bytes asked for
  MemoryTag tag = MemoryTag::Workspace;
  std::string what;
  bool device_known = false;  // the backend answered memory_info
  uint64_t device_free = 0, device_total = 0;
  DeviceAllocatorStats stats;  // the allocator's state when the request failed (the cache already released)
};

// Thrown when the device has no room for a request even after the cache was released.
class OutOfMemoryError : public Error {
 public:
  OutOfMemoryError(const std::string& message, OutOfMemoryFacts facts) : Error(message), facts_(std::move(facts)) {}
  const OutOfMemoryFacts& facts() const { return facts_; }

 private:
  OutOfMemoryFacts facts_;
};

// The raw device memory under the allocator.
class DeviceMemoryBackend {
 public:
  virtual ~DeviceMemoryBackend() = default;
  // `bytes` > 0. Returns nullptr when the device is out of memory; throws qwenq::Error on any other failure.
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p) noexcept = 0;
  // The device's free and total bytes as the driver reports them (every process); false when unknown.
  virtual bool memory_info(size_t* free_bytes, size_t* total_bytes) = 0;
  // Returns when no queued work can still touch any block (called before blocks go back to the backend).
  virtual void synchronize() noexcept = 0;
  // Returns memory the backend keeps on its own beyond the allocator's blocks (called by empty_cache).
  virtual void release_unused() noexcept {}
  // The device in messages: "cuda:0".
  virtual std::string name() const = 0;
};


class DeviceAllocator;

// One allocation (RAII, move-only): its block returns to the allocator's cache on destruction or reset().
// The accessors match DeviceMemory's (kernels/cuda_check.h).
class DeviceAllocation {
 public:
  DeviceAllocation() = default;
  ~DeviceAllocation() { reset(); }
  DeviceAllocation(DeviceAllocation&& other) noexcept { take(other); }
  DeviceAllocation& operator=(DeviceAllocation&& other) noexcept {
    if (this != &other) {
      reset();
      take(other);
    }
    return *this;
  }
  DeviceAllocation(const DeviceAllocation&) = delete;
  DeviceAllocation& operator=(const DeviceAllocation&) = delete;

  void* get() const { return p_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }  // as requested
  size_t block_bytes() const { return block_; }  // as held (rounded)
  CudaStream stream() const { return stream_; }
  MemoryTag tag() const { return tag_; }
  explicit operator bool() const { return p_ != nullptr; }
  // Returns the block to the cache now (no-op when empty).
  void reset() noexcept;

 private:
  friend class DeviceAllocator;
  void take(DeviceAllocation& o) noexcept {
    owner_ = std::exchange(o.owner_, nullptr);
    p_ = std::exchange(o.p_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    block_ = std::exchange(o.block_, 0);
    stream_ = o.stream_;
    tag_ = o.tag_;
  }
  DeviceAllocator* owner_ = nullptr;
  void* p_ = nullptr;
  size_t bytes_ = 0, block_ = 0;
  CudaStream stream_ = nullptr;
  MemoryTag tag_ = MemoryTag::Workspace;
};

class DeviceAllocator {
 public:
  explicit DeviceAllocator(std::unique_ptr<DeviceMemoryBackend> backend);
  // Releases the cached blocks. Live allocations are left to the backend's owner (a bug in the caller).
  ~DeviceAllocator();
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  // `bytes` for `what` (a description for messages), used by work on `stream`. Throws OutOfMemoryError.
  DeviceAllocation allocate(size_t bytes, CudaStream stream, MemoryTag tag, const std::string& what);

  void empty_cache();
  void release_stream(CudaStream stream) noexcept;

  DeviceAllocatorStats stats() const;
  void reset_peak();  // peaks := current values
  // The backend's view of the device (every process); false when unknown.
  bool device_memory(size_t* free_bytes, size_t* total_bytes) const;
  std::string device_name() const;

  // The OutOfMemoryError (message and facts) for a refused request of `bytes` (also used by DeviceMemory, whose
  // stream-ordered scratch shares the device).
  OutOfMemoryError out_of_memory_error(size_t bytes, MemoryTag tag, const std::string& what) const;

  // The policy's arithmetic (see the top of this file).
  static size_t round_size(size_t bytes);
  static bool reusable(size_t block_bytes, size_t rounded_request);

 private:
  friend class DeviceAllocation;
  struct Live {
    size_t block = 0, bytes = 0;
    CudaStream stream = nullptr;
    MemoryTag tag = MemoryTag::Workspace;
    std::string what;
  };
  using CacheKey = std::pair<size_t, uintptr_t>;  // (block bytes, address): best fit, then lowest address

  void give_back(void* p) noexcept;
  void* take_from_cache(size_t rounded, CudaStream stream, size_t* block);  // nullptr: none fits
  void release_cached(const CudaStream* only) noexcept;       // under mu_; only == nullptr: every stream
  OutOfMemoryError oom_error_locked(size_t bytes, MemoryTag tag, const std::string& what) const;
  void note_peaks();

  std::unique_ptr<DeviceMemoryBackend> backend_;
  mutable std::mutex mu_;
  std::map<CudaStream, std::set<CacheKey>> cache_;
  std::map<void*, Live> live_;
  DeviceAllocatorStats st_;
};

#ifdef QWENQ_HAVE_CUDA
// The process's allocator for the CUDA device current at its first use (kernels/device_allocator_cuda.cu;
// the project runs on one GPU). Never destroyed: the driver takes the memory back at exit.
DeviceAllocator& cuda_device_allocator();
// cuda_device_allocator().release_stream(stream) for a destructor: never throws (a broken context is reported
// by the call that broke it).
void cuda_release_stream(CudaStream stream) noexcept;

// A CUDA stream owned for an object's lifetime (the GPU models keep one each): created by the constructor
// (throws naming the CUDA error); the destructor hands the allocator's blocks cached for it back, then destroys
// it. Declare it before the allocations that free on it, so that it is destroyed after them.
class OwnedCudaStream {
 public:
  OwnedCudaStream();
  ~OwnedCudaStream();
  OwnedCudaStream(const OwnedCudaStream&) = delete;
  OwnedCudaStream& operator=(const OwnedCudaStream&) = delete;
  CudaStream get() const { return s_; }

 private:
  CudaStream s_ = nullptr;
};
#endif

}  // namespace qwenq
