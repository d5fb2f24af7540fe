// gptq_quantize_cuda's and gptq_quantize_cuda_device_h's Eigen half (quant/gptq_cuda.h): the argument checks and the
// host steps that touch Eigen, around the device half in gptq_cuda.cu (which must not instantiate Eigen:
// gptq_cuda_device.h says why).
#ifdef QWENQ_HAVE_CUDA

#include "quant/gptq_cuda.h"

#include <cuda_runtime_api.h>

#include "core/error.h"

namespace qwenq {

namespace {

// mean(diag H) in double from an owned (aligned) Eigen vector, as gptq.cpp sums it.
double mean_as_cpu(const std::vector<float>& v) {
  const Eigen::VectorXf d = Eigen::Map<const Eigen::VectorXf>(v.data(), static_cast<Eigen::Index>(v.size()));
  return d.cast<double>().mean();
}

}  // namespace

GptqResult gptq_quantize_cuda(const float* W, int64_t N, int64_t K, Eigen::MatrixXf H, const GptqOptions& o) {
  check_gptq_shapes_and_options(N, K, H, o);
  QWENQ_CHECK(W != nullptr, "gptq_quantize_cuda: null weight");
  GptqCudaHost host;
  host.release_h = [&H] { H = Eigen::MatrixXf(); };
  host.mean = mean_as_cpu;
  GptqHessian h;
  h.host = H.data();
  return gptq_quantize_cuda_device(W, N, K, h, host, o);
}

GptqResult gptq_quantize_cuda_device_h(const float* W, int64_t N, int64_t K, const float* dH, const GptqOptions& o) {
  check_gptq_shape_and_options(N, K, o);
  QWENQ_CHECK(W != nullptr && dH != nullptr, "gptq_quantize_cuda_device_h: null weight or Hessian");
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, dH);
  if (e != cudaSuccess) cudaGetLastError();  // an unregistered host pointer: clear the error this call set
  QWENQ_CHECK(e == cudaSuccess && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
              "gptq_quantize_cuda_device_h: the Hessian must be device memory (gptq_quantize_cuda takes a host one)");
  GptqCudaHost host;
  host.mean = mean_as_cpu;
  GptqHessian h;
  h.device = dH;
  return gptq_quantize_cuda_device(W, N, K, h, host, o);
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
