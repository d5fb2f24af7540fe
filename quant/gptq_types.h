// GPTQ's options and result (the math: quant/gptq.h), without Eigen, so that CUDA files can use them
// (quant/gptq_cuda.cu: nvcc's host code must not instantiate Eigen, see there).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/grid.h"

namespace qwenq {

struct GptqOptions {
  int bits = 4;
  int64_t group_size = 128;  // -1: one group per output column (G = K)
  bool sym = false;
  double damp = 0.01;        // fraction of mean(diag H) added to the diagonal
  bool desc_act = false;     // act-order
  bool static_groups = false;
  int64_t block_size = 128;  // lazy-update block (speed only)
  int max_damp_retries = 5;
};

struct GptqResult {
  GroupGrid grid;                  // [ceil(K/G), N], indexed by g_idx
  std::vector<uint8_t> codes;      // [K, N], original column order
  std::vector<int32_t> g_idx;      // [K]
  std::vector<int64_t> order;      // [K]: order[p] is the original column quantized p-th
  double damp_used = 0.0;          // the damp of the factorization that succeeded
  int damp_retries = 0;
  double loss = 0.0;               // Σ ½·(w − q)²/U[p,p]², as the reference logs it ("error")
  std::vector<std::string> warnings;
};

}  // namespace qwenq
