// CPU twins of quant/awq_search.cu (contract: quant/awq_search.h): AWQ's scale-grid candidate, the clip search's
// sampled inputs and the clip search itself. awq_candidate_ref is the driver's former awq_fake_quantize(W·s) / s
// call for call (quant/grid.h's grid_for_group, quantize_value, dequantize_value), awq_clip_search_ref is
// awq_search_clip's Eigen search (quant/awq.h calls it), so the CPU driver's files are unchanged byte for byte.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "quant/awq_search.h"
#include "quant/grid.h"

namespace qwenq {

void awq_candidate_check_args(int64_t N, int64_t K, int bits, int64_t group_size) {
  QWENQ_CHECK(N > 0 && K > 0, "awq_candidate: empty weight [" << N << ", " << K << "]");
  QWENQ_CHECK(bits >= 2 && bits <= 8, "awq_candidate: bits must be in 2..8, got " << bits);
  QWENQ_CHECK(group_size == -1 || group_size > 0, "awq_candidate: group size must be positive or -1, got " << group_size);
}

void awq_clip_inputs_check_args(int64_t T, int64_t K0, int64_t step, int64_t K) {
  QWENQ_CHECK(T > 0, "awq_clip_inputs: no tokens (T=" << T << ")");
  QWENQ_CHECK(step >= 1, "awq_clip_inputs: token step must be >= 1, got " << step);
  QWENQ_CHECK(K0 > 0 && K >= K0, "awq_clip_inputs: cannot pad " << K0 << " input columns to " << K);
}

int awq_clip_search_check_args(int64_t N, int64_t K, int64_t S, const AwqSearchOptions& opt) {
  QWENQ_CHECK(N > 0 && K > 0, "awq_clip_search: empty weight [" << N << ", " << K << "]");
  QWENQ_CHECK(S > 0, "awq_clip_search: no sampled tokens (S=" << S << ")");
  QWENQ_CHECK(opt.bits >= 2 && opt.bits <= 8, "awq_clip_search: bits must be in 2..8, got " << opt.bits);
  QWENQ_CHECK(opt.group_size == -1 || opt.group_size > 0,
              "awq_clip_search: group size must be positive or -1, got " << opt.group_size);
  QWENQ_CHECK(opt.n_grid >= 1, "awq_clip_search: n_grid must be >= 1, got " << opt.n_grid);
  const double shrinks = std::floor(opt.max_shrink * opt.n_grid);
  QWENQ_CHECK(shrinks >= 1, "awq: the clip search needs max_shrink * n_grid >= 1");
  return static_cast<int>(shrinks);
}

void awq_candidate_ref(const float* W, int64_t N, int64_t K, const float* s, int bits, int64_t group_size, float* out) {
  awq_candidate_check_args(N, K, bits, group_size);
  const int64_t G = group_size == -1 ? K : group_size;
  const int maxq = (1 << bits) - 1;
  // Tasks of at least 64K weights: the small Linears of small models stay on one thread (a parallel region per
  // grid point costs more than their candidates, measured on stories260K).
  parallel_for(N, std::max<int64_t>(1, (int64_t{1} << 16) / K), [&](int64_t n0, int64_t n1) {
    std::vector<float> v(static_cast<size_t>(std::min(G, K)));
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k0 = 0; k0 < K; k0 += G) {
        const int64_t len = std::min(G, K - k0);
        for (int64_t k = 0; k < len; ++k) v[k] = W[n * K + k0 + k] * s[k0 + k];
        float scale;
        uint8_t zero;
        grid_for_group(v.data(), len, 1, bits, /*sym=*/false, GridRule::Awq, &scale, &zero);
        for (int64_t k = 0; k < len; ++k) {
          const float q = dequantize_value(quantize_value(v[k], scale, zero, maxq), scale, zero);
          out[n * K + k0 + k] = q / s[k0 + k];
        }
      }
    }
  });
}

void awq_clip_inputs_ref(const float* x, int64_t T, int64_t K0, int64_t step, const float* s, int64_t K, float* out) {
  awq_clip_inputs_check_args(T, K0, step, K);
  const int64_t S = awq_clip_rows(T, step);
  for (int64_t i = 0; i < S; ++i) {
    const float* row = x + i * step * K0;
    float* o = out + i * K;
    for (int64_t k = 0; k < K0; ++k) o[k] = s ? row[k] / s[k] : row[k];
    std::fill(o + K0, o + K, 0.f);
  }
}

void awq_clip_search_ref(const float* W, int64_t N, int64_t K, const float* x, int64_t S, const AwqSearchOptions& opt,
                         float* max_val) {
  const int shrinks = awq_clip_search_check_args(N, K, S, opt);
  const int64_t G = opt.group_size > 0 ? opt.group_size : K;
  const int64_t n_groups = (K + G - 1) / G;
  using Mat = Eigen::MatrixXf;
  // One task per (group, block of rows); each evaluates every shrink for its rows.
  constexpr int64_t kRows = 64;
  const int64_t row_blocks = (N + kRows - 1) / kRows;
  parallel_for(n_groups * row_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / row_blocks, n0 = (task % row_blocks) * kRows, rows = std::min(kRows, N - n0);
      const int64_t k0 = g * G, len = std::min(G, K - k0);
      Mat xs(S, len);
      for (int64_t i = 0; i < S; ++i) {
        for (int64_t k = 0; k < len; ++k) xs(i, k) = x[i * K + k0 + k];
      }
      Mat w(rows, len), delta(rows, len);
      for (int64_t n = 0; n < rows; ++n) {
        for (int64_t k = 0; k < len; ++k) w(n, k) = W[(n0 + n) * K + k0 + k];
      }
      std::vector<float> org_max(rows), min_err(rows, 1e9f);
      for (int64_t n = 0; n < rows; ++n) {
        float mx = 0.f;
        for (int64_t k = 0; k < len; ++k) mx = std::max(mx, std::fabs(w(n, k)));
        org_max[n] = mx;
        max_val[(n0 + n) * n_groups + g] = org_max[n];
      }
      std::vector<float> cw(len);
      for (int i = 0; i < shrinks; ++i) {
        const float r = 1.f - static_cast<float>(i) / opt.n_grid;
        for (int64_t n = 0; n < rows; ++n) {
          const float mx = org_max[n] * r;
          for (int64_t k = 0; k < len; ++k) cw[k] = std::min(std::max(w(n, k), -mx), mx);
          float scale;
          uint8_t zero;
          grid_for_group(cw.data(), len, 1, opt.bits, /*sym=*/false, GridRule::Awq, &scale, &zero);
          const int maxq = (1 << opt.bits) - 1;
          for (int64_t k = 0; k < len; ++k) {
            delta(n, k) = dequantize_value(quantize_value(cw[k], scale, zero, maxq), scale, zero) - w(n, k);
          }
        }
        const Mat e = xs * delta.transpose();  // [S, rows]
        for (int64_t n = 0; n < rows; ++n) {
          const float err = e.col(n).squaredNorm() / static_cast<float>(S);
          if (err < min_err[n]) {
            min_err[n] = err;
            max_val[(n0 + n) * n_groups + g] = org_max[n] * r;
          }
        }
      }
    }
  });
}

}  // namespace qwenq
