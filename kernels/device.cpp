// choose_device: see kernels/device.h. The CUDA query lives in device_cuda.cu, compiled only with the CUDA
// backend; without it every request but "cuda" resolves to the CPU.
#include "kernels/device.h"

#include "core/error.h"

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

}  // namespace

DeviceChoice choose_device(const std::string& request) {
  QWENQ_CHECK(request == "auto" || request == "cpu" || request == "cuda",
              "unknown device '" << request << "' (expected auto, cpu or cuda)");
  if (request == "cpu") return {Device::Cpu, "device: cpu (requested)"};

  std::string what;
  const bool have_cuda = cuda_available(&what);
  if (have_cuda) {
    return {Device::Cuda, "device: cuda available (" + what + ")"};
  }
  const std::string& reason = what;
  QWENQ_CHECK(request != "cuda", "--device cuda: CUDA is not available (" << reason << ")");
  return {Device::Cpu, "device: cpu (" + reason + ")"};
}

}  // namespace qwenq
