// The CUDA twin of kernels/kl_rows_ref.cpp (formulas in kl_rows.h). One block of 512 threads per row:
//   pass 1  each thread's first arg-max of b and of q over its strided columns (NaN skipped), merged over the block
//           by (larger value, then smaller index): the first index of the row's largest value, as the ref;
//   pass 2  each thread's sums s_b, c, s_q over its columns in double (exp in double, as the ref), block sums in a
//           fixed order (kernels/cuda_check.cuh's block_sum);
//   thread 0 writes the row's KlRow. Both rows are read twice (pass 2 mostly from L2 at Qwen's V: 2 · 608 KB a
//   row); the reads are coalesced fp32 loads.
// Only the order of the sums differs from the ref (the arg-maxima are exact), so kld and the NLLs differ by a few
// units of V·2⁻⁵³ relative to the terms they are made of.
// Speed (an estimate until benchmarks/bench_kl_rows_cuda.cpp has run): two double exps per column are some 60 FP64
// operations, so on Hopper (64 FP64 operations per clock per SM) a row of 152064 takes about 80 µs of one SM and the
// kernel is bound by them, about 3x the time of reading the rows from HBM; still a small part of a window's two
// forwards, and nothing crosses PCIe. A GPU with a 1/64-rate FP64 unit would be much slower (not a target).
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/kl_rows.h"
#include "kernels/loss.h"

namespace qwenq {

namespace {

constexpr unsigned kThreads = 512;

__global__ void kl_rows_kernel(const float* base, const float* logits, int64_t V, const int32_t* targets, KlRow* out) {
  __shared__ float sm[32];
  __shared__ int64_t si[32];
  __shared__ double sd[32];
  const int64_t row = blockIdx.x;
  const float* b = base + row * V;
  const float* q = logits + row * V;

  cuda::ArgMax ab{0.f, -1}, aq{0.f, -1};
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    cuda::offer_argmax(ab, b[v], v);
    cuda::offer_argmax(aq, q[v], v);
  }
  ab = cuda::block_argmax(ab, sm, si);
  aq = cuda::block_argmax(aq, sm, si);
  const int64_t top_b = cuda::argmax_index(ab), top_q = cuda::argmax_index(aq);
  const double mb = b[top_b], mq = q[top_q];

  double sb = 0, sq = 0, cross = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const double bv = b[v], qv = q[v], e = exp(bv - mb);
    sb += e;
    cross += e * (bv - qv);
    sq += exp(qv - mq);
  }
  sb = cuda::block_sum(sb, sd);
  cross = cuda::block_sum(cross, sd);
  sq = cuda::block_sum(sq, sd);
  if (threadIdx.x != 0) return;
  KlRow r;
  r.top_base = top_b;
  r.top = top_q;
  const double lse_b = mb + log(sb), lse_q = mq + log(sq);
  r.kld = cross / sb - lse_b + lse_q;
  const int32_t t = targets[row];
  if (t != kIgnoreIndex) {
    r.nll_base = lse_b - static_cast<double>(b[t]);
    r.nll = lse_q - static_cast<double>(q[t]);
  }
  out[row] = r;
}

}  // namespace

void kl_rows_cuda(const float* base, const float* logits, int64_t rows, int64_t V, const int32_t* targets, KlRow* out,
                  CudaStream stream) {
  const char* name = "kl_rows_cuda";
  QWENQ_CHECK(rows >= 0 && V > 0, name << ": bad shape rows=" << rows << " V=" << V);
  QWENQ_CHECK(rows <= INT_MAX, name << ": rows=" << rows << " exceeds the grid limit " << INT_MAX);
  if (rows == 0) return;
  QWENQ_CHECK(base != nullptr && logits != nullptr && targets != nullptr && out != nullptr, name << ": null pointer");
  // The ref's target check on a host copy (it waits for the work queued on `stream`, which may produce them).
  kl_rows_check(name, rows, V, download_sync(targets, rows, stream).data());
  kl_rows_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(base, logits, V, targets, out);
  QWENQ_CUDA_CHECK_LAUNCH(name << " rows=" << rows << " V=" << V);
}

}  // namespace qwenq
