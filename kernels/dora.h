// DoRA (weight-decomposed LoRA; PEFT 0.15.2's DoraLinearLayer and LoraLayer.forward) on one adapted Linear with
// frozen base Ŵ [N, K] (dense, or dequantized from the Q4 layout), LoRA A [r, K], B [N, r], scaling s and magnitude
// m [N], with their CPU twins (kernels/dora_ref.cpp) and CUDA twins (kernels/dora.cu):
//
//   row norms   n[j] = ‖Ŵ[j, :] + s·(B A)[j, :]‖₂                               (get_weight_norm; detached)
//               (B A)[j, k] = Σ_i B[j, i]·A[i, k], i ascending, fp32, one rounding per product and per sum;
//               e = ŵ[j, k] + s·(B A)[j, k] in fp32 (the product, then the sum); Σ_k e² in double (e² is exact);
//               n = (float) sqrt(Σ)
//   gain        g[j] = m[j] / n[j]
//   scale rows  y[t, j] = g[j]·y[t, j] + (1 − g[j])·b[j]     inference with the base unmerged: y = x Ŵᵀ + b + s·u Bᵀ
//               in, PEFT's y_base + (g − 1)·(y_base − b) + g·lora out ((1 − g)·b dropped without bias)
//   combine     y[t, j] += (g[j] − 1)·z[t, j] + g[j]·v[t, j]   training forward; z = x̃ Ŵᵀ, v = s·u Bᵀ
//   split grad  dm[j] += (Σ_t dy[t, j]·(z[t, j] + v[t, j])) / n[j]     (z + v in fp32, the product exact in double,
//               the sum and the quotient in double, rounded to fp32, then one fp32 addition)
//               dz[t, j] = (g[j] − 1)·dy[t, j],  dv[t, j] = g[j]·dy[t, j]   (written)
//
// Every fp32 formula above is one rounding per operation, left to right as written (g = m / n is recomputed per
// element from m and n, the same correctly rounded quotient): the ref is compiled with -ffp-contract=off and the
// CUDA twins spell each operation with an _rn intrinsic, so g, the scaled rows, y, dz and dv agree bit for bit,
// and so does each row norm's e[j, k]. These are the formulas of trainer/lora_model.cpp's dora_row_norms,
// dora_combine and dora_split_grad as written; that file is compiled with GCC's default -ffp-contract=fast, which
// fuses some of its products into FMAs on a machine that has them (its combine is then y + fma(g − 1, z, g·v), its
// norms' B A sums fma chains): those differ from the twins in the last bits (tests/test_dora_kernels.cpp bounds it).
// Its split grad has no product to fuse but the exact one of the double sum: the same bits as the twins.
//
// The reductions are the only thing the twins order differently (both are deterministic: the same inputs give the
// same bits on every run; no atomics):
//   row norms  ref: k ascending (the trainer's order, bit for bit on the same e). CUDA: 64-column chunks of the
//              layout rows (Q4: perm order) cut into up to kDoraNormMaxSlices slices, within a slice each of 32 lanes
//              sums columns lane and lane + 32 of every chunk in order, then a fixed butterfly over the lanes, then the
//              slices in order. Σ e² has only non-negative terms, so the two sums differ by at most 2K·2⁻⁵³ of Σ and
//              the norms by one fp32 rounding (≤ 1 ulp).
//   dm         ref: t ascending (the trainer's). CUDA: the rows cut into up to 64 slices, 8 rows in flight per column
//              (t ≡ lane mod 8), the 8 lanes then the slices added in order: within rows·2⁻⁵²·Σ_t|dy·(z + v)| / n
//              plus an ulp of the quotient and one of dm.
//
// Shapes: every size positive (N, K, rows ≥ 1, r ≥ 1); m, n, g [N]; y, z, v, dy, dz, dv [rows, N] row-major;
// bias [N] in F32, BF16 or F16 (or null); outputs must not overlap the inputs (y is in place by definition).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/dtype.h"
#include "quant/format/qgemm_layout.h"

namespace qwenq {

// The CUDA row norms' K slices (at most), see above.
constexpr int64_t kDoraNormMaxSlices = 64;
// The CUDA launchers' partition, shared with the memory plan (trainer/memory_plan.cpp counts their scratch):
// row norms in 32-row tiles of 64-column chunks, about 1024 blocks, at least 4 chunks a slice; split grad in
// at most 64 row slices of at least 256 rows.
constexpr int64_t kDoraNormTileRows = 32, kDoraNormChunk = 64, kDoraNormTargetBlocks = 1024,
                  kDoraNormMinChunksPerSlice = 4;
constexpr int64_t kDoraSplitMaxSlices = 64, kDoraSplitMinSliceRows = 256;
// The slices each launcher cuts (kernels/dora_ref.cpp, host code in every build) and the bytes of the
// stream-ordered scratch one launch allocates for their partial double sums: the row norms S·N doubles when
// S > 1 (one slice finishes in place), the split grad S·N doubles.
int64_t dora_row_norm_slices(int64_t N, int64_t K);
int64_t dora_split_grad_slices(int64_t rows, int64_t N);
uint64_t dora_row_norms_scratch_bytes(int64_t N, int64_t K);
uint64_t dora_split_grad_scratch_bytes(int64_t rows, int64_t N);

struct DoraBaseWeight;

// Both twins' argument checks (each error starts with `name`, the calling function, and names the values):
// positive sizes, r ≥ 1, non-null pointers, a dense dtype of F32, BF16 or F16, a Q4 view that passes q4_check and
// is [N, K]. They read no array.
void dora_row_norms_check(const char* name, const DoraBaseWeight& W, int64_t N, int64_t K, const float* A,
                          const float* B, int64_t r, const float* n);
// rows ≥ 1, N ≥ 1 and every pointer of `ptrs` (named by `names`, comma-separated in order) non-null.
void dora_rows_check(const char* name, int64_t rows, int64_t N, const char* names,
                     std::initializer_list<const void*> ptrs);

// The frozen base weight of one Linear [N, K] as the DoRA kernels read it: dense row-major (dtype F32, BF16 or F16)
// when q4 is null, else the Q4 view (host pointers for the _ref twin, device pointers for _cuda).
struct DoraBaseWeight {
  const void* dense = nullptr;
  DType dtype = DType::F32;
  const Q4View* q4 = nullptr;  // the struct itself lives on the host in both twins; its arrays are host/device
};

// n[j] = ‖Ŵ[j,:] + s·(B A)[j,:]‖₂ for j < N: A [r, K], B [N, r] fp32 (PEFT's DoraLinearLayer.get_weight_norm;
// (BA)[j,k] = Σ_i B[j,i]·A[i,k] summed over i ascending in fp32, e = ŵ[j,k] + s·(BA)[j,k] in fp32, Σ_k e² in double,
// n = (float) sqrt(sum)).
void dora_row_norms_ref(const DoraBaseWeight& W, int64_t N, int64_t K, const float* A, const float* B, int64_t r,
                        float s, float* n);
// g[j] = m[j] / n[j]
void dora_gain_ref(const float* m, const float* n, int64_t N, float* g);
// Inference with the base unmerged, after y = x Ŵᵀ + b + s·(x Aᵀ) Bᵀ: y[t, j] = g[j]·y[t, j] + (1 − g[j])·b[j]
// (bias null: the second term is 0), i.e. PEFT's base + (g − 1)·(y_base − b) + g·lora. rows x N, in place.
void dora_scale_rows_ref(float* y, int64_t rows, int64_t N, const float* g, const void* bias, DType bias_dtype);
// Training forward: y[t, j] += (g[j] − 1)·z[t, j] + g[j]·v[t, j], g = m / n (z = x̃ Ŵᵀ, v = s·u Bᵀ).
void dora_combine_ref(const float* m, const float* n, const float* z, const float* v, int64_t rows, int64_t N,
                      float* y);
// Training backward: dm[j] += (Σ_t dy[t,j]·(z[t,j] + v[t,j]) in double) / n[j]; dz = (g − 1)·dy; dv = g·dy (written).
void dora_split_grad_ref(const float* m, const float* n, const float* z, const float* v, const float* dy,
                         int64_t rows, int64_t N, float* dm, float* dz, float* dv);

}  // namespace qwenq

#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.h"

namespace qwenq {

// The CUDA twins (kernels/dora.cu): every array in device memory (the DoraBaseWeight and its Q4View on the host,
// their arrays on the device), queued on `stream`; the ref's argument checks with the ref's messages (the function
// named _cuda). Scratch (the row norms' and dm's partial sums) is stream-ordered DeviceMemory; nothing waits for
// the host.
void dora_row_norms_cuda(const DoraBaseWeight& W, int64_t N, int64_t K, const float* A, const float* B, int64_t r,
                         float s, float* n, CudaStream stream = nullptr);
void dora_gain_cuda(const float* m, const float* n, int64_t N, float* g, CudaStream stream = nullptr);
void dora_scale_rows_cuda(float* y, int64_t rows, int64_t N, const float* g, const void* bias, DType bias_dtype,
                          CudaStream stream = nullptr);
void dora_combine_cuda(const float* m, const float* n, const float* z, const float* v, int64_t rows, int64_t N,
                       float* y, CudaStream stream = nullptr);
void dora_split_grad_cuda(const float* m, const float* n, const float* z, const float* v, const float* dy,
                          int64_t rows, int64_t N, float* dm, float* dz, float* dv, CudaStream stream = nullptr);

}  // namespace qwenq
#endif  // QWENQ_HAVE_CUDA
