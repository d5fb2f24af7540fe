// The device half of gptq_quantize_cuda (quant/gptq_cuda.h) and the Hessian update, declared without Eigen:
// quant/gptq_cuda.cu is compiled by nvcc, whose host code is not built with the C++ files' -march=native, and
// Eigen's heap alignment depends on the instruction set (an Eigen matrix allocated on one side and freed on the
// other corrupts the heap). gptq_cuda.cpp holds the Eigen half: the argument checks and the two host steps below.
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <cstdint>
#include <functional>
#include <vector>

#include "core/dtype.h"
#include "kernels/cuda_check.h"
#include "quant/gptq_types.h"

namespace qwenq {

// What the device half asks of the caller's Eigen side.
struct GptqCudaHost {
  std::function<void()> release_h;                         // free the host H (uploaded; no longer read); may be empty
  std::function<double(const std::vector<float>&)> mean;  // mean in double, summed as gptq.cpp sums it
};

// Where the Hessian [K, K] column-major fp32 (lower triangle read) is: on the host (uploaded by the call), or on
// the device (read in place, never written; complete before the call: the caller's stream synchronized).
struct GptqHessian {
  const float* host = nullptr;
  const float* device = nullptr;
};

// gptq_quantize_cuda / gptq_quantize_cuda_device_h after their argument checks.
GptqResult gptq_quantize_cuda_device(const float* W, int64_t N, int64_t K, GptqHessian H, const GptqCudaHost& host,
                                     const GptqOptions& options);

// The HessianAccumulator::add_batch update on device memory (cublasSsyrk, lower triangle only):
//   H ← H · count/(count + rows) + (2/(count + rows)) · XᵀX
// H: [K, K] column-major fp32 (only the lower triangle is read; zero it before the first batch);
// x: [rows, K] row-major fp32 (read column-major it is Xᵀ [K, rows], so no copy); count: rows already in H.
// input_dtype BF16 (HessianAccumulator's BF16): X rounded to bf16 first, in pieces of at most 64M values into a
// bf16 scratch (or of at most piece_rows rows when that is positive: tests cross pieces on small shapes), each piece
// one cublasGemmEx on bf16 tensor cores with fp32 accumulation (the products exact; the sums in fp32 registers in
// another order than the CPU's, and the tensor cores' own alignment and rounding of each MMA step's sum is not
// IEEE round-to-nearest); that GEMM also writes the strict upper triangle, which stays unread.
// Non-finite activations throw the CPU's message (the check reads one flag back, so the call waits for
// `stream`). The caller keeps count += rows.
// The library's cuBLAS handle is shared: it is set to `stream` for the call, and a caller that switches streams
// between calls synchronizes the first (the GPTQ drivers wait before every solve).
void hessian_accumulate_cuda(float* H, int64_t K, int64_t count, const float* x, int64_t rows,
                             CudaStream stream = nullptr, DType input_dtype = DType::F32, int64_t piece_rows = 0);

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
