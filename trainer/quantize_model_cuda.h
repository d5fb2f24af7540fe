// The GPU step of quantize_model (QuantizeOptions::device Cuda, `qwen-quant rtn|nf4|fp4 --device cuda`): each
// Linear's stored weight (F32/BF16/F16 straight from the memory map) is copied to the device, converted and padded
// there (weight_to_f32_cuda), quantized (rtn_quantize_cuda or nf4_quantize_blocks_cuda, quant/quantize_step.h) and
// the results come back for quantize_model's CPU code to pack and write: RTN codes [K, N] + grid, packed by
// pack_int_linear; NF4/FP4 packed codes + absmax, double-quantized by nf4_from_blocks. The bytes written are the
// CPU path's, exactly.
//
// Overlap: while the GPU quantizes Linear i, a helper thread copies Linear i+1 (reading its pages from the map,
// then dropping them) into the other of two upload buffers on a second stream; Linear i+1's kernels start once
// that copy has finished (the thread's future is waited on). Meanwhile quantize_model packs and writes Linear i-1
// on its own helper thread (its host half), so neither the GPU nor the upload waits for the host's packing. Device
// buffers come from the caching allocator (tag weights for the uploads, workspace for the rest), grown to the
// largest Linear; the host results are fresh buffers per Linear, handed to quantize_model's helper by move.
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <cstdint>
#include <future>
#include <memory>

#include "core/safetensors.h"
#include "kernels/device_allocator.h"
#include "quant/grid.h"
#include "trainer/quantize_model.h"

namespace qwenq {

class QuantizeModelCuda {
 public:
  explicit QuantizeModelCuda(const QuantizeOptions& o);
  ~QuantizeModelCuda();
  QuantizeModelCuda(const QuantizeModelCuda&) = delete;
  QuantizeModelCuda& operator=(const QuantizeModelCuda&) = delete;

  // RTN of `t` ([N0, K0] as stored) padded to [N, K] into host buffers sized as rtn_quantize_ref's. `next` (may be
  // null): the Linear quantized after this one, whose upload starts now. The options' bits, group size and sym.
  void rtn(const TensorView& t, const TensorView* next, int64_t N, int64_t K, GridRule rule, float* scale,
           uint8_t* zero, uint8_t* codes);
  // The first NF4/FP4 level of `t` padded to [N, K]: packed [ceil(N·K/2)], absmax [ceil(N·K/blocksize)] (host).
  void nf4(const TensorView& t, const TensorView* next, int64_t N, int64_t K, uint8_t* packed, float* absmax);

 private:
  // Waits for t's upload (starting it first if it was not prefetched), starts next's, converts t to W_ [N, K].
  void stage(const TensorView& t, const TensorView* next, int64_t N, int64_t K);
  void start_upload(const TensorView& t);
  DeviceAllocation& sized(DeviceAllocation& a, size_t bytes, CudaStream s, MemoryTag tag, const char* what);

  QuantizeOptions o_;
  int device_ = 0;                       // the current device at construction, made current in the helper thread
  OwnedCudaStream compute_, upload_;     // before the allocations that free on them
  DeviceAllocation raw_[2];  // stored weights (upload stream)
  const void* raw_src_[2] = {nullptr, nullptr};
  int next_slot_ = 0;
  std::future<void> pending_;  // the upload in flight, into raw_[pending_slot_]
  int pending_slot_ = -1;
  DeviceAllocation W_, scale_, zero_, codes_;  // compute stream
};

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
