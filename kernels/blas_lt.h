// Dense linear layers on the GPU through cuBLASLt: the CUDA twins of kernels/gemm.h.
//
//   forward          y[M,N]  = x[M,K] · W[N,K]ᵀ (+ bias[N])     linear_forward_cuda        (twin of _ref)
//   backward input   dx[M,K] = dy[M,N] · W[N,K]                  linear_backward_input_cuda (dx written)
//   backward weight  dW[N,K] += dy[M,N]ᵀ · x[M,K]                linear_backward_weight_cuda (dW accumulates)
//
// Same arguments as the refs, in device memory, plus the activations' dtype where the GPU path needs one and a
// trailing CudaStream (asynchronous; the argument checks throw before anything is queued):
//   * W (nn.Linear [out, in]) is used as stored: F32, BF16 or F16. Accumulation is fp32 (CUBLAS_COMPUTE_32F; no
//     TF32: an F32 weight gets a true fp32 GEMM).
//   * Activations (x, dy) are F32, or the weight's 16-bit dtype. cuBLASLt multiplies two operands of one type,
//     so F32 activations against a BF16/F16 weight are rounded to the weight's dtype first (a stream-ordered
//     scratch copy): the result then differs from the ref by at most Σ_k |w_k·(x_k − round(x_k))| (2^-9
//     relative per input for bf16) on top of the fp32 summation-order difference.
//   * The output has the activations' dtype: F32 in -> F32 out (what the refs and the CPU trainer use);
//     BF16 in -> BF16 out (a bf16 activation pipeline), likewise F16.
//   * bias is added by cuBLASLt's BIAS epilogue (one rounding, in the output's dtype); a bias whose dtype is not
//     the output's is converted first (exact when widening bf16/f16 -> fp32).
//   * linear_backward_weight_cuda is fp32 throughout (LoRA A and B are fp32 master weights), beta = 1.
//
// Row-major [rows, cols] is column-major [cols, rows], so every call is one column-major cuBLASLt matmul:
//   forward   yᵀ[N,M]  = op_T(W as K×N) · xᵀ(K×M)        ("TN", the layout cuBLASLt is fastest in)
//   dx        dxᵀ[K,M] = (W as K×N) · dyᵀ(N×M)            ("NN")
//   dW        dWᵀ[K,N] += (x as K×M) · op_T(dy as N×M)    ("NT")
//
// BlasLt owns the cuBLASLt handle, a workspace and a cache of plans: for each distinct (m, n, k, transposes,
// dtypes, leading dimensions, epilogue, beta, pointer alignments) it keeps the matmul descriptor, the matrix
// layouts and the algorithm cublasLtMatmulAlgoGetHeuristic chose, so a training step's repeated shapes pay
// for descriptor creation and the heuristic once. The workspace is shared by the streams that use one BlasLt:
// a call on a stream other than the previous call's first waits (cudaStreamWaitEvent) for that call, so two
// streams never use it at once. Calls are serialized by a mutex (thread-safe). BlasLt::current() is the
// instance of the current device the linear_*_cuda functions use; it is created on first use and never
// destroyed (the CUDA runtime may already be gone when static destructors run).
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/dtype.h"
#include "kernels/cuda_check.h"

namespace qwenq {

// One column-major matmul: D[m,n] = alpha·op(A)[m,k]·op(B)[k,n] + beta·D (+ bias[m] broadcast over columns).
// op(X) = Xᵀ when trans_x. A is stored [m,k] (trans_a: [k,m]) with leading dimension lda; likewise B; D [m,n]
// with ldd. beta is 0 or 1 (accumulate); C is D.
struct LtGemm {
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  DType a_type = DType::F32, b_type = DType::F32, d_type = DType::F32;
  int64_t lda = 0, ldb = 0, ldd = 0;
  bool bias = false;  // BIAS epilogue; the bias has d_type
  bool accumulate = false;
};

class BlasLt {
 public:
  // Workspace handed to cuBLASLt (32 MiB, the size NVIDIA recommends for Hopper), allocated on first use.
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

  BlasLt();  // creates the cuBLASLt handle on the current device
  ~BlasLt();
  BlasLt(const BlasLt&) = delete;
  BlasLt& operator=(const BlasLt&) = delete;

  // Queues one matmul on `stream`. Throws qwenq::Error naming the shape and dtypes when no algorithm fits or
  // cuBLASLt refuses.
  void matmul(const LtGemm& g, const void* A, const void* B, void* D, const void* bias, float alpha,
              CudaStream stream);

  // A CUDA graph that holds matmuls (captured on a stream: matmul then neither waits for nor records the workspace's
  // event, which a capture may not touch) is launched between these two on its stream: wait_for_workspace orders
  // the launch after the workspace's last user on any stream, mark_workspace_used makes later users wait for it.
  void wait_for_workspace(CudaStream stream);
  void mark_workspace_used(CudaStream stream);
  // Allocates the workspace now if no matmul has yet: a launcher about to capture a stream calls it first, so that
  // the capture's first matmul does not allocate (nor create this instance) inside the capture.
  void reserve_workspace();

  size_t plan_count() const;  // distinct plans built so far
  size_t heuristic_calls() const;  // times the heuristic ran (= plan_count: each plan asks once)

  // The current device's instance.
  static BlasLt& current();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// x: [M, K] in x_dtype (F32, or w_dtype when that is BF16/F16); w: [N, K] in w_dtype (F32, BF16, F16);
// bias: [N] in bias_dtype, or null; y: [M, N] in x_dtype, written, must not overlap x.
void linear_forward_cuda(const void* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                         const void* bias, DType bias_dtype, void* y, DType x_dtype = DType::F32,
                         CudaStream stream = nullptr);

// dy: [M, N] in dy_dtype (rule of x above); w: [N, K] in w_dtype; dx: [M, K] in dy_dtype, written, must not
// overlap dy.
void linear_backward_input_cuda(const void* dy, int64_t M, int64_t N, const void* w, DType w_dtype, int64_t K,
                                void* dx, DType dy_dtype = DType::F32, CudaStream stream = nullptr);

// dy: [M, N], x: [M, K], dW: [N, K], all fp32; dW += dyᵀ·x. dW must not overlap dy or x.
void linear_backward_weight_cuda(const float* dy, const float* x, int64_t M, int64_t N, int64_t K, float* dW,
                                 CudaStream stream = nullptr);

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
