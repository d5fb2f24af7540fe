// The caching allocator's policy and bookkeeping (kernels/device_allocator.h has the rules and the numbers).
// No CUDA here: the device is reached only through the DeviceMemoryBackend.
#include "kernels/device_allocator.h"

#include <algorithm>
#include <sstream>
#include <vector>

#include "core/progress.h"

namespace qwenq {

const char* memory_tag_name(MemoryTag tag) {
  switch (tag) {
    case MemoryTag::Weights: return "weights";
    case MemoryTag::Adapter: return "adapter";
    case MemoryTag::Gradients: return "gradients";
    case MemoryTag::Optimizer: return "optimizer";
    case MemoryTag::Activations: return "activations";
    case MemoryTag::Logits: return "logits";
    case MemoryTag::Workspace: return "workspace";
  }
  return "?";
}

void DeviceAllocation::reset() noexcept {
  if (p_ == nullptr) return;
  owner_->give_back(p_);
  owner_ = nullptr;
  p_ = nullptr;
  bytes_ = 0;
  block_ = 0;
}

DeviceAllocator::DeviceAllocator(std::unique_ptr<DeviceMemoryBackend> backend) : backend_(std::move(backend)) {
  QWENQ_CHECK(backend_ != nullptr, "DeviceAllocator: no backend");
}

DeviceAllocator::~DeviceAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached(nullptr);
}

size_t DeviceAllocator::round_size(size_t bytes) {
  const size_t g = bytes <= kSmallRequestBytes ? kSmallGranularity : kLargeGranularity;
  return (bytes + g - 1) / g * g;
}

bool DeviceAllocator::reusable(size_t block_bytes, size_t rounded_request) {
  return block_bytes >= rounded_request &&
         block_bytes - rounded_request <= std::min(rounded_request, kMaxReuseWasteBytes);
}

void DeviceAllocator::note_peaks() {
  st_.peak_allocated = std::max(st_.peak_allocated, st_.allocated);
  st_.peak_reserved = std::max(st_.peak_reserved, st_.reserved);
}

void* DeviceAllocator::take_from_cache(size_t rounded, CudaStream stream, size_t* block) {
  auto c = cache_.find(stream);
  if (c == cache_.end()) return nullptr;
  auto it = c->second.lower_bound(CacheKey{rounded, 0});  // the smallest block >= R, lowest address first
  if (it == c->second.end() || !reusable(it->first, rounded)) return nullptr;
  *block = it->first;
  void* p = reinterpret_cast<void*>(it->second);
  c->second.erase(it);
  if (c->second.empty()) cache_.erase(c);
  return p;
}

DeviceAllocation DeviceAllocator::allocate(size_t bytes, CudaStream stream, MemoryTag tag, const std::string& what) {
  DeviceAllocation h;
  if (bytes == 0) return h;
  QWENQ_CHECK(bytes <= (SIZE_MAX >> 2), "DeviceAllocator: " << bytes << " bytes requested for " << what);
  const size_t rounded = round_size(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  size_t block = rounded;
  void* p = take_from_cache(rounded, stream, &block);
  if (p != nullptr) {
    ++st_.cache_hits;
    st_.cached -= block;
    --st_.cached_blocks;
  } else {
    block = rounded;
    p = backend_->allocate(block);
    ++st_.backend_allocations;
    if (p == nullptr) {
      ++st_.oom_retries;
      release_cached(nullptr);
      backend_->release_unused();
      p = backend_->allocate(block);
      ++st_.backend_allocations;
    }
    if (p == nullptr) {
      ++st_.oom_failures;
      throw oom_error_locked(bytes, tag, what);
    }
    st_.reserved += block;
  }
  st_.allocated += block;
  st_.requested += bytes;
  st_.tag_bytes[static_cast<int>(tag)] += block;
  ++st_.live_allocations;
  note_peaks();
  live_.emplace(p, Live{block, bytes, stream, tag, what});
  h.owner_ = this;
  h.p_ = p;
  h.bytes_ = bytes;
  h.block_ = block;
  h.stream_ = stream;
  h.tag_ = tag;
  return h;
}

void DeviceAllocator::give_back(void* p) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  if (it == live_.end()) return;  // not ours: cannot happen through DeviceAllocation
  const Live& l = it->second;
  cache_[l.stream].insert(CacheKey{l.block, reinterpret_cast<uintptr_t>(p)});
  st_.allocated -= l.block;
  st_.requested -= l.bytes;
  st_.tag_bytes[static_cast<int>(l.tag)] -= l.block;
  st_.cached += l.block;
  --st_.live_allocations;
  ++st_.cached_blocks;
  live_.erase(it);
}

void DeviceAllocator::release_cached(const CudaStream* only) noexcept {
  bool any = false;
  for (const auto& [s, blocks] : cache_) any = any || ((only == nullptr || s == *only) && !blocks.empty());
  if (!any) return;
  backend_->synchronize();  // a block's last user may still be queued
  for (auto c = cache_.begin(); c != cache_.end();) {
    if (only != nullptr && c->first != *only) {
      ++c;
      continue;
    }
    for (const CacheKey& k : c->second) {
      backend_->release(reinterpret_cast<void*>(k.second));
      ++st_.backend_releases;
      st_.reserved -= k.first;
      st_.cached -= k.first;
      --st_.cached_blocks;
    }
    c = cache_.erase(c);
  }
}

void DeviceAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached(nullptr);
  backend_->release_unused();
}

void DeviceAllocator::release_stream(CudaStream stream) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached(&stream);
}

DeviceAllocatorStats DeviceAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return st_;
}

void DeviceAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  st_.peak_allocated = st_.allocated;
  st_.peak_reserved = st_.reserved;
}

bool DeviceAllocator::device_memory(size_t* free_bytes, size_t* total_bytes) const {
  std::lock_guard<std::mutex> lock(mu_);
  return backend_->memory_info(free_bytes, total_bytes);
}

std::string DeviceAllocator::device_name() const { return backend_->name(); }

OutOfMemoryError DeviceAllocator::out_of_memory_error(size_t bytes, MemoryTag tag, const std::string& what) const {
  std::lock_guard<std::mutex> lock(mu_);
  return oom_error_locked(bytes, tag, what);
}

namespace {

const char* hint_for(MemoryTag tag) {
  switch (tag) {
    case MemoryTag::Weights:
      return "the model's weights do not fit: use a 4-bit base (qwen-quant gptq / awq / nf4) or a smaller model";
    case MemoryTag::Adapter:
    case MemoryTag::Gradients:
    case MemoryTag::Optimizer:
      return "the adapter, its gradients and AdamW's m and v grow with r and the targets: lower --lora-r or adapt "
             "fewer Linears";
    case MemoryTag::Activations:
    case MemoryTag::Logits:
      return "activations grow with the tokens per step: lower --seq-len or --batch-size (eval: --seq-len or "
             "--batch)";
    case MemoryTag::Workspace: break;
  }
  return "lower --seq-len or --batch-size, or free the GPU of other processes";
}

}  // namespace

OutOfMemoryError DeviceAllocator::oom_error_locked(size_t bytes, MemoryTag tag, const std::string& what) const {
  OutOfMemoryFacts f;
  f.requested = bytes;
  f.tag = tag;
  f.what = what;
  f.stats = st_;
  std::ostringstream os;
  os << "out of memory on " << backend_->name() << ": cannot allocate " << format_bytes(bytes) << " (" << bytes
     << " bytes) for " << what << " [" << memory_tag_name(tag) << "]";
  size_t free_b = 0, total_b = 0;
  const bool known = backend_->memory_info(&free_b, &total_b);
  f.device_known = known;
  f.device_free = known ? free_b : 0;
  f.device_total = known ? total_b : 0;
  if (known) os << "; the device reports " << format_bytes(free_b) << " free of " << format_bytes(total_b);
  else os << "; the device's free memory is unknown";
  os << "; this allocator holds " << format_bytes(st_.reserved) << " (allocated " << format_bytes(st_.allocated)
     << " in " << st_.live_allocations << " buffers, " << format_bytes(st_.cached) << " cached)";
  if (known && total_b > free_b + st_.reserved) {
    os << ", the rest of the device (CUDA context, kernel scratch, other processes) "
       << format_bytes(total_b - free_b - st_.reserved);
  }
  os << "; live by tag:";
  bool any = false;
  for (int t = 0; t < kNumMemoryTags; ++t) {
    if (st_.tag_bytes[t] == 0) continue;
    os << (any ? ", " : " ") << memory_tag_name(static_cast<MemoryTag>(t)) << " " << format_bytes(st_.tag_bytes[t]);
    any = true;
  }
  if (!any) os << " none";
  if (!live_.empty()) {
    std::vector<const Live*> big;
    for (const auto& [p, l] : live_) big.push_back(&l);
    const size_t n = std::min<size_t>(3, big.size());
    std::partial_sort(big.begin(), big.begin() + static_cast<std::ptrdiff_t>(n), big.end(),
                      [](const Live* a, const Live* b) { return a->block > b->block; });
    os << "; largest:";
    for (size_t i = 0; i < n; ++i) os << (i ? ", " : " ") << big[i]->what << " " << format_bytes(big[i]->block);
  }
  os << ". Hint: " << hint_for(tag) << "; `qwen-qlora plan` shows what a training run needs";
  return OutOfMemoryError(os.str(), std::move(f));
}

}  // namespace qwenq
