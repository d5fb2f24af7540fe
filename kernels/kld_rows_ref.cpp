// The CPU twin of kernels/kld_rows.h (llama.cpp's formulas in float, one rounding per operation: this file is
// compiled with -ffp-contract=off), rows in parallel. trainer/kld_file.cpp's kld_encode_row and kl_position_vs_row
// are these on one row.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/kld_rows.h"

namespace qwenq {

namespace {

void put_float(uint16_t* at, float f) { std::memcpy(at, &f, sizeof f); }
float get_float(const uint16_t* at) {
  float f;
  std::memcpy(&f, at, sizeof f);
  return f;
}

float encode_row(const float* z, int64_t V, int32_t target, uint16_t* row) {
  float max_logit = z[0], min_logit = z[0];
  for (int64_t v = 1; v < V; ++v) {
    max_logit = std::max(max_logit, z[v]);
    min_logit = std::min(min_logit, z[v]);
  }
  min_logit = std::max(min_logit, max_logit - 16);
  double sum_exp = 0;
  for (int64_t v = 0; v < V; ++v) sum_exp += std::exp(z[v] - max_logit);  // float exp, double sum
  const float log_sum_exp = static_cast<float>(std::log(sum_exp));
  const float min_log_prob = min_logit - max_logit - log_sum_exp;
  const float scale = (max_logit - min_logit) / 65535.f;
  put_float(row, scale);
  put_float(row + 2, min_log_prob);
  uint16_t* q = row + 4;
  if (scale != 0.f) {
    const float inv_scale = 1 / scale;
    for (int64_t v = 0; v < V; ++v) {
      // Round half to even, as llama.cpp's nearest_int (the default rounding mode); clamped to the code range so that
      // a degenerate row (a subnormal scale: inv_scale = inf) converts the same on both twins (never met by logits).
      const float code = z[v] > min_logit ? std::min(std::nearbyint(inv_scale * (z[v] - min_logit)), 65535.f) : 0.f;
      q[v] = static_cast<uint16_t>(static_cast<int32_t>(code));
    }
  } else {
    std::fill(q, q + V, uint16_t{0});
  }
  if (V % 2 != 0) q[V] = 0;
  return max_logit + log_sum_exp - z[target];
}

KlRow score_row(const uint16_t* row, const float* z, int64_t V, int32_t target) {
  KlRow r;
  r.top = first_argmax_ref(z, V);
  const double mq = z[r.top];
  double sq = 0;
  for (int64_t v = 0; v < V; ++v) sq += std::exp(static_cast<double>(z[v]) - mq);
  const double lse_q = mq + std::log(sq);
  const uint16_t* q = row + 4;
  int64_t top_b = 0;
  double kld = 0;
  for (int64_t v = 0; v < V; ++v) {
    if (q[v] > q[top_b]) top_b = v;
    const float lp = kld_row_log_prob_ref(row, v);
    if (lp > -16.f) kld += std::exp(static_cast<double>(lp)) * (lp - (z[v] - lse_q));
  }
  r.top_base = top_b;
  r.kld = kld;
  r.nll_base = -static_cast<double>(kld_row_log_prob_ref(row, target));
  r.nll = lse_q - z[target];
  return r;
}

}  // namespace

float kld_row_log_prob_ref(const uint16_t* row, int64_t v) {
  return get_float(row) * static_cast<float>(row[4 + v]) + get_float(row + 2);
}

void kld_rows_check(const char* name, int64_t rows, int64_t V, const int32_t* targets) {
  QWENQ_CHECK(rows >= 0 && V > 0, name << ": bad shape rows=" << rows << " V=" << V);
  for (int64_t r = 0; r < rows; ++r) {
    QWENQ_CHECK(targets[r] >= 0 && targets[r] < V,
                name << ": target " << targets[r] << " of row " << r << " is outside the vocabulary [0, " << V << ")");
  }
}

void kld_encode_rows_ref(const float* logits, int64_t rows, int64_t V, const int32_t* targets, uint16_t* out,
                         float* nll) {
  kld_rows_check("kld_encode_rows_ref", rows, V, targets);
  const int64_t nv = kld_row_width(V);
  parallel_for(rows, 4, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) nll[r] = encode_row(logits + r * V, V, targets[r], out + r * nv);
  });
}

void kld_score_rows_ref(const uint16_t* base, const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                        KlRow* out) {
  kld_rows_check("kld_score_rows_ref", rows, V, targets);
  const int64_t nv = kld_row_width(V);
  parallel_for(rows, 4, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) out[r] = score_row(base + r * nv, logits + r * V, V, targets[r]);
  });
}

}  // namespace qwenq
