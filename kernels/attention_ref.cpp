// Causal grouped-query attention over packed variable-length sequences:
//   for sequence s = rows [b, e), query head h, kv head g = h / (H / Hkv), query row i in [b, e):
//     S[j]   = (q[i,h] · k[j,g]) · scale,  j in [b, i],   scale = 1/sqrt(D) rounded to fp32
//     m      = max_j S[j],  l = Σ_j exp(S[j] − m)           (fp32, max subtracted)
//     out    = Σ_j exp(S[j] − m) · v[j,g] / l,   lse[i,h] = m + log(l)
// Computed flash-attention style, one block of kQBlock query rows of all the query heads of one kv head (stacked:
// group·kQBlock rows, so each key block feeds one GEMM of the whole group) at a time against blocks of kKBlock keys:
// S_blk = (scale·Q_blk) · K_blkᵀ (Eigen GEMM on strided views), causal mask on the diagonal blocks, then the online
// softmax update per row (m' = max(m, max S_blk), α = exp(m − m'), l = α·l + Σ exp(S_blk − m'), O = α·O +
// exp(S_blk − m')·V_blk) with Eigen's vectorized exp. Mathematically the same softmax; the sums are just
// grouped by key block. Memory per thread: one group·kQBlock × kKBlock score block and a group·kQBlock × D
// accumulator, whatever T is. Grouping the heads took the forward from 107-121 to 123-141 GFLOP/s on 2 Zen 4 cores
// (benchmarks/bench_attention_cpu.cpp, T 512-8192, Qwen2.5-0.5B and 7B heads).
// Work: (sequence, kv head, query block) tasks; a causal block costs about Σ (keys visited), so the task list is
// cut into one contiguous piece of equal cost per thread.
//
// Backward, with P recomputed block by block from the forward's lse (P = exp(S − lse), no online softmax):
//   δ[i,h] = Σ_d dout·out (fp32), then two kinds of independent tasks, run in one cost-balanced pass:
//   key-block tasks (sequence, kv head g, kBwdKBlock keys): for each block of kBwdQBlock query rows at or after the
//     first key, the rows of all of group g's query heads stacked as the forward's, P = exp(S − lse), dP = dO·Vᵀ, dS = P ⊙ (dP − δ);
//     dV += Pᵀ·dO, dK += dSᵀ·(scale·Q). The task owns its rows of dk and dv, so the group sum needs no atomics.
//   query-block tasks (sequence, kv head g, kBwdQBlock rows of its query heads, stacked): the same P and dS against
//     the keys up to the block's last row; dQ = scale · dS·K. The task owns its rows of dq.
// S and dS are thus computed twice (once per kind), the price of race-free writes with parallelism over key
// blocks as well as heads. Each output element is computed by one task in a fixed order, so the result does
// not depend on the number of threads.
//
// With bf16 (kernels/attention.h): the same blocks and tasks, every product through Bf16Block
// (kernels/gemm_bf16_block.h) on bf16-rounded operands; Q is loaded unscaled (the GPU's bf16 q) and the scale
// multiplies S, dq and dk instead. The forward packs a block's Q once for all its key blocks and P per key block
// (l sums the unrounded P); the backward packs the loaded Q and dO rows once per query block, and Pᵀ, dSᵀ
// (packed from P and dS as they lie) or dS per product. The row-by-row products of the non-finite cases take rounded copies,
// and a row counts as non-finite when its rounding is (a finite fp32 value past bf16's range rounds to inf).
//
// Non-finite inputs stay causal, as in the GPU kernels: a NaN or inf in a row reaches only the outputs that depend on
// it mathematically. A block GEMM over a diagonal block multiplies hidden entries (P = 0, dS = 0) by the rows they
// hide, and 0 · NaN = 0 · inf = NaN; so where those hidden rows are not all finite, the diagonal block's product
// is taken row by row over the visible part only (`rows_finite`, `visible_keys`). Finite inputs take the block GEMM (0 · x = 0
// adds nothing), so their results are bit for bit those of the plain block products.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/attention.h"
#include "kernels/gemm_bf16_block.h"

namespace qwenq {

namespace {

constexpr int64_t kQBlock = 32;   // measured on AVX2: 32 x 128 beats 64 x 64 by 1.5x at T = 4096
constexpr int64_t kKBlock = 128;
// Backward blocks (not tuned): per thread at D = 128, dK and dV take 64 KB, the Q and dO rows 32 KB, P and dS 16 KB.
constexpr int64_t kBwdQBlock = 32;
constexpr int64_t kBwdKBlock = 64;

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstStrided = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
using Strided = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;

struct Bf16Round {
  float operator()(float x) const { return bf16_round(x); }
};

// Rows [r0, n) of m all finite (true for an empty range), as the products read them: rounded to bf16 with `bf16` (a
// finite fp32 value past bf16's range rounds to inf).
template <class M>
bool rows_finite(const M& m, int64_t r0, bool bf16 = false) {
  if (r0 >= m.rows()) return true;
  return bf16 ? m.bottomRows(m.rows() - r0).unaryExpr(Bf16Round{}).allFinite()
              : m.bottomRows(m.rows() - r0).allFinite();
}

// m rounded to bf16 values: an operand of the bf16 products' row-by-row fallbacks (the non-finite cases).
template <class M>
RowMat rounded(const M& m) {
  return m.unaryExpr(Bf16Round{});
}

// Keys visible to query row i in a block of nk keys starting at key j0: j0 .. i, clamped to [0, nk].
inline int64_t visible_keys(int64_t i, int64_t j0, int64_t nk) { return std::clamp<int64_t>(i - j0 + 1, 0, nk); }

struct Task {
  int64_t begin;       // first row of the sequence
  int64_t row0, row1;  // query rows of this block
  int64_t kv_head;     // the block's query heads are the group of this kv head
};

struct Problem {
  const float *q, *k, *v;
  int64_t H, Hkv, D, group;
  float scale;
  float *out, *lse;
  int64_t q0 = 0;     // the row (key index) of q's, out's and lse's first row: p0 for attention_forward_suffix_ref
  bool bf16 = false;  // products on bf16 operands (Bf16Block), the scale applied to S
};

// A block's rows are (query head of the group, query row): block row hl·nq + r is head g·group + hl at row row0 + r.
struct Scratch {
  RowMat Q, S, O;
  std::vector<float> m, l;
  Bf16Block qa, pa;  // bf16: the block's Q rows, and P
  Scratch(int64_t D, int64_t group)
      : Q(kQBlock * group, D), S(kQBlock * group, kKBlock), O(kQBlock * group, D), m(kQBlock * group),
        l(kQBlock * group) {}
};

void attend_block(const Problem& p, const Task& t, Scratch* sc) {
  const int64_t nq = t.row1 - t.row0, D = p.D, g = t.kv_head, G = p.group, rows = nq * G;
  // The query rows of every head of the group, times the scale (a power of two for D = 64, 256, ...; otherwise one
  // more rounding); with bf16 operands q as it is (the GPU's bf16 q) and the scale on S.
  auto Q = sc->Q.topRows(rows);
  const float q_scale = p.bf16 ? 1.f : p.scale;
  for (int64_t hl = 0; hl < G; ++hl)
    Q.middleRows(hl * nq, nq) = ConstStrided(p.q + ((t.row0 - p.q0) * p.H + g * G + hl) * D, nq, D,
                                             Eigen::OuterStride<>(p.H * D)) *
                                q_scale;
  if (p.bf16) sc->qa.pack_a(Q.data(), D, rows, D);
  auto O = sc->O.topRows(rows);
  O.setZero();
  std::fill(sc->m.begin(), sc->m.begin() + rows, -INFINITY);
  std::fill(sc->l.begin(), sc->l.begin() + rows, 0.f);

  // Keys [begin, row1): every row of the block sees key `begin`, so m is finite after the first key block.
  for (int64_t k0 = t.begin; k0 < t.row1; k0 += kKBlock) {
    const int64_t nk = std::min(kKBlock, t.row1 - k0);
    ConstStrided K(p.k + (k0 * p.Hkv + g) * D, nk, D, Eigen::OuterStride<>(p.Hkv * D));
    ConstStrided V(p.v + (k0 * p.Hkv + g) * D, nk, D, Eigen::OuterStride<>(p.Hkv * D));
    auto S = sc->S.topLeftCorner(rows, nk);
    if (p.bf16) {
      sc->qa.multiply(K.data(), K.outerStride(), Bf16BLayout::Transposed, nk, S.data(), S.outerStride(), false);
      S *= p.scale;
    } else {
      S.noalias() = Q * K.transpose();
    }
    const bool diagonal = k0 + nk - 1 > t.row0;  // key j is visible to row i only if j <= i
    if (diagonal) {
      for (int64_t b = 0; b < rows; ++b) {
        const int64_t first_hidden = std::max<int64_t>(0, t.row0 + b % nq + 1 - k0);
        for (int64_t c = first_hidden; c < nk; ++c) S(b, c) = -INFINITY;
      }
    }
    for (int64_t b = 0; b < rows; ++b) {
      const float m_new = std::max(sc->m[b], S.row(b).maxCoeff());
      const float alpha = std::exp(sc->m[b] - m_new);  // 0 on the first block (m = -inf)
      S.row(b) = (S.row(b).array() - m_new).exp().matrix();
      sc->l[b] = sc->l[b] * alpha + S.row(b).sum();
      if (alpha != 1.f) O.row(b) *= alpha;
      sc->m[b] = m_new;
    }
    if (diagonal && !rows_finite(V, t.row0 + 1 - k0, p.bf16)) {
      // Causal row by row: V holds a non-finite row that some rows of the block must not see.
      const RowMat Vr = p.bf16 ? rounded(V) : RowMat();
      for (int64_t b = 0; b < rows; ++b) {
        const int64_t vis = visible_keys(t.row0 + b % nq, k0, nk);
        if (p.bf16) {
          O.row(b).noalias() += rounded(S.row(b).head(vis)) * Vr.topRows(vis);
        } else {
          O.row(b).noalias() += S.row(b).head(vis) * V.topRows(vis);
        }
      }
    } else if (p.bf16) {
      sc->pa.pack_a(S.data(), S.outerStride(), rows, nk);  // P rounded to bf16; l summed the unrounded P
      sc->pa.multiply(V.data(), V.outerStride(), Bf16BLayout::Rows, D, O.data(), O.outerStride(), true);
    } else {
      O.noalias() += S * V;
    }
  }

  for (int64_t b = 0; b < rows; ++b) {
    const int64_t i = t.row0 + b % nq, h = g * G + b / nq;
    float* o = p.out + ((i - p.q0) * p.H + h) * D;
    const float inv = 1.0f / sc->l[b];
    for (int64_t d = 0; d < D; ++d) o[d] = O(b, d) * inv;
    if (p.lse != nullptr) p.lse[(i - p.q0) * p.H + h] = sc->m[b] + std::log(sc->l[b]);
  }
}

// Checks the shapes and cu_seqlens shared by forward and backward (`name` starts the messages); returns
// T = cu_seqlens[n_seqs], 0 when there are no sequences.
int64_t check_packed(const char* name, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H, int64_t Hkv,
                     int64_t D) {
  QWENQ_CHECK(n_seqs >= 0 && H > 0 && Hkv > 0 && D > 0,
              name << ": bad shape n_seqs=" << n_seqs << " H=" << H << " Hkv=" << Hkv << " D=" << D);
  QWENQ_CHECK(H % Hkv == 0, name << ": query heads H=" << H << " must be a multiple of kv heads Hkv=" << Hkv);
  if (n_seqs == 0) return 0;
  QWENQ_CHECK(cu_seqlens != nullptr, name << ": null cu_seqlens");
  QWENQ_CHECK(cu_seqlens[0] == 0, name << ": cu_seqlens[0] must be 0, got " << cu_seqlens[0]);
  for (int64_t s = 0; s < n_seqs; ++s)
    QWENQ_CHECK(cu_seqlens[s + 1] >= cu_seqlens[s], name << ": cu_seqlens must be non-decreasing, got "
                                                         << cu_seqlens[s] << " then " << cu_seqlens[s + 1]
                                                         << " at sequence " << s);
  return cu_seqlens[n_seqs];
}

// Calls run(first, last) on contiguous ranges of tasks, one per thread, of about equal cost; cost_end[t] is the
// cost of tasks [0, t]. Part i takes the tasks whose cumulative cost ends in (total·i/parts, total·(i+1)/parts].
void run_balanced(const std::vector<double>& cost_end, const std::function<void(int64_t, int64_t)>& run) {
  const int64_t n = static_cast<int64_t>(cost_end.size());
  if (n == 0) return;
  const double total = cost_end.back();
  const int64_t parts = std::min<int64_t>(num_threads(), n);
  auto first_task = [&](int64_t part) -> int64_t {
    if (part == 0) return 0;
    if (part == parts) return n;
    const double bound = total * static_cast<double>(part) / static_cast<double>(parts);
    return std::upper_bound(cost_end.begin(), cost_end.end(), bound) - cost_end.begin();
  };
  parallel_for(parts, 1, [&](int64_t part0, int64_t part1) { run(first_task(part0), first_task(part1)); });
}

// ---- backward ----------------------------------------------------------------------------------------------

struct BwdTask {
  bool kv;             // key-block task (rows = keys) or query-block task (rows = queries); head = the kv head
  int64_t begin, end;  // the sequence
  int64_t row0, row1;
  int64_t head;
};

struct BwdProblem {
  const float *dout, *q, *k, *v, *lse, *delta;
  int64_t H, Hkv, D, group;
  float scale;
  float *dq, *dk, *dv;
  bool bf16 = false;  // products on bf16 operands (Bf16Block); Q then unscaled, the scale applied to S, dq and dk
};

// A loaded block's rows are (query head of the kv head's group, query row), as the forward's: block row hl·nq + r is
// head g·group + hl at row i0 + r.
struct BwdScratch {
  RowMat Q, dO, P, dS, acc1, acc2;
  Bf16Block qa, doa, blk;  // bf16: the loaded Q and dO rows; a transient operand (dS, or Pᵀ and dSᵀ)
  BwdScratch(int64_t D, int64_t group)
      : Q(kBwdQBlock * group, D), dO(kBwdQBlock * group, D), P(kBwdQBlock * group, kBwdKBlock),
        dS(kBwdQBlock * group, kBwdKBlock), acc1(std::max(kBwdQBlock * group, kBwdKBlock), D), acc2(kBwdKBlock, D) {}
};

// Loads rows [i0, i0 + nq) of every query head of kv head g: sc->Q = scale · q (bf16: q, packed with dO), sc->dO =
// dout.
void load_query_rows(const BwdProblem& p, int64_t g, int64_t i0, int64_t nq, BwdScratch* sc) {
  const Eigen::OuterStride<> stride(p.H * p.D);
  const float q_scale = p.bf16 ? 1.f : p.scale;
  for (int64_t hl = 0; hl < p.group; ++hl) {
    const int64_t h = g * p.group + hl;
    sc->Q.middleRows(hl * nq, nq) = ConstStrided(p.q + (i0 * p.H + h) * p.D, nq, p.D, stride) * q_scale;
    sc->dO.middleRows(hl * nq, nq) = ConstStrided(p.dout + (i0 * p.H + h) * p.D, nq, p.D, stride);
  }
  if (p.bf16) {
    sc->qa.pack_a(sc->Q.data(), p.D, nq * p.group, p.D);
    sc->doa.pack_a(sc->dO.data(), p.D, nq * p.group, p.D);
  }
}

// acc (+)= Xᵀ·Y on bf16 operands: X [rows, n] (a block of sc->P or sc->dS), Y [rows, D] (the loaded rows),
// acc [n, D].
template <class X, class Y, class Acc>
void add_transposed_product_bf16(const X& x, const Y& y, Acc* acc, BwdScratch* sc) {
  sc->blk.pack_a_transposed(x.data(), x.outerStride(), x.cols(), x.rows());
  sc->blk.multiply(y.data(), y.outerStride(), Bf16BLayout::Rows, y.cols(), acc->data(), acc->outerStride(), true);
}

// For the loaded rows [i0, i0 + nq) of kv head g's query heads against keys [j0, j0 + nk) (K, V: those rows of g):
// sc->P = exp(S − lse) with hidden keys (j > i) 0, and sc->dS = P ⊙ (dO·Vᵀ − δ).
void probs_and_dscores(const BwdProblem& p, int64_t g, int64_t i0, int64_t nq, int64_t j0, int64_t nk,
                       const ConstStrided& K, const ConstStrided& V, BwdScratch* sc) {
  const int64_t rows = nq * p.group;
  auto P = sc->P.topLeftCorner(rows, nk);
  auto dS = sc->dS.topLeftCorner(rows, nk);
  if (p.bf16) {
    sc->qa.multiply(K.data(), K.outerStride(), Bf16BLayout::Transposed, nk, P.data(), P.outerStride(), false);
    P *= p.scale;
    sc->doa.multiply(V.data(), V.outerStride(), Bf16BLayout::Transposed, nk, dS.data(), dS.outerStride(), false);
  } else {
    P.noalias() = sc->Q.topRows(rows) * K.transpose();
    dS.noalias() = sc->dO.topRows(rows) * V.transpose();
  }
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t i = i0 + b % nq, h = g * p.group + b / nq, visible = visible_keys(i, j0, nk);  // keys j0 .. i
    const float lse = p.lse[i * p.H + h], delta = p.delta[i * p.H + h];
    P.row(b).head(visible) = (P.row(b).head(visible).array() - lse).exp().matrix();
    P.row(b).tail(nk - visible).setZero();
    dS.row(b).head(visible) = (P.row(b).head(visible).array() * (dS.row(b).head(visible).array() - delta)).matrix();
    dS.row(b).tail(nk - visible).setZero();  // not P · (dP − δ): a hidden key's NaN v would make 0 · NaN
  }
}

// dk and dv of keys [row0, row1) of kv head t.head: sums over the group's query heads and the query rows that
// see these keys (row0 .. end of the sequence).
void backward_kv_block(const BwdProblem& p, const BwdTask& t, BwdScratch* sc) {
  const int64_t nk = t.row1 - t.row0, D = p.D, g = t.head;
  const Eigen::OuterStride<> kv_stride(p.Hkv * D);
  ConstStrided K(p.k + (t.row0 * p.Hkv + g) * D, nk, D, kv_stride);
  ConstStrided V(p.v + (t.row0 * p.Hkv + g) * D, nk, D, kv_stride);
  auto dK = sc->acc1.topRows(nk);
  auto dV = sc->acc2.topRows(nk);
  dK.setZero();
  dV.setZero();
  for (int64_t i0 = t.row0; i0 < t.end; i0 += kBwdQBlock) {
    const int64_t nq = std::min(kBwdQBlock, t.end - i0), rows = nq * p.group;
    load_query_rows(p, g, i0, nq, sc);
    probs_and_dscores(p, g, i0, nq, t.row0, nk, K, V, sc);
    const auto P = sc->P.topLeftCorner(rows, nk), dS = sc->dS.topLeftCorner(rows, nk);
    const auto Q = sc->Q.topRows(rows), dO = sc->dO.topRows(rows);  // Q carries the scale (not with bf16)
    // Query rows before the block's last key hide some of its keys; they must not reach those keys' dk, dv.
    const int64_t hiding = std::clamp<int64_t>(t.row0 + nk - 1 - i0, 0, nq);
    bool hidden_finite = true;
    for (int64_t hl = 0; hl < p.group && hiding > 0; ++hl)
      hidden_finite = hidden_finite && rows_finite(Q.middleRows(hl * nq, hiding), 0, p.bf16) &&
                      rows_finite(dO.middleRows(hl * nq, hiding), 0, p.bf16);
    if (!hidden_finite) {
      for (int64_t b = 0; b < rows; ++b) {
        const int64_t vis = visible_keys(i0 + b % nq, t.row0, nk);
        if (p.bf16) {
          dV.topRows(vis).noalias() += rounded(P.row(b).head(vis)).transpose() * rounded(dO.row(b));
          dK.topRows(vis).noalias() += rounded(dS.row(b).head(vis)).transpose() * rounded(Q.row(b));
        } else {
          dV.topRows(vis).noalias() += P.row(b).head(vis).transpose() * dO.row(b);
          dK.topRows(vis).noalias() += dS.row(b).head(vis).transpose() * Q.row(b);
        }
      }
    } else if (p.bf16) {
      add_transposed_product_bf16(P, dO, &dV, sc);
      add_transposed_product_bf16(dS, Q, &dK, sc);
    } else {
      dV.noalias() += P.transpose() * dO;
      dK.noalias() += dS.transpose() * Q;
    }
  }
  if (p.bf16) dK *= p.scale;
  Strided(p.dk + (t.row0 * p.Hkv + g) * D, nk, D, kv_stride) = dK;
  Strided(p.dv + (t.row0 * p.Hkv + g) * D, nk, D, kv_stride) = dV;
}

// dq of query rows [row0, row1) of kv head t.head's query heads, against keys begin .. row1 - 1.
void backward_q_block(const BwdProblem& p, const BwdTask& t, BwdScratch* sc) {
  const int64_t nq = t.row1 - t.row0, D = p.D, g = t.head, rows = nq * p.group;
  const Eigen::OuterStride<> kv_stride(p.Hkv * D);
  load_query_rows(p, g, t.row0, nq, sc);
  auto dQ = sc->acc1.topRows(rows);
  dQ.setZero();
  for (int64_t j0 = t.begin; j0 < t.row1; j0 += kBwdKBlock) {
    const int64_t nk = std::min(kBwdKBlock, t.row1 - j0);
    ConstStrided K(p.k + (j0 * p.Hkv + g) * D, nk, D, kv_stride);
    ConstStrided V(p.v + (j0 * p.Hkv + g) * D, nk, D, kv_stride);
    probs_and_dscores(p, g, t.row0, nq, j0, nk, K, V, sc);
    const auto dS = sc->dS.topLeftCorner(rows, nk);
    if (j0 + nk - 1 > t.row0 && !rows_finite(K, t.row0 + 1 - j0, p.bf16)) {  // a hidden non-finite key row
      const RowMat Kr = p.bf16 ? rounded(K) : RowMat();
      for (int64_t b = 0; b < rows; ++b) {
        const int64_t vis = visible_keys(t.row0 + b % nq, j0, nk);
        if (p.bf16) {
          dQ.row(b).noalias() += rounded(dS.row(b).head(vis)) * Kr.topRows(vis);
        } else {
          dQ.row(b).noalias() += dS.row(b).head(vis) * K.topRows(vis);
        }
      }
    } else if (p.bf16) {
      sc->blk.pack_a(dS.data(), dS.outerStride(), rows, nk);
      sc->blk.multiply(K.data(), K.outerStride(), Bf16BLayout::Rows, D, dQ.data(), dQ.outerStride(), true);
    } else {
      dQ.noalias() += dS * K;
    }
  }
  for (int64_t hl = 0; hl < p.group; ++hl)
    Strided(p.dq + (t.row0 * p.H + g * p.group + hl) * D, nq, D, Eigen::OuterStride<>(p.H * D)) =
        dQ.middleRows(hl * nq, nq) * p.scale;
}

// The forward's work: (sequence, kv head, query block) tasks with their cumulative cost, cut into one contiguous
// piece of equal cost per thread.
struct ForwardTasks {
  std::vector<Task> tasks;
  std::vector<double> cost_end;  // cost of tasks [0, t]
  double total = 0;
  // Query rows [r_first, e) of the sequence starting at row b, every head.
  void add(int64_t b, int64_t r_first, int64_t e, int64_t Hkv) {
    for (int64_t g = 0; g < Hkv; ++g)
      for (int64_t r0 = r_first; r0 < e; r0 += kQBlock) {
        const int64_t r1 = std::min(e, r0 + kQBlock);
        // rows × keys visited (whole key blocks up to the last row), plus a fixed cost per block
        total += static_cast<double>(r1 - r0) * static_cast<double>(r1 - b + kKBlock / 2) + 4.0 * kQBlock * kKBlock;
        tasks.push_back({b, r0, r1, g});
        cost_end.push_back(total);
      }
  }
  void run(const Problem& p) const {
    run_balanced(cost_end, [&](int64_t t0, int64_t t1) {
      Scratch scratch(p.D, p.group);
      for (int64_t t = t0; t < t1; ++t) attend_block(p, tasks[t], &scratch);
    });
  }
};

}  // namespace

void attention_forward_ref(const float* q, const float* k, const float* v, const int32_t* cu_seqlens,
                           int64_t n_seqs, int64_t H, int64_t Hkv, int64_t D, float* out, float* lse, bool bf16) {
  const int64_t T = check_packed("attention_forward_ref", cu_seqlens, n_seqs, H, Hkv, D);
  if (T == 0) return;
  QWENQ_CHECK(q != nullptr && k != nullptr && v != nullptr && out != nullptr, "attention_forward_ref: null pointer");
  Problem p{q, k, v, H, Hkv, D, H / Hkv, static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), out, lse};
  p.bf16 = bf16;
  ForwardTasks work;
  for (int64_t s = 0; s < n_seqs; ++s) work.add(cu_seqlens[s], cu_seqlens[s], cu_seqlens[s + 1], Hkv);
  work.run(p);
}

void attention_forward_suffix_ref(const float* q, const float* k, const float* v, int64_t p0, int64_t n, int64_t H,
                                  int64_t Hkv, int64_t D, float* out, bool bf16) {
  QWENQ_CHECK(p0 >= 0 && n >= 0 && H > 0 && Hkv > 0 && D > 0 && H % Hkv == 0,
              "attention_forward_suffix_ref: bad shape p0=" << p0 << " n=" << n << " H=" << H << " Hkv=" << Hkv
                                                            << " D=" << D);
  if (n == 0) return;
  QWENQ_CHECK(q != nullptr && k != nullptr && v != nullptr && out != nullptr,
              "attention_forward_suffix_ref: null pointer");
  Problem p{q, k, v, H, Hkv, D, H / Hkv, static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), out, nullptr};
  p.q0 = p0;
  p.bf16 = bf16;
  ForwardTasks work;  // rows [p0, p0 + n) of one sequence starting at row 0
  work.add(0, p0, p0 + n, Hkv);
  work.run(p);
}

void attention_backward_ref(const float* dout, const float* q, const float* k, const float* v, const float* out,
                            const float* lse, const int32_t* cu_seqlens, int64_t n_seqs, int64_t H, int64_t Hkv,
                            int64_t D, float* dq, float* dk, float* dv, bool bf16) {
  const int64_t T = check_packed("attention_backward_ref", cu_seqlens, n_seqs, H, Hkv, D);
  if (T == 0) return;
  QWENQ_CHECK(dout != nullptr && q != nullptr && k != nullptr && v != nullptr && out != nullptr && lse != nullptr,
              "attention_backward_ref: null input pointer (dout, q, k, v, out and lse are all required)");
  QWENQ_CHECK(dq != nullptr && dk != nullptr && dv != nullptr, "attention_backward_ref: null output pointer");

  std::vector<float> delta(static_cast<size_t>(T * H));
  parallel_for(T * H, std::max<int64_t>(1, 16384 / D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += dout[r * D + d] * out[r * D + d];
      delta[r] = s;
    }
  });
  BwdProblem p{dout, q, k, v, lse, delta.data(), H, Hkv, D, H / Hkv,
               static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), dq, dk, dv};
  p.bf16 = bf16;

  // Costs in score entries visited (a key-block task does 4 GEMMs per entry, a query-block task 3), plus a
  // fixed cost per block.
  std::vector<BwdTask> tasks;
  std::vector<double> cost_end;
  double total = 0;
  const double fixed = 4.0 * kBwdQBlock * kBwdKBlock;
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t b = cu_seqlens[s], e = cu_seqlens[s + 1];
    for (int64_t g = 0; g < Hkv; ++g)
      for (int64_t j0 = b; j0 < e; j0 += kBwdKBlock) {
        const int64_t j1 = std::min(e, j0 + kBwdKBlock);
        total += 4.0 * p.group * static_cast<double>(j1 - j0) * static_cast<double>(e - j0 + kBwdQBlock / 2) + fixed;
        tasks.push_back({true, b, e, j0, j1, g});
        cost_end.push_back(total);
      }
    for (int64_t g = 0; g < Hkv; ++g)
      for (int64_t i0 = b; i0 < e; i0 += kBwdQBlock) {
        const int64_t i1 = std::min(e, i0 + kBwdQBlock);
        total += 3.0 * p.group * static_cast<double>(i1 - i0) * static_cast<double>(i1 - b + kBwdKBlock / 2) + fixed;
        tasks.push_back({false, b, e, i0, i1, g});
        cost_end.push_back(total);
      }
  }
  run_balanced(cost_end, [&](int64_t t0, int64_t t1) {
    BwdScratch scratch(D, p.group);
    for (int64_t t = t0; t < t1; ++t) {
      if (tasks[t].kv)
        backward_kv_block(p, tasks[t], &scratch);
      else
        backward_q_block(p, tasks[t], &scratch);
    }
  });
}

}  // namespace qwenq
