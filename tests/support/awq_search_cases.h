// Shared by tests/test_awq_search.cpp and tests/gpu/test_awq_search_cuda.cpp: seeded inputs of quant/awq_search.h's
// ops, the clip search's error of one bound recomputed in double (the measure both devices' choices are judged by),
// the comparison of two sets of clip bounds, and the CUDA clip search's arithmetic replayed on the CPU bit for bit
// (so the GPU test can require its exact bounds, and the CPU tests measure how often they differ from the twin's).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "quant/awq.h"
#include "quant/grid.h"
#include "tests/support/test_random.h"

namespace qwenq::test {

// W [N, K] ~ N(0, 0.02²) with one 8x outlier per row (clipping pays off), as real Linears have.
inline std::vector<float> awq_weight(int64_t N, int64_t K, uint64_t seed) {
  std::vector<float> W = normal_vector(N * K, seed, 0.02f);
  for (int64_t n = 0; n < N; ++n) W[n * K + (n * 7) % K] *= 8.f;
  return W;
}

// Positive scales spanning ~e^±2, as awq_candidate_scales gives.
inline std::vector<float> awq_scales(int64_t K, uint64_t seed) {
  std::vector<float> s = normal_vector(K, seed);
  for (auto& v : s) v = std::exp(v);
  return s;
}

// Σ_t (x_t[g] · (Q(clamp(W[n,g], ±bound)) − W[n,g]))² / S in double: the quantity the clip search minimizes, with
// the grid and codes of quant/grid.h (the same Q as both devices).
inline double awq_clip_error(const float* W, int64_t K, const float* x, int64_t S, int bits, int64_t G, int64_t n,
                             int64_t g, float bound) {
  const int64_t k0 = g * G, len = std::min(G, K - k0);
  std::vector<float> cw(static_cast<size_t>(len));
  for (int64_t k = 0; k < len; ++k) cw[k] = std::min(std::max(W[n * K + k0 + k], -bound), bound);
  float scale;
  uint8_t zero;
  grid_for_group(cw.data(), len, 1, bits, /*sym=*/false, GridRule::Awq, &scale, &zero);
  const int maxq = (1 << bits) - 1;
  std::vector<double> d(static_cast<size_t>(len));
  for (int64_t k = 0; k < len; ++k)
    d[k] = static_cast<double>(dequantize_value(quantize_value(cw[k], scale, zero, maxq), scale, zero)) -
           static_cast<double>(W[n * K + k0 + k]);
  double err = 0.0;
  for (int64_t t = 0; t < S; ++t) {
    double e = 0.0;
    for (int64_t k = 0; k < len; ++k) e += static_cast<double>(x[t * K + k0 + k]) * d[k];
    err += e * e;
  }
  return err / static_cast<double>(S);
}

// The clip search in double over AwqSearchOptions' default grid points (bound = m0·(1 − i/20), i = 0..9: n_grid 20,
// max_shrink 0.5), the first of equal errors kept: bounds [N, groups], G the group width (K for a whole row).
inline std::vector<float> awq_clip_brute(const float* W, int64_t N, int64_t K, const float* x, int64_t S, int bits,
                                         int64_t G) {
  const int64_t groups = (K + G - 1) / G;
  std::vector<float> best_bound(static_cast<size_t>(N * groups));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      float m0 = 0.f;
      for (int64_t k = g * G; k < std::min(K, g * G + G); ++k) m0 = std::max(m0, std::fabs(W[n * K + k]));
      double best = INFINITY;
      for (int i = 0; i < 10; ++i) {
        const float bound = m0 * (1.f - static_cast<float>(i) / 20);
        const double e = awq_clip_error(W, K, x, S, bits, G, n, g, bound);
        if (e < best) best = e, best_bound[n * groups + g] = bound;
      }
    }
  }
  return best_bound;
}

// Two sets of clip bounds [N, groups] for the same W and x: how many differ, and the worst relative excess of the
// double-precision error of a's choice over b's (and b's over a's) where they differ. Both searches pick among the
// same grid points, so a difference is harmless exactly when the two choices' errors are nearly tied.
struct AwqClipAgreement {
  int64_t total = 0, differing = 0;
  double worst_excess = 0.0;  // max over differing entries of |err_a − err_b| / min(err_a, err_b)
};
inline AwqClipAgreement awq_compare_clips(const std::vector<float>& a, const std::vector<float>& b, const float* W,
                                          int64_t N, int64_t K, const float* x, int64_t S, int bits, int64_t G) {
  AwqClipAgreement r;
  const int64_t groups = (K + G - 1) / G;
  r.total = N * groups;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const size_t i = static_cast<size_t>(n * groups + g);
      if (a[i] == b[i]) continue;
      ++r.differing;
      const double ea = awq_clip_error(W, K, x, S, bits, G, n, g, a[i]);
      const double eb = awq_clip_error(W, K, x, S, bits, G, n, g, b[i]);
      const double lo = std::min(ea, eb);
      r.worst_excess = std::max(r.worst_excess, lo > 0 ? std::fabs(ea - eb) / lo : (ea == eb ? 0.0 : INFINITY));
    }
  }
  return r;
}

// awq_clip_search_cuda's arithmetic replayed on the CPU, bit for bit (quant/awq_search.cu): per row and group the
// min/max and m0 = max(|min|, |max|); per shrink the bound m0·r_i and the grid of the clamped min/max; Δ_k =
// dequantize(quantize(clamp(w_k))) − w_k without contraction; per token the dot product x_t·Δ as an fp32 fma chain
// in k order (the kernel's zero-padded chunk tails add exact zeros); its square (exact in double) added to the
// partial sum of token lane (t mod 128) / 4 in token order, the 32 partials summed in lane order, err = sum / S,
// the first err below 1e9 that beats the previous one wins. Finite inputs.
inline void awq_clip_search_replay(const float* W, int64_t N, int64_t K, const float* x, int64_t S,
                                   const AwqSearchOptions& opt, float* max_val) {
  const int64_t G = opt.group_size > 0 ? opt.group_size : K, groups = (K + G - 1) / G;
  const int shrinks = static_cast<int>(std::floor(opt.max_shrink * opt.n_grid));
  const int maxq = (1 << opt.bits) - 1;
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> d(static_cast<size_t>(std::min(G, K)));
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * G, len = std::min(G, K - k0);
        const float* w = W + n * K + k0;
        float lo = w[0], hi = w[0];
        for (int64_t k = 1; k < len; ++k) lo = std::min(lo, w[k]), hi = std::max(hi, w[k]);
        const float m0 = std::max(std::fabs(lo), std::fabs(hi));
        float best = m0;
        double min_err = 1e9;
        for (int i = 0; i < shrinks; ++i) {
          const float ratio = 1.f - static_cast<float>(i) / static_cast<float>(opt.n_grid);
          const float bound = m0 * ratio;
          const float range[2] = {std::min(std::max(lo, -bound), bound), std::min(std::max(hi, -bound), bound)};
          float scale;
          uint8_t zero;
          grid_for_group(range, 2, 1, opt.bits, /*sym=*/false, GridRule::Awq, &scale, &zero);
          for (int64_t k = 0; k < len; ++k) {
            const float cw = std::min(std::max(w[k], -bound), bound);
            volatile float deq = dequantize_value(quantize_value(cw, scale, zero, maxq), scale, zero);  // no fms
            d[k] = deq - w[k];
          }
          double part[32] = {};
          for (int64_t t = 0; t < S; ++t) {
            float acc = 0.f;
            for (int64_t k = 0; k < len; ++k) acc = std::fma(x[t * K + k0 + k], d[k], acc);
            const double v = acc;
            part[(t % 128) / 4] += v * v;
          }
          double sum = 0.0;
          for (double p : part) sum += p;
          const double err = sum / static_cast<double>(S);
          if (err < min_err) {
            min_err = err;
            best = bound;
          }
        }
        max_val[n * groups + g] = best;
      }
    }
  });
}

}  // namespace qwenq::test
