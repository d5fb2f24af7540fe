// gptq_quantize_cuda's Eigen half (quant/gptq_cuda.h): the argument checks and the two host steps that touch
// Eigen, around the device half in gptq_cuda.cu (which must not instantiate Eigen: gptq_cuda_device.h says why).
#ifdef QWENQ_HAVE_CUDA

#include "quant/gptq_cuda.h"

#include "core/error.h"

namespace qwenq {

GptqResult gptq_quantize_cuda(const float* W, int64_t N, int64_t K, Eigen::MatrixXf H, const GptqOptions& o) {
  check_gptq_shapes_and_options(N, K, H, o);
  QWENQ_CHECK(W != nullptr, "gptq_quantize_cuda: null weight");
  GptqCudaHost host;
  host.release_h = [&H] { H = Eigen::MatrixXf(); };
  host.mean = [](const std::vector<float>& v) {  // an owned (aligned) vector, as gptq.cpp's, for the same sum
    const Eigen::VectorXf d = Eigen::Map<const Eigen::VectorXf>(v.data(), static_cast<Eigen::Index>(v.size()));
    return d.cast<double>().mean();
  };
  const float* h = H.data();
  return gptq_quantize_cuda_device(W, N, K, h, host, o);
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
