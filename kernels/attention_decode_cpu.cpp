// attention_decode_cpu / attention_decode_bf16_cpu (kernels/attention_decode.h): the decode attention of the CPU
// model's forward_step, attention_decode_ref's contract computed in blocks.
//   Task (b, g, split c), G = H/Hkv query heads of kv head g: Q = scale·q[b, g·G .. g·G + G − 1]   [G, D]
//   against keys [k0, k1) of the split (decode_split_keys: at most kMaxSplits splits of at least kKeyBlock keys,
//   cut from the sequence's own length), block by block of kKeyBlock keys:
//     S = Q·Kᵀ   (Eigen GEMM on the cache's strided rows; bf16 rows widened into a block buffer first)
//     m' = max(m, max S),  α = e^(m − m'),  P = e^(S − m'),  l = α·l + Σ P,  A = α·A + P·V,  m = m'   (per row)
//   then per (b, h), the splits in order:  M = max_c m_c,  L = Σ_c l_c·e^(m_c − M),  out = Σ_c A_c·e^(m_c − M) / L.
// The softmax of attention_decode_ref with the sums grouped by block and split. Each key and value row is read
// once per kv head (the plain loops read it once per query head), and the G dot products of a key share its
// loads. Which keys a task takes depends on the length alone, so the result is the same for any thread count.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_decode_split.h"

namespace qwenq {

namespace {

constexpr int64_t kKeyBlock = 256;  // keys per score block, and the fewest keys a split takes
constexpr int64_t kMaxSplits = 32;  // at most this many splits per (sequence, kv head)

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstStrided = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;

// n rows of D elements, `stride` apart, as an fp32 matrix: fp32 rows in place, bf16 rows widened into buf.
ConstStrided block_rows(const float* r, int64_t n, int64_t D, int64_t stride, RowMat*) {
  return ConstStrided(r, n, D, Eigen::OuterStride<>(stride));
}
ConstStrided block_rows(const uint16_t* r, int64_t n, int64_t D, int64_t stride, RowMat* buf) {
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* src = r + j * stride;
    float* dst = buf->data() + j * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = bf16_to_f32(src[d]);
  }
  return ConstStrided(buf->data(), n, D, Eigen::OuterStride<>(D));
}

struct Scratch {
  RowMat Q, S, A, rows;
  std::vector<float> m, l;
  Scratch(int64_t G, int64_t D) : Q(G, D), S(G, kKeyBlock), A(G, D), rows(kKeyBlock, D), m(G), l(G) {}
};

// One split: the G query rows at q against keys [k0, k1) of rows k, v (key j at j·stride). Writes the split's
// partial softmax to part: m [G], l [G], A [G, D] (m = −inf, l = 0, A = 0 for an empty split).
template <typename T>
void attend_split(const float* q, const T* k, const T* v, int64_t stride, int64_t k0, int64_t k1, int64_t G,
                  int64_t D, float scale, Scratch* sc, float* part) {
  sc->Q = Eigen::Map<const RowMat>(q, G, D) * scale;
  sc->A.setZero();
  std::fill(sc->m.begin(), sc->m.end(), -INFINITY);
  std::fill(sc->l.begin(), sc->l.end(), 0.f);
  for (int64_t j0 = k0; j0 < k1; j0 += kKeyBlock) {
    const int64_t nk = std::min(kKeyBlock, k1 - j0);
    auto S = sc->S.leftCols(nk);
    S.noalias() = sc->Q * block_rows(k + j0 * stride, nk, D, stride, &sc->rows).transpose();
    for (int64_t r = 0; r < G; ++r) {
      const float m_new = std::max(sc->m[r], S.row(r).maxCoeff());
      const float alpha = std::exp(sc->m[r] - m_new);  // 0 on the first block (m = -inf)
      S.row(r) = (S.row(r).array() - m_new).exp().matrix();
      sc->l[r] = sc->l[r] * alpha + S.row(r).sum();
      if (alpha != 1.f) sc->A.row(r) *= alpha;
      sc->m[r] = m_new;
    }
    sc->A.noalias() += S * block_rows(v + j0 * stride, nk, D, stride, &sc->rows);
  }
  std::copy(sc->m.begin(), sc->m.end(), part);
  std::copy(sc->l.begin(), sc->l.end(), part + G);
  std::copy(sc->A.data(), sc->A.data() + G * D, part + 2 * G);
}

template <typename T>
void decode_cpu(const char* name, const float* q, const T* k_cache, const T* v_cache, const int32_t* lens, int64_t B,
                int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out) {
  if (!attention_decode_check_args(name, q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out,
                                   static_cast<int>(sizeof(T)), /*kernel_limits=*/false))
    return;
  for (int64_t b = 0; b < B; ++b)
    QWENQ_CHECK(lens[b] >= 1 && lens[b] <= max_len,
                name << ": lens[" << b << "]=" << lens[b] << " must be in [1, max_len=" << max_len << "]");

  const int64_t G = H / Hkv, stride = Hkv * D, part_size = G * (D + 2);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  // Splits per sequence (the same for each of its kv heads) and the first task of each sequence.
  std::vector<int64_t> splits(B), first(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    splits[b] = std::min(kMaxSplits, std::max<int64_t>(1, (lens[b] + kKeyBlock - 1) / kKeyBlock));
    first[b + 1] = first[b] + Hkv * splits[b];
  }
  std::vector<float> parts(static_cast<size_t>(first[B] * part_size));
  parallel_for(first[B], 1, [&](int64_t begin, int64_t end) {
    Scratch sc(G, D);
    int64_t b = std::upper_bound(first.begin(), first.end(), begin) - first.begin() - 1;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first[b + 1]) ++b;
      const int64_t g = (task - first[b]) / splits[b], c = (task - first[b]) % splits[b];
      const DecodeSplitKeys keys = decode_split_keys(lens[b], kMaxSplits, kKeyBlock, c);
      const int64_t base = (b * capacity * Hkv + g) * D;  // key j of kv head g at base + j·stride
      attend_split(q + (b * H + g * G) * D, k_cache + base, v_cache + base, stride, keys.k0,
                   std::max(keys.k0, keys.k1), G, D, scale, &sc, parts.data() + task * part_size);
    }
  });
  // Merge the splits of each (sequence, head) in split order.
  parallel_for(B * H, 8, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / H, h = idx % H, g = h / G, r = h % G;
      const float* p0 = parts.data() + (first[b] + g * splits[b]) * part_size;
      float M = -INFINITY;
      for (int64_t c = 0; c < splits[b]; ++c) M = std::max(M, p0[c * part_size + r]);
      float L = 0.f;
      float* o = out + (b * H + h) * D;
      std::fill(o, o + D, 0.f);
      for (int64_t c = 0; c < splits[b]; ++c) {
        const float* p = p0 + c * part_size;
        if (p[G + r] == 0.f) continue;  // an empty split
        const float w = std::exp(p[r] - M);
        L += p[G + r] * w;
        const float* a = p + 2 * G + r * D;
        for (int64_t d = 0; d < D; ++d) o[d] += a[d] * w;
      }
      for (int64_t d = 0; d < D; ++d) o[d] /= L;
    }
  });
}

}  // namespace

void attention_decode_cpu(const float* q, const float* k_cache, const float* v_cache, const int32_t* lens, int64_t B,
                          int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len, float* out) {
  decode_cpu("attention_decode_cpu", q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out);
}

void attention_decode_bf16_cpu(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, const int32_t* lens,
                               int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t capacity, int64_t max_len,
                               float* out) {
  decode_cpu("attention_decode_bf16_cpu", q, k_cache, v_cache, lens, B, H, Hkv, D, capacity, max_len, out);
}

}  // namespace qwenq
