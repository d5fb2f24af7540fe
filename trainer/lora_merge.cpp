#include "trainer/lora_merge.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "core/threads.h"
#include "lora/peft_io.h"
#include "trainer/classify.h"
#include "trainer/lora_model.h"
#include "trainer/quant_config.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_weights.h"
#include "trainer/reward.h"
#include "trainer/tokenizer.h"

namespace qwenq {

namespace {

// Refuses an adapter whose LoraDims are not the model's (the message gives both).
void check_dims_match(const LoraDims& d, const QwenConfig& c, const std::string& what) {
  QWENQ_CHECK(d.hidden_size == c.hidden_size && d.intermediate_size == c.intermediate_size && d.q_dim == c.q_dim() &&
                  d.kv_dim == c.kv_dim() && d.num_layers == c.num_layers,
              what << ": the adapter was made for another base model (hidden " << d.hidden_size << ", intermediate "
                   << d.intermediate_size << ", q_dim " << d.q_dim << ", kv_dim " << d.kv_dim << ", " << d.num_layers
                   << " layers; the model has " << c.hidden_size << ", " << c.intermediate_size << ", " << c.q_dim()
                   << ", " << c.kv_dim() << ", " << c.num_layers << ")");
}

// The canonical path of an existing file or directory, "" when it does not exist.
std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

// "model.layers.3.self_attn.q_proj"
std::string linear_prefix(int64_t layer, LoraTarget t) {
  return "model.layers." + std::to_string(layer) + "." + lora_target_path(t);
}

}  // namespace

LoraTargetSlot lora_target_slot(LoraTarget t) {
  const int i = static_cast<int>(t);  // LoraTarget lists the Linears in kDecoderLinears' order
  QWENQ_CHECK(i >= 0 && i < kNumLoraTargets, "lora_target_slot: bad target " << i);
  return {kDecoderLinears[i].group, kDecoderLinears[i].index};
}

void merge_lora_weights(float* W, int64_t N, int64_t K, const LoraWeights& lw, float s) {
  QWENQ_CHECK(lw.N == N && lw.K == K && static_cast<int64_t>(lw.A.size()) == lw.r * K &&
                  static_cast<int64_t>(lw.B.size()) == N * lw.r,
              "merge_lora_weights: adapter A [" << lw.r << ", " << lw.K << "], B [" << lw.N << ", " << lw.r
                                                << "] do not fit a weight [" << N << ", " << K << "]");
  QWENQ_CHECK(lw.m.empty() || static_cast<int64_t>(lw.m.size()) == N,
              "merge_lora_weights: DoRA magnitude of " << lw.m.size() << " values for a weight of " << N << " rows");
  const int64_t r = lw.r;
  const float* A = lw.A.data();
  const float* B = lw.B.data();
  // Rows are independent; each row is r saxpy passes over K contiguous floats (vectorizes).
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* row = W + n * K;
      for (int64_t j = 0; j < r; ++j) {
        const float b = s * B[n * r + j];
        const float* a = A + j * K;
        for (int64_t k = 0; k < K; ++k) row[k] += b * a[k];
      }
      if (lw.m.empty()) continue;
      // DoRA: the row of W + s·B A times m[n] / ‖W + s·B A‖ (the norm summed in double, rounded to fp32 as PEFT's).
      double ss = 0;
      for (int64_t k = 0; k < K; ++k) ss += static_cast<double>(row[k]) * row[k];
      const float g = lw.m[static_cast<size_t>(n)] / static_cast<float>(std::sqrt(ss));
      for (int64_t k = 0; k < K; ++k) row[k] *= g;
    }
  });
}

void merge_adapter_in_memory(QwenModel& model, const LoraAdapter& adapter) {
  check_dims_match(adapter.dims(), model.config(), "merge_adapter_in_memory (model " + model.dir() + ")");
  for (size_t i = 0; i < adapter.slots().size(); ++i) {
    const LoraSlot& sl = adapter.slots()[i];
    const LoraTargetSlot slot = lora_target_slot(sl.target);
    LinearWeight& w = sl.expert == kNoExpert ? model.linear_weight(sl.layer, slot.group, slot.index)
                                             : model.expert_linear(sl.layer, sl.expert, moe_expert_index(sl.target));
    std::vector<float> W = w.dequantize();
    merge_lora_weights(W.data(), w.N, w.K, adapter.weights(i), static_cast<float>(adapter.weights(i).scaling));
    w = LinearWeight::from_fp32(std::move(W), w.N, w.K);
  }
}

namespace {

// config.json of the sequence classifier a SEQ_CLS adapter merges into: transformers' <Arch>ForSequenceClassification
// with num_labels labels (id2label / label2id as PretrainedConfig writes them: `names`, or LABEL_<i> without them)
// and the pad id pooling skips
// (trainer/reward.h's, so the merged model pools where training did).
void set_classifier_config(nlohmann::ordered_json* config, int64_t labels, const std::vector<std::string>& names,
                           const std::string& model_dir) {
  std::string arch;
  if (config->contains("architectures") && (*config)["architectures"].is_array() &&
      !(*config)["architectures"].empty() && (*config)["architectures"][0].is_string()) {
    arch = (*config)["architectures"][0].get<std::string>();
  }
  const std::string causal = "ForCausalLM";
  if (has_proper_suffix(arch, causal)) {
    arch = arch.substr(0, arch.size() - causal.size()) + "ForSequenceClassification";
  } else if (arch.find("ForSequenceClassification") == std::string::npos) {
    arch = "Qwen2ForSequenceClassification";
  }
  (*config)["architectures"] = nlohmann::ordered_json::array({arch});
  nlohmann::ordered_json id2label = nlohmann::ordered_json::object(), label2id = nlohmann::ordered_json::object();
  for (int64_t i = 0; i < labels; ++i) {
    const std::string name = names.empty() ? "LABEL_" + std::to_string(i) : names[static_cast<size_t>(i)];
    id2label[std::to_string(i)] = name;
    label2id[name] = i;
  }
  (*config)["id2label"] = id2label;
  (*config)["label2id"] = label2id;
  const int32_t pad = reward_pad_id(model_dir, Tokenizer::from_dir(model_dir));
  if (pad >= 0) (*config)["pad_token_id"] = pad;
}

}  // namespace

LoraAdapter load_adapter_for_base(const std::string& adapter_dir, const std::string& model_dir, const QwenConfig& cfg,
                                  AdapterUse use) {
  try {
    LoraAdapter a = load_peft_adapter(adapter_dir, lora_dims_of(cfg));
    QWENQ_CHECK(use != AdapterUse::Apply || !a.config().seq_cls(),
                "it is a reward model's adapter (task_type SEQ_CLS, with a score head), not a language model's: "
                "`qwen-qlora eval --objective reward` scores preference pairs with it, and `qwen-qlora merge` makes a "
                "reward model directory of it");
    QWENQ_CHECK(use != AdapterUse::Score || a.config().seq_cls(),
                "it is a language model's adapter (task_type CAUSAL_LM), not a reward model's (SEQ_CLS, with a score "
                "head: train --objective reward)");
    return a;
  } catch (const Error& e) {
    const bool merge = use == AdapterUse::Merge, score = use == AdapterUse::Score;
    throw Error(std::string(merge ? "cannot merge" : score ? "cannot score with" : "cannot apply") + " the LoRA adapter " +
                adapter_dir + (merge ? " into" : score ? " on" : " to") + " the base model " + model_dir + ": " + e.what());
  }
}

DType default_merge_dtype(const std::string& model_dir) {
  const QuantConfig quant = load_quant_config(model_dir);
  if (quant.method != QuantConfig::Method::None) return DType::BF16;
  const Checkpoint ckpt(model_dir);
  const std::string name = linear_prefix(0, LoraTarget::QProj) + ".weight";
  if (!ckpt.has(name)) return DType::BF16;
  const DType t = ckpt.get(name).dtype;
  return (t == DType::F32 || t == DType::F16) ? t : DType::BF16;
}

QuantizeReport merge_adapter_to_dir(const MergeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const DType dtype = o.dtype ? *o.dtype : default_merge_dtype(o.model_dir);
  QWENQ_CHECK(dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32,
              "merge: the output dtype must be bf16, fp16 or fp32, not " << dtype_name(dtype));
  const QwenConfig cfg = load_qwen_config(o.model_dir);
  const QuantConfig quant = load_quant_config(o.model_dir);
  for (const std::string& src : {o.model_dir, o.adapter_dir}) {
    const std::string out_real = real_path(o.out_dir);
    QWENQ_CHECK(out_real.empty() || out_real != real_path(src),
                "merge: the output directory " << o.out_dir << " is an input (" << src << "); choose another --out");
  }

  // Everything that can refuse the adapter runs before the output directory exists.
  const LoraAdapter adapter = load_adapter_for_base(o.adapter_dir, o.model_dir, cfg, AdapterUse::Merge);

  Checkpoint ckpt(o.model_dir);
  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  QuantizeReport rep;
  std::vector<std::string> written;                 // Linear weights written here (dense base: only ".weight")
  std::unordered_set<std::string> packed_prefixes;  // "model.layers.0.self_attn.q_proj" of packed Linears
  int64_t done = 0;
  std::map<std::string, size_t> adapted;  // "model.layers.3.mlp.experts.7.up_proj" -> the adapter's slot
  for (size_t i = 0; i < adapter.slots().size(); ++i)
    adapted["model.layers." + std::to_string(adapter.slots()[i].layer) + "." + adapter.slots()[i].path] = i;
  Progress bar("merge", count_layer_linears(cfg), "linears", o.quiet);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    for (const LayerLinear& ll : layer_linears(cfg, l)) {  // every expert and router; the routers are never adapted
      const std::string prefix = "model.layers." + std::to_string(l) + "." + ll.name;
      const LinearWeight w = load_linear(ckpt, quant, prefix, ll.N, ll.K);
      const auto hit = adapted.find(prefix);
      const bool merge = hit != adapted.end();
      bar.update(++done);
      // A dense Linear that is neither merged nor converted is copied with the other tensors below.
      if (!merge && w.is_dense() && w.dense.dtype == dtype) continue;
      std::vector<float> W = w.dequantize();
      if (merge) {
        merge_lora_weights(W.data(), w.N, w.K, adapter.weights(hit->second),
                           static_cast<float>(adapter.weights(hit->second).scaling));
        ++rep.linears;
        rep.params_quantized += w.N * w.K;
      }
      std::vector<uint8_t> bytes(W.size() * dtype_size(dtype));
      from_f32(dtype, W.data(), bytes.data(), W.size());
      shards.current().add_owned(prefix + ".weight", dtype, {w.N, w.K}, std::move(bytes));
      shards.note_added(prefix + ".weight");
      if (w.is_dense()) {
        written.push_back(prefix + ".weight");
      } else {
        packed_prefixes.insert(prefix);
      }
      shards.maybe_flush();
    }
  }
  std::sort(written.begin(), written.end());
  const bool classifier = adapter.config().seq_cls();  // a reward model: the score head replaces the lm_head
  if (classifier) {
    const std::vector<float>& head = adapter.score();
    std::vector<uint8_t> bytes(head.size() * dtype_size(dtype));
    from_f32(dtype, head.data(), bytes.data(), head.size());
    shards.current().add_owned("score.weight", dtype, {adapter.config().num_labels, cfg.hidden_size}, std::move(bytes));
    shards.note_added("score.weight");
    shards.maybe_flush();
  }
  for (const auto& name : ckpt.names()) {
    if (std::binary_search(written.begin(), written.end(), name)) continue;
    if (is_packed_part(packed_prefixes, name)) continue;
    // (a reward model base's own head is the adapter's starting one: the adapter's replaces it)
    if (classifier && (name == "score.weight" || name.rfind("lm_head.", 0) == 0)) continue;
    shards.add_view(name, ckpt.get(name));
    shards.maybe_flush();
  }
  shards.finish();
  bar.finish();
  nlohmann::ordered_json config = read_ordered_json_file(path_join(o.model_dir, "config.json"));
  config.erase("quantization_config");
  config["torch_dtype"] = torch_dtype_name(dtype);
  if (classifier) {
    // The label names a classify run left beside its adapter (trainer/classify.h), else transformers' LABEL_<i>; its
    // problem type as transformers' problem_type (single-label: none, which transformers reads as such for integer
    // labels of 2 or more classes).
    ProblemType type;
    const std::vector<std::string> names = read_label_names(o.adapter_dir, &type);
    QWENQ_CHECK(names.empty() || static_cast<int64_t>(names.size()) == adapter.config().num_labels,
                o.adapter_dir << "/labels.json names " << names.size() << " labels; the score head has "
                              << adapter.config().num_labels);
    set_classifier_config(&config, adapter.config().num_labels, names, o.model_dir);
    if (!names.empty()) {
      config.erase("problem_type");
      if (type != ProblemType::kSingleLabel) config["problem_type"] = problem_type_name(type);
    }
  }
  return finish_output(config, o.model_dir, shards, out, t0, rep);
}

}  // namespace qwenq
