// Internal to quant/: the vector readers of the common GGUF block types (quant/ggml_decode_vec.cpp), behind
// dequantize_ggml_row (quant/ggml_blocks.h).
#pragma once

#include <cstdint>

#include "core/gguf.h"

namespace qwenq::ggml_detail {

// The n values (a whole number of blocks) of a row of type t at `in` into out, as ggml's dequantize_row_* computes
// them; false, writing nothing, for a type that is not quantized (F32, F16, BF16) or that qwenq does not read.
bool dequantize_row_vec(GgmlType t, const uint8_t* in, int64_t n, float* out);

}  // namespace qwenq::ggml_detail
