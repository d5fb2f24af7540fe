// Page-locked host memory for small host -> device copies that must be truly asynchronous: a copy from pageable
// memory is staged by the driver (or, on HMM/ATS systems, may read the host buffer in place when it runs), a copy
// from pinned memory is a DMA the stream runs in order. The owner writes the buffer only when the copies queued
// from it have run (after a synchronization of their stream), and frees it only then: the destructor does not wait.
// For .cpp/.cu files of the CUDA build only.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda_check.cuh"

namespace qwenq {

template <typename T>
class PinnedHost {
 public:
  PinnedHost() = default;
  ~PinnedHost() { release(); }
  PinnedHost(const PinnedHost&) = delete;
  PinnedHost& operator=(const PinnedHost&) = delete;

  // At least n elements (the contents are not kept when it grows). Throws naming the call when pinning fails.
  void reserve(int64_t n) {
    if (n <= n_) return;
    release();
    void* p = nullptr;
    QWENQ_CUDA_CHECK(cudaMallocHost(&p, static_cast<size_t>(n) * sizeof(T)));
    p_ = static_cast<T*>(p);
    n_ = n;
  }
  T* data() const { return p_; }

 private:
  void release() noexcept {
    if (p_ != nullptr) cudaFreeHost(p_);  // nothing to report from a destructor
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  int64_t n_ = 0;
};

}  // namespace qwenq
