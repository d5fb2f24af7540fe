// GGUF export and read of Qwen2/Qwen3/Llama models (conventions at the top of trainer/gguf_model.h).
#include "trainer/gguf_model.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_imatrix.h"
#include "trainer/gguf_file_type.h"
#include "trainer/quantize_output.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {

namespace {

// The GGUF names ("blk.<i>.<name>") of the seven decoder Linears, in kDecoderLinears' order.
constexpr const char* kLinearNames[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

std::string blk(int64_t l, const std::string& what) { return "blk." + std::to_string(l) + "." + what; }

// Rows of a rotate-half [heads * D, K] matrix reordered into llama.cpp's interleaved pairs (convert_hf_to_gguf's
// LlamaModel.permute): interleaved row rope_interleaved_row(r, D) takes row r.
std::vector<float> interleave_rope_rows(const std::vector<float>& W, int64_t K, int64_t D) {
  std::vector<float> out(W.size());
  for (int64_t r = 0; r < static_cast<int64_t>(W.size()) / K; ++r)
    std::copy(W.begin() + r * K, W.begin() + (r + 1) * K, out.begin() + rope_interleaved_row(r, D) * K);
  return out;
}

// W [N, K] inside zeros [N2, K2] (N2 >= N, K2 >= K).
std::vector<float> zero_padded(std::vector<float> W, int64_t N, int64_t K, int64_t N2, int64_t K2) {
  if (N2 == N && K2 == K) return W;
  std::vector<float> out(static_cast<size_t>(N2 * K2), 0.0f);
  for (int64_t r = 0; r < N; ++r) std::copy(W.begin() + r * K, W.begin() + (r + 1) * K, out.begin() + r * K2);
  return out;
}

// A norm, bias or embedding (checked by check_gguf_tensor): a view of F32/F16/BF16 data, else its values dequantized
// into memory `owned` keeps.
TensorView view_of(const GgufTensor& t, std::vector<int64_t> shape,
                   std::vector<std::shared_ptr<const std::vector<float>>>* owned) {
  TensorView v;
  v.shape = std::move(shape);
  if (ggml_type_is_float(t.type)) {
    v.dtype = t.type == GgmlType::F32 ? DType::F32 : t.type == GgmlType::F16 ? DType::F16 : DType::BF16;
    v.data = t.data;
    return v;
  }
  auto values = std::make_shared<const std::vector<float>>(dequantize_ggml(t));
  v.dtype = DType::F32;
  v.data = values->data();
  owned->push_back(std::move(values));
  return v;
}

// llama.cpp's architecture name of a model_type ("qwen3_moe" -> "qwen3moe").
std::string gguf_arch_of(const std::string& model_type) {
  if (model_type == "qwen3_moe") return "qwen3moe";
  if (model_type == "qwen2_moe") return "qwen2moe";
  return model_type;
}

}  // namespace

// llama.cpp's qwen3moe / qwen2moe graphs make every layer sparse, renormalize the top-k weights for qwen3moe only
// and always run qwen2moe's shared expert: a MoE config they would compute differently is refused.
void check_gguf_moe(const QwenConfig& c, const std::string& where) {
  if (!c.is_moe()) return;
  QWENQ_CHECK(!c.has_dense_mlp(), where << ": a mixture of experts with dense layers (mlp_only_layers / "
                                           "decoder_sparse_step) has no GGUF form: llama.cpp's "
                                        << gguf_arch_of(c.model_type) << " makes every layer sparse");
  const bool qwen3 = c.model_type == "qwen3_moe";
  QWENQ_CHECK(c.norm_topk_prob == qwen3, where << ": norm_topk_prob=" << (c.norm_topk_prob ? "true" : "false")
                                               << " has no GGUF form: llama.cpp's " << gguf_arch_of(c.model_type)
                                               << (qwen3 ? " always renormalizes" : " never renormalizes")
                                               << " the top-k routing weights");
  QWENQ_CHECK(qwen3 || c.shared_expert_intermediate_size > 0,
              where << ": a qwen2_moe model without a shared expert has no GGUF form (llama.cpp's qwen2moe always "
                       "runs one)");
}

std::vector<GgufModelTensor> gguf_model_tensors(const QwenConfig& c) {
  const int64_t C = c.hidden_size, V = c.vocab_size;
  const bool llama = c.model_type == "llama";
  std::vector<GgufModelTensor> v;
  v.push_back({"token_embd.weight", "model.embed_tokens.weight", {V, C}, 0});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const bool moe = c.is_moe_layer(l);
    v.push_back({blk(l, "attn_norm.weight"), p + "input_layernorm.weight", {C}, 0});
    for (int t = 0; t < (moe ? 4 : 7); ++t) {
      const DecoderLinear& d = kDecoderLinears[t];
      v.push_back({blk(l, std::string(kLinearNames[t]) + ".weight"), p + d.name + ".weight",
                   {decoder_linear_outputs(c, d), block_linear_inputs(c, d.group)}, llama && t < 2 ? c.head_dim : 0});
      if (t < 3 && c.qkv_bias)
        v.push_back({blk(l, std::string(kLinearNames[t]) + ".bias"), p + d.name + ".bias",
                     {decoder_linear_outputs(c, d)}, 0});
    }
    if (c.qk_norm) {
      v.push_back({blk(l, "attn_q_norm.weight"), p + "self_attn.q_norm.weight", {c.head_dim}, 0});
      v.push_back({blk(l, "attn_k_norm.weight"), p + "self_attn.k_norm.weight", {c.head_dim}, 0});
    }
    v.push_back({blk(l, "ffn_norm.weight"), p + "post_attention_layernorm.weight", {C}, 0});
    if (!moe) continue;
    const int64_t E = c.num_experts, Im = c.moe_intermediate_size, Is = c.shared_expert_intermediate_size;
    v.push_back({blk(l, "ffn_gate_inp.weight"), p + "mlp.gate.weight", {E, C}, 0});
    v.push_back({blk(l, "ffn_gate_exps.weight"), p + "mlp.experts.{}.gate_proj.weight", {Im, C}, 0, E});
    v.push_back({blk(l, "ffn_up_exps.weight"), p + "mlp.experts.{}.up_proj.weight", {Im, C}, 0, E});
    v.push_back({blk(l, "ffn_down_exps.weight"), p + "mlp.experts.{}.down_proj.weight", {C, Im}, 0, E});
    if (Is > 0) {
      v.push_back({blk(l, "ffn_gate_inp_shexp.weight"), p + "mlp.shared_expert_gate.weight", {1, C}, 0});
      v.push_back({blk(l, "ffn_gate_shexp.weight"), p + "mlp.shared_expert.gate_proj.weight", {Is, C}, 0});
      v.push_back({blk(l, "ffn_up_shexp.weight"), p + "mlp.shared_expert.up_proj.weight", {Is, C}, 0});
      v.push_back({blk(l, "ffn_down_shexp.weight"), p + "mlp.shared_expert.down_proj.weight", {C, Is}, 0});
    }
  }
  v.push_back({"output_norm.weight", "model.norm.weight", {C}, 0});
  if (!c.tie_word_embeddings) v.push_back({"output.weight", "lm_head.weight", {V, C}, 0});
  return v;
}

const char* gguf_linear_name(int index) {
  QWENQ_CHECK(index >= 0 && index < 7, "gguf_linear_name: no decoder Linear " << index);
  return kLinearNames[index];
}

std::string gguf_expert_hf(const GgufModelTensor& t, int64_t e) {
  const size_t at = t.hf.find("{}");
  QWENQ_CHECK(t.experts > 0 && at != std::string::npos, "gguf_expert_hf: " << t.gguf << " is not an expert stack");
  return t.hf.substr(0, at) + std::to_string(e) + t.hf.substr(at + 2);
}

void check_gguf_tensor(const GgufFile& f, const GgufModelTensor& t) {
  const GgufTensor& x = f.tensor(t.gguf);
  int64_t n = std::max<int64_t>(1, t.experts);
  for (int64_t d : t.shape) n *= d;
  std::vector<int64_t> want = t.shape;
  if (t.experts > 0) want.insert(want.begin(), t.experts);
  QWENQ_CHECK(x.numel() == n && x.ne[0] == t.shape.back() &&
                  (t.experts == 0 || (x.ne.size() == 3 && x.ne[2] == t.experts)),
              f.path() << ": tensor '" << t.gguf << "' has ne " << shape_str(x.ne) << " but the metadata implies "
                       << shape_str(want) << " (torch order; ne lists the row length first)");
  QWENQ_CHECK(ggml_type_supported(x.type), f.path() << ": tensor '" << t.gguf << "' has type "
                                                    << ggml_type_info(static_cast<uint32_t>(x.type))->name
                                                    << ", which qwenq cannot read yet");
}

GgufExportReport export_gguf(const std::string& model_dir, const std::string& out_path, const GgufExportOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const GgufFileType& ft = gguf_file_type(o.type);
  QWENQ_CHECK(o.overwrite || !file_exists(out_path), out_path << ": already exists (pass --overwrite to replace it)");
  if (o.split_max_bytes > 0 && !o.overwrite) {  // split files of an earlier run: "<prefix>-00001-of-*.gguf"
    for (int n = 2; n <= 99; ++n) {
      const std::string first = gguf_split_path(gguf_path_prefix(out_path), 0, n);
      QWENQ_CHECK(!file_exists(first), first << ": already exists (pass --overwrite to replace it)");
    }
  }
  QwenModel model(model_dir);
  const QwenConfig& c = model.config();
  check_gguf_moe(c, path_join(model_dir, "config.json"));
  const QwenWeights& w = model.weights();
  const Tokenizer tok = Tokenizer::from_model(model_dir);  // a GGUF source too (re-quantization)
  QWENQ_CHECK(c.rope.type == RopeType::Default || c.rope.type == RopeType::Linear,
              path_join(model_dir, "config.json") << ": rope_scaling of type " << rope_type_name(c.rope.type)
                                                  << " is not exported to GGUF yet (default and linear RoPE are)");
  const std::string arch = gguf_arch_of(c.model_type);
  const bool llama = arch == "llama";
  QWENQ_CHECK(!(llama && c.qkv_bias), path_join(model_dir, "config.json")
                                          << ": a llama model with attention_bias is not exported to GGUF");
  GgufExportReport rep;
  rep.arch = arch;
  Imatrix imatrix;
  if (!o.imatrix_path.empty()) imatrix = read_imatrix(o.imatrix_path);
  // The importance of a 2-D tensor's K columns (padded with zeros to K2), or empty when the imatrix has no entry for
  // it (as llama-quantize, which then quantizes that tensor without one); an entry of another width is refused.
  // Counted in the report when the tensor's type `ty` uses it (not the float types or Q8_0, which ggml ignores it for).
  // An expert stack's entry holds `mats` matrices (one per expert, K values each: llama-quantize weighs expert e's rows
  // by the e-th).
  auto importance_of = [&](const std::string& gname, int64_t K, int64_t K2, GgmlType ty, int64_t mats = 1) {
    std::vector<float> v = imatrix.importance(gname);
    if (v.empty()) return v;
    QWENQ_CHECK(static_cast<int64_t>(v.size()) == K * mats,
                o.imatrix_path << ": imatrix entry " << gname << " has " << v.size() << " values but the tensor has "
                               << K << " columns" << (mats > 1 ? " x " + std::to_string(mats) + " experts" : "")
                               << " (an imatrix of another model?)");
    if (mats == 1) v.resize(static_cast<size_t>(K2), 0.0f);
    const bool used = ty != GgmlType::F32 && ty != GgmlType::F16 && ty != GgmlType::BF16 && ty != GgmlType::Q8_0;
    rep.imatrix_tensors += used;
    return v;
  };

  GgufWriter g;
  g.set("general.architecture", GgufValue::str(arch));
  g.set("general.type", GgufValue::str("model"));
  std::string name = o.name;
  if (name.empty()) {
    std::string d = model_dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    name = gguf_path_prefix(d.substr(d.find_last_of('/') == std::string::npos ? 0 : d.find_last_of('/') + 1));
  }
  g.set("general.name", GgufValue::str(name));
  g.set("general.file_type", GgufValue::u32(ft.ftype));
  g.set("general.quantization_version", GgufValue::u32(2));
  if (!o.imatrix_path.empty()) {  // the keys llama-quantize --imatrix writes
    g.set("quantize.imatrix.file", GgufValue::str(o.imatrix_path));
    if (!imatrix.datasets.empty()) g.set("quantize.imatrix.dataset", GgufValue::str(imatrix.datasets.back()));
    g.set("quantize.imatrix.entries_count", GgufValue::i32(static_cast<int32_t>(imatrix.entries.size())));
    g.set("quantize.imatrix.chunks_count", GgufValue::i32(static_cast<int32_t>(imatrix.chunk_count)));
  }
  g.set(arch + ".block_count", GgufValue::u32(static_cast<uint32_t>(c.num_layers)));
  g.set(arch + ".context_length", GgufValue::u32(static_cast<uint32_t>(c.max_position_embeddings)));
  g.set(arch + ".embedding_length", GgufValue::u32(static_cast<uint32_t>(c.hidden_size)));
  const int64_t pad_to = std::max<int64_t>(32, ggml_type_info(static_cast<uint32_t>(ft.base))->block);
  const int64_t I = c.intermediate_size;
  const int64_t I2 = o.pad_intermediate && !c.is_moe() ? (I + pad_to - 1) / pad_to * pad_to : I;
  rep.intermediate = I2;
  g.set(arch + ".feed_forward_length", GgufValue::u32(static_cast<uint32_t>(I2)));
  g.set(arch + ".attention.head_count", GgufValue::u32(static_cast<uint32_t>(c.num_heads)));
  g.set(arch + ".attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(c.num_kv_heads)));
  g.set(arch + ".rope.freq_base", GgufValue::f32(static_cast<float>(c.rope.theta)));
  g.set(arch + ".attention.layer_norm_rms_epsilon", GgufValue::f32(c.rms_norm_eps));
  if (c.is_moe()) {
    g.set(arch + ".expert_count", GgufValue::u32(static_cast<uint32_t>(c.num_experts)));
    g.set(arch + ".expert_used_count", GgufValue::u32(static_cast<uint32_t>(c.experts_per_token)));
    g.set(arch + ".expert_feed_forward_length", GgufValue::u32(static_cast<uint32_t>(c.moe_intermediate_size)));
    if (c.shared_expert_intermediate_size > 0)
      g.set(arch + ".expert_shared_feed_forward_length",
            GgufValue::u32(static_cast<uint32_t>(c.shared_expert_intermediate_size)));
  }
  if (c.head_dim * c.num_heads != c.hidden_size || arch == "qwen3" || arch == "qwen3moe") {
    g.set(arch + ".attention.key_length", GgufValue::u32(static_cast<uint32_t>(c.head_dim)));
    g.set(arch + ".attention.value_length", GgufValue::u32(static_cast<uint32_t>(c.head_dim)));
  }
  if (llama) {
    g.set("llama.vocab_size", GgufValue::u32(static_cast<uint32_t>(c.vocab_size)));
    g.set("llama.rope.dimension_count", GgufValue::u32(static_cast<uint32_t>(c.head_dim)));
  }
  if (c.rope.type == RopeType::Linear) {
    g.set(arch + ".rope.scaling.type", GgufValue::str("linear"));
    g.set(arch + ".rope.scaling.factor", GgufValue::f32(static_cast<float>(c.rope.factor)));
  }
  tok.write_gguf(g, c.vocab_size, c.bos_token_id, c.eos_token_id);

  // 1-D tensors: F32 always.
  // An F32 tensor of shape ne whose values `values` gives when the file is written.
  auto add_f32 = [&](const std::string& gname, std::vector<int64_t> ne, std::function<std::vector<float>()> values) {
    g.add_tensor(gname, GgmlType::F32, std::move(ne), [values = std::move(values)] {
      const std::vector<float> v = values();
      return std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                  reinterpret_cast<const uint8_t*>(v.data() + v.size()));
    });
  };
  auto add_vector = [&](const std::string& gname, const TensorView& t) {
    add_f32(gname, {t.numel()}, [&t] { return tensor_to_f32(t); });
  };
  // The ggml type of a 2-D tensor (trainer/gguf_file_type.h), counted in the report.
  auto type_of = [&](GgufRole role, int64_t layer, int64_t ne0) {
    bool fell_back = false;
    const GgmlType t = gguf_tensor_type(ft, role, layer, c.num_layers, ne0, c.tie_word_embeddings, &fell_back,
                                        c.num_heads / std::max<int64_t>(1, c.num_kv_heads), !o.imatrix_path.empty(),
                                        c.num_experts);
    rep.fallbacks += fell_back;
    ++rep.types[ggml_type_info(static_cast<uint32_t>(t))->name];
    return t;
  };
  auto add_matrix = [&](const std::string& gname, GgmlType ty, int64_t N, int64_t K, std::vector<float> imp,
                        std::function<std::vector<float>()> values) {
    g.add_tensor(gname, ty, {K, N}, [ty, N, K, values, imp = std::move(imp)] {
      const std::vector<float> W = values();
      return quantize_ggml(ty, W.data(), N, K, imp.empty() ? nullptr : imp.data());
    });
  };
  // The embedding and output rows go straight from the mapped view into blocks (one fp32 row at a time, not a 7B's
  // 2.2 GB table), and every source's mapped pages are dropped once converted, so resident memory stays near one
  // tensor instead of growing with the whole mapped checkpoint.
  auto add_table = [&](const std::string& gname, GgufRole role, const TensorView& t, const GgmlLinear* q) {
    const int64_t N = t.shape[0], K = t.shape[1];
    const GgmlType ty = type_of(role, 0, K);
    std::vector<float> imp = importance_of(gname, K, K, ty);
    g.add_tensor(gname, ty, {K, N}, [ty, N, K, &t, q, imp = std::move(imp)] {
      const uint64_t row_bytes = ggml_row_bytes(ty, K);
      std::vector<uint8_t> out(row_bytes * N);
      parallel_for(N, 64, [&](int64_t r0, int64_t r1) {
        std::vector<float> row(static_cast<size_t>(K));
        for (int64_t r = r0; r < r1; ++r) {
          table_row_f32(t, q, r, row.data());
          quantize_ggml_row(ty, row.data(), K, out.data() + r * row_bytes, imp.empty() ? nullptr : imp.data());
        }
      });
      if (q)
        release_mapped_pages(q->data, ggml_row_bytes(q->type, K) * static_cast<uint64_t>(N));
      else
        release_mapped_pages(t.data, t.nbytes());
      return out;
    });
  };
  add_table("token_embd.weight", GgufRole::TokenEmbd, w.embed, w.embed_q.get());
  // A dense (router) matrix in F32, ne {K, N}.
  // A MoE layer's router (F32, ne {C, E}), expert stacks (one expert dequantized at a time) and shared expert.
  auto add_moe = [&](int64_t l, const MoeWeights& m) {
    add_f32(blk(l, "ffn_gate_inp.weight"), {m.router.K, m.router.N}, [&m] { return m.router.dequantize(); });
    const char* stacks[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"};
    const int64_t E = static_cast<int64_t>(m.experts.size());
    for (int which = 0; which < 3; ++which) {
      const LinearWeight& first = expert_member(m.experts[0], which);
      const int64_t N = first.N, K = first.K;
      const GgmlType ty = type_of(which == 2 ? GgufRole::FfnDown : GgufRole::OtherLinear, l, K);
      std::vector<float> imp = importance_of(blk(l, stacks[which]), K, K, ty, E);
      g.add_tensor(blk(l, stacks[which]), ty, {K, N, E}, [&m, which, ty, N, K, imp = std::move(imp)] {
        std::vector<uint8_t> out;
        for (size_t e = 0; e < m.experts.size(); ++e) {
          const LinearWeight& lw = expert_member(m.experts[e], which);
          const std::vector<float> W = lw.dequantize();
          if (lw.is_dense() && !lw.owned) release_mapped_pages(lw.dense.data, lw.dense.nbytes());
          const std::vector<uint8_t> q = quantize_ggml(ty, W.data(), N, K, imp.empty() ? nullptr : imp.data() + e * K);
          out.insert(out.end(), q.begin(), q.end());
        }
        return out;
      });
    }
    if (m.shared.gate.N == 0) return;
    add_f32(blk(l, "ffn_gate_inp_shexp.weight"), {m.shared_gate.K}, [&m] { return m.shared_gate.dequantize(); });
    const char* shexp[3] = {"ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"};
    for (int which = 0; which < 3; ++which) {
      const LinearWeight& lw = expert_member(m.shared, which);
      const GgmlType ty = type_of(which == 2 ? GgufRole::FfnDown : GgufRole::OtherLinear, l, lw.K);
      add_matrix(blk(l, shexp[which]), ty, lw.N, lw.K, importance_of(blk(l, shexp[which]), lw.K, lw.K, ty), [&lw] {
        std::vector<float> W = lw.dequantize();
        if (lw.is_dense() && !lw.owned) release_mapped_pages(lw.dense.data, lw.dense.nbytes());
        return W;
      });
    }
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const QwenLayerWeights& L = w.layers[l];
    const bool moe = c.is_moe_layer(l);
    add_vector(blk(l, "attn_norm.weight"), L.input_norm);
    for (int t = 0; t < (moe ? 4 : 7); ++t) {
      const LinearWeight& lw = layer_linear(L, t);
      const bool permute = llama && t < 2;
      const int64_t N2 = (t == 4 || t == 5) ? I2 : lw.N, K2 = t == 6 ? I2 : lw.K;
      const GgufRole role = t == 1   ? GgufRole::AttnK
                            : t == 2 ? GgufRole::AttnV
                            : t == 3 ? GgufRole::AttnOutput
                            : t == 6 ? GgufRole::FfnDown
                                     : GgufRole::OtherLinear;
      const std::string gname = blk(l, std::string(kLinearNames[t]) + ".weight");
      const GgmlType ty = type_of(role, l, K2);
      add_matrix(gname, ty, N2, K2, importance_of(gname, lw.K, K2, ty),
                 [&lw, permute, &c, N2, K2] {
                   std::vector<float> W = lw.dequantize();
                   if (lw.is_dense() && !lw.owned) release_mapped_pages(lw.dense.data, lw.dense.nbytes());
                   if (permute) W = interleave_rope_rows(W, lw.K, c.head_dim);
                   return zero_padded(W, lw.N, lw.K, N2, K2);
                 });
      if (t < 3 && c.qkv_bias) {
        add_vector(blk(l, std::string(kLinearNames[t]) + ".bias"), t == 0 ? L.q_bias : t == 1 ? L.k_bias : L.v_bias);
      }
      if (t == 1 && c.qk_norm) {
        add_vector(blk(l, "attn_q_norm.weight"), L.q_norm);
        add_vector(blk(l, "attn_k_norm.weight"), L.k_norm);
      }
      if (t == 3) add_vector(blk(l, "ffn_norm.weight"), L.post_norm);
    }
    if (moe) add_moe(l, L.moe);
  }
  add_vector("output_norm.weight", w.final_norm);
  if (!c.tie_word_embeddings) {
    add_table("output.weight", GgufRole::Output, w.lm_head, w.lm_head_q.get());
  }
  rep.tensors = static_cast<int64_t>(g.tensor_count());
  Progress progress("gguf " + std::string(ft.name), rep.tensors, "tensors", o.quiet);
  rep.files = g.write_split(out_path, o.split_max_bytes,
                            [&](size_t done, size_t) { progress.update(static_cast<int64_t>(done)); });
  progress.finish();
  rep.bytes = 0;
  for (const std::string& f : rep.files) {
    std::FILE* fp = std::fopen(f.c_str(), "rb");
    if (fp) {
      std::fseek(fp, 0, SEEK_END);
      rep.bytes += static_cast<uint64_t>(std::ftell(fp));
      std::fclose(fp);
    }
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

QuantizeReport gguf_to_hf(const DequantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  QWENQ_CHECK(o.dtype == DType::BF16 || o.dtype == DType::F16 || o.dtype == DType::F32,
              "dequantize: the output dtype must be bf16, fp16 or fp32, not " << dtype_name(o.dtype));
  const GgufFile f(o.model_dir);
  const QwenConfig c = qwen_config_from_gguf(f);
  const Tokenizer tok = Tokenizer::from_gguf(f);
  const std::vector<GgufModelTensor> items = gguf_model_tensors(c);
  for (const GgufModelTensor& it : items) check_gguf_tensor(f, it);  // every refusal before the output exists
  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  QuantizeReport rep;
  Progress bar("dequantize", static_cast<int64_t>(items.size()), "tensors", o.quiet);
  int64_t done = 0;
  for (const GgufModelTensor& it : items) {
    // Row by row from the mapped blocks into the output dtype: one row in fp32 at a time.
    // An expert stack becomes one tensor per expert (its it.shape[0] rows each).
    const GgufTensor& t = f.tensor(it.gguf);
    const int64_t n = t.ne[0], parts = std::max<int64_t>(1, it.experts), part_rows = t.rows() / parts;
    const size_t out_row = static_cast<size_t>(n) * dtype_size(o.dtype);
    std::vector<std::vector<uint8_t>> bytes(static_cast<size_t>(parts), std::vector<uint8_t>(out_row * part_rows));
    dequantize_ggml_rows({t.type, t.data, t.rows(), n, it.rope_head_dim}, [&](int64_t r, const float* v) {
      from_f32(o.dtype, v, bytes[r / part_rows].data() + (r % part_rows) * out_row, static_cast<size_t>(n));
    });
    release_mapped_pages(t.data, t.bytes);
    for (int64_t e = 0; e < parts; ++e) {
      const std::string hf = it.experts > 0 ? gguf_expert_hf(it, e) : it.hf;
      shards.current().add_owned(hf, o.dtype, it.shape, std::move(bytes[e]));
      shards.note_added(hf);
      shards.maybe_flush();
    }
    // A router (ffn_gate_inp, and qwen2moe's ffn_gate_inp_shexp) is no Linear we count.
    const bool router = it.gguf.find(".ffn_gate_inp") != std::string::npos;
    if (it.shape.size() == 2 && it.hf.rfind("model.layers.", 0) == 0 && !router) {
      rep.linears += parts;
      rep.params_quantized += parts * it.shape[0] * it.shape[1];
    }
    bar.update(++done);
  }
  shards.finish();
  bar.finish();
  const std::string arch_class = c.model_type == "qwen3"       ? "Qwen3ForCausalLM"
                                 : c.model_type == "llama"     ? "LlamaForCausalLM"
                                 : c.model_type == "qwen3_moe" ? "Qwen3MoeForCausalLM"
                                 : c.model_type == "qwen2_moe" ? "Qwen2MoeForCausalLM"
                                                               : "Qwen2ForCausalLM";
  nlohmann::ordered_json cfg = {
      {"architectures", {arch_class}},
      {"model_type", c.model_type},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"hidden_act", "silu"},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope.theta},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"torch_dtype", torch_dtype_name(o.dtype)},
  };
  if (c.model_type == "llama" || c.model_type == "qwen3_moe") cfg["attention_bias"] = false;
  if (c.is_moe()) {  // llama.cpp's MoE graphs: every layer sparse
    cfg["num_experts"] = c.num_experts;
    cfg["num_experts_per_tok"] = c.experts_per_token;
    cfg["moe_intermediate_size"] = c.moe_intermediate_size;
    if (c.model_type == "qwen2_moe") cfg["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
    cfg["norm_topk_prob"] = c.norm_topk_prob;
    cfg["decoder_sparse_step"] = 1;
    cfg["mlp_only_layers"] = nlohmann::ordered_json::array();
    if (c.intermediate_size == 0) cfg.erase("intermediate_size");  // not in the file: transformers' default
  }
  if (c.model_type != "llama") cfg["use_sliding_window"] = false;
  if (c.rope.type == RopeType::Linear) cfg["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope.factor}};
  if (c.bos_token_id >= 0) cfg["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_id >= 0) cfg["eos_token_id"] = c.eos_token_id;
  // A GGUF file has no side files to copy: the tokenizer is written from its metadata.
  return finish_output(cfg, o.model_dir, shards, out, t0, rep, [&tok](const std::string& dir) { tok.save_hf(dir); });
}

QwenConfig load_model_config(const std::string& dir_or_gguf) {
  return is_gguf_file(dir_or_gguf) ? qwen_config_from_gguf(GgufFile(dir_or_gguf)) : load_qwen_config(dir_or_gguf);
}

QwenConfig qwen_config_from_gguf(const GgufFile& f) {
  const std::string& arch = f.get_string("general.architecture");
  QWENQ_CHECK(arch == "qwen2" || arch == "qwen3" || arch == "llama" || arch == "qwen2moe" || arch == "qwen3moe",
              f.path() << ": general.architecture '" << arch
                       << "' is not supported (qwen2, qwen3, llama, qwen2moe and qwen3moe are)");
  QwenConfig c;
  const bool moe = arch == "qwen2moe" || arch == "qwen3moe";
  c.model_type = arch == "qwen2moe" ? "qwen2_moe" : arch == "qwen3moe" ? "qwen3_moe" : arch;
  auto u = [&](const std::string& key) { return f.get_int(arch + "." + key); };
  c.hidden_size = u("embedding_length");
  c.num_layers = u("block_count");
  c.intermediate_size = moe ? f.get_int_or(arch + ".feed_forward_length", 0) : u("feed_forward_length");
  c.num_heads = u("attention.head_count");
  c.num_kv_heads = f.get_int_or(arch + ".attention.head_count_kv", c.num_heads);
  if (moe) {  // llama.cpp's graphs: every layer sparse; qwen3moe renormalizes the top k, qwen2moe has a shared expert
    c.num_experts = u("expert_count");
    c.experts_per_token = u("expert_used_count");
    c.moe_intermediate_size = u("expert_feed_forward_length");
    c.shared_expert_intermediate_size = arch == "qwen2moe" ? u("expert_shared_feed_forward_length") : 0;
    c.norm_topk_prob = arch == "qwen3moe";
    QWENQ_CHECK(c.num_experts > 0 && c.experts_per_token >= 1 && c.experts_per_token <= c.num_experts &&
                    c.num_experts <= 4096 && c.moe_intermediate_size > 0 &&
                    (arch == "qwen3moe" || c.shared_expert_intermediate_size > 0),
                f.path() << ": implausible " << arch << " expert sizes (" << c.num_experts << " experts, "
                         << c.experts_per_token << " used, width " << c.moe_intermediate_size << ", shared "
                         << c.shared_expert_intermediate_size << ")");
    c.moe_layer.assign(static_cast<size_t>(std::max<int64_t>(0, c.num_layers)), true);
  }
  QWENQ_CHECK(c.hidden_size > 0 && c.num_layers > 0 && (moe || c.intermediate_size > 0) && c.num_heads > 0 &&
                  c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0,
              f.path() << ": implausible " << arch << ".* sizes (embedding " << c.hidden_size << ", blocks "
                       << c.num_layers << ", feed-forward " << c.intermediate_size << ", heads " << c.num_heads << "/"
                       << c.num_kv_heads << ")");
  // Each block holds at least its norms and seven Linears: more blocks than tensors is a corrupt count.
  QWENQ_CHECK(c.num_layers <= static_cast<int64_t>(f.tensors().size()) / 9,
              f.path() << ": " << arch << ".block_count " << c.num_layers << " but only " << f.tensors().size()
                       << " tensors");
  c.head_dim = f.get_int_or(arch + ".attention.key_length", c.hidden_size / c.num_heads);
  QWENQ_CHECK(f.get_int_or(arch + ".attention.value_length", c.head_dim) == c.head_dim,
              f.path() << ": " << arch << ".attention.value_length differs from key_length (not supported)");
  c.max_position_embeddings = f.get_int_or(arch + ".context_length", 2048);
  c.rms_norm_eps = static_cast<float>(f.get_float_or(arch + ".attention.layer_norm_rms_epsilon", 1e-6));
  c.rope = rope_spec_default(f.get_float_or(arch + ".rope.freq_base", 10000.0));
  const std::string scaling =
      f.has(arch + ".rope.scaling.type") ? f.get_string(arch + ".rope.scaling.type") : std::string("none");
  if (scaling == "linear") {
    c.rope.type = RopeType::Linear;
    c.rope.factor = f.get_float(arch + ".rope.scaling.factor");
  } else {
    QWENQ_CHECK(scaling == "none", f.path() << ": " << arch << ".rope.scaling.type '" << scaling
                                            << "' is not supported (none and linear are)");
  }
  QWENQ_CHECK(!f.has_tensor("rope_freqs.weight"), f.path() << ": rope_freqs.weight (Llama 3 RoPE scaling) is not supported");
  const GgufTensor& embd = f.tensor("token_embd.weight");
  QWENQ_CHECK(embd.ne.size() == 2 && embd.ne[0] == c.hidden_size,
              f.path() << ": token_embd.weight has rows of " << embd.ne[0] << " values, expected " << c.hidden_size);
  c.vocab_size = embd.ne[1];
  c.tie_word_embeddings = !f.has_tensor("output.weight");
  c.qkv_bias = f.has_tensor("blk.0.attn_q.bias");
  c.qk_norm = f.has_tensor("blk.0.attn_q_norm.weight");
  c.bos_token_id = static_cast<int32_t>(f.get_int_or("tokenizer.ggml.bos_token_id", -1));
  c.eos_token_id = static_cast<int32_t>(f.get_int_or("tokenizer.ggml.eos_token_id", -1));
  c.torch_dtype = "gguf";
  return c;
}

QwenWeights bind_gguf_weights(const QwenConfig& c, const GgufFile& f) {
  const std::vector<GgufModelTensor> items = gguf_model_tensors(c);
  std::map<std::string, const GgufModelTensor*> by_hf;
  for (const GgufModelTensor& it : items) {
    check_gguf_tensor(f, it);
    by_hf[it.hf] = &it;
  }
  QwenWeights w;
  auto dense = [&](const std::string& hf) {
    const GgufModelTensor& it = *by_hf.at(hf);
    return view_of(f.tensor(it.gguf), it.shape, &w.owned);
  };
  auto linear = [&](const std::string& hf) {
    const GgufModelTensor& it = *by_hf.at(hf);
    const GgufTensor& t = f.tensor(it.gguf);
    LinearWeight lw;
    lw.N = it.shape[0];
    lw.K = it.shape[1];
    lw.ggml = std::make_shared<GgmlLinear>(GgmlLinear{t.type, t.data, lw.N, lw.K, it.rope_head_dim});
    return lw;
  };
  // A quantized table stays in its blocks (QwenWeights::embed_q); F32/F16/BF16 ones are read in place.
  auto table = [&](const std::string& hf, TensorView* view, std::shared_ptr<const GgmlLinear>* q) {
    const GgufModelTensor& it = *by_hf.at(hf);
    const GgufTensor& t = f.tensor(it.gguf);
    if (ggml_type_is_float(t.type)) {
      *view = view_of(t, it.shape, &w.owned);
      return;
    }
    view->shape = it.shape;
    view->dtype = DType::F32;
    view->data = nullptr;
    *q = std::make_shared<const GgmlLinear>(GgmlLinear{t.type, t.data, it.shape[0], it.shape[1], 0});
  };
  table("model.embed_tokens.weight", &w.embed, &w.embed_q);
  w.final_norm = dense("model.norm.weight");
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
    w.lm_head_q = w.embed_q;
  } else {
    table("lm_head.weight", &w.lm_head, &w.lm_head_q);
  }
  w.layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    QwenLayerWeights& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L.input_norm = dense(p + "input_layernorm.weight");
    L.post_norm = dense(p + "post_attention_layernorm.weight");
    const bool moe = c.is_moe_layer(l);
    for (int t = 0; t < (moe ? 4 : 7); ++t) layer_linear(L, t) = linear(p + kDecoderLinears[t].name + ".weight");
    if (moe) {
      auto dense_linear = [&](const std::string& hf) {
        const GgufModelTensor& it = *by_hf.at(hf);
        LinearWeight lw;
        lw.N = it.shape[0];
        lw.K = it.shape[1];
        lw.dense = dense(hf);
        return lw;
      };
      MoeWeights& m = L.moe;
      m.router = dense_linear(p + "mlp.gate.weight");
      m.experts.resize(static_cast<size_t>(c.num_experts));
      const char* names[3] = {"gate_proj", "up_proj", "down_proj"};
      for (int which = 0; which < 3; ++which) {
        const GgufModelTensor& it = *by_hf.at(p + "mlp.experts.{}." + names[which] + ".weight");
        const GgufTensor& t = f.tensor(it.gguf);
        const int64_t N = it.shape[0], K = it.shape[1];
        const uint64_t stride = ggml_row_bytes(t.type, K) * static_cast<uint64_t>(N);
        for (int64_t e = 0; e < c.num_experts; ++e) {
          LinearWeight& lw = expert_member(m.experts[e], which);
          lw.N = N;
          lw.K = K;
          lw.ggml = std::make_shared<GgmlLinear>(GgmlLinear{t.type, t.data + e * stride, N, K, 0});
        }
      }
      if (c.shared_expert_intermediate_size > 0) {
        m.shared_gate = dense_linear(p + "mlp.shared_expert_gate.weight");
        for (int which = 0; which < 3; ++which)
          expert_member(m.shared, which) = linear(p + "mlp.shared_expert." + names[which] + ".weight");
      }
    }
    if (c.qkv_bias) {
      L.q_bias = dense(p + "self_attn.q_proj.bias");
      L.k_bias = dense(p + "self_attn.k_proj.bias");
      L.v_bias = dense(p + "self_attn.v_proj.bias");
    }
    if (c.qk_norm) {
      L.q_norm = dense(p + "self_attn.q_norm.weight");
      L.k_norm = dense(p + "self_attn.k_norm.weight");
    }
  }
  return w;
}

}  // namespace qwenq
