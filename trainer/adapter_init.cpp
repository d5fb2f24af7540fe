#include "trainer/adapter_init.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "core/dtype.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "lora/loftq.h"
#include "lora/peft_io.h"
#include "trainer/lora_model.h"
#include "trainer/quant_config.h"
#include "trainer/qwen_config.h"
#include "trainer/quantize_output.h"

namespace qwenq {
namespace {

// The original model's norm weights must be the base's: AWQ (and any other rescaling) changes them.
void check_same_norm(const TensorView& base, const Checkpoint& orig, const std::string& name, const std::string& dir) {
  const TensorView& o = orig.get(name);
  QWENQ_CHECK(o.numel() == base.numel(), "--loftq-model " << dir << ": " << name << " has " << o.numel()
                                                          << " values, the base's has " << base.numel());
  const std::vector<float> a = tensor_to_f32(base), b = tensor_to_f32(o);
  for (size_t i = 0; i < a.size(); ++i) {
    // bf16 <-> fp16 storage differences pass; a folded AWQ scale (a factor well away from 1) does not.
    QWENQ_CHECK(std::fabs(a[i] - b[i]) <= 1e-2 * std::max(std::fabs(a[i]), std::fabs(b[i])) + 1e-6,
                "--loftq-model " << dir << ": " << name << "[" << i << "] is " << b[i] << " there and " << a[i]
                                 << " in the base: the base was not made from this model by rounding alone (an AWQ "
                                    "base folds scales into its norms and Linears; LoftQ needs GPTQ, RTN, NF4 or FP4)");
  }
}

}  // namespace

void init_adapter_from_dir(const std::string& dir, LoraAdapter* adapter) {
  const LoraAdapter from = load_peft_adapter(dir, adapter->dims());
  const LoraConfig& a = from.config();
  const LoraConfig& b = adapter->config();
  std::ostringstream diff;
  if (a.r != b.r) diff << " r " << a.r << " (not " << b.r << ")";
  if (a.alpha != b.alpha) diff << " lora_alpha " << a.alpha << " (not " << b.alpha << ")";
  if (a.use_rslora != b.use_rslora) diff << " use_rslora " << a.use_rslora;
  if (a.use_dora != b.use_dora) diff << " use_dora " << a.use_dora;
  if (a.num_labels != b.num_labels) {
    if (!a.seq_cls()) diff << " no score head (task_type CAUSAL_LM)";
    else diff << " a score head of " << a.num_labels << " label(s) (task_type SEQ_CLS)"
              << (b.seq_cls() ? ", not " + std::to_string(b.num_labels) : std::string(": this run trains a language model"));
  }
  if (!same_lora_selection(a, b))
    diff << " targets " << lora_selection_str(a) << " (not " << lora_selection_str(b) << ")";
  QWENQ_CHECK(diff.str().empty(), "--init-adapter " << dir << ": the adapter has" << diff.str());
  for (size_t i = 0; i < adapter->slots().size(); ++i) {  // same dims and config: the same slots
    LoraWeights& w = adapter->weights(i);
    const LoraWeights& src = from.weights(i);
    w.A = src.A;
    w.B = src.B;
    w.m = src.m;
  }
  adapter->score() = from.score();
}

LoftqInitReport loftq_init_adapter(const QwenModel& base, const std::string& dir, LoraAdapter* adapter, bool quiet) {
  // An FP8 original (what the quantizers also start from) is read as its fp32 ŵ.
  const QuantConfig oq = load_quant_config(dir);
  QWENQ_CHECK(oq.method == QuantConfig::Method::None || oq.float8_weights(),
              "--loftq-model " << dir << " is quantized (its config.json has a quantization_config); give the "
                                  "original bf16/fp16/fp32 (or FP8) model the base was quantized from");
  const QwenConfig& bc = base.config();
  const QwenConfig oc = load_qwen_config(dir);
  QWENQ_CHECK(oc.hidden_size == bc.hidden_size && oc.num_layers == bc.num_layers && oc.num_heads == bc.num_heads &&
                  oc.num_kv_heads == bc.num_kv_heads && oc.head_dim == bc.head_dim &&
                  oc.intermediate_size <= bc.intermediate_size && oc.num_experts == bc.num_experts &&
                  oc.moe_intermediate_size == bc.moe_intermediate_size &&
                  oc.shared_expert_intermediate_size == bc.shared_expert_intermediate_size,
              "--loftq-model " << dir << " is another architecture: hidden " << oc.hidden_size << ", intermediate "
                               << oc.intermediate_size << ", " << oc.num_layers << " layers, " << oc.num_heads << "/"
                               << oc.num_kv_heads << " heads of " << oc.head_dim << " (the base: " << bc.hidden_size
                               << ", " << bc.intermediate_size << ", " << bc.num_layers << ", " << bc.num_heads << "/"
                               << bc.num_kv_heads << " of " << bc.head_dim << ")");
  const Checkpoint ckpt(dir);
  LoftqInitReport rep;
  double q2 = 0, c2 = 0;
  const int64_t total = static_cast<int64_t>(adapter->slots().size());
  Progress bar("loftq", total, "linears", quiet);
  int64_t checked_layer = -1;
  for (size_t i = 0; i < adapter->slots().size(); ++i) {  // every adapted Linear, each expert's of a MoE layer too
    const LoraSlot& sl = adapter->slots()[i];
    const int64_t l = sl.layer;
    const QwenLayerWeights& L = base.weights().layers[l];
    const std::string lp = "model.layers." + std::to_string(l) + ".";
    if (l != checked_layer) {
      check_same_norm(L.input_norm, ckpt, lp + "input_layernorm.weight", dir);
      check_same_norm(L.post_norm, ckpt, lp + "post_attention_layernorm.weight", dir);
      checked_layer = l;
    }
    {
      const LinearWeight& bw = slot_linear(base.weights(), sl);
      const std::string name = lp + sl.path + ".weight";
      const TensorView& ow = ckpt.get(name);
      QWENQ_CHECK(ow.shape.size() == 2 && ow.shape[0] <= bw.N && ow.shape[1] <= bw.K,
                  "--loftq-model " << dir << ": " << name << " is " << shape_str(ow.shape) << ", the base's is ["
                                   << bw.N << ", " << bw.K << "]");
      const std::vector<float> W = source_linear_f32(ckpt, oq, lp + sl.path, ow, bw.N, bw.K);  // zero-padded
      const std::vector<float> Q = bw.dequantize();
      const std::string what = "loftq: layer " + std::to_string(l) + " " + sl.path;
      const LoraWeights& own = adapter->weights(i);  // its rank and scaling (rank_pattern / alpha_pattern)
      const LoftqFactors f = loftq_factors(W.data(), Q.data(), bw.N, bw.K, own.r, own.scaling, {}, what.c_str());
      // A rounding of W stays well inside ‖W‖ (4-bit: ~0.1 ‖W‖, 2-bit RTN: ~0.5); another model's weights are ~√2 ‖W‖
      // away, and the rank-r correction of such a "residual" would be noise.
      double w2 = 0;
      for (float x : W) w2 += double(x) * x;
      QWENQ_CHECK(f.quant_error <= std::sqrt(w2),
                  "--loftq-model " << dir << ": the base's layer " << l << " " << sl.path
                                   << " is not a rounding of this model's (||W - Q|| = " << f.quant_error / std::sqrt(w2)
                                   << " ||W||): the base was not made from this model by rounding alone");
      LoraWeights& lw = adapter->weights(i);
      lw.A = f.A;
      lw.B = f.B;
      q2 += f.quant_error * f.quant_error;
      c2 += f.corrected_error * f.corrected_error;
      ++rep.linears;
      bar.update(rep.linears, what.substr(7));
    }
  }
  rep.quant_error = std::sqrt(q2);
  rep.corrected_error = std::sqrt(c2);
  std::ostringstream done;
  done << "||W - Q|| " << rep.quant_error << " -> ||W - Q - s*B*A|| " << rep.corrected_error;
  bar.finish(done.str());
  return rep;
}

LoftqInitReport write_loftq_adapter(const std::string& quantized_dir, const std::string& original_dir,
                                    LoraAdapter* adapter, bool quiet) {
  const QwenModel base(quantized_dir);
  const LoftqInitReport rep = loftq_init_adapter(base, original_dir, adapter, quiet);
  save_peft_adapter(path_join(quantized_dir, "loftq_init"), *adapter);
  return rep;
}

}  // namespace qwenq
