// Causal grouped-query attention over packed variable-length sequences:
//   for sequence s = rows [b, e), query head h, kv head g = h / (H / Hkv), query row i in [b, e):
//     S[j]   = (q[i,h] · k[j,g]) · scale,  j in [b, i],   scale = 1/sqrt(D) rounded to fp32
//     m      = max_j S[j],  l = Σ_j exp(S[j] − m)           (fp32, max subtracted)
//     out    = Σ_j exp(S[j] − m) · v[j,g] / l,   lse[i,h] = m + log(l)
// Computed flash-attention style, one block of kQBlock query rows at a time against blocks of kKBlock keys:
// S_blk = (scale·Q_blk) · K_blkᵀ (Eigen GEMM on strided views), causal mask on the diagonal blocks, then the online
// softmax update per row (m' = max(m, max S_blk), α = exp(m − m'), l = α·l + Σ exp(S_blk − m'), O = α·O +
// exp(S_blk − m')·V_blk) with Eigen's vectorized exp. Mathematically the same softmax; the sums are just
// grouped by key block. Memory per thread: one kQBlock × kKBlock score block and a kQBlock × D accumulator,
// whatever T is.
// Work: (sequence, head, query block) tasks; a causal block costs about Σ (keys visited), so the task list is
// cut into one contiguous piece of equal cost per thread.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/attention.h"

namespace qwenq {

namespace {

constexpr int64_t kQBlock = 32;   // measured on AVX2: 32 x 128 beats 64 x 64 by 1.5x at T = 4096
constexpr int64_t kKBlock = 128;

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstStrided = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;

struct Task {
  int64_t begin;       // first row of the sequence
  int64_t row0, row1;  // query rows of this block
  int64_t head;
};

struct Problem {
  const float *q, *k, *v;
  int64_t H, Hkv, D, group;
  float scale;
  float *out, *lse;
};

struct Scratch {
  RowMat Q, S, O;
  std::vector<float> m, l;
  explicit Scratch(int64_t D) : Q(kQBlock, D), S(kQBlock, kKBlock), O(kQBlock, D), m(kQBlock), l(kQBlock) {}
};

void attend_block(const Problem& p, const Task& t, Scratch* sc) {
  const int64_t nq = t.row1 - t.row0, D = p.D, g = t.head / p.group;
  // The query block, times the scale (a power of two for D = 64, 256, ...; otherwise one more rounding).
  auto Q = sc->Q.topRows(nq);
  Q = ConstStrided(p.q + (t.row0 * p.H + t.head) * D, nq, D, Eigen::OuterStride<>(p.H * D)) * p.scale;
  auto O = sc->O.topRows(nq);
  O.setZero();
  std::fill(sc->m.begin(), sc->m.begin() + nq, -INFINITY);
  std::fill(sc->l.begin(), sc->l.begin() + nq, 0.f);

  // Keys [begin, row1): every row of the block sees key `begin`, so m is finite after the first key block.
  for (int64_t k0 = t.begin; k0 < t.row1; k0 += kKBlock) {
    const int64_t nk = std::min(kKBlock, t.row1 - k0);
    ConstStrided K(p.k + (k0 * p.Hkv + g) * D, nk, D, Eigen::OuterStride<>(p.Hkv * D));
    ConstStrided V(p.v + (k0 * p.Hkv + g) * D, nk, D, Eigen::OuterStride<>(p.Hkv * D));
    auto S = sc->S.topLeftCorner(nq, nk);
    S.noalias() = Q * K.transpose();
    if (k0 + nk - 1 > t.row0) {  // diagonal block: key j is visible to row i only if j <= i
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t first_hidden = std::max<int64_t>(0, t.row0 + r + 1 - k0);
        for (int64_t c = first_hidden; c < nk; ++c) S(r, c) = -INFINITY;
      }
    }
    for (int64_t r = 0; r < nq; ++r) {
      const float m_new = std::max(sc->m[r], S.row(r).maxCoeff());
      const float alpha = std::exp(sc->m[r] - m_new);  // 0 on the first block (m = -inf)
      S.row(r) = (S.row(r).array() - m_new).exp().matrix();
      sc->l[r] = sc->l[r] * alpha + S.row(r).sum();
      if (alpha != 1.f) O.row(r) *= alpha;
      sc->m[r] = m_new;
    }
    O.noalias() += S * V;
  }

  for (int64_t r = 0; r < nq; ++r) {
    const int64_t i = t.row0 + r;
    float* o = p.out + (i * p.H + t.head) * D;
    const float inv = 1.0f / sc->l[r];
    for (int64_t d = 0; d < D; ++d) o[d] = O(r, d) * inv;
    if (p.lse != nullptr) p.lse[i * p.H + t.head] = sc->m[r] + std::log(sc->l[r]);
  }
}

}  // namespace

void attention_forward_ref(const float* q, const float* k, const float* v, const int32_t* cu_seqlens,
                           int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, float* out, float* lse) {
  QWENQ_CHECK(n_seqs >= 0 && H > 0 && Hkv > 0 && D > 0,
              "attention_forward_ref: bad shape n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D);
  QWENQ_CHECK(H % Hkv == 0, "attention_forward_ref: query heads H=" << H << " must be a multiple of kv heads Hkv="
                                                                      << Hkv);
  if (n_seqs == 0) return;
  QWENQ_CHECK(cu_seqlens != nullptr, "attention_forward_ref: null cu_seqlens");
  QWENQ_CHECK(cu_seqlens[0] == 0, "attention_forward_ref: cu_seqlens[0] must be 0, got " << cu_seqlens[0]);
  for (int64_t s = 0; s < n_seqs; ++s)
    QWENQ_CHECK(cu_seqlens[s + 1] >= cu_seqlens[s], "attention_forward_ref: cu_seqlens must be non-decreasing, got "
                                                        << cu_seqlens[s] << " then " << cu_seqlens[s + 1]
                                                        << " at sequence " << s);
  const int64_t T = cu_seqlens[n_seqs];
  if (T == 0) return;
  QWENQ_CHECK(q != nullptr && k != nullptr && v != nullptr && out != nullptr, "attention_forward_ref: null pointer");

  const Problem p{q, k, v, H, Hkv, D, H / Hkv, static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), out, lse};

  // Tasks in (sequence, head, query block) order with their cumulative cost.
  std::vector<Task> tasks;
  std::vector<double> cost_end;  // cost of tasks [0, t]
  double total = 0;
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t b = cu_seqlens[s], e = cu_seqlens[s + 1];
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r0 = b; r0 < e; r0 += kQBlock) {
        const int64_t r1 = std::min(e, r0 + kQBlock);
        // rows × keys visited (whole key blocks up to the last row), plus a fixed cost per block
        total += static_cast<double>(r1 - r0) * static_cast<double>(r1 - b + kKBlock / 2) + 4.0 * kQBlock * kKBlock;
        tasks.push_back({b, r0, r1, h});
        cost_end.push_back(total);
      }
  }

  const int64_t parts = std::min<int64_t>(num_threads(), static_cast<int64_t>(tasks.size()));
  // Part i takes the tasks whose cumulative cost ends in (total·i/parts, total·(i+1)/parts].
  auto first_task = [&](int64_t part) -> int64_t {
    if (part == 0) return 0;
    if (part == parts) return static_cast<int64_t>(tasks.size());
    const double bound = total * static_cast<double>(part) / static_cast<double>(parts);
    return std::upper_bound(cost_end.begin(), cost_end.end(), bound) - cost_end.begin();
  };
  parallel_for(parts, 1, [&](int64_t part0, int64_t part1) {
    Scratch scratch(D);
    for (int64_t t = first_task(part0); t < first_task(part1); ++t) attend_block(p, tasks[t], &scratch);
  });
}

}  // namespace qwenq
