// Where a binary runs: `--device auto|cpu|cuda`.
//
// choose_device("auto") picks CUDA when this build has the CUDA backend (QWENQ_HAVE_CUDA) and the runtime
// reports a device, else the CPU; `description` says which and why in one line, e.g.
//   "device: cpu (built without CUDA)"
//   "device: cpu (no CUDA device: cudaGetDeviceCount returned 'no CUDA-capable device is detected')"
//   "device: cuda available (NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB)"   (the caller says what runs where)
// choose_device("cuda") throws qwenq::Error with the same reason when CUDA is unavailable; "cpu" always
// succeeds; anything else throws. A missing driver (libcudart present, libcuda.so absent) is a reason, not a
// crash. Device::Cuda tells callers that a GPU is there; settle_device decides what runs on it once the input is
// known (tools/cli_common.h's DevicePick).
// On an sm_90 GPU running this build's sm_90a code the line ends with the kernels it runs: "; the Hopper wgmma kernels
// (QWENQ_WGMMA=0: the mma.sync ones)" or, with QWENQ_WGMMA=0, "; QWENQ_WGMMA=0: the mma.sync kernels, not the Hopper
// wgmma ones". A QWENQ_WGMMA=0/1 that cannot apply says so: "; QWENQ_WGMMA=1 ignored: it needs an sm_90 GPU ..." or
// "; QWENQ_WGMMA=0 has no effect on the CPU".
#pragma once

#include <cstdint>
#include <string>

namespace qwenq {

enum class Device { Cpu, Cuda };

struct DeviceChoice {
  Device device;
  std::string description;
  std::string gpu;      // Device::Cuda: the device, "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"
  std::string remarks;  // the kernel switches' remarks that end the description ("; the Hopper wgmma kernels ...")
};

DeviceChoice choose_device(const std::string& request /* "auto" | "cpu" | "cuda" */);

// Where a command with a GPU path runs (`what`: "the evaluation"), once its input is known. `found`:
// choose_device(request); `refusal`: why the GPU path cannot run the input, "" when it can (trainer/gpu_support.h).
//   cpu                          the CPU: found's line.
//   auto, no GPU                 the CPU: found's line ("device: cpu (no CUDA device: ...)").
//   auto or cuda, GPU, no refusal
//                                the GPU: "device: cuda (NVIDIA H200, sm_90, 139.8 GiB), the evaluation runs on the
//                                GPU" and found's remarks.
//   auto, GPU, a refusal         the CPU: "device: cpu (a GPU is present, NVIDIA H200 ..., but the evaluation cannot
//                                run on it: <refusal>)".
//   cuda, GPU, a refusal         throws "--device cuda: the evaluation cannot run on the GPU: <refusal> (use --device
//                                cpu)".
// The returned description is that line (the caller adds its thread count).
DeviceChoice settle_device(const std::string& request, const DeviceChoice& found, const std::string& what,
                           const std::string& refusal);

#ifdef QWENQ_HAVE_CUDA
// Asks the CUDA runtime for device 0. True: *name_or_error = "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"
// (plus "; N devices" when there are several). False: *name_or_error = why not, e.g.
// "no NVIDIA driver installed", "no NVIDIA GPU found", or "the NVIDIA driver supports CUDA 12.4, this build needs
// CUDA 13.0: update the driver to use the GPU".
bool cuda_device_query(std::string* name_or_error);
// How many GPUs this process sees (cudaGetDeviceCount; 0 when the runtime reports none or an error).
int cuda_device_count();
// Device 0's free and total memory (cudaMemGetInfo; it makes the process's CUDA context). False: *error says why.
bool cuda_device_memory(uint64_t* free_bytes, uint64_t* total_bytes, std::string* error);
#endif

}  // namespace qwenq
