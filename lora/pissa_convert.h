// A trained PiSSA adapter as a plain LoRA adapter of the original model (PEFT's
// save_pretrained(path_initial_model_for_weight_conversion=...)).
//
// PiSSA starts from W = W_res + s·B0 A0 (the initial adapter, lora/pissa.h) and trains A, B on the base W_res, so the
// fine-tuned weight is W_res + s·B A = W + ΔW with
//   ΔW = s·(B A − B0 A0) = s'·B' A',   A' = [A ; A0] [2r, K],   B' = [B | −B0] [N, 2r],
//   r' = 2r,   alpha' = 2·alpha (s' = alpha'/r' = s), or √2·alpha with rsLoRA (s' = alpha'/√r' = s).
// The result is an ordinary LoRA adapter (B0 A0 subtracted again, init_lora_weights true) that applies to W itself: the
// original model, its bf16 copy for `qwen-qlora merge`, or any other quantization of W. Applied to the quantized
// residual's own source it is exact; a QPiSSA run was trained on q(W_res), so on W it is off by W_res − q(W_res), as a
// QLoRA adapter moved to its bf16 base is (PEFT warns the same).
//
// The tensors are concatenated bit for bit (widened to F32 if stored narrower: PEFT's torch.cat promotes likewise)
// and written as PEFT does: adapter_config.json + adapter_model.safetensors, staged and renamed when complete.
#pragma once

#include <string>

#include "lora/lora_config.h"

namespace qwenq {

struct PissaConvertReport {
  LoraConfig config;   // the written adapter's (r' = 2r, alpha')
  int64_t linears = 0;  // adapted Linears converted
};

// Reads the initial adapter (`init_dir`, e.g. `<base>/pissa_init`) and the trained one (`trained_dir`, ours or PEFT's:
// init_lora_weights "pissa" is read as true), which must agree on rank, alpha, rsLoRA, targets and tensors, and writes
// the LoRA adapter to `out_dir`. Refused, naming the
// directories: different configs or tensor sets, shapes that do not pair, DoRA (PEFT's conversion has no term for the
// magnitudes), an existing out_dir without `overwrite`.
PissaConvertReport convert_pissa_to_lora(const std::string& init_dir, const std::string& trained_dir,
                                         const std::string& out_dir, bool overwrite);

}  // namespace qwenq
