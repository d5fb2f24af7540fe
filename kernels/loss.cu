// Softmax cross-entropy on the GPU, the twin of loss_ref.cpp (formulas in loss.h). One block per row, one kernel
// for the three entry points (forward: nll; backward: dlogits; fused: both):
//   pass 1  online max and sum: each thread keeps (m, s) over its columns, s = Σ expf(l − m) in double,
//           rescaled by exp(m_old − m_new) (double) when m grows; the block merges the pairs:
//           M = max, S = Σ s_i · exp(m_i − M). The row is read once.
//   nll     = M + (float)log(S) − l[target]            (fp32, as the ref)
//   pass 2  dlogits[v] = expf(l[v] − M) · (float)(scale / S), minus scale at the target: the ref's expression
//           with the same global max, so only expf's last bit and S's rounding differ.
// The ref takes every exponential relative to the global max; here most are relative to a running max and then
// rescaled, which moves S by a few fp32 ulps (the tolerance in tests/gpu/test_kernels_cuda.cpp says how much).
// Ignored rows (kIgnoreIndex) get nll = 0 and a zero dlogits row. In place is safe: the target's logit is read
// before the block's first barrier, and pass 2 starts after every thread finished pass 1 (barrier in the merge);
// a thread then reads and writes only its own columns.
// 16-byte loads and stores when V % 4 == 0 and the buffers are 16-byte aligned (Qwen's V = 151936 and 152064
// are), scalar otherwise.
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/loss.h"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 512;  // 16 warps: 297 columns per thread at V = 151936

// Adds exp(x) to the running pair (m, s) that stands for s · exp(m). Columns of −inf add nothing (and never
// form inf − inf); a NaN makes s NaN, as in the ref.
__device__ __forceinline__ void online_add(float x, float& m, double& s) {
  if (x > m) {
    s = s * exp(static_cast<double>(m) - static_cast<double>(x)) + 1.0;  // m = −inf: s = 0 · 0 + 1
    m = x;
  } else if (m != -INFINITY) {
    s += static_cast<double>(expf(x - m));
  } else if (x != x) {
    s = x;  // NaN against an empty pair
  }
}

// Merges the pairs of the block; every thread gets the row's (M, S).
__device__ void block_max_sum(float& m, double& s) {
  __shared__ float sm[32];
  __shared__ double ss[32];
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp, warps = blockDim.x / cuda::kWarp;
  // An empty pair (m = −inf) has s = 0, or NaN when a NaN column met it (online_add): its s is added as is, so
  // that NaN reaches S even when the thread saw no finite column (its other columns all −inf).
  auto merge = [](float& m1, double& s1, float m2, double s2) {
    const float M = fmaxf(m1, m2);
    if (M == -INFINITY) {  // both empty
      s1 += s2;
      return;
    }
    double r = 0.0;
    r += m1 != -INFINITY ? s1 * exp(static_cast<double>(m1) - static_cast<double>(M)) : s1;
    r += m2 != -INFINITY ? s2 * exp(static_cast<double>(m2) - static_cast<double>(M)) : s2;
    m1 = M;
    s1 = r;
  };
#pragma unroll
  for (int o = cuda::kWarp / 2; o > 0; o /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const double s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  m = lane < warps ? sm[lane] : -INFINITY;
  s = lane < warps ? ss[lane] : 0.0;
#pragma unroll
  for (int o = cuda::kWarp / 2; o > 0; o /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const double s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
}

// dlogits of one column: the ref's expf(l − M) · coef, then − scale at the target (no fused multiply-add, so
// the two roundings are the ref's).
__device__ __forceinline__ float dlogit(float l, float M, float coef, bool is_target, float scale) {
  const float p = __fmul_rn(expf(l - M), coef);
  return is_target ? p - scale : p;
}

// nll and dlogits may each be null (forward: dlogits null; backward: nll null). dlogits may equal logits.
// row_scale (may be null): row r's scale instead of `scale`.
__global__ void cross_entropy_kernel(const float* logits, int64_t V, const int32_t* targets, float scale,
                                     const float* row_scale, bool vec4, float* nll, float* dlogits) {
  const int64_t row = blockIdx.x;
  const int32_t t = targets[row];
  if (row_scale) scale = row_scale[row];
  const float* l = logits + row * V;
  float* dl = dlogits ? dlogits + row * V : nullptr;
  if (t == kIgnoreIndex) {
    if (nll && threadIdx.x == 0) nll[row] = 0.f;
    if (dl)
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) dl[v] = 0.f;
    return;
  }
  const float lt = l[t];  // before any thread can overwrite it (in place)

  float m = -INFINITY;
  double s = 0.0;
  const int64_t V4 = vec4 ? V / 4 : 0;
  for (int64_t j = threadIdx.x; j < V4; j += blockDim.x) {
    const float4 x = reinterpret_cast<const float4*>(l)[j];
    online_add(x.x, m, s);
    online_add(x.y, m, s);
    online_add(x.z, m, s);
    online_add(x.w, m, s);
  }
  for (int64_t v = 4 * V4 + threadIdx.x; v < V; v += blockDim.x) online_add(l[v], m, s);
  block_max_sum(m, s);

  if (nll && threadIdx.x == 0) nll[row] = m + static_cast<float>(log(s)) - lt;
  if (!dl) return;
  const float coef = static_cast<float>(static_cast<double>(scale) / s);
  for (int64_t j = threadIdx.x; j < V4; j += blockDim.x) {
    const float4 x = reinterpret_cast<const float4*>(l)[j];
    const int64_t v = 4 * j;
    reinterpret_cast<float4*>(dl)[j] =
        make_float4(dlogit(x.x, m, coef, v == t, scale), dlogit(x.y, m, coef, v + 1 == t, scale),
                    dlogit(x.z, m, coef, v + 2 == t, scale), dlogit(x.w, m, coef, v + 3 == t, scale));
  }
  for (int64_t v = 4 * V4 + threadIdx.x; v < V; v += blockDim.x) dl[v] = dlogit(l[v], m, coef, v == t, scale);
}

// The ref's target check (cross_entropy_count_targets) on a host copy of the targets; returns the counted rows.
// The copy waits for the work queued before it on `stream` (which may be producing the targets).
// host_targets (may be null): the caller's host copy of the same targets, checked instead, without the wait.
int64_t check_targets(const char* name, int64_t rows, int64_t V, const int32_t* targets, CudaStream stream,
                      const int32_t* host_targets = nullptr) {
  if (host_targets != nullptr) return cross_entropy_count_targets(name, rows, V, host_targets);
  return cross_entropy_count_targets(name, rows, V, download_sync(targets, rows, stream).data());
}

void check_shape(const char* name, int64_t rows, int64_t V) {
  QWENQ_CHECK(rows >= 0 && V > 0, name << ": bad shape rows=" << rows << " V=" << V);
  QWENQ_CHECK(rows <= INT_MAX, name << ": rows=" << rows << " exceeds the grid limit " << INT_MAX);
}

void launch(const char* name, const float* logits, int64_t rows, int64_t V, const int32_t* targets, float scale,
            float* nll, float* dlogits, CudaStream stream, const float* row_scale = nullptr) {
  const bool vec4 = V % 4 == 0 && is_aligned(logits, 16) && (dlogits == nullptr || is_aligned(dlogits, 16));
  cross_entropy_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, V, targets, scale, row_scale,
                                                                             vec4, nll, dlogits);
  QWENQ_CUDA_CHECK_LAUNCH(name << " rows=" << rows << " V=" << V);
}

}  // namespace

int64_t cross_entropy_forward_cuda(const float* logits, int64_t rows, int64_t V, const int32_t* targets, float* nll,
                                   CudaStream stream, const int32_t* host_targets) {
  const char* name = "cross_entropy_forward_cuda";
  check_shape(name, rows, V);
  if (rows == 0) return 0;
  QWENQ_CHECK(targets != nullptr, name << ": null pointer");
  QWENQ_CHECK(logits != nullptr && nll != nullptr, name << ": null pointer");
  const int64_t counted = check_targets(name, rows, V, targets, stream, host_targets);
  launch(name, logits, rows, V, targets, 0.f, nll, nullptr, stream);
  return counted;
}

void cross_entropy_backward_cuda(const float* logits, int64_t rows, int64_t V, const int32_t* targets, float dnll_scale,
                                 float* dlogits, CudaStream stream) {
  const char* name = "cross_entropy_backward_cuda";
  check_shape(name, rows, V);
  if (rows == 0) return;
  QWENQ_CHECK(targets != nullptr, name << ": null pointer");
  QWENQ_CHECK(logits != nullptr && dlogits != nullptr, name << ": null pointer");
  QWENQ_CHECK(std::isfinite(dnll_scale), name << ": dnll_scale must be finite, got " << dnll_scale);
  check_targets(name, rows, V, targets, stream);
  launch(name, logits, rows, V, targets, dnll_scale, nullptr, dlogits, stream);
}

int64_t cross_entropy_fused_cuda(float* logits, int64_t rows, int64_t V, const int32_t* targets, float dnll_scale,
                                 float* nll, CudaStream stream, const int32_t* host_targets,
                                 const float* row_scale) {
  const char* name = "cross_entropy_fused_cuda";
  check_shape(name, rows, V);
  if (rows == 0) return 0;
  QWENQ_CHECK(targets != nullptr, name << ": null pointer");
  QWENQ_CHECK(logits != nullptr && nll != nullptr, name << ": null pointer");
  QWENQ_CHECK(std::isfinite(dnll_scale), name << ": dnll_scale must be finite, got " << dnll_scale);
  const int64_t counted = check_targets(name, rows, V, targets, stream, host_targets);
  launch(name, logits, rows, V, targets, dnll_scale, nll, logits, stream, row_scale);
  return counted;
}

}  // namespace qwenq
