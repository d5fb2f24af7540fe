// Repacking GPTQ v1/v2, AutoAWQ GEMM and bitsandbytes NF4/FP4 into the Q4 layout (qgemm_layout.h), and back
// to dense fp32 for tests. Codes and zeros are unpacked with the source format's own unpackers (int_pack.h),
// and NF4 absmax with its own reader (nf4_block_absmax), so the repack inherits their exactness.
#include "quant/format/qgemm_layout.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/rng.h"
#include "core/threads.h"
#include "quant/format/int_pack.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"

namespace qwenq {
namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

Q4Layout empty_layout(Q4Kind kind, int64_t N, int64_t K, int64_t group) {
  Q4Layout q;
  q.kind = kind;
  q.K = K;
  q.N = N;
  q.Kp = round_up(K, kQ4RowPad);
  q.Np = round_up(N, kQ4ColPad);
  q.group = group;
  q.qweight.assign(q.Kp / kQ4CodesPerWord * q.Np, 0u);
  q.meta.assign(q.num_groups() * q.Np, 0u);
  return q;
}

// Packs codes [Kp, Np] (layout rows, already permuted and padded) into the qweight words.
void pack_words(const std::vector<uint8_t>& codes, Q4Layout* q) {
  const int64_t rows = q->Kp / kQ4CodesPerWord, Np = q->Np;
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t n = 0; n < Np; ++n) {
        uint32_t word = 0;
        for (int j = 0; j < kQ4CodesPerWord; ++j) {
          word |= static_cast<uint32_t>(codes[(r * kQ4CodesPerWord + j) * Np + n] & 15u) << (kQ4Bits * j);
        }
        q->qweight[r * Np + n] = word;
      }
    }
  });
}

}  // namespace

int64_t q4_int_layout_group(int64_t K, int64_t group_size) {
  const int64_t g = group_size <= 0 ? K : group_size;
  return (K + g - 1) / g == 1 ? q4_padded_k(K) : g;
}

int64_t q4_nf4_layout_group(int64_t K, int64_t blocksize) { return std::gcd(K, blocksize); }

namespace {

// The layout rows of an integer weight: perm (empty when g_idx is k / group), the layout group. Every check of
// whether p has a Q4 form at all is here (q4_check_int_linear runs them alone).
struct IntLayoutRows {
  std::vector<int32_t> perm;
  int64_t group = 0;
};

// g_idx is k / group for every row (or absent): the layout rows are the stored rows.
bool g_idx_is_identity(const PackedIntLinear& p) {
  for (size_t k = 0; k < p.g_idx.size(); ++k) {
    if (p.g_idx[k] != static_cast<int64_t>(k) / p.group) return false;
  }
  return true;
}

IntLayoutRows int_layout_rows(const PackedIntLinear& p, const char* what) {
  QWENQ_CHECK(p.bits == 4, what << ": only 4-bit codes have a Q4 layout, this weight is " << p.bits << "-bit");
  QWENQ_CHECK(p.K > 0 && p.N > 0 && p.group > 0, what << ": bad sizes K=" << p.K << " N=" << p.N << " group=" << p.group);
  const int64_t K = p.K, N = p.N, G = p.num_groups();
  const bool gptq = p.layout != IntLayout::AwqGemm;
  QWENQ_CHECK(p.scales.size() == static_cast<size_t>(G * N),
              what << ": scales hold " << p.scales.size() << " values, expected " << G << " x " << N);

  const size_t qw = gptq ? K / 8 * N : K * (N / 8), qz = G * (N / 8);
  QWENQ_CHECK((gptq ? K % 8 : N % 8) == 0 && N % 8 == 0 && p.qweight.size() == qw && p.qzeros.size() == qz,
              what << " (" << int_layout_name(p.layout) << ", K=" << K << ", N=" << N << "): qweight holds "
                   << p.qweight.size() << " words (expected " << qw << "), qzeros " << p.qzeros.size() << " (expected "
                   << qz << "); the packed axes must be multiples of 8");
  // Group of every source row; act-order when it is not k / group.
  std::vector<int64_t> group_of(K);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t g = p.g_idx.empty() ? k / p.group : p.g_idx[k];
    QWENQ_CHECK(g >= 0 && g < G, what << ": g_idx[" << k << "] = " << g << " is outside [0, " << G << ")");
    group_of[k] = g;
  }
  const bool identity = g_idx_is_identity(p);
  IntLayoutRows r;
  if (!identity) {
    r.perm.resize(K);
    std::iota(r.perm.begin(), r.perm.end(), 0);
    std::stable_sort(r.perm.begin(), r.perm.end(), [&](int32_t a, int32_t b) { return group_of[a] < group_of[b]; });
    // Sorted rows form contiguous groups only if every group has exactly `group` rows (the last: the rest).
    for (int64_t kk = 0; kk < K; ++kk) {
      QWENQ_CHECK(group_of[r.perm[kk]] == kk / p.group,
                  what << ": g_idx does not put exactly " << p.group << " rows in group " << kk / p.group
                       << " (act-order g_idx from GPTQ always does); layout row " << kk << " would hold a row of group "
                       << group_of[r.perm[kk]]);
    }
  }
  // Layout group: the format's, or the whole padded K when one group spans K (group_size -1).
  r.group = q4_int_layout_group(K, p.group);
  QWENQ_CHECK(r.group % kQ4CodesPerWord == 0,
              what << ": group size " << p.group << " is not a multiple of " << kQ4CodesPerWord
                   << " (K=" << K << "): one Q4 word of 8 rows would straddle two groups");
  const int64_t layout_groups = (q4_padded_k(K) + r.group - 1) / r.group;  // Q4Layout::num_groups()
  QWENQ_CHECK(layout_groups == G, what << ": " << layout_groups << " layout groups for " << G << " source groups");
  QWENQ_CHECK(p.perm.empty() || p.perm.size() == static_cast<size_t>(K),
              what << ": perm holds " << p.perm.size() << " entries for K=" << K);
  return r;
}

constexpr const char* kIntRepack = "Q4 repack of a GPTQ/AWQ weight";
constexpr const char* kNf4Repack = "Q4 repack of a bitsandbytes 4-bit weight";

// The layout group of a bitsandbytes weight [N, K], after the checks of whether it has a Q4 form.
int64_t nf4_layout_group(const Nf4Tensor& t, int64_t N, int64_t K) {
  nf4_check(t, kNf4Repack);
  QWENQ_CHECK(N > 0 && K > 0 && N * K == t.n,
              kNf4Repack << ": shape [" << N << ", " << K << "] does not hold " << t.n << " weights");
  const int64_t B = t.blocksize;
  const int64_t group = q4_nf4_layout_group(K, B);
  QWENQ_CHECK(group % kQ4CodesPerWord == 0,
              kNf4Repack << ": gcd(K=" << K << ", blocksize=" << B << ") = " << group << " is not a multiple of "
                         << kQ4CodesPerWord << ", so a Q4 word of 8 rows would straddle two absmax blocks");
  return group;
}

}  // namespace

void q4_check_int_linear(const PackedIntLinear& p) { int_layout_rows(p, kIntRepack); }

void q4_check_nf4(const Nf4Tensor& t, int64_t N, int64_t K) { nf4_layout_group(t, N, K); }

bool q4_int_has_perm(const PackedIntLinear& p) { return !p.perm.empty() || !g_idx_is_identity(p); }

Q4Layout q4_from_int_linear(const PackedIntLinear& p) {
  const char* what = kIntRepack;
  IntLayoutRows rows = int_layout_rows(p, what);
  const int64_t K = p.K, N = p.N, G = p.num_groups();
  const int64_t group = rows.group;
  std::vector<int32_t> perm = std::move(rows.perm);
  // Source codes [K, N] and true zero points [G, N] (0..16: a GPTQ v1 field of all ones reads 16), by the format's
  // own unpackers.
  std::vector<uint8_t> codes(K * N);
  if (p.layout != IntLayout::AwqGemm) {
    gptq_unpack_qweight(p.qweight.data(), K, N, 4, codes.data());
  } else {
    awq_unpack(p.qweight.data(), K, N, codes.data());
  }
  const std::vector<uint16_t> zeros = int_linear_zeros(p);

  Q4Layout q = empty_layout(Q4Kind::Int, N, K, group);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t n = 0; n < N; ++n)
      q.meta[g * q.Np + n] = q4_int_meta(p.scales[g * N + n], static_cast<uint8_t>(zeros[g * N + n]));
  }
  std::vector<uint8_t> lcodes(q.Kp * q.Np, 0);
  for (int64_t kk = 0; kk < q.Kp; ++kk) {
    const int64_t g = std::min<int64_t>(kk / group, G - 1);
    for (int64_t n = 0; n < N; ++n) {
      // Padding rows take the zero point: (z - z)·s = +0 exactly (code 15 for a zero of 16, which no code can
      // equal: those padding rows are -s, read only against the zero x past K).
      lcodes[kk * q.Np + n] = kk < K ? codes[(perm.empty() ? kk : perm[kk]) * N + n]
                                     : static_cast<uint8_t>(std::min<uint16_t>(zeros[g * N + n], 15));
    }
  }
  for (int64_t kk = 0; kk < q.Kp; ++kk)
    for (int64_t n = 0; n < N; ++n)
      QWENQ_CHECK(lcodes[kk * q.Np + n] < 16, what << ": code/zero " << int(lcodes[kk * q.Np + n]) << " at row " << kk
                                                  << ", column " << n << " does not fit 4 bits");
  pack_words(lcodes, &q);
  // Rows already sorted in memory (int_linear_sort_inputs_by_group): layout row kk holds stored row perm[kk], whose
  // input is p.perm of it.
  if (!p.perm.empty()) {
    if (perm.empty()) {
      perm = p.perm;
    } else {
      for (int32_t& r : perm) r = p.perm[r];
    }
  }
  q.perm = std::move(perm);
  return q;
}

Q4Layout q4_from_nf4(const Nf4Tensor& t, int64_t N, int64_t K) {
  const int64_t group = nf4_layout_group(t, N, K);
  const int64_t B = t.blocksize;
  const std::vector<float> absmax = nf4_block_absmax(t);  // the CPU reader's exact fp32 scales (DQ decoded)
  Q4Layout q = empty_layout(t.fp4 ? Q4Kind::Fp4 : Q4Kind::Nf4, N, K, group);  // Kp == K: 8 | group | K
  const int64_t G = q.num_groups();
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t n = 0; n < N; ++n) q.meta[g * q.Np + n] = q4_float_meta(absmax[(n * K + g * group) / B]);
  }
  const uint8_t zero_code = t.fp4 ? kFp4ZeroCode : kNf4ZeroCode;
  std::vector<uint8_t> lcodes(q.Kp * q.Np, zero_code);
  parallel_for(N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = n * K + k;
        const uint8_t byte = t.packed[i / 2];
        lcodes[k * q.Np + n] = i % 2 == 0 ? byte >> 4 : byte & 0x0F;
      }
    }
  });
  pack_words(lcodes, &q);
  return q;
}

std::vector<float> q4_unpack(const Q4View& w) {
  q4_check(w, "q4_unpack");
  std::vector<float> W(w.N * w.K);
  parallel_for(w.Kp / kQ4CodesPerWord, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t g = r * kQ4CodesPerWord / w.group;
      for (int64_t n = 0; n < w.N; ++n) {
        const uint32_t word = w.qweight[r * w.Np + n], meta = w.meta[g * w.Np + n];
        for (int j = 0; j < kQ4CodesPerWord; ++j) {
          const int64_t kk = r * kQ4CodesPerWord + j;
          if (kk >= w.K) break;
          const int64_t k = w.perm ? w.perm[kk] : kk;
          W[n * w.K + k] = q4_dequant(w.kind, (word >> (kQ4Bits * j)) & 15u, meta);
        }
      }
    }
  });
  return W;
}

Q4Transient q4_transient_int_linear(const PackedIntLinear& p) {
  Q4Transient t;
  if (p.bits != 4 || p.K % kQ4CodesPerWord != 0 || p.N % 8 != 0 || p.group <= 0 ||
      q4_int_layout_group(p.K, p.group) % kQ4CodesPerWord != 0 || !g_idx_is_identity(p)) {
    return t;  // act-order rows not sorted by group yet: only a repack moves them
  }
  const IntLayoutRows rows = int_layout_rows(p, kIntRepack);  // the repack's checks (sizes, p.perm's; no new perm)
  const int64_t K = p.K, N = p.N, G = p.num_groups();
  const std::vector<uint16_t> zeros = int_linear_zeros(p);
  t.meta.resize(static_cast<size_t>(G * N));
  parallel_for(G * N, int64_t{1} << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) t.meta[i] = q4_int_meta(p.scales[i], static_cast<uint8_t>(zeros[i]));
  });
  const uint32_t* words = reinterpret_cast<const uint32_t*>(p.qweight.data());
  if (p.layout == IntLayout::AwqGemm) {
    // AWQ word (k, c) holds columns 8c..8c+7 of input k, column 8c + i in nibble kAwqReverseOrder[i]; Q4 word
    // (r, n) holds inputs 8r..8r+7 of column n. An 8 x 8 block of nibbles per (r, c), transposed.
    t.words.resize(static_cast<size_t>(K / kQ4CodesPerWord * N));
    const int64_t C = N / 8;
    parallel_for(K / kQ4CodesPerWord, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = 0; c < C; ++c) {
          uint32_t a[8];
          for (int j = 0; j < 8; ++j) a[j] = words[(r * 8 + j) * C + c];
          for (int i = 0; i < 8; ++i) {
            const int shift = 4 * kAwqReverseOrder[i];
            uint32_t w = 0;
            for (int j = 0; j < 8; ++j) w |= ((a[j] >> shift) & 15u) << (4 * j);
            t.words[r * N + 8 * c + i] = w;
          }
        }
      }
    });
    words = t.words.data();
  }
  // Rows sorted by group in memory (int_linear_sort_inputs_by_group) keep their order: stored row i holds input
  // p.perm[i], which the view's perm says.
  t.view = Q4View{Q4Kind::Int, K, N, K, N, rows.group, words, t.meta.data(), p.perm.empty() ? nullptr : p.perm.data()};
  return t;
}

Q4Transient q4_transient_nf4(const Nf4Tensor& nf, int64_t N, int64_t K) {
  Q4Transient t;
  if (K % kQ4CodesPerWord != 0 || N % kQ4ColPad != 0 || nf.blocksize <= 0 || K % nf.blocksize != 0 ||
      nf.blocksize % kQ4CodesPerWord != 0) {
    return t;
  }
  const int64_t group = nf4_layout_group(nf, N, K);  // == blocksize here; the repack's checks
  const int64_t G = K / group, R = K / kQ4CodesPerWord;
  const std::vector<float> absmax = nf4_block_absmax(nf);  // the CPU reader's exact fp32 scales (DQ decoded)
  t.meta.resize(static_cast<size_t>(G * N));
  t.words.resize(static_cast<size_t>(R * N));
  // Row n's codes k = 8r..8r+7 are bytes 4r..4r+3 of the row, element 2q in the high nibble of byte q; Q4 wants
  // code j in bits 4j: the word read little-endian, with the two nibbles of every byte swapped.
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = nf.packed.data() + n * (K / 2);
      for (int64_t r = 0; r < R; ++r) {
        uint32_t x;
        std::memcpy(&x, row + 4 * r, 4);
        t.words[r * N + n] = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
      }
      for (int64_t g = 0; g < G; ++g) t.meta[g * N + n] = q4_float_meta(absmax[n * G + g]);
    }
  });
  t.view = Q4View{nf.fp4 ? Q4Kind::Fp4 : Q4Kind::Nf4, K, N, K, N, group, t.words.data(), t.meta.data(), nullptr};
  return t;
}

PackedIntLinear q4_synthetic_int_linear(IntLayout layout, int64_t K, int64_t N, int64_t group, bool act_order,
                                        uint64_t seed, bool exact) {
  Rng rng(seed);
  GroupGrid grid;
  grid.bits = 4;
  grid.K = K;
  grid.N = N;
  grid.group = group <= 0 ? K : group;
  const int64_t G = grid.num_groups();
  grid.scale.resize(G * N);
  grid.zero.resize(G * N);
  for (int64_t i = 0; i < G * N; ++i) {
    grid.scale[i] = exact ? std::ldexp(1.0f, static_cast<int>(rng.below(4)) - 2)
                          : f16_to_f32(f32_to_f16(rng.uniform(0.002f, 0.05f)));
    grid.zero[i] = static_cast<uint8_t>(1 + rng.below(15));
  }
  std::vector<uint8_t> codes(K * N);
  for (auto& c : codes) c = static_cast<uint8_t>(rng.below(16));
  std::vector<int32_t> g_idx;
  if (act_order) {
    std::vector<int32_t> order(K);
    std::iota(order.begin(), order.end(), 0);
    for (int64_t i = K - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);  // Fisher-Yates
    g_idx.resize(K);
    for (int64_t i = 0; i < K; ++i) g_idx[order[i]] = static_cast<int32_t>(i / grid.group);
  }
  return pack_int_linear(codes.data(), grid, act_order ? g_idx.data() : nullptr, layout);
}

Nf4Tensor q4_synthetic_nf4(int64_t N, int64_t K, bool fp4, int64_t blocksize, bool double_quant, uint64_t seed) {
  Rng rng(seed);
  Nf4Tensor t;
  t.fp4 = fp4;
  t.blocksize = blocksize;
  t.n = N * K;
  t.packed.resize(nf4_packed_bytes(t.n));
  for (auto& b : t.packed) b = static_cast<uint8_t>(rng.below(256));
  if (t.n % 2) t.packed.back() &= 0xF0;  // the pad nibble is 0, as nf4_pack writes it
  const int64_t nb = t.num_blocks();
  t.double_quant = double_quant;
  if (!double_quant) {
    t.absmax.resize(nb);
    for (auto& a : t.absmax) a = rng.uniform(0.01f, 0.2f);
  } else {
    t.absmax_q.resize(nb);
    for (auto& q : t.absmax_q) q = static_cast<uint8_t>(rng.below(256));
    t.nested_absmax.resize(t.num_nested_blocks());
    for (auto& a : t.nested_absmax) a = rng.uniform(0.01f, 0.1f);
    const auto& map = dynamic_map();
    t.nested_code.assign(map.begin(), map.end());
    t.nested_offset = rng.uniform(0.05f, 0.15f);
  }
  nf4_check(t, "q4_synthetic_nf4");
  return t;
}

}  // namespace qwenq
