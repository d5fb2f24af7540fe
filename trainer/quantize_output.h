// What the whole-model quantizers (quantize_model, gptq_model, awq_model) share: the sharded output writer,
// the final config/tokenizer step, the checks of what an integer layout can hold, the zero padding of the MLP
// width, and the seeded calibration windows.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "lora/lora_adapter.h"
#include "quant/int_checkpoint.h"
#include "trainer/quant_config.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_config.h"

namespace qwenq {

class Tokenizer;

// Shards written as they fill up, as "model-shard-<i>.safetensors", renamed to transformers'
// "model-0000i-of-0000n.safetensors" (or model.safetensors when there is one) by finish().
class ShardedWriter {
 public:
  ShardedWriter(std::string dir, uint64_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {}
  SafetensorsWriter& current() { return writer_; }
  void note_added(const std::string& name) { pending_.push_back(name); }
  // add + note_added for a tensor that stays valid until the shard is flushed (a view into a mapping).
  void add_view(const std::string& name, const TensorView& t);
  // add_int_linear + note_added for the tensors the layout has (AWQ has no g_idx), or, after write_compressed_tensors,
  // add_ct_packed_linear's.
  void add_int_linear(const std::string& prefix, const PackedIntLinear& p);
  // Integer Linears from now on as compressed-tensors pack-quantized tensors (`sym`: no zero points; `g_idx`: act-order
  // weight_g_idx stored).
  void write_compressed_tensors(bool sym, bool g_idx) {
    ct_ = true;
    ct_sym_ = sym;
    ct_g_idx_ = g_idx;
  }
  void maybe_flush() {
    if (writer_.payload_bytes() >= max_bytes_) flush();
  }
  void finish();
  int shards() const { return static_cast<int>(files_.size()); }
  uint64_t total_bytes() const { return total_; }

 private:
  void flush();
  std::string dir_;
  uint64_t max_bytes_;
  uint64_t total_ = 0;
  bool ct_ = false, ct_sym_ = true, ct_g_idx_ = false;
  SafetensorsWriter writer_;
  std::vector<std::string> pending_;
  std::vector<std::pair<const void*, size_t>> views_;  // mapped input released once its shard is written
  std::vector<std::pair<std::string, std::vector<std::string>>> files_;
};

// model.layers.N.{self_attn.(q|k|v|o)_proj, mlp.(gate|up|down)_proj}.weight, and a MoE layer's
// mlp.experts.E.(gate|up|down)_proj / mlp.shared_expert.(gate|up|down)_proj: every Linear a quantizer packs. The
// router (mlp.gate) and qwen2_moe's mlp.shared_expert_gate stay as they are, as in GPTQModel's, AutoAWQ's and
// vLLM's MoE models.
extern const std::regex kDecoderLinearRe;

// The A, B that `adapter` (nullptr: none) holds for the decoder Linear whose weight is `weight_name` (a name
// kDecoderLinearRe matches: a block's own Linear, or a MoE expert's), or nullptr when the adapter does not target it.
LoraWeights* adapter_weights_for(LoraAdapter* adapter, const std::string& weight_name);

// What quantization_config must say of a MoE model (nothing for a dense one) for transformers to build the same
// modules as the file holds, i.e. to leave the routers unquantized (transformers 4.51.3's loaders):
//   Gptq: modules_in_block_to_quantize (optimum keeps only the Linears named there, by suffix): [q, k, v], [o],
//         [every expert's gate/up (+ shared expert, + dense layers' mlp.gate_proj/up_proj)], [the down_projs];
//   Awq:  modules_to_not_convert ["mlp.gate"(, "mlp.shared_expert_gate")] (matched as substrings of the module path:
//         refused for a model with dense layers, whose mlp.gate_proj would match too);
//   Bnb:  llm_int8_skip_modules ["lm_head", "gate"(, "shared_expert_gate")] (matched as the module's own name).
// Our reader (trainer/qwen_weights.cpp) packs exactly the Linears whose packed tensors are present, so it reads all.
//   Ct:   ignore (the whole list) ["lm_head", "re:.*mlp\\.gate$"(, "re:.*mlp\\.shared_expert_gate$")]
//         (compressed-tensors' patterns, matched from the start of the module path).
//   Fp8Block: modules_to_not_convert ["lm_head", "model.layers.<l>.mlp.gate"(, "...mlp.shared_expert_gate") for
//         every sparse layer] (whole paths, as Qwen's MoE FP8 releases list them: transformers matches them as
//         substrings, and a path with its layer number cannot catch another layer's mlp.gate_proj).
enum class MoeListFor { Gptq, Awq, Bnb, Ct, Fp8Block };
// The lists an integer-code output (rtn, gptq, awq) needs: by o.compressed_tensors, then o.layout.
MoeListFor moe_list_for(const QuantizeOptions& o);

// quantization_config of an integer-code output as `o` asks for it: compressed-tensors (o.compressed_tensors; actorder
// "group" with g_idx when desc_act without static_groups, "weight" with static groups), AutoAWQ GEMM (o.layout
// AwqGemm) or GPTQ v1/v2 (desc_act, static_groups and damp recorded). Without the MoE lists.
nlohmann::ordered_json int_quantization_config(const QuantizeOptions& o, bool desc_act = false,
                                               bool static_groups = false, double damp = 0.0);
// Makes `shards` write what int_quantization_config(o, desc_act, static_groups) describes (compressed-tensors only;
// the other layouts need nothing).
void set_int_output(ShardedWriter& shards, const QuantizeOptions& o, bool desc_act = false, bool static_groups = false);

// True when checkpoint tensor `name` belongs to one of the packed Linears whose prefixes ("model.layers.0.mlp.up_proj",
// no trailing dot) are given: any tensor below a prefix but its bias (qweight, qzeros, scales, g_idx; bitsandbytes'
// weight and weight.*). A few hash lookups per name, so a MoE model's tens of thousands of tensors stay cheap.
bool is_packed_part(const std::unordered_set<std::string>& packed_prefixes, const std::string& name);
void add_moe_module_lists(nlohmann::ordered_json& qc, const QwenConfig& c, MoeListFor format);

const char* torch_dtype_name(DType t);

// Writes config.json and the tokenizer files, calls before_commit(staged directory) when given (a complete model
// directory by then: GPTQ's LoftQ adapter is computed from it), renames the staged directory into place, completes
// the report.
QuantizeReport finish_output(const nlohmann::ordered_json& config, const std::string& model_dir,
                             const ShardedWriter& shards, StagedDir& out, std::chrono::steady_clock::time_point t0,
                             QuantizeReport rep, const std::function<void(const std::string&)>& before_commit = nullptr);

// The LoftQ adapter a quantization of `cfg` (MLP width I2 as written) fills: nullptr without --loftq-rank. Made before
// the work, so that a rank the Linears cannot hold ("--loftq-rank: LoRA rank r=..."), bad targets or iterations < 1
// are refused at once.
std::unique_ptr<LoraAdapter> loftq_adapter_for(const QuantizeOptions& o, const QwenConfig& cfg, int64_t I2);
// The same for PiSSA (o.pissa, "--pissa-rank: ..."); refuses PiSSA together with LoftQ.
std::unique_ptr<LoraAdapter> pissa_adapter_for(const QuantizeOptions& o, const QwenConfig& cfg, int64_t I2);

// finish_output with LoftQ's one-shot adapter (trainer/adapter_init.h's write_loftq_adapter) computed from the staged
// output and written into it before the rename; the report carries its errors (loftq_plain_error, loftq_error).
// `adapter` was made for the output's dims before the work (a bad rank refused up front).
QuantizeReport finish_output_with_loftq(const nlohmann::ordered_json& config, const std::string& model_dir,
                                        const ShardedWriter& shards, StagedDir& out,
                                        std::chrono::steady_clock::time_point t0, QuantizeReport rep,
                                        LoraAdapter* adapter, bool quiet);

// Options every GPTQ/AWQ-layout writer must satisfy (bits, group size, layout).
void check_int_options(const QuantizeOptions& o);
// Refuses a Linear [N, K] the integer layout cannot hold, naming it.
void check_layout_fits(const QuantizeOptions& o, const std::string& name, int64_t N, int64_t K);
// What a quantizer may start from: a dense model (quantization_config absent: method None) or an FP8 one (block-wise
// "fp8", or compressed-tensors float8 without integer schemes), whose Linears are then read as their fp32 ŵ (the
// weights the FP8 model computes with). Refuses any other quantized directory, and returns the config.
QuantConfig check_quantizable_source(const std::string& model_dir);
// The fp32 weight of the source Linear `prefix` (`t` its .weight tensor, possibly smaller) zero-padded to [N, K]: a
// dense weight converted (quant.method None), an FP8 one decoded to the ŵ the FP8 model computes with (errors name its
// tensors).
std::vector<float> source_linear_f32(const Checkpoint& ckpt, const QuantConfig& quant, const std::string& prefix,
                                     const TensorView& t, int64_t N, int64_t K);
// True for the tensors that come with an FP8 source Linear's weight (a decoder Linear's weight_scale_inv,
// weight_scale or input_scale): the quantizers drop them with the weight.
bool is_source_scale(const std::string& name);

// The intermediate size to write: I itself, or with pad_intermediate the next multiple of what the layout
// needs (32/bits codes per word along K and N; AWQ: 8 along N; whole groups along down_proj's K).
int64_t padded_intermediate(const QuantizeOptions& o, int64_t I);
// W [N, K] -> [N2, K2] with zeros appended.
std::vector<float> pad_matrix(const std::vector<float>& W, int64_t N, int64_t K, int64_t N2, int64_t K2);

// Seeded calibration windows of `seq_len` tokens cut at random offsets from the tokenized text (a text file or
// the `text_field` of each JSONL line). Errors name the file when it is empty or too short.
std::vector<std::vector<int32_t>> calibration_windows(const std::string& path, const std::string& text_field,
                                                      int64_t samples, int64_t seq_len, uint64_t seed,
                                                      const Tokenizer& tok);

// AutoAWQ's calibration (awq/utils/calib_data.py get_calib_dataset): the first `documents` documents (JSONL
// records or lines) that, stripped of surrounding whitespace, encode to 1..seq_len tokens, concatenated and cut
// into blocks of seq_len tokens (the tail is dropped). Errors name the file when no whole block results.
std::vector<std::vector<int32_t>> calibration_blocks_concat(const std::string& path, const std::string& text_field,
                                                            int64_t documents, int64_t seq_len, const Tokenizer& tok);

}  // namespace qwenq
