// choose_device: see kernels/device.h. The CUDA query lives in device_cuda.cu, compiled only with the CUDA
// backend; without it every request but "cuda" resolves to the CPU.
#include "kernels/device.h"

#include <string>
#include <utility>

#include "core/env_switch.h"
#include "core/error.h"
#include "kernels/qgemm.h"
#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"
#endif

namespace qwenq {

namespace {

// True and a device description, or false and the reason there is no usable device.
bool cuda_available(std::string* what) {
#ifdef QWENQ_HAVE_CUDA
  return cuda_device_query(what);
#else
  *what = "built without CUDA";
  return false;
#endif
}

// Which 4-bit GEMM and flash attention kernels a GPU runs (kernels/cuda_check.h), appended to the device line: the
// Hopper wgmma ones by default on an sm_90 GPU with this build's sm_90a code, the mma.sync ones with QWENQ_WGMMA=0;
// a QWENQ_WGMMA=0/1 that cannot apply (the CPU; QWENQ_WGMMA=1 on another GPU or build) is said to be ignored.
std::string wgmma_remark(bool cuda) {
  const int sw = env_switch("QWENQ_WGMMA");
  const bool off = sw == 0, on = sw == 1;
  if (!cuda) return off || on ? std::string("; QWENQ_WGMMA=") + (on ? "1" : "0") + " has no effect on the CPU" : "";
  bool supported = false;
#ifdef QWENQ_HAVE_CUDA
  supported = cuda_wgmma_supported();
#endif
  if (!supported) return on ? "; QWENQ_WGMMA=1 ignored: it needs an sm_90 GPU (H100/H200) and a build with the sm_90a target" : "";
  if (off) return "; QWENQ_WGMMA=0: the mma.sync kernels, not the Hopper wgmma ones";
  return on ? "; QWENQ_WGMMA=1: the Hopper wgmma kernels" : "; the Hopper wgmma kernels (QWENQ_WGMMA=0: the mma.sync ones)";
}

// The 4-bit path switches of kernels/qgemm.h the environment sets (0 or 1; the defaults say nothing): what runs
// instead, or that nothing changes on the CPU.
std::string qgemm_remark(bool cuda) {
  const struct {
    const char* name;
    const char* off;  // what "0" means
    const char* on;   // what "1" means
    bool on_applies = true;            // false: "1" changes nothing now, for the reason below
    const char* ignored_why = nullptr;
  } switches[] = {
      {"QWENQ_DECODE_MMA", "the 4-bit decode products on CUDA cores (FMA), not tensor cores",
       "the 4-bit decode product on tensor cores (the default)"},
      {"QWENQ_DECODE_MMA_F32", "the exact (fp32-activation) 4-bit decode product on CUDA cores (the default)",
       "the exact 4-bit decode product on tensor cores, fp32 activations split into three bf16 pieces",
       qgemm_decode_mma_enabled(), "QWENQ_DECODE_MMA=0 turns the tensor-core decode product off"},
      {"QWENQ_QGEMM_DENSE", "the fused 4-bit prefill kernels for every M",
       "the 4-bit prefill products as bf16 W + cuBLASLt for every M > 64"},
      {"QWENQ_QGEMM_OVERLAP", "the dense 4-bit path dequantizes each weight whole (the default)",
       "the dense 4-bit path dequantizes weights of 8M values and up in 4 pieces overlapped with the GEMM"},
      {"QWENQ_LORA_FOLD",
       "the trainer adds its adapters' output to the 4-bit products in a pass of its own (the default)",
       "the trainer folds its adapters into the dense 4-bit products, [x | s·u]·[W | B]ᵀ and [dy | g]·[W ; A] in bf16"},
      {"QWENQ_DECODE_GROUPED", "decode attention with a block per query head (the default)",
       "decode attention with a block per kv head and its query heads (D = 64, 128, 256)"},
      {"QWENQ_DECODE_GRAPH", "decode steps launch their kernels one by one (the default)",
       "each decode step replays one CUDA graph (models without MoE layers)"}};
  std::string r;
  for (const auto& sw : switches) {
    const int v = env_switch(sw.name);
    if (v < 0) continue;
    r += std::string("; ") + sw.name + "=" + (v == 1 ? "1" : "0");
    if (cuda && v == 1 && !sw.on_applies) {
      r += std::string(" ignored: ") + sw.ignored_why;
      continue;
    }
    r += cuda ? std::string(": ") + (v == 0 ? sw.off : sw.on) : std::string(" has no effect on the CPU");
  }
  return r;
}

// The requests --device takes.
void check_device_request(const std::string& request) {
  QWENQ_CHECK(request == "auto" || request == "cpu" || request == "cuda",
              "unknown device '" << request << "' (expected auto, cpu or cuda)");
}

}  // namespace

DeviceChoice choose_device(const std::string& request) {
  check_device_request(request);
  if (request == "cpu") {
    return {Device::Cpu, "device: cpu (requested)" + wgmma_remark(false) + qgemm_remark(false), "", ""};
  }

  std::string what;
  const bool have_cuda = cuda_available(&what);
  if (have_cuda) {
    const std::string remarks = wgmma_remark(true) + qgemm_remark(true);
    return {Device::Cuda, "device: cuda available (" + what + ")" + remarks, what, remarks};
  }
  const std::string& reason = what;
  QWENQ_CHECK(request != "cuda", "--device cuda: CUDA is not available (" << reason << ")");
  return {Device::Cpu, "device: cpu (" + reason + ")" + wgmma_remark(false) + qgemm_remark(false), "", ""};
}

DeviceChoice settle_device(const std::string& request, const DeviceChoice& found, const std::string& what,
                           const std::string& refusal) {
  check_device_request(request);
  if (request == "cpu" || found.device == Device::Cpu) return found;
  QWENQ_CHECK(request != "cuda" || refusal.empty(),
              "--device cuda: " << what << " cannot run on the GPU: " << refusal << " (use --device cpu)");
  if (!refusal.empty()) {
    return {Device::Cpu, "device: cpu (a GPU is present, " + found.gpu + ", but " + what + " cannot run on it: " +
                             refusal + ")", "", ""};
  }
  return {Device::Cuda, "device: cuda (" + found.gpu + "), " + what + " runs on the GPU" + found.remarks, found.gpu,
          found.remarks};
}

}  // namespace qwenq
