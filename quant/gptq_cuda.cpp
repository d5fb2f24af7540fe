// gptq_quantize_cuda's Eigen half (quant/gptq_cuda.h): the argument checks and the two host steps that touch
// Eigen, around the device half in gptq_cuda.cu (which must not instantiate Eigen: gptq_cuda_device.h says why).
#ifdef QWENQ_HAVE_CUDA

#include "quant/gptq_cuda.h"

#include <cmath>
#include <utility>

#include "core/error.h"

namespace qwenq {

GptqResult gptq_quantize_cuda(const float* W, int64_t N, int64_t K, Eigen::MatrixXf H, const GptqOptions& o) {
  QWENQ_CHECK(N > 0 && K > 0, "GPTQ needs a non-empty weight, got N = " << N << ", K = " << K);
  QWENQ_CHECK(H.rows() == K && H.cols() == K,
              "Hessian is " << H.rows() << " x " << H.cols() << " but the weight has K = " << K << " inputs");
  QWENQ_CHECK(o.bits >= 2 && o.bits <= 8, "bits must be in 2..8, got " << o.bits);
  QWENQ_CHECK(o.group_size == -1 || o.group_size > 0, "group size must be positive or -1, got " << o.group_size);
  QWENQ_CHECK(o.block_size > 0, "block size must be positive, got " << o.block_size);
  QWENQ_CHECK(std::isfinite(o.damp) && o.damp >= 0, "damp must be finite and >= 0, got " << o.damp);
  QWENQ_CHECK(o.max_damp_retries >= 0, "max_damp_retries must be >= 0, got " << o.max_damp_retries);
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
