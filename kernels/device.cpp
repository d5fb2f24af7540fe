// choose_device: see kernels/device.h. The CUDA query lives in device_cuda.cu, compiled only with the CUDA
// backend; without it every request but "cuda" resolves to the CPU.
#include "kernels/device.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"
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

// With QWENQ_WGMMA=1 in the environment (kernels/cuda_check.h), what it does on the chosen device, appended to the
// device line: nothing on the CPU, the Hopper kernels on an sm_90 GPU with this build's sm_90a code, else ignored.
std::string wgmma_remark(bool cuda) {
  const char* v = std::getenv("QWENQ_WGMMA");
  if (v == nullptr || std::strcmp(v, "1") != 0) return "";
  if (!cuda) return "; QWENQ_WGMMA=1 has no effect on the CPU";
#ifdef QWENQ_HAVE_CUDA
  if (cuda_wgmma_supported()) return "; QWENQ_WGMMA=1: the Hopper wgmma kernels";
#endif
  return "; QWENQ_WGMMA=1 ignored: it needs an sm_90 GPU (H100/H200) and a build with the sm_90a target";
}

}  // namespace

DeviceChoice choose_device(const std::string& request) {
  QWENQ_CHECK(request == "auto" || request == "cpu" || request == "cuda",
              "unknown device '" << request << "' (expected auto, cpu or cuda)");
  if (request == "cpu") return {Device::Cpu, "device: cpu (requested)" + wgmma_remark(false)};

  std::string what;
  const bool have_cuda = cuda_available(&what);
  if (have_cuda) {
    return {Device::Cuda, "device: cuda available (" + what + ")" + wgmma_remark(true)};
  }
  const std::string& reason = what;
  QWENQ_CHECK(request != "cuda", "--device cuda: CUDA is not available (" << reason << ")");
  return {Device::Cpu, "device: cpu (" + reason + ")" + wgmma_remark(false)};
}

}  // namespace qwenq
