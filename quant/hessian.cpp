// x [rows, K] row-major is, read column-major, Xᵀ [K, rows]: the update is rank_update_lower(H, Xᵀ) with no copy.
#include "quant/hessian.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "quant/chol.h"

namespace qwenq {

HessianAccumulator::HessianAccumulator(int64_t K, DType input_dtype) : K_(K), dtype_(input_dtype) {
  QWENQ_CHECK(K > 0, "Hessian size must be positive, got K = " << K);
  QWENQ_CHECK(input_dtype == DType::F32 || input_dtype == DType::BF16,
              "Hessian inputs are fp32 or rounded to bf16, not " << dtype_name(input_dtype));
  lower_ = Eigen::MatrixXf::Zero(K, K);
}

void HessianAccumulator::add_batch(const float* x, int64_t rows) {
  QWENQ_CHECK(rows >= 0, "row count must be non-negative, got " << rows);
  if (rows == 0) return;
  QWENQ_CHECK(lower_.rows() == K_, "Hessian accumulator was released; construct a new one");
  for (int64_t i = 0; i < rows * K_; ++i)
    QWENQ_CHECK(std::isfinite(x[i]), "activation row " << i / K_ << ", input " << i % K_ << " (of K = " << K_
                                                        << ") is " << x[i] << "; the Hessian needs finite inputs");
  const int64_t n_new = count_ + rows;
  const float beta = static_cast<float>(static_cast<double>(count_) / n_new);
  const float alpha = static_cast<float>(2.0 / n_new);
  if (dtype_ == DType::F32) {
    Eigen::Map<const Eigen::MatrixXf> xt(x, K_, rows);
    rank_update_lower(lower_, xt, alpha, beta);
  } else {  // the first block scales the old H, the others add to it
    std::vector<float> rounded;
    for (int64_t r0 = 0; r0 < rows; r0 += kBf16RoundRows) {
      const int64_t n = std::min(kBf16RoundRows, rows - r0);
      rounded.assign(x + r0 * K_, x + (r0 + n) * K_);
      bf16_round_inplace(rounded.data(), rounded.size());
      Eigen::Map<const Eigen::MatrixXf> xt(rounded.data(), K_, n);
      rank_update_lower(lower_, xt, alpha, r0 == 0 ? beta : 1.f);
    }
  }
  count_ = n_new;
}

Eigen::MatrixXf HessianAccumulator::matrix() const {
  Eigen::MatrixXf H = lower_;
  mirror_triangle(H, /*from_lower=*/true);
  return H;
}

Eigen::MatrixXf HessianAccumulator::release() {
  Eigen::MatrixXf H = std::move(lower_);
  mirror_triangle(H, /*from_lower=*/true);
  lower_ = Eigen::MatrixXf();
  count_ = 0;
  return H;
}

}  // namespace qwenq
