// The CUDA twin of kernels/kld_rows_ref.cpp (formulas in kld_rows.h). One block of 512 threads per row.
//   encode  pass 1: max and min of the row (exact); pass 2: Σ expf(z − m) in double (fixed-order block sum); thread 0
//           forms lse, lo, scale, min_log_prob and nll as the ref (each float operation an _rn intrinsic: rounded
//           once, never fused) and writes the row's header; pass 3: every code as the ref's, rintf (half to even).
//   score   pass 1: the first arg-max of z' (NaN skipped) and the first index of the largest code; pass 2: Σ exp(z' −
//           max) in double -> lse'; pass 3: the KL terms in double over the values with log P > −16.
// Block merges in a fixed order (the same bits run to run). The codes and scale equal the ref's bit for bit; lse
// may differ by an ulp through the exponentials' sum (order, and expf's last bit against the host's).
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/kld_rows.h"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 512;

// Max and min over the block (fmaxf / fminf: a NaN is dropped, as the ref's std::max / std::min of a finite start
// keep it only when it comes first; rows of logits hold no NaN in practice). sa, sb: 32 entries each.
__device__ void block_max_min(float& mx, float& mn, float* sa, float* sb) {
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp, warps = blockDim.x / cuda::kWarp;
#pragma unroll
  for (int o = cuda::kWarp / 2; o > 0; o /= 2) {
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
  }
  __syncthreads();
  if (lane == 0) {
    sa[warp] = mx;
    sb[warp] = mn;
  }
  __syncthreads();
  mx = lane < warps ? sa[lane] : -INFINITY;
  mn = lane < warps ? sb[lane] : INFINITY;
#pragma unroll
  for (int o = cuda::kWarp / 2; o > 0; o /= 2) {
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
  }
}

__global__ void kld_encode_kernel(const float* logits, int64_t V, int64_t nv, const int32_t* targets, uint16_t* out,
                                  float* nll) {
  __shared__ float sa[32], sb[32];
  __shared__ double sd[32];
  __shared__ float s_lo, s_inv, s_scale;
  const int64_t row = blockIdx.x;
  const float* z = logits + row * V;
  uint16_t* o = out + row * nv;
  float mx = -INFINITY, mn = INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    mx = fmaxf(mx, z[v]);
    mn = fminf(mn, z[v]);
  }
  block_max_min(mx, mn, sa, sb);
  double s = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += static_cast<double>(expf(__fsub_rn(z[v], mx)));
  s = cuda::block_sum(s, sd);
  if (threadIdx.x == 0) {
    const float lo = fmaxf(mn, __fsub_rn(mx, 16.f));
    const float lse = static_cast<float>(log(s));
    const float min_log_prob = __fsub_rn(__fsub_rn(lo, mx), lse);
    const float scale = __fdiv_rn(__fsub_rn(mx, lo), 65535.f);
    reinterpret_cast<float*>(o)[0] = scale;  // nv is even: every row starts 4-byte aligned
    reinterpret_cast<float*>(o)[1] = min_log_prob;
    nll[row] = __fsub_rn(__fadd_rn(mx, lse), z[targets[row]]);
    s_lo = lo;
    s_scale = scale;
    s_inv = scale != 0.f ? __fdiv_rn(1.f, scale) : 0.f;
  }
  __syncthreads();
  const float lo = s_lo, inv = s_inv;
  const bool zero = s_scale == 0.f;
  uint16_t* q = o + 4;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = z[v];
    const float code = fminf(rintf(__fmul_rn(inv, __fsub_rn(x, lo))), 65535.f);
    q[v] = zero || !(x > lo) ? uint16_t{0} : static_cast<uint16_t>(static_cast<int32_t>(code));
  }
  if (threadIdx.x == 0 && V % 2 != 0) q[V] = 0;
}

__global__ void kld_score_kernel(const uint16_t* base, const float* logits, int64_t V, int64_t nv,
                                 const int32_t* targets, KlRow* out) {
  __shared__ float sm[32];
  __shared__ int64_t si[32];
  __shared__ double sd[32];
  const int64_t row = blockIdx.x;
  const float* z = logits + row * V;
  const uint16_t* b = base + row * nv;
  const float scale = reinterpret_cast<const float*>(b)[0], lo = reinterpret_cast<const float*>(b)[1];
  const uint16_t* q = b + 4;
  cuda::ArgMax az{0.f, -1}, aq{0.f, -1};
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    cuda::offer_argmax(az, z[v], v);
    cuda::offer_argmax(aq, static_cast<float>(q[v]), v);  // codes < 2^16: exact in float, the codes' order
  }
  az = cuda::block_argmax(az, sm, si);
  aq = cuda::block_argmax(aq, sm, si);
  const int64_t top = cuda::argmax_index(az);
  const double mq = z[top];
  double sq = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) sq += exp(static_cast<double>(z[v]) - mq);
  sq = cuda::block_sum(sq, sd);
  const double lse_q = mq + log(sq);
  double kld = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float lp = __fadd_rn(__fmul_rn(scale, static_cast<float>(q[v])), lo);
    if (lp > -16.f) kld += exp(static_cast<double>(lp)) * (static_cast<double>(lp) - (static_cast<double>(z[v]) - lse_q));
  }
  kld = cuda::block_sum(kld, sd);
  if (threadIdx.x != 0) return;
  const int32_t t = targets[row];
  KlRow r;
  r.top = top;
  r.top_base = cuda::argmax_index(aq);
  r.kld = kld;
  r.nll_base = -static_cast<double>(__fadd_rn(__fmul_rn(scale, static_cast<float>(q[t])), lo));
  r.nll = lse_q - static_cast<double>(z[t]);
  out[row] = r;
}

void check_launch(const char* name, int64_t rows, int64_t V, const int32_t* targets, CudaStream stream) {
  QWENQ_CHECK(rows >= 0 && V > 0, name << ": bad shape rows=" << rows << " V=" << V);
  QWENQ_CHECK(rows <= INT_MAX, name << ": rows=" << rows << " exceeds the grid limit " << INT_MAX);
  if (rows == 0) return;
  kld_rows_check(name, rows, V, download_sync(targets, rows, stream).data());
}

}  // namespace

void kld_encode_rows_cuda(const float* logits, int64_t rows, int64_t V, const int32_t* targets, uint16_t* out,
                          float* nll, CudaStream stream) {
  const char* name = "kld_encode_rows_cuda";
  QWENQ_CHECK(rows == 0 || (logits != nullptr && targets != nullptr && out != nullptr && nll != nullptr),
              name << ": null pointer");
  check_launch(name, rows, V, targets, stream);
  if (rows == 0) return;
  kld_encode_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, V, kld_row_width(V), targets, out,
                                                                          nll);
  QWENQ_CUDA_CHECK_LAUNCH(name << " rows=" << rows << " V=" << V);
}

void kld_score_rows_cuda(const uint16_t* base, const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                         KlRow* out, CudaStream stream) {
  const char* name = "kld_score_rows_cuda";
  QWENQ_CHECK(rows == 0 || (base != nullptr && logits != nullptr && targets != nullptr && out != nullptr),
              name << ": null pointer");
  check_launch(name, rows, V, targets, stream);
  if (rows == 0) return;
  kld_score_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(base, logits, V, kld_row_width(V), targets,
                                                                         out);
  QWENQ_CUDA_CHECK_LAUNCH(name << " rows=" << rows << " V=" << V);
}

}  // namespace qwenq
