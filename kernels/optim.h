// AdamW and gradient-norm clipping, exactly as torch.optim.AdamW (single-tensor path, amsgrad = False,
// maximize = False) and torch.nn.utils.clip_grad_norm_ compute them.
//
// adamw_step_ref, step t = 1, 2, ... (the count after this update), per element:
//   p  ← p · (1 − lr·wd)                                   decoupled weight decay, applied first
//   m  ← m + (1 − β1)·(g − m)                              (= β1·m + (1 − β1)·g; torch's lerp)
//   v  ← β2·v + (1 − β2)·g²
//   p  ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
// The hyper-parameters are doubles, like torch's Python floats: the bias corrections 1 − β^t, the step size
// and 1 − lr·wd are computed in double, then (as torch passes them to its fp32 tensor ops) rounded to fp32;
// the per-element arithmetic is fp32 in torch's order. p, m and v are updated in place; m = v = 0 before t = 1.
//
// clip_grad_norm_ref: norm = sqrt(Σ over all tensors Σ g²) (summed in double), coef = max_norm / (norm + 1e-6);
// when coef < 1 every gradient is multiplied by coef (fp32). Returns the norm before clipping. A NaN or inf
// norm is returned with the gradients left as they are (torch would fill them with NaN); skip that step.
#pragma once

#include <cstdint>

namespace qwenq {

// param, grad, m, v: [n] fp32. Throws, naming the value, for step < 1, lr < 0, eps < 0, wd < 0 or β outside [0, 1).
void adamw_step_ref(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                    double beta2, double eps, double weight_decay, int64_t step);

// grads[i]: n_tensors gradient arrays of sizes[i] fp32 elements (null allowed when the size is 0).
float clip_grad_norm_ref(float* const* grads, const int64_t* sizes, int n_tensors, float max_norm);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// CUDA twins (kernels/optim.cu). adamw_step_cuda: param, grad, m, v in device memory; the same fp32 scalars
// computed on the host as the ref, the same per-element order; queued on `stream`.
void adamw_step_cuda(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                     double beta2, double eps, double weight_decay, int64_t step, CudaStream stream = nullptr);

// clip_grad_norm_cuda: `grads` and `sizes` are host arrays (the list), grads[i] points to device memory. Two
// passes: squares summed in double per chunk of a tensor, the partial sums added in a fixed order (the result
// does not depend on timing), then every gradient scaled by coef on the device when coef < 1 and the norm is
// finite. Returns the norm, so it waits for `stream`.
float clip_grad_norm_cuda(float* const* grads, const int64_t* sizes, int n_tensors, float max_norm,
                          CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
