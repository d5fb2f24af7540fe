// AdamW and global-norm clipping on the GPU, the twins of optim_ref.cpp (formulas in optim.h).
//
// adamw_step_cuda: the fp32 scalars (decay = 1 − lr·wd, w1 = 1 − β1 with torch's lerp branch, β2, 1 − β2,
// −lr / (1 − β1^t), sqrt(1 − β2^t), eps) are computed on the host from doubles exactly as the ref does; the
// kernel applies the ref's per-element expressions in the ref's order (sqrtf and the division are IEEE: nvcc's
// defaults -prec-sqrt=true -prec-div=true), one thread per element, grid-stride.
//
// clip_grad_norm_cuda, two passes over the gradients:
//   1. each tensor is cut into chunks of kChunk elements; one block per chunk sums g² in double (fp32 squares
//      widened, as the ref) into partial[chunk];
//   2. one block adds the partials in a fixed order, norm = (float)sqrt(sum), coef = max_norm / (norm + 1e-6f);
//   3. one block per chunk multiplies by coef when the norm is finite and coef < 1 (decided on the device, so
//      the host never waits between the passes); then the norm is copied back, the one wait of the call.
// The chunk table (pointer, length) is built on the host and copied once per call; the scratch memory is
// stream-ordered (DeviceMemory), so the call costs 3 launches whatever the number of tensors.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/optim.h"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
constexpr int64_t kChunk = 1 << 16;  // elements per block of the norm passes: 64K fp32 = 256 KB

struct AdamScalars {
  float decay, w1, b2, one_minus_b2, neg_step_size, bc2_sqrt, eps;
  bool lerp_from_m;
};

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, AdamScalars a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = grad[i], m0 = m[i], v0 = v[i];
    const float p = param[i] * a.decay;
    const float mi = a.lerp_from_m ? m0 + a.w1 * (g - m0) : g - (g - m0) * (1.0f - a.w1);
    const float vi = v0 * a.b2 + a.one_minus_b2 * g * g;
    const float denom = sqrtf(vi) / a.bc2_sqrt + a.eps;
    m[i] = mi;
    v[i] = vi;
    param[i] = p + a.neg_step_size * (mi / denom);
  }
}

struct Chunk {
  float* p;
  int64_t n;
};

__global__ void sum_squares_kernel(const Chunk* chunks, double* partial) {
  __shared__ double scratch[32];
  const Chunk c = chunks[blockIdx.x];
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < c.n; j += blockDim.x) {
    const double g = static_cast<double>(c.p[j]);
    s += g * g;
  }
  s = cuda::block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// result[0] = norm, result[1] = coef.
__global__ void finish_norm_kernel(const double* partial, int64_t n, float max_norm, float* result) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += partial[j];
  s = cuda::block_sum(s, scratch);
  if (threadIdx.x == 0) {
    const float norm = static_cast<float>(sqrt(s));
    result[0] = norm;
    result[1] = max_norm / (norm + 1e-6f);
  }
}

__global__ void scale_kernel(const Chunk* chunks, const float* result) {
  const float norm = result[0], coef = result[1];
  if (!isfinite(norm) || !(coef < 1.f)) return;
  const Chunk c = chunks[blockIdx.x];
  for (int64_t j = threadIdx.x; j < c.n; j += blockDim.x) c.p[j] *= coef;
}

}  // namespace

void adamw_step_cuda(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                     double beta2, double eps, double weight_decay, int64_t step, CudaStream stream) {
  QWENQ_CHECK(n >= 0, "adamw_step_cuda: negative size " << n);
  QWENQ_CHECK(step >= 1, "adamw_step_cuda: step must be >= 1 (the count after this update), got " << step);
  QWENQ_CHECK(lr >= 0.0, "adamw_step_cuda: invalid learning rate " << lr);
  QWENQ_CHECK(eps >= 0.0, "adamw_step_cuda: invalid epsilon " << eps);
  QWENQ_CHECK(beta1 >= 0.0 && beta1 < 1.0, "adamw_step_cuda: invalid beta1 " << beta1 << " (must be in [0, 1))");
  QWENQ_CHECK(beta2 >= 0.0 && beta2 < 1.0, "adamw_step_cuda: invalid beta2 " << beta2 << " (must be in [0, 1))");
  QWENQ_CHECK(weight_decay >= 0.0, "adamw_step_cuda: invalid weight_decay " << weight_decay);
  if (n == 0) return;
  QWENQ_CHECK(param != nullptr && grad != nullptr && m != nullptr && v != nullptr, "adamw_step_cuda: null pointer");

  // The ref's scalars, expression for expression.
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(beta1, t);
  const double bias_correction2 = 1.0 - std::pow(beta2, t);
  AdamScalars a;
  a.decay = static_cast<float>(1.0 - lr * weight_decay);
  a.w1 = static_cast<float>(1.0 - beta1);
  a.lerp_from_m = a.w1 < 0.5f;
  a.b2 = static_cast<float>(beta2);
  a.one_minus_b2 = static_cast<float>(1.0 - beta2);
  a.neg_step_size = static_cast<float>(-(lr / bias_correction1));
  a.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  a.eps = static_cast<float>(eps);

  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks);
  adamw_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(param, grad, m, v, n, a);
  QWENQ_CUDA_CHECK_LAUNCH("adamw_step_cuda n=" << n << " step=" << step);
}

float clip_grad_norm_cuda(float* const* grads, const int64_t* sizes, int n_tensors, float max_norm, CudaStream stream) {
  QWENQ_CHECK(n_tensors >= 0, "clip_grad_norm_cuda: negative tensor count " << n_tensors);
  QWENQ_CHECK(max_norm >= 0.f, "clip_grad_norm_cuda: max_norm must be >= 0, got " << max_norm);
  if (n_tensors == 0) return 0.f;
  QWENQ_CHECK(grads != nullptr && sizes != nullptr, "clip_grad_norm_cuda: null grads or sizes");
  std::vector<Chunk> chunks;
  for (int i = 0; i < n_tensors; ++i) {
    QWENQ_CHECK(sizes[i] >= 0, "clip_grad_norm_cuda: tensor " << i << " has negative size " << sizes[i]);
    QWENQ_CHECK(sizes[i] == 0 || grads[i] != nullptr,
                "clip_grad_norm_cuda: tensor " << i << " of size " << sizes[i] << " has a null pointer");
    for (int64_t off = 0; off < sizes[i]; off += kChunk)
      chunks.push_back({grads[i] + off, std::min(kChunk, sizes[i] - off)});
  }
  if (chunks.empty()) return 0.f;  // the ref: norm 0, nothing to scale
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  QWENQ_CHECK(n_chunks <= INT_MAX, "clip_grad_norm_cuda: " << n_chunks << " chunks exceed the grid limit");

  DeviceMemory table(chunks.size() * sizeof(Chunk), stream);
  DeviceMemory partial(chunks.size() * sizeof(double), stream);
  DeviceMemory result(2 * sizeof(float), stream);
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(table.get(), chunks.data(), table.bytes(), cudaMemcpyHostToDevice, stream));
  const unsigned grid = static_cast<unsigned>(n_chunks);
  sum_squares_kernel<<<grid, kThreads, 0, stream>>>(table.as<Chunk>(), partial.as<double>());
  QWENQ_CUDA_CHECK_LAUNCH("clip_grad_norm_cuda sum of squares: " << n_tensors << " tensors, " << n_chunks << " chunks");
  finish_norm_kernel<<<1, 1024, 0, stream>>>(partial.as<double>(), n_chunks, max_norm, result.as<float>());
  QWENQ_CUDA_CHECK_LAUNCH("clip_grad_norm_cuda norm: " << n_chunks << " partial sums");
  scale_kernel<<<grid, kThreads, 0, stream>>>(table.as<Chunk>(), result.as<float>());
  QWENQ_CUDA_CHECK_LAUNCH("clip_grad_norm_cuda scale: " << n_tensors << " tensors, " << n_chunks << " chunks");

  float norm = 0.f;
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(&norm, result.get(), sizeof(float), cudaMemcpyDeviceToHost, stream));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return norm;
}

}  // namespace qwenq
