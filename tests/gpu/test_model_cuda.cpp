// QwenModelCuda (trainer/qwen_model_cuda.h), the whole forward on the GPU, against the CPU QwenModel on the same
// checkpoints and packed batches: logits (forward_logits) and per-token losses (next_token_nll), for
//   - the tiny random Qwen2 preset (trainer/random_model.h: D = 16, so the naive fp32 attention) in F32 and BF16;
//   - Qwen2 with random q/k/v biases and norm weights, and Qwen3 (q/k norm, head_dim != hidden/heads, untied
//     lm_head), both D = 64 so that flash attention runs, written by this file;
//   - those models quantized by round-to-nearest into GPTQ v1 and AWQ GEMM tensors and into NF4
//     (trainer/quantize_model.h), which the GPU runs through the Q4 dequant-matmul (decode kernels for the
//     41-token batch, tensor cores for the 165-token one);
//   - the real stories260K (D = 8) imported from llama2.c: perplexity on 16 windows of 256 TinyStories tokens.
//
// Tolerances (relative to max |logit| of the CPU, per batch):
//   kFp32RelTol  F32 weights and the naive attention: every op is fp32 on both sides, only the order of the sums
//                (cuBLASLt's against Eigen's, the kernels' reductions) and expf differ: ~1e-6 observed between two
//                fp32 implementations of this model (README: 5e-6 against transformers); 1e-4 leaves room.
//   kBf16RelTol  anything rounded to bf16 on the GPU: cuBLASLt rounds the fp32 activations to a BF16 weight's
//                dtype, the 4-bit GEMMs take bf16 activations (and the tensor-core path a bf16 ŵ), flash attention
//                takes bf16 q, k, v and rounds P to bf16. Each rounding is relative 2^-9 (0.2%) of one input; they
//                are independent, so a logit moves by ~0.2% · sqrt(roundings) of the magnitude of its terms, a few
//                0.1% of max |logit| after two layers. A CPU emulation of exactly these roundings (the CPU forward
//                with x rounded to bf16 before every 16-bit/4-bit GEMM, ŵ to bf16 for T > 64, q/k/v, P and the
//                attention output to bf16 where flash runs) gave at most 5.6e-3 on every model and batch below
//                (Qwen3 the largest; 1.3e-3 for the tiny BF16 preset). 2e-2 keeps a 3.5x margin over that and is
//                the usual allowance for a bf16 forward against fp32.
//   nll          nll = logsumexp(logits) − logit[target] moves by at most 2·max |Δlogit| (exact arithmetic), so each
//                per-token loss must be within 2 · (the observed max |Δlogit|) + kNllRelSlack · (1 + max |logit|),
//                the slack covering the two sides' fp32 roundings in the log-sum-exp. A consistency check between
//                the GPU's chunked lm_head + cross-entropy and its logits, as tight as the logits allow.
//   perplexity   stories260K is F32 with D = 8 (the fp32 path): within 0.5% as asked, and the observed gap printed.
// Every test skips without a device; the stories260K test also without the shared data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/gpu/gpu_test.h"
#include "trainer/llama2c_import.h"
#include "trainer/perplexity.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_model_cuda.h"
#include "trainer/quantize_model.h"
#include "trainer/random_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {
namespace {

constexpr double kFp32RelTol = 1e-4;
constexpr double kBf16RelTol = 2e-2;
constexpr double kNllRelSlack = 1e-5;
constexpr double kStoriesPplRelTol = 5e-3;

// A scratch directory under the system's temp directory, removed with its contents at scope exit.
class ScratchDir {
 public:
  ScratchDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "qwenq_model_cuda_XXXXXX").string();
    if (mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + templ);
    path_ = templ;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// ../shared/data of a development checkout, found from this file's path, or a copy the device check carries
// (.gpu-deps/shared/data, see scripts/gpu_prepare.sh), or $QWENQ_SHARED_DATA; "" when none has stories260K.
std::string shared_data_dir() {
  const std::filesystem::path repo = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
  std::vector<std::filesystem::path> candidates;
  if (const char* env = std::getenv("QWENQ_SHARED_DATA")) candidates.emplace_back(env);
  candidates.push_back(repo.parent_path() / "shared" / "data");
  candidates.push_back(repo / ".gpu-deps" / "shared" / "data");
  for (const auto& c : candidates) {
    std::error_code ec;
    if (std::filesystem::exists(c / "stories260K" / "stories260K.bin", ec)) return c.string();
  }
  return "";
}

// Random Qwen2/Qwen3 checkpoints with every tensor the forward reads made non-trivial (biases, norm weights,
// q/k norm weights), which the random_model presets leave at 0 and 1.
struct TestArch {
  std::string model_type;  // "qwen2" or "qwen3"
  int64_t C, I, H, Hkv, D, V, layers;
  bool tied;
};

void write_test_model(const std::string& dir, const TestArch& a, DType dtype, uint64_t seed) {
  Rng rng(seed);
  SafetensorsWriter w;
  const auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean, float stddev) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> f(static_cast<size_t>(n));
    for (auto& x : f) x = mean + static_cast<float>(rng.normal()) * stddev;
    std::vector<uint8_t> bytes(f.size() * dtype_size(dtype));
    from_f32(dtype, f.data(), bytes.data(), f.size());
    w.add_owned(name, dtype, std::move(shape), std::move(bytes));
  };
  const int64_t Q = a.H * a.D, KV = a.Hkv * a.D;
  const bool qwen3 = a.model_type == "qwen3";
  add("model.embed_tokens.weight", {a.V, a.C}, 0.f, 0.5f);
  for (int64_t l = 0; l < a.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {a.C}, 1.f, 0.1f);
    add(p + "self_attn.q_proj.weight", {Q, a.C}, 0.f, 0.08f);
    add(p + "self_attn.k_proj.weight", {KV, a.C}, 0.f, 0.08f);
    add(p + "self_attn.v_proj.weight", {KV, a.C}, 0.f, 0.08f);
    if (qwen3) {
      add(p + "self_attn.q_norm.weight", {a.D}, 1.f, 0.1f);
      add(p + "self_attn.k_norm.weight", {a.D}, 1.f, 0.1f);
    } else {
      add(p + "self_attn.q_proj.bias", {Q}, 0.f, 0.1f);
      add(p + "self_attn.k_proj.bias", {KV}, 0.f, 0.1f);
      add(p + "self_attn.v_proj.bias", {KV}, 0.f, 0.1f);
    }
    add(p + "self_attn.o_proj.weight", {a.C, Q}, 0.f, 0.08f);
    add(p + "post_attention_layernorm.weight", {a.C}, 1.f, 0.1f);
    add(p + "mlp.gate_proj.weight", {a.I, a.C}, 0.f, 0.08f);
    add(p + "mlp.up_proj.weight", {a.I, a.C}, 0.f, 0.08f);
    add(p + "mlp.down_proj.weight", {a.C, a.I}, 0.f, 0.06f);
  }
  add("model.norm.weight", {a.C}, 1.f, 0.1f);
  if (!a.tied) add("lm_head.weight", {a.V, a.C}, 0.f, 0.1f);
  nlohmann::ordered_json cfg = {
      {"model_type", a.model_type},
      {"vocab_size", a.V},
      {"hidden_size", a.C},
      {"intermediate_size", a.I},
      {"num_hidden_layers", a.layers},
      {"num_attention_heads", a.H},
      {"num_key_value_heads", a.Hkv},
      {"hidden_act", "silu"},
      {"max_position_embeddings", 4096},
      {"rms_norm_eps", 1e-6},
      {"rope_theta", 10000.0},
      {"tie_word_embeddings", a.tied},
      {"torch_dtype", dtype == DType::BF16 ? "bfloat16" : "float32"},
  };
  if (qwen3) cfg["head_dim"] = a.D;
  std::filesystem::create_directories(dir);
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
  w.write(dir + "/model.safetensors");
}

const TestArch kQwen2Bias{"qwen2", 128, 256, 2, 1, 64, 384, 2, true};
const TestArch kQwen3{"qwen3", 128, 256, 4, 2, 64, 384, 2, false};

std::string tiny_random(const std::string& dir, DType dtype) {
  RandomModelOptions o;
  o.out_dir = dir;
  o.dtype = dtype;
  o.seed = 5;
  write_random_model(o);
  return dir;
}

// Seeded random tokens packed into sequences of the given lengths.
PackedBatch random_batch(const std::vector<int>& lengths, int64_t V, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int32_t>> seqs;
  for (int len : lengths) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& t : s) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
    seqs.push_back(std::move(s));
  }
  return PackedBatch::from_sequences(seqs);
}

// GPU logits and losses against the CPU model's on two batches: lengths 1, 7, 33 (41 tokens: the small-M GEMM
// paths) and 100, 65 (165 tokens: the tensor-core W4A16 path). Prints the observed error ratios.
void expect_gpu_matches_cpu(const std::string& dir, double rel_tol, const std::string& what) {
  SCOPED_TRACE(what);
  const QwenModel cpu(dir);
  QwenModelCuda gpu(cpu);
  const int64_t V = cpu.config().vocab_size;
  const std::vector<std::vector<int>> batches = {{1, 7, 33}, {100, 65}};
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    const uint64_t seed = 77 + bi;
    const PackedBatch b = random_batch(batches[bi], V, seed);
    const std::vector<float> want = cpu.forward_logits(b), got = gpu.forward_logits(b);
    ASSERT_EQ(got.size(), want.size());
    double max_logit = 0, max_err = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      max_logit = std::max(max_logit, static_cast<double>(std::fabs(want[i])));
      const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
      max_err = std::isnan(e) ? INFINITY : std::max(max_err, e);
    }
    EXPECT_LE(max_err, rel_tol * max_logit) << "batch " << bi << " (T=" << b.num_tokens() << ", seed " << seed
                                            << "): max |Δlogit| " << max_err << ", max |logit| " << max_logit;
    std::vector<float> nll_cpu, nll_gpu;
    const int64_t counted_cpu = cpu.next_token_nll(b, &nll_cpu);
    const int64_t counted_gpu = gpu.next_token_nll(b, &nll_gpu);
    EXPECT_EQ(counted_gpu, counted_cpu);
    ASSERT_EQ(nll_gpu.size(), nll_cpu.size());
    double max_nll_err = 0;
    for (size_t t = 0; t < nll_cpu.size(); ++t) {
      const double e = std::fabs(static_cast<double>(nll_gpu[t]) - nll_cpu[t]);
      max_nll_err = std::isnan(e) ? INFINITY : std::max(max_nll_err, e);
    }
    EXPECT_LE(max_nll_err, 2 * max_err + kNllRelSlack * (1 + max_logit)) << "batch " << bi << ": per-token NLL";
    std::printf("[ %s ] %s batch T=%lld: max |dlogit| / max |logit| = %.3g (tolerance %.0e), max |dnll| = %.3g\n",
                what.c_str(), gpu.attention_kernel(), static_cast<long long>(b.num_tokens()), max_err / max_logit,
                rel_tol, max_nll_err);
  }
}

TEST(QwenModelCuda, TinyQwen2F32IsTheCpuForward) {
  QWENQ_REQUIRE_GPU();
  ScratchDir tmp;
  const std::string dir = tiny_random(tmp.sub("f32"), DType::F32);
  {
    QwenModelCuda gpu{QwenModel(dir)};  // the CPU model may go once uploaded
    EXPECT_STREQ(gpu.attention_kernel(), "naive (fp32)");
    EXPECT_GT(gpu.weight_bytes(), 0);
  }
  expect_gpu_matches_cpu(dir, kFp32RelTol, "tiny qwen2 F32");
}

TEST(QwenModelCuda, TinyQwen2Bf16) {
  QWENQ_REQUIRE_GPU();
  ScratchDir tmp;
  expect_gpu_matches_cpu(tiny_random(tmp.sub("bf16"), DType::BF16), kBf16RelTol, "tiny qwen2 BF16");
}

TEST(QwenModelCuda, Qwen2WithBiasesOnFlashAttention) {
  QWENQ_REQUIRE_GPU();
  ScratchDir tmp;
  for (DType dtype : {DType::F32, DType::BF16}) {
    const std::string dir = tmp.sub(std::string("qwen2_") + dtype_name(dtype));
    write_test_model(dir, kQwen2Bias, dtype, 21);
    EXPECT_STREQ(QwenModelCuda(QwenModel(dir)).attention_kernel(), "flash (bf16 q/k/v)");
    expect_gpu_matches_cpu(dir, kBf16RelTol, std::string("qwen2 biases D=64 ") + dtype_name(dtype));
  }
}

TEST(QwenModelCuda, Qwen3QkNormOnFlashAttention) {
  QWENQ_REQUIRE_GPU();
  ScratchDir tmp;
  const std::string dir = tmp.sub("qwen3");
  write_test_model(dir, kQwen3, DType::BF16, 33);
  ASSERT_TRUE(QwenModel(dir).config().qk_norm);
  expect_gpu_matches_cpu(dir, kBf16RelTol, "qwen3 D=64 BF16");
}

// RTN into GPTQ v1 and AWQ GEMM tensors (group 32) and NF4 (blocks of 64, double quantization), each from the tiny
// preset (D = 16, zero biases) and from the Qwen2 model with biases (D = 64, biases added after the 4-bit GEMM).
TEST(QwenModelCuda, QuantizedModels) {
  QWENQ_REQUIRE_GPU();
  ScratchDir tmp;
  const std::string tiny = tiny_random(tmp.sub("tiny"), DType::F32);
  const std::string biased = tmp.sub("biased");
  write_test_model(biased, kQwen2Bias, DType::BF16, 44);
  struct Method {
    const char* name;
    QuantizeOptions::Method method;
    IntLayout layout;
  };
  const Method methods[] = {{"rtn-gptq", QuantizeOptions::Method::Rtn, IntLayout::GptqV1},
                            {"rtn-awq", QuantizeOptions::Method::Rtn, IntLayout::AwqGemm},
                            {"nf4", QuantizeOptions::Method::Nf4, IntLayout::GptqV1}};
  for (const std::string& src : {tiny, biased}) {
    for (const Method& m : methods) {
      QuantizeOptions q;
      q.method = m.method;
      q.layout = m.layout;
      q.group_size = 32;
      q.sym = m.layout == IntLayout::GptqV1;
      q.model_dir = src;
      q.out_dir = src + "-" + m.name;
      q.quiet = true;
      quantize_model(q);
      const QwenModel check(q.out_dir);
      ASSERT_FALSE(check.weights().layers[0].q.is_dense()) << q.out_dir << " holds packed Linears";
      expect_gpu_matches_cpu(q.out_dir, kBf16RelTol, std::string(m.name) + (src == tiny ? " tiny" : " biased D=64"));
    }
  }
}

TEST(QwenModelCuda, ClearErrors) {
  QWENQ_REQUIRE_GPU();
  ScratchDir tmp;
  const std::string dir = tiny_random(tmp.sub("m"), DType::F32);
  QwenModelCuda gpu{QwenModel(dir)};
  const auto error_of = [](auto fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "<no error>";
  };
  PackedBatch b = PackedBatch::from_sequences({{1, 2, 3, 400, 5}});
  std::vector<float> nll;
  std::string err = error_of([&] { gpu.next_token_nll(b, &nll); });
  EXPECT_NE(err.find("token id 400 at position 3 is outside the vocabulary [0, 320)"), std::string::npos) << err;
  // The model still works after a refused batch.
  b.tokens[3] = 4;
  EXPECT_EQ(gpu.next_token_nll(b, &nll), 4);

  // 8-bit GPTQ has no Q4 form: refused at load, naming the Linear.
  QuantizeOptions q;
  q.bits = 8;
  q.group_size = 32;
  q.model_dir = dir;
  q.out_dir = tmp.sub("int8");
  q.quiet = true;
  quantize_model(q);
  const QwenModel int8(q.out_dir);
  err = error_of([&] { QwenModelCuda g(int8); });
  EXPECT_NE(err.find("cannot run 'model.layers.0.self_attn.q_proj' on the GPU"), std::string::npos) << err;
}

TEST(QwenModelCuda, Stories260KPerplexityIsTheCpus) {
  QWENQ_REQUIRE_GPU();
  const std::string data = shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data (stories260K, TinyStories) not found; skipping";
  ScratchDir tmp;
  Llama2cImportOptions o;
  o.checkpoint = data + "/stories260K/stories260K.bin";
  o.tokenizer = data + "/stories260K/tok512.bin";
  o.out_dir = tmp.sub("stories");
  import_llama2c(o);
  const QwenModel cpu(o.out_dir);
  ASSERT_EQ(cpu.config().head_dim, 8);
  std::vector<int32_t> ids = Tokenizer::from_dir(o.out_dir).encode(read_file(data + "/tinystories/tinystories_val.txt"));
  ASSERT_GE(ids.size(), 16u * 256u);
  ids.resize(16 * 256);
  PerplexityOptions opt;
  opt.seq_len = 256;
  opt.windows_per_batch = 4;
  opt.quiet = true;
  const PerplexityResult want = evaluate_perplexity(cpu, ids, opt);
  QwenModelCuda gpu(cpu);
  EXPECT_STREQ(gpu.attention_kernel(), "naive (fp32)");
  const PerplexityResult got = evaluate_perplexity(
      [&gpu](const PackedBatch& b, std::vector<float>* nll) { return gpu.next_token_nll(b, nll); }, ids, opt);
  EXPECT_EQ(got.windows, 16);
  EXPECT_EQ(got.scored_tokens, want.scored_tokens);
  EXPECT_NEAR(got.perplexity, want.perplexity, kStoriesPplRelTol * want.perplexity);
  std::printf("[ stories260K ] perplexity GPU %.6f, CPU %.6f (relative gap %.2e); GPU %.0f tok/s, CPU %.0f tok/s\n",
              got.perplexity, want.perplexity, std::fabs(got.perplexity / want.perplexity - 1), got.tokens_per_s,
              want.tokens_per_s);
}

}  // namespace
}  // namespace qwenq
