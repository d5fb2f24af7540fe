// A bitsandbytes 4-bit Linear in safetensors, exactly as transformers saves it (bnb Linear4bit._save_to_state_dict
// with QuantState.as_dict(packed=True); REFERENCE A3.4). For prefix P (e.g. model.layers.0.self_attn.q_proj):
//
//   P.weight                                  U8  [ceil(N·K/2), 1]   packed codes (quant/format/nf4_pack.h)
//   P.weight.absmax                           F32 [nblocks]          no DQ
//                                             U8  [nblocks]          with DQ: dynamic-map indices
//   P.weight.quant_map                        F32 [16]               the NF4 (or FP4) code book
//   P.weight.nested_absmax                    F32 [ceil(nblocks/256)]  DQ only
//   P.weight.nested_quant_map                 F32 [256]              DQ only: the dynamic map
//   P.weight.quant_state.bitsandbytes__nf4    U8  [len]              (or __fp4) UTF-8 of json.dumps(dict) with keys
//       quant_type, blocksize, dtype, shape[, nested_blocksize, nested_dtype, nested_offset] in that order and
//       Python's default separators: {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [N, K]}
//   nblocks = ceil(N·K / blocksize). nested_offset is written as Python's repr of the float32 offset.
//
// The reader accepts any key order and any packed storage dtype (bnb's quant_storage) with the right byte
// count, and checks every size against N, K and the block sizes; errors name the tensor and the file.
// quant_map must equal the published code book (our kernels use the built-in table, as bnb's CUDA kernels
// do); nested_quant_map is taken from the file, as bnb's dequantize_blockwise does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "quant/nf4.h"

namespace qwenq {

struct Nf4Linear {
  Nf4Tensor q;
  std::vector<int64_t> shape;  // {N, K}: the nn.Linear weight shape
  std::string dtype;           // the original weight dtype: "bfloat16", "float16" or "float32"
};

// "<prefix>.weight.quant_state.bitsandbytes__nf4" (or __fp4).
std::string nf4_quant_state_name(const std::string& prefix, bool fp4);
// The quant_state JSON, byte for byte as bnb's pack_dict_to_tensor writes it.
std::string nf4_quant_state_json(const Nf4Tensor& t, const std::vector<int64_t>& shape, const std::string& dtype);
// Python's repr() of a float (shortest round-trip digits; "0.0", "1e-05", "1.5e+16").
std::string python_float_repr(double v);

// Adds the tensors of one Linear (owned copies) to `w`. shape = {N, K} with N·K = t.n.
void add_nf4_linear(SafetensorsWriter& w, const std::string& prefix, const Nf4Tensor& t,
                    const std::vector<int64_t>& shape, const std::string& dtype = "bfloat16");

// True when `prefix` names a bnb 4-bit Linear in the checkpoint (its weight.absmax exists).
bool has_nf4_linear(const Checkpoint& ckpt, const std::string& prefix);
Nf4Linear read_nf4_linear(const Checkpoint& ckpt, const std::string& prefix);
Nf4Linear read_nf4_linear(const SafetensorsFile& file, const std::string& prefix);

// config.json "quantization_config" of a bnb 4-bit model (transformers BitsAndBytesConfig.to_dict()).
// compute_dtype: "bfloat16", "float16" or "float32".
nlohmann::json nf4_quantization_config_json(bool double_quant, const std::string& compute_dtype, bool fp4 = false);

}  // namespace qwenq
