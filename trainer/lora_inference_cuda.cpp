// LoraInferenceCuda and lora_branch_forward_cuda (trainer/lora_inference_cuda.h): the upload of an adapter's arena
// and the wiring of each adapted Linear to its slice of it.
#ifdef QWENQ_HAVE_CUDA

#include "trainer/lora_inference_cuda.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/dora.h"
#include "kernels/cuda_check.cuh"
#include "lora/lora_linear.h"
#include "trainer/moe_block.h"
#include "trainer/qwen_model_cuda.h"

namespace qwenq {

namespace {

// Linear `t` of a decoder layer (LoraTarget lists them in QwenDeviceLayer's order).
QwenDeviceLinear& linear_of(QwenDeviceLayer& L, LoraTarget t) {
  switch (t) {
    case LoraTarget::QProj: return L.q;
    case LoraTarget::KProj: return L.k;
    case LoraTarget::VProj: return L.v;
    case LoraTarget::OProj: return L.o;
    case LoraTarget::GateProj: return L.gate;
    case LoraTarget::UpProj: return L.up;
    case LoraTarget::DownProj: return L.down;
  }
  QWENQ_FAIL("LoraInferenceCuda: unknown LoRA target " << static_cast<int>(t));
}

// The Linear of arena slot `sl`: a layer's own, or an expert's (moe[layer] must hold the layer's experts).
QwenDeviceLinear& slot_linear(std::vector<QwenDeviceLayer>& layers, const std::vector<QwenDeviceMoe*>& moe,
                              const LoraArenaSlot& sl, const std::string& source) {
  if (sl.expert == kNoExpert) return linear_of(layers[static_cast<size_t>(sl.layer)], sl.target);
  QwenDeviceMoe* M = static_cast<size_t>(sl.layer) < moe.size() ? moe[static_cast<size_t>(sl.layer)] : nullptr;
  const int which = moe_expert_index(sl.target);
  QWENQ_CHECK(M != nullptr && which >= 0 && which < 3 && sl.expert >= -1 &&
                  sl.expert < static_cast<int64_t>(M->experts.size()) && (sl.expert >= 0 || M->shared[0].N > 0),
              source << ": layer " << sl.layer << " has no expert " << sl.expert << " " << lora_target_path(sl.target)
                     << " on the GPU");
  return sl.expert < 0 ? M->shared[static_cast<size_t>(which)]
                       : M->experts[static_cast<size_t>(sl.expert)][static_cast<size_t>(which)];
}

}  // namespace

void lora_branch_forward_cuda(const LoraDeviceBranch& b, const float* x, int64_t T, int64_t K, int64_t N, float* u,
                              float* y, const void* bias, DType bias_dtype, CudaStream stream) {
  if (b.r == 0) return;
  lora_forward_cuda(x, T, K, b.A, b.B, b.r, N, b.s, y, u, stream);
  if (b.g != nullptr) dora_scale_rows_cuda(y, T, N, b.g, bias, bias_dtype, stream);
}

LoraInferenceCuda::LoraInferenceCuda(const LoraInferenceLayout& layout, const std::string& source, CudaStream stream)
    : source_(source), rank_(layout.rank), scaling_(layout.scaling), num_layers_(layout.num_layers),
      slots_(layout.slots), stream_(stream) {
  QWENQ_CHECK(rank_ >= 1 && !slots_.empty() && !layout.arena.empty(),
              source_ << ": the LoRA adapter targets no Linear (r " << rank_ << ")");
  QWENQ_CHECK(layout.gpu_refusal.empty(), source_ << ": " << layout.gpu_refusal << " (use --device cpu)");
  const size_t bytes = layout.arena.size() * sizeof(float);
  arena_ = cuda_device_allocator().allocate(
      bytes, stream, MemoryTag::Adapter,
      "the LoRA adapter " + source_ + " (A and B of " + std::to_string(slots_.size()) + " Linears, r " +
          std::to_string(rank_) + ", fp32)");
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(arena_.get(), layout.arena.data(), bytes, cudaMemcpyHostToDevice, stream));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host arena may go; upload errors surface here
}

void LoraInferenceCuda::attach(std::vector<QwenDeviceLayer>& layers, const std::vector<QwenDeviceMoe*>& moe) {
  QWENQ_CHECK(static_cast<int64_t>(layers.size()) == num_layers_,
              source_ << ": the LoRA adapter has " << num_layers_ << " layers, the model " << layers.size());
  for (const LoraArenaSlot& sl : slots_) {  // every check before any change
    const QwenDeviceLinear& d = slot_linear(layers, moe, sl, source_);
    QWENQ_CHECK(d.N == sl.N && d.K == sl.K,
                source_ << ": layer " << sl.layer << " " << lora_target_path(sl.target)
                        << (sl.expert == kNoExpert ? std::string() : " of expert " + std::to_string(sl.expert))
                        << " is [" << d.N << ", " << d.K << "] on the GPU, the LoRA adapter's is [" << sl.N << ", "
                        << sl.K << "]");
  }
  compute_gains(layers, moe);  // DoRA: from the weights the branches follow (nothing changes on failure)
  for (QwenDeviceLayer& L : layers) {
    for (const LoraTargetInfo& info : kLoraTargets) linear_of(L, info.target).lora = LoraDeviceBranch{};
  }
  for (QwenDeviceMoe* M : moe) {
    if (M == nullptr) continue;
    for (auto& e : M->experts) {
      for (QwenDeviceLinear& d : e) d.lora = LoraDeviceBranch{};
    }
    for (QwenDeviceLinear& d : M->shared) d.lora = LoraDeviceBranch{};
  }
  const float* base = arena_.as<float>();
  for (size_t i = 0; i < slots_.size(); ++i) {
    const LoraArenaSlot& sl = slots_[i];
    LoraDeviceBranch& b = slot_linear(layers, moe, sl, source_).lora;
    b.A = base + sl.a_off;
    b.B = base + sl.b_off;
    b.r = sl.r;
    b.s = scaling_;
    b.g = sl.m_off >= 0 ? gains_.as<float>() + gain_off_[i] : nullptr;
  }
}

// g = m / ‖W + s·B A‖ of every DoRA slot into gains_ (one allocation; the row norms through a scratch [N]), from the
// Linear's weight as uploaded: the dense tensor in its dtype, or the Q4 view the dequant-matmul reads.
void LoraInferenceCuda::compute_gains(std::vector<QwenDeviceLayer>& layers, const std::vector<QwenDeviceMoe*>& moe) {
  gain_off_.assign(slots_.size(), -1);
  int64_t total = 0, widest = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].m_off < 0) continue;
    gain_off_[i] = total;
    total += lora_arena_align_up(slots_[i].N);
    widest = std::max(widest, slots_[i].N);
  }
  if (total == 0) return;
  DeviceAllocation gains = cuda_device_allocator().allocate(
      static_cast<size_t>(total) * sizeof(float), stream_, MemoryTag::Adapter,
      "the DoRA gains m / ||W + s·B A|| of the LoRA adapter " + source_ + " (" + std::to_string(total) + " fp32)");
  DeviceAllocation norms = cuda_device_allocator().allocate(static_cast<size_t>(widest) * sizeof(float), stream_,
                                                            MemoryTag::Workspace, "the DoRA row norms of one Linear");
  const float* base = arena_.as<float>();
  for (size_t i = 0; i < slots_.size(); ++i) {
    const LoraArenaSlot& sl = slots_[i];
    if (sl.m_off < 0) continue;
    dora_row_norms_cuda(dora_base_weight(slot_linear(layers, moe, sl, source_)), sl.N, sl.K, base + sl.a_off,
                        base + sl.b_off, sl.r, scaling_, norms.as<float>(), stream_);
    dora_gain_cuda(base + sl.m_off, norms.as<float>(), sl.N, gains.as<float>() + gain_off_[i], stream_);
  }
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(stream_));  // errors surface here, before any branch points at gains
  gains_ = std::move(gains);
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
