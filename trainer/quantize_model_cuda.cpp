// QuantizeModelCuda (design: trainer/quantize_model_cuda.h): the upload pipeline around quant/quantize_step.h's
// launchers. Slots alternate: Linear i was copied into raw_[s], Linear i+1 goes to raw_[1 - s] while i is
// quantized. raw_[1 - s] was last read by Linear i-1's conversion, which finished before i-1's results came back
// (the launchers wait for the compute stream), so the helper thread may overwrite or regrow it.
#ifdef QWENQ_HAVE_CUDA

#include "trainer/quantize_model_cuda.h"

#include <string>

#include "core/error.h"
#include "core/files.h"
#include "kernels/cuda_check.cuh"
#include "quant/quantize_step.h"

namespace qwenq {

QuantizeModelCuda::QuantizeModelCuda(const QuantizeOptions& o) : o_(o) {
  QWENQ_CUDA_CHECK(cudaGetDevice(&device_));
}

QuantizeModelCuda::~QuantizeModelCuda() {
  if (pending_.valid()) pending_.wait();  // an upload in flight writes raw_: let it finish (its error is moot)
}

DeviceAllocation& QuantizeModelCuda::sized(DeviceAllocation& a, size_t bytes, CudaStream s, MemoryTag tag,
                                           const char* what) {
  if (a.bytes() < bytes) {
    a.reset();
    a = cuda_device_allocator().allocate(bytes, s, tag, std::string("quantize: ") + what);
  }
  return a;
}

void QuantizeModelCuda::start_upload(const TensorView& t) {
  const int slot = next_slot_;
  next_slot_ = 1 - next_slot_;
  raw_src_[slot] = t.data;
  pending_slot_ = slot;
  const void* data = t.data;
  const size_t bytes = t.nbytes();
  pending_ = std::async(std::launch::async, [this, slot, data, bytes] {
    QWENQ_CUDA_CHECK(cudaSetDevice(device_));
    DeviceAllocation& dst = sized(raw_[slot], bytes, upload_.get(), MemoryTag::Weights, "stored Linear weight");
    // From pageable memory (the map), which need not be staged when the call returns: wait for the copy before the
    // pages are dropped and before the compute stream may read dst (the future is waited on first).
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(dst.get(), data, bytes, cudaMemcpyHostToDevice, upload_.get()));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(upload_.get()));
    release_mapped_pages(data, bytes);
  });
}

void QuantizeModelCuda::stage(const TensorView& t, const TensorView* next, int64_t N, int64_t K) {
  QWENQ_CHECK(t.shape.size() == 2, "quantize: a Linear weight of rank " << t.shape.size());
  if (!(pending_.valid() && raw_src_[pending_slot_] == t.data)) {  // not prefetched (the first Linear)
    if (pending_.valid()) pending_.get();
    start_upload(t);
  }
  pending_.get();  // rethrows the upload's error
  const int cur = pending_slot_;
  if (next) start_upload(*next);
  sized(W_, static_cast<size_t>(N * K) * sizeof(float), compute_.get(), MemoryTag::Workspace, "fp32 weight");
  weight_to_f32_cuda(t.dtype, raw_[cur].get(), t.shape[0], t.shape[1], N, K, W_.as<float>(), compute_.get());
}

namespace {
template <typename T>
void download(T* host, const DeviceAllocation& a, int64_t count, CudaStream s) {
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(host, a.get(), static_cast<size_t>(count) * sizeof(T), cudaMemcpyDeviceToHost, s));
}
}  // namespace

void QuantizeModelCuda::rtn(const TensorView& t, const TensorView* next, int64_t N, int64_t K, GridRule rule,
                            float* scale, uint8_t* zero, uint8_t* codes) {
  stage(t, next, N, K);
  const int64_t G = o_.group_size == -1 ? K : o_.group_size, cells = (K + G - 1) / G * N;
  CudaStream s = compute_.get();
  sized(scale_, static_cast<size_t>(cells) * sizeof(float), s, MemoryTag::Workspace, "RTN scales");
  sized(zero_, static_cast<size_t>(cells), s, MemoryTag::Workspace, "RTN zero points");
  sized(codes_, static_cast<size_t>(N * K), s, MemoryTag::Workspace, "RTN codes");
  rtn_quantize_cuda(W_.as<float>(), N, K, o_.bits, o_.group_size, o_.sym, rule, scale_.as<float>(),
                    zero_.as<uint8_t>(), codes_.as<uint8_t>(), s);
  download(scale, scale_, cells, s);
  download(zero, zero_, cells, s);
  download(codes, codes_, N * K, s);
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
}

void QuantizeModelCuda::nf4(const TensorView& t, const TensorView* next, int64_t N, int64_t K, uint8_t* packed,
                            float* absmax) {
  stage(t, next, N, K);
  const int64_t n = N * K, nb = (n + o_.blocksize - 1) / o_.blocksize, bytes = (n + 1) / 2;
  CudaStream s = compute_.get();
  sized(scale_, static_cast<size_t>(nb) * sizeof(float), s, MemoryTag::Workspace, "4-bit absmax");
  sized(codes_, static_cast<size_t>(bytes), s, MemoryTag::Workspace, "4-bit packed codes");
  nf4_quantize_blocks_cuda(W_.as<float>(), n, o_.blocksize, o_.method == QuantizeOptions::Method::Fp4,
                           codes_.as<uint8_t>(), scale_.as<float>(), s);
  download(packed, codes_, bytes, s);
  download(absmax, scale_, nb, s);
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
