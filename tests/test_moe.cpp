// Mixture-of-experts models (qwen2_moe, qwen3_moe) on the CPU: the top-k routing against a double-precision
// brute force, a whole MoE block against the same formulas evaluated token by token in double from the stored
// weights and its backward against finite differences, KV-cache decoding against the packed forward, config.json's
// MoE fields (transformers 4.51.3's defaults, mlp_only_layers and decoder_sparse_step, refusals), dequantize and
// merge over every expert, and the one clear error of every path that does not take MoE models yet (LoRA on MoE
// models: tests/test_lora_model.cpp). The logits against transformers itself: tests/oracle/test_model_oracle.py
// (qwen3_moe_fp32, qwen2_moe_bf16).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/rng.h"
#include "kernels/moe_route.h"
#include "trainer/moe_block.h"
#include "tests/support/test_compare.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_random.h"
#include "trainer/gguf_model.h"
#include "trainer/imatrix_model.h"
#include "lora/peft_io.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/quant_config.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

constexpr double kRouteTolerance = 1e-6;   // fp32 softmax vs double, relative to the largest weight (1)
constexpr double kBlockTolerance = 2e-5;   // fp32 block vs double, relative to the output's largest magnitude
constexpr float kDecodeTolerance = 1e-4f;  // KV-cache steps vs the packed forward, absolute on logits of ~O(1)
constexpr double kMoeFdStep = 1e-3;        // central differences of the block in fp32: error ~1e-7/h + h²
constexpr double kMoeFdTolerance = 2e-3;   // relative to |directional derivative| + 1

// The k largest softmax probabilities in double, ties to the lower index, optionally renormalized.
void route_in_double(const float* r, int64_t E, int64_t k, bool norm, std::vector<int32_t>* experts,
                     std::vector<double>* weights) {
  const double mx = *std::max_element(r, r + E);
  std::vector<double> p(E);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(static_cast<double>(r[e]) - mx);
  for (double& x : p) x /= sum;
  std::vector<int32_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  experts->assign(order.begin(), order.begin() + k);
  double kept = 0;
  for (int64_t j = 0; j < k; ++j) kept += p[order[j]];
  weights->resize(k);
  for (int64_t j = 0; j < k; ++j) (*weights)[j] = norm ? p[order[j]] / kept : p[order[j]];
}

TEST(MoeRoute, MatchesDoubleBruteForce) {
  const int64_t T = 37;
  for (int64_t E : {1, 5, 8, 60, 128}) {
    for (int64_t k : {int64_t{1}, std::min<int64_t>(2, E), std::min<int64_t>(8, E), E}) {
      for (bool norm : {false, true}) {
        SCOPED_TRACE("E " + std::to_string(E) + " k " + std::to_string(k) + (norm ? " norm" : ""));
        const std::vector<float> logits = test::normal_vector(T * E, 100 + E * 7 + k, 2.f);
        std::vector<int32_t> experts(T * k);
        std::vector<float> weights(T * k), probs(T * E);
        moe_route_ref(logits.data(), T, E, k, norm, experts.data(), weights.data(), probs.data());
        for (int64_t t = 0; t < T; ++t) {
          std::vector<int32_t> want_e;
          std::vector<double> want_w;
          route_in_double(logits.data() + t * E, E, k, norm, &want_e, &want_w);
          for (int64_t j = 0; j < k; ++j) {
            EXPECT_EQ(experts[t * k + j], want_e[j]) << "token " << t << " choice " << j;
            EXPECT_NEAR(weights[t * k + j], want_w[j], kRouteTolerance) << "token " << t << " choice " << j;
            if (!norm) {
              EXPECT_EQ(probs[t * E + want_e[j]], weights[t * k + j]) << "the kept p, token " << t;
            }
          }
          double sum = 0;
          for (int64_t e = 0; e < E; ++e) sum += probs[t * E + e];
          EXPECT_NEAR(sum, 1.0, kRouteTolerance) << "token " << t;
        }
      }
    }
  }
}

TEST(MoeRoute, TiesGoToTheLowerIndex) {
  const std::vector<float> logits = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, /*second token*/ 1.f, 3.f, 3.f, 1.f, 3.f, 0.f};
  std::vector<int32_t> experts(2 * 3);
  std::vector<float> weights(2 * 3);
  moe_route_ref(logits.data(), 2, 6, 3, /*norm_topk_prob=*/true, experts.data(), weights.data());
  EXPECT_EQ(std::vector<int32_t>(experts.begin(), experts.begin() + 3), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(std::vector<int32_t>(experts.begin() + 3, experts.end()), (std::vector<int32_t>{1, 2, 4}));
  for (float w : weights) EXPECT_NEAR(w, 1.0 / 3.0, 1e-7);
}

TEST(MoeRoute, RefusesKOutsideTheExperts) {
  float logits[4] = {0, 0, 0, 0};
  int32_t e[8];
  float w[8];
  test::expect_error([&] { moe_route_ref(logits, 1, 4, 5, false, e, w); }, "moe_route: top-5 of 4 experts");
  test::expect_error([&] { moe_route_ref(logits, 1, 4, 0, false, e, w); }, "moe_route: top-0 of 4 experts");
}

// expert(x) = (silu(x W_gᵀ) ⊙ x W_uᵀ) W_dᵀ in double from the stored (dequantized) weights.
std::vector<double> expert_in_double(const MoeExpertWeights& e, const float* x) {
  const std::vector<float> G = e.gate.dequantize(), U = e.up.dequantize(), D = e.down.dequantize();
  const int64_t I = e.gate.N, C = e.gate.K;
  std::vector<double> h(I), y(C, 0.0);
  for (int64_t i = 0; i < I; ++i) {
    double g = 0, u = 0;
    for (int64_t c = 0; c < C; ++c) {
      g += static_cast<double>(G[i * C + c]) * x[c];
      u += static_cast<double>(U[i * C + c]) * x[c];
    }
    h[i] = g / (1 + std::exp(-g)) * u;
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < I; ++i) y[c] += static_cast<double>(D[c * I + i]) * h[i];
  return y;
}

// The block's output for token x in double: the brute-force routing above, the experts, the shared expert.
std::vector<double> moe_in_double(const QwenConfig& c, const MoeWeights& m, const float* x) {
  const int64_t C = c.hidden_size, E = c.num_experts;
  const std::vector<float> R = m.router.dequantize();
  std::vector<float> r(E);
  for (int64_t e = 0; e < E; ++e) {
    double s = 0;
    for (int64_t i = 0; i < C; ++i) s += static_cast<double>(R[e * C + i]) * x[i];
    r[e] = static_cast<float>(s);
  }
  std::vector<int32_t> experts;
  std::vector<double> weights;
  route_in_double(r.data(), E, c.experts_per_token, c.norm_topk_prob, &experts, &weights);
  std::vector<double> y(C, 0.0);
  for (size_t j = 0; j < experts.size(); ++j) {
    const std::vector<double> ye = expert_in_double(m.experts[experts[j]], x);
    for (int64_t i = 0; i < C; ++i) y[i] += weights[j] * ye[i];
  }
  if (m.shared.gate.N > 0) {
    const std::vector<double> ys = expert_in_double(m.shared, x);
    const std::vector<float> Gs = m.shared_gate.dequantize();
    double g = 0;
    for (int64_t i = 0; i < C; ++i) g += static_cast<double>(Gs[i]) * x[i];
    const double sg = 1 / (1 + std::exp(-g));
    for (int64_t i = 0; i < C; ++i) y[i] += sg * ys[i];
  }
  return y;
}

// A MoE block with weights of transformers' scale in the oracles (1/√fan_in) and experts that matter.
MoeWeights random_moe(const QwenConfig& c, uint64_t seed) {
  const int64_t C = c.hidden_size;
  uint64_t s = seed;
  auto lin = [&](int64_t N, int64_t K) {
    return LinearWeight::from_fp32(test::normal_vector(N * K, ++s, 1.f / std::sqrt(static_cast<float>(K))), N, K);
  };
  auto expert = [&](int64_t I) { return MoeExpertWeights{lin(I, C), lin(I, C), lin(C, I)}; };
  MoeWeights m;
  m.router = lin(c.num_experts, C);
  for (int64_t e = 0; e < c.num_experts; ++e) m.experts.push_back(expert(c.moe_intermediate_size));
  if (c.shared_expert_intermediate_size > 0) {
    m.shared = expert(c.shared_expert_intermediate_size);
    m.shared_gate = lin(1, C);
  }
  return m;
}

// dn of L = Σ dout ⊙ out(n) against central differences along random directions of n (the steps move no token to
// another expert: the routing is piecewise constant).
TEST(MoeBlock, BackwardMatchesFiniteDifferences) {
  for (bool norm : {true, false}) {
    for (int64_t shared : {0, 24}) {
      SCOPED_TRACE(std::string(norm ? "renormalized" : "plain") + (shared ? ", shared expert" : ""));
      QwenConfig c;
      c.hidden_size = 16;
      c.num_experts = 6;
      c.experts_per_token = 2;
      c.moe_intermediate_size = 12;
      c.shared_expert_intermediate_size = shared;
      c.norm_topk_prob = norm;
      const MoeWeights m = random_moe(c, 50 + shared + norm);
      const int64_t T = 9, C = c.hidden_size;
      const std::vector<float> n = test::normal_vector(T * C, 60, 1.f), dout = test::normal_vector(T * C, 61, 1.f);
      MoeBlockActs acts;
      std::vector<float> out(T * C), dn(T * C, 0.f);
      moe_block_forward(c, m, n.data(), T, out.data(), nullptr, &acts);
      moe_block_backward(c, m, acts, T, dout.data(), dn.data());
      auto loss = [&](const std::vector<float>& x) {
        std::vector<float> y(T * C);
        moe_block_forward(c, m, x.data(), T, y.data());
        double l = 0;
        for (int64_t i = 0; i < T * C; ++i) l += static_cast<double>(dout[i]) * y[i];
        return l;
      };
      for (int trial = 0; trial < 4; ++trial) {
        const std::vector<float> dir = test::normal_vector(T * C, 70 + trial, 1.f);
        double analytic = 0;
        for (int64_t i = 0; i < T * C; ++i) analytic += static_cast<double>(dn[i]) * dir[i];
        auto at = [&](double h) {
          std::vector<float> x = n;
          for (int64_t i = 0; i < T * C; ++i) x[i] += static_cast<float>(h * dir[i]);
          return loss(x);
        };
        const double h = kMoeFdStep, fd = (at(h) - at(-h)) / (2 * h);
        EXPECT_NEAR(fd, analytic, kMoeFdTolerance * (std::fabs(analytic) + 1)) << "direction " << trial;
      }
    }
  }
}

TEST(MoeModel, BlockMatchesTokenByTokenInDouble) {
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    SCOPED_TRACE(preset);
    const std::string dir = test::make_random_model(path_join(test::scratch_dir(), preset), preset, DType::BF16, 5);
    const QwenModel model(dir);
    const QwenConfig& c = model.config();
    ASSERT_TRUE(c.is_moe());
    const int64_t T = 29, C = c.hidden_size;
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      if (!c.is_moe_layer(l)) continue;
      ++moe_layers;
      const std::vector<float> n = test::normal_vector(T * C, 40 + l, 1.f);
      std::vector<float> out(T * C);
      model.mlp_forward(l, n.data(), T, out.data());
      double worst = 0, scale = 0;
      std::vector<int> used(c.num_experts, 0);
      for (int64_t t = 0; t < T; ++t) {
        const std::vector<double> want = moe_in_double(c, model.weights().layers[l].moe, n.data() + t * C);
        for (int64_t i = 0; i < C; ++i) {
          worst = std::max(worst, std::fabs(out[t * C + i] - want[i]));
          scale = std::max(scale, std::fabs(want[i]));
        }
      }
      EXPECT_LE(worst, kBlockTolerance * scale) << "layer " << l << " (largest output " << scale << ")";
    }
    EXPECT_EQ(moe_layers, 2);
  }
}

TEST(MoeModel, DenseLayersStayDense) {
  const std::string dir = test::make_random_model(path_join(test::scratch_dir(), "m"), "tiny-moe", DType::F32, 6);
  const QwenModel model(dir);
  const QwenConfig& c = model.config();
  EXPECT_EQ(c.moe_layer, (std::vector<bool>{true, false, true}));  // mlp_only_layers [1]
  const QwenLayerWeights& dense = model.weights().layers[1];
  EXPECT_EQ(dense.gate.N, c.intermediate_size);
  EXPECT_TRUE(dense.moe.experts.empty());
  const QwenLayerWeights& sparse = model.weights().layers[0];
  EXPECT_EQ(sparse.gate.N, 0);
  EXPECT_EQ(static_cast<int64_t>(sparse.moe.experts.size()), c.num_experts);
  EXPECT_EQ(sparse.moe.experts[7].down.K, c.moe_intermediate_size);
}

TEST(MoeModel, KvCacheStepsMatchThePackedForward) {
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    SCOPED_TRACE(preset);
    const std::string dir = test::make_random_model(path_join(test::scratch_dir(), preset), preset, DType::F32, 7);
    const QwenModel model(dir);
    const int64_t V = model.config().vocab_size, n = 23;
    const PackedBatch b = test::random_batch({n}, V, 8);
    const std::vector<float> all = model.forward_logits(b);
    KvCache cache = model.make_cache(n);
    std::vector<float> step = model.forward_step(std::vector<int32_t>(b.tokens.begin(), b.tokens.begin() + 9), &cache);
    float worst = 0;
    for (int64_t t = 9; t <= n; ++t) {
      for (int64_t v = 0; v < V; ++v) worst = std::max(worst, std::fabs(step[v] - all[(t - 1) * V + v]));
      if (t < n) step = model.forward_step({b.tokens[t]}, &cache);
    }
    EXPECT_LE(worst, kDecodeTolerance);
  }
}

std::string moe_config(const std::string& extra, const std::string& type = "qwen3_moe") {
  return "{" + extra + R"("model_type":")" + type + R"(","vocab_size":100,"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2})";
}

TEST(MoeConfig, DefaultsAreTransformers) {
  const QwenConfig q3 = parse_qwen_config(moe_config(""), "m/config.json");
  EXPECT_EQ(q3.num_experts, 128);
  EXPECT_EQ(q3.experts_per_token, 8);
  EXPECT_EQ(q3.moe_intermediate_size, 768);
  EXPECT_EQ(q3.shared_expert_intermediate_size, 0);
  EXPECT_FALSE(q3.norm_topk_prob);
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_FALSE(q3.qkv_bias);
  EXPECT_EQ(q3.rope.theta, 10000.0);
  EXPECT_EQ(q3.moe_layer, std::vector<bool>(4, true));
  const QwenConfig q2 = parse_qwen_config(moe_config(R"("head_dim":8,)", "qwen2_moe"), "m/config.json");
  EXPECT_EQ(q2.num_experts, 60);
  EXPECT_EQ(q2.experts_per_token, 4);
  EXPECT_EQ(q2.moe_intermediate_size, 1408);
  EXPECT_EQ(q2.shared_expert_intermediate_size, 5632);
  EXPECT_TRUE(q2.qkv_bias);
  EXPECT_FALSE(q2.qk_norm);
  EXPECT_EQ(q2.head_dim, 16);  // hidden / heads: Qwen2-MoE's attention ignores head_dim
}

TEST(MoeConfig, SparseLayersFollowStepAndMlpOnlyLayers) {
  const QwenConfig c =
      parse_qwen_config(moe_config(R"("decoder_sparse_step":2,"mlp_only_layers":[3],)"), "m/config.json");
  EXPECT_EQ(c.moe_layer, (std::vector<bool>{false, true, false, false}));
  const QwenConfig none = parse_qwen_config(moe_config(R"("num_experts":0,)"), "m/config.json");
  EXPECT_FALSE(none.is_moe());
  EXPECT_FALSE(none.is_moe_layer(0));
}

TEST(MoeConfig, RefusesBadFields) {
  auto refused = [](const std::string& extra, const std::string& text) {
    test::expect_error([&] { parse_qwen_config(moe_config(extra), "m/config.json"); }, {"m/config.json: ", text});
  };
  refused(R"("num_experts":4,"num_experts_per_tok":5,)", "\"num_experts_per_tok\" 5 must be in [1, num_experts 4]");
  refused(R"("num_experts_per_tok":0,)", "\"num_experts_per_tok\" 0 must be in [1, num_experts 128]");
  refused(R"("moe_intermediate_size":0,)", "\"moe_intermediate_size\" must be positive");
  refused(R"("decoder_sparse_step":0,)", "\"decoder_sparse_step\" must be >= 1");
  refused(R"("output_router_logits":true,)", "output_router_logits=true");
  refused(R"("mlp_only_layers":[4],)", "\"mlp_only_layers\" holds 4, not a layer index in [0, 4)");
  refused(R"("mlp_only_layers":3,)", "\"mlp_only_layers\" must be a list of layer indices");
  refused(R"("num_experts":-1,)", "\"num_experts\" must be >= 0");
}

// What cannot describe a model with a dense layer among its sparse ones (tiny-moe's layer 1) is refused by name.
TEST(MoeModel, FormatsWithoutItsDenseLayersRefuseClearly) {
  const std::string root = test::scratch_dir();
  const std::string dir = test::make_random_model(path_join(root, "moe"), "tiny-moe", DType::BF16, 9);
  const std::string calib = test::write_random_words(path_join(root, "calib.txt"), 4000, 1);
  AwqModelOptions a;
  a.out.model_dir = dir;
  a.out.out_dir = path_join(root, "awq");
  a.out.layout = IntLayout::AwqGemm;
  a.calib_path = calib;
  // tiny-moe has a dense layer: AutoAWQ's file cannot keep the routers unquantized without skipping its gate_proj.
  test::expect_error([&] { awq_quantize_model(a); },
                     {"the AutoAWQ layout cannot mark a MoE model's routers unquantized", "use --format gptq_v2"});
  test::expect_error([&] { export_gguf(dir, path_join(root, "m.gguf"), GgufExportOptions{}); },
                     {"a mixture of experts with dense layers (mlp_only_layers / decoder_sparse_step) has no GGUF form"});
  ImatrixOptions im;
  im.model = dir;
  im.calib_path = calib;
  test::expect_error([&] { compute_imatrix(im, nullptr); }, {"imatrix: ", "a mixture of experts with dense layers"});
  for (const char* out : {"awq", "m.gguf"}) EXPECT_FALSE(file_exists(path_join(root, out))) << out;
}

// dequantize and merge walk every expert and router (trainer/qwen_weights.h's layer_linears): a GPTQ MoE model
// dequantized to fp32 gives the packed model's logits bit for bit; an attention adapter merged into a 4-bit MoE base
// gives the unmerged adapter's logits (the experts dequantized, the routers copied).
TEST(MoeModel, DequantizeAndMergeKeepEveryExpert) {
  const std::string root = test::scratch_dir();
  const std::string fp = test::make_random_model(path_join(root, "fp"), "tiny-moe-shared", DType::F32, 31);
  QuantizeOptions q;
  q.model_dir = fp;
  q.out_dir = path_join(root, "rtn");
  q.group_size = 32;
  q.quiet = true;
  quantize_model(q);
  DequantizeOptions d;
  d.model_dir = q.out_dir;
  d.out_dir = path_join(root, "dq");
  d.dtype = DType::F32;
  d.quiet = true;
  EXPECT_EQ(dequantize_model(d).linears, 2 * (4 + 3 * 6 + 3));
  const PackedBatch b = test::random_batch({9, 4}, 320, 32);
  EXPECT_LE(test::max_rel_diff(QwenModel(d.out_dir).forward_logits(b), QwenModel(q.out_dir).forward_logits(b)),
            test::kSumOrderTol);
  EXPECT_EQ(QwenModel(d.out_dir).quant_config().method, QuantConfig::Method::None);

  const QwenModel base(q.out_dir);
  LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.target_modules = {"q_proj", "v_proj", "o_proj", "up_proj", "down_proj"};  // every expert's up and down too
  LoraAdapter a(lora_dims_of(base.config()), lc);
  a.init_peft(5);
  Rng rng(6);
  for (size_t i = 0; i < a.slots().size(); ++i)
    for (float& v : a.weights(i).B) v = 0.3f * static_cast<float>(rng.normal());
  save_peft_adapter(path_join(root, "adapter"), a);
  MergeOptions mo;
  mo.model_dir = q.out_dir;
  mo.adapter_dir = path_join(root, "adapter");
  mo.out_dir = path_join(root, "merged");
  mo.dtype = DType::F32;
  mo.quiet = true;
  merge_adapter_to_dir(mo);
  const std::vector<float> want = lora_forward_logits(base, a, b), got = QwenModel(mo.out_dir).forward_logits(b);
  float worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
  EXPECT_LE(worst, kDecodeTolerance);
  EXPECT_TRUE(Checkpoint(mo.out_dir).has("model.layers.1.mlp.experts.5.down_proj.weight"));
  EXPECT_TRUE(Checkpoint(mo.out_dir).has("model.layers.1.mlp.shared_expert_gate.weight"));
}

// GPTQModel's "dynamic" rules (its MoE checkpoints use them to keep routers unquantized): "-:" rules are read (such
// modules have no qweight and load dense); "+:" rules give modules their own bits / group size, the first matching
// rule in the file's order winning (tests/test_gptq_dynamic.cpp loads such a checkpoint).
TEST(MoeConfig, GptqDynamicRules) {
  const std::string dir = test::scratch_dir();
  auto with_dynamic = [&](const std::string& dynamic) {
    write_file_atomic(path_join(dir, "config.json"),
                      R"({"quantization_config":{"quant_method":"gptq","bits":4,"group_size":128,"dynamic":)" + dynamic +
                          "}}");
    return load_quant_config(dir);
  };
  EXPECT_EQ(with_dynamic(R"({"-:.*\\.mlp\\.gate$":{}})").method, QuantConfig::Method::Gptq);
  // The file's order, not the keys' alphabetical one ("+:" sorts before "."): the layer-1 rule comes first and wins.
  const QuantConfig q = with_dynamic(R"({".*layers\\.1\\.":{"group_size":32},"+:.*down_proj":{"bits":8},"-:.*gate$":{}})");
  int bits = 0;
  int64_t group = 0;
  q.gptq_params_for("model.layers.1.mlp.down_proj", &bits, &group);
  EXPECT_EQ(bits, 4);
  EXPECT_EQ(group, 32);
  q.gptq_params_for("model.layers.0.mlp.down_proj", &bits, &group);
  EXPECT_EQ(bits, 8);
  EXPECT_EQ(group, 128);
  q.gptq_params_for("model.layers.0.mlp.up_proj", &bits, &group);  // no rule: the config's
  EXPECT_EQ(bits, 4);
  EXPECT_EQ(group, 128);
  EXPECT_TRUE(q.gptq_mixed());
  EXPECT_FALSE(with_dynamic(R"({"-:.*\\.mlp\\.gate$":{}})").gptq_mixed());
  test::expect_error([&] { with_dynamic(R"({"+:.*down_proj":{"bits":5}})"); },
                     {"config.json (quantization_config): GPTQ \"dynamic\" rule \"+:.*down_proj\": bits 5 is not supported"});
  test::expect_error([&] { with_dynamic(R"({"+:(?<=x)down":{"bits":8}})"); },
                     {"rule \"+:(?<=x)down\"", "is not a regular expression qwenq can read"});
}

}  // namespace
}  // namespace qwenq
