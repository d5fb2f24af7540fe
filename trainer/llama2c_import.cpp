#include "trainer/llama2c_import.h"

#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "trainer/tokenizer.h"

namespace qwenq {

namespace {

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// Sequential reader over the mapped file with bounds checks that name the tensor being read.
class Cursor {
 public:
  Cursor(const MappedFile& f, std::string path) : f_(f), path_(std::move(path)) {}
  const float* take(const char* what, int64_t count) {
    const size_t bytes = static_cast<size_t>(count) * 4;
    QWENQ_CHECK(off_ + bytes <= f_.size(), path_ << ": file ends inside tensor " << what << " (needs " << off_ + bytes
                                                 << " bytes, file has " << f_.size() << "); truncated?");
    const float* p = reinterpret_cast<const float*>(f_.data() + off_);
    off_ += bytes;
    return p;
  }
  size_t offset() const { return off_; }

 private:
  const MappedFile& f_;
  std::string path_;
  size_t off_ = sizeof(Llama2cHeader);
};

// Writer that converts fp32 tensors to the output dtype and owns the bytes.
struct TensorSink {
  SafetensorsWriter writer;
  DType dtype;
  void add(const std::string& name, std::vector<int64_t> shape, const float* src) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<uint8_t> bytes(n * dtype_size(dtype));
    from_f32(dtype, src, bytes.data(), n);
    writer.add_owned(name, dtype, std::move(shape), std::move(bytes));
  }
};

// Rows of one head [D, C] reordered even rows first, then odd rows (interleaved -> rotate-half RoPE).
std::vector<float> permute_rope_rows(const float* w, int64_t heads, int64_t D, int64_t C) {
  std::vector<float> out(heads * D * C);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < D; ++i) {
      const int64_t src = i < D / 2 ? 2 * i : 2 * (i - D / 2) + 1;
      std::memcpy(&out[(h * D + i) * C], &w[(h * D + src) * C], C * sizeof(float));
    }
  }
  return out;
}

}  // namespace

void import_llama2c(const Llama2cImportOptions& opt) {
  QWENQ_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::BF16,
              "import-llama2c: --dtype must be fp32 or bf16, got " << dtype_name(opt.dtype));
  MappedFile f(opt.checkpoint);
  QWENQ_CHECK(f.size() >= sizeof(Llama2cHeader),
              opt.checkpoint << ": too short for a llama2.c header (" << f.size() << " bytes)");
  Llama2cHeader h;
  std::memcpy(&h, f.data(), sizeof h);
  const bool tied = h.vocab_size > 0;
  const int64_t V = tied ? h.vocab_size : -static_cast<int64_t>(h.vocab_size);
  const int64_t C = h.dim, I = h.hidden_dim, L = h.n_layers, H = h.n_heads, Hkv = h.n_kv_heads;
  QWENQ_CHECK(C > 0 && I > 0 && L > 0 && H > 0 && Hkv > 0 && V > 0 && h.seq_len > 0 && C % H == 0 && H % Hkv == 0 &&
                  (C / H) % 2 == 0 && C < (1 << 20) && L < 4096,
              opt.checkpoint << ": implausible llama2.c header (dim=" << C << " hidden_dim=" << I << " n_layers=" << L
                             << " n_heads=" << H << " n_kv_heads=" << Hkv << " vocab=" << h.vocab_size
                             << " seq_len=" << h.seq_len << ")");
  const int64_t D = C / H, KV = Hkv * D;

  Cursor cur(f, opt.checkpoint);
  const float* tok_emb = cur.take("tok_embeddings", V * C);
  const float* rms_att = cur.take("rms_att_weight", L * C);
  const float* wq = cur.take("wq", L * C * C);
  const float* wk = cur.take("wk", L * KV * C);
  const float* wv = cur.take("wv", L * KV * C);
  const float* wo = cur.take("wo", L * C * C);
  const float* rms_ffn = cur.take("rms_ffn_weight", L * C);
  const float* w1 = cur.take("w1", L * I * C);
  const float* w2 = cur.take("w2", L * C * I);
  const float* w3 = cur.take("w3", L * I * C);
  const float* rms_final = cur.take("rms_final_weight", C);
  cur.take("freq_cis_real", static_cast<int64_t>(h.seq_len) * D / 2);
  cur.take("freq_cis_imag", static_cast<int64_t>(h.seq_len) * D / 2);
  const float* wcls = tied ? tok_emb : cur.take("wcls", V * C);
  QWENQ_CHECK(cur.offset() == f.size(), opt.checkpoint << ": " << f.size() - cur.offset()
                                                       << " unexpected bytes after the last tensor");

  Tokenizer tok = Tokenizer::from_llama2c(opt.tokenizer);
  QWENQ_CHECK(tok.vocab_size() == V, opt.tokenizer << ": tokenizer has " << tok.vocab_size()
                                                   << " tokens but the checkpoint's vocabulary is " << V);

  TensorSink sink{SafetensorsWriter{}, opt.dtype};
  sink.add("model.embed_tokens.weight", {V, C}, tok_emb);
  const std::vector<float> zeros_q(C, 0.f), zeros_kv(KV, 0.f);
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    sink.add(p + "input_layernorm.weight", {C}, rms_att + l * C);
    std::vector<float> q = permute_rope_rows(wq + l * C * C, H, D, C);
    std::vector<float> k = permute_rope_rows(wk + l * KV * C, Hkv, D, C);
    sink.add(p + "self_attn.q_proj.weight", {C, C}, q.data());
    sink.add(p + "self_attn.q_proj.bias", {C}, zeros_q.data());
    sink.add(p + "self_attn.k_proj.weight", {KV, C}, k.data());
    sink.add(p + "self_attn.k_proj.bias", {KV}, zeros_kv.data());
    sink.add(p + "self_attn.v_proj.weight", {KV, C}, wv + l * KV * C);
    sink.add(p + "self_attn.v_proj.bias", {KV}, zeros_kv.data());
    sink.add(p + "self_attn.o_proj.weight", {C, C}, wo + l * C * C);
    sink.add(p + "post_attention_layernorm.weight", {C}, rms_ffn + l * C);
    sink.add(p + "mlp.gate_proj.weight", {I, C}, w1 + l * I * C);
    sink.add(p + "mlp.up_proj.weight", {I, C}, w3 + l * I * C);
    sink.add(p + "mlp.down_proj.weight", {C, I}, w2 + l * C * I);
  }
  sink.add("model.norm.weight", {C}, rms_final);
  if (!tied) sink.add("lm_head.weight", {V, C}, wcls);
  sink.writer.set_metadata("format", "pt");
  sink.writer.set_metadata("qwenq.source", "llama2.c import of " + opt.checkpoint);

  const char* dtype_str = opt.dtype == DType::BF16 ? "bfloat16" : "float32";
  nlohmann::ordered_json cfg = {
      {"architectures", {"Qwen2ForCausalLM"}},
      {"model_type", "qwen2"},
      {"vocab_size", V},
      {"hidden_size", C},
      {"intermediate_size", I},
      {"num_hidden_layers", L},
      {"num_attention_heads", H},
      {"num_key_value_heads", Hkv},
      {"head_dim", D},
      {"hidden_act", "silu"},
      {"max_position_embeddings", h.seq_len},
      {"rms_norm_eps", opt.rms_norm_eps},
      {"rope_theta", opt.rope_theta},
      {"tie_word_embeddings", tied},
      {"use_sliding_window", false},
      {"attention_dropout", 0.0},
      {"bos_token_id", tok.bos_id()},
      {"eos_token_id", tok.eos_id()},
      {"torch_dtype", dtype_str},
  };
  nlohmann::ordered_json gen = {{"bos_token_id", tok.bos_id()}, {"eos_token_id", tok.eos_id()}, {"do_sample", false}};

  StagedDir out(opt.out_dir, opt.overwrite);
  write_file_atomic(path_join(out.path(), "config.json"), cfg.dump(2) + "\n");
  write_file_atomic(path_join(out.path(), "generation_config.json"), gen.dump(2) + "\n");
  sink.writer.write(path_join(out.path(), "model.safetensors"));
  tok.save_hf(out.path());
  out.commit();
}

}  // namespace qwenq
