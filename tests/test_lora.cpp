// LoRA: forward/backward against finite differences, scaling, PEFT initialisation, adapter_config.json, and
// adapter directories (save -> load round trips and every refusal). The C++ half of the PEFT oracle
// (tests/oracle/test_peft_oracle.py) is PeftOracle.*, skipped unless QWENQ_ORACLE_PEFT_DIR is set.
//
// Gradient method (as tests/test_kernels_backward.cpp): a plain double forward L = Σ R ⊙ (s·(x Aᵀ) Bᵀ) with
// seeded random R; ∂L/∂θ from central differences in double. L is linear in each of x, A and B, so the
// difference quotient has no truncation error and the tolerance bounds the fp32 error of the kernels only.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "kernels/dropout.h"
#include "kernels/dropout_mask.h"
#include "lora/lora_adapter.h"
#include "lora/lora_config.h"
#include "lora/lora_linear.h"
#include "lora/peft_io.h"
#include "tests/support/safetensors_edit.h"
#include "tests/support/test_paths.h"
#include "trainer/qwen_config.h"

namespace qwenq {
namespace {

using test::error_of;
using test::scratch_dir;

// ---- tolerances --------------------------------------------------------------------------------------------
// Element by element |got − ref| <= tol · (|ref| + max|ref|): the max term is the scale of the fp32 sums that
// make every entry, the |ref| term the rounding of the entry itself. Each output is two chained fp32 dot products
// (length r then K or N, or M then r) plus one product by s: a few ulps (6e-8 each) of the terms' size.
constexpr double kLoraGradTol = 5e-7;     // observed worst 1.2e-7 over the 36 sizes
constexpr double kLoraForwardTol = 5e-7;
// y += s·t: one or two fp32 roundings of the sum (2^-24 each), relative to the larger term.
constexpr double kAccumulateTol = 1.2e-7;
constexpr double kFdStep = 1e-3;  // L is linear in each input: any step is exact up to double rounding
// Initialisation statistics over n values of U(-b, b): the sample mean has std b/√(3n), the sample variance
// b²/3 has relative std √(0.8/n) (< 2% at n >= 2048); bounds of 5 standard deviations.
constexpr double kInitSigmas = 5.0;

constexpr size_t kGuard = 8;
constexpr float kGuardValue = 4321.f;

std::vector<float> uniform(Rng& rng, size_t n, float lo = -1.f, float hi = 1.f) {
  std::vector<float> v(n);
  for (auto& f : v) f = rng.uniform(lo, hi);
  return v;
}

// Plain double forward of the LoRA half: y[M,N] = s · (x Aᵀ) Bᵀ.
std::vector<double> lora_forward_f64(const std::vector<double>& x, const std::vector<double>& A,
                                     const std::vector<double>& B, int64_t M, int64_t K, int64_t N, int64_t r,
                                     double s) {
  std::vector<double> u(M * r, 0.0), y(M * N, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < r; ++j)
      for (int64_t k = 0; k < K; ++k) u[m * r + j] += x[m * K + k] * A[j * K + k];
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < r; ++j) y[m * N + n] += s * u[m * r + j] * B[n * r + j];
  return y;
}

std::vector<double> widen(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Max over entries of |got − ref| / (|ref| + max|ref|); the tolerance must bound it.
double worst_error(const float* got, const std::vector<double>& ref) {
  double scale = 0;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double denom = std::fabs(ref[i]) + scale;
    if (denom > 0) worst = std::max(worst, std::fabs(got[i] - ref[i]) / denom);
  }
  return worst;
}

void expect_guard(const std::vector<float>& buf, size_t n, const char* what) {
  for (size_t i = n; i < buf.size(); ++i) ASSERT_EQ(buf[i], kGuardValue) << what << " overrun at " << i - n;
}

// ---- forward / backward ------------------------------------------------------------------------------------

struct GradCase {
  int64_t M, K, N, r;
};

class LoraLinearGrad : public ::testing::TestWithParam<GradCase> {};

TEST_P(LoraLinearGrad, MatchesFiniteDifferences) {
  const GradCase c = GetParam();
  const int64_t M = c.M, K = c.K, N = c.N, r = c.r;
  const uint64_t seed = 1000 + 97 * M + 13 * K + 7 * N + r;
  SCOPED_TRACE("M=" + std::to_string(M) + " K=" + std::to_string(K) + " N=" + std::to_string(N) +
               " r=" + std::to_string(r) + " seed=" + std::to_string(seed));
  Rng rng(seed);
  const float s = 1.75f;  // not a power of two: the scaling's rounding shows
  auto x = uniform(rng, M * K), A = uniform(rng, r * K), B = uniform(rng, N * r), R = uniform(rng, M * N);

  // Forward onto a base output y0: y − y0 against the double result, u against x Aᵀ.
  std::vector<float> y0 = uniform(rng, M * N), y = y0, u(M * r + kGuard, kGuardValue);
  y.resize(M * N + kGuard, kGuardValue);
  lora_forward_ref(x.data(), M, K, A.data(), B.data(), r, N, s, y.data(), u.data());
  expect_guard(y, M * N, "y");
  expect_guard(u, M * r, "u");
  const auto y_ref = lora_forward_f64(widen(x), widen(A), widen(B), M, K, N, r, s);
  std::vector<double> u_ref(M * r, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < r; ++j)
      for (int64_t k = 0; k < K; ++k) u_ref[m * r + j] += double(x[m * K + k]) * A[j * K + k];
  EXPECT_LE(worst_error(u.data(), u_ref), kLoraForwardTol);
  std::vector<float> u_alone(M * r + kGuard, kGuardValue);  // u alone: the forward's bits, nothing past it
  lora_project_ref(x.data(), M, K, A.data(), r, u_alone.data());
  EXPECT_EQ(u_alone, u) << "lora_project_ref against lora_forward_ref's u";
  std::vector<float> y_clean(M * N, 0.0f), u2(M * r);
  lora_forward_ref(x.data(), M, K, A.data(), B.data(), r, N, s, y_clean.data(), u2.data());
  EXPECT_LE(worst_error(y_clean.data(), y_ref), kLoraForwardTol);
  for (int64_t i = 0; i < M * N; ++i) {  // y0 + s·t rounds once or twice (the compiler may fuse it into an FMA)
    ASSERT_LE(std::fabs(double(y[i]) - (double(y0[i]) + y_clean[i])),
              kAccumulateTol * (std::fabs(y0[i]) + std::fabs(y_clean[i])))
        << "y must accumulate, entry " << i;
  }

  // Backward from zeroed accumulators (with guards).
  std::vector<float> dA(r * K + kGuard, kGuardValue), dB(N * r + kGuard, kGuardValue),
      dx(M * K + kGuard, kGuardValue);
  std::fill(dA.begin(), dA.begin() + r * K, 0.0f);
  std::fill(dB.begin(), dB.begin() + N * r, 0.0f);
  std::fill(dx.begin(), dx.begin() + M * K, 0.0f);
  lora_backward_ref(R.data(), x.data(), u.data(), M, K, N, r, A.data(), B.data(), s, dA.data(), dB.data(),
                    dx.data());
  expect_guard(dA, r * K, "dA");
  expect_guard(dB, N * r, "dB");
  expect_guard(dx, M * K, "dx");

  // Central differences of L = Σ R ⊙ y in double.
  auto xd = widen(x), Ad = widen(A), Bd = widen(B), Rd = widen(R);
  auto loss = [&] {
    const auto yy = lora_forward_f64(xd, Ad, Bd, M, K, N, r, s);
    double L = 0;
    for (size_t i = 0; i < yy.size(); ++i) L += Rd[i] * yy[i];
    return L;
  };
  auto fd = [&](std::vector<double>& p) {
    std::vector<double> g(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
      const double h = kFdStep * (1.0 + std::fabs(p[i])), keep = p[i];
      p[i] = keep + h;
      const double lp = loss();
      p[i] = keep - h;
      const double lm = loss();
      p[i] = keep;
      g[i] = (lp - lm) / (2 * h);
    }
    return g;
  };
  const double eA = worst_error(dA.data(), fd(Ad)), eB = worst_error(dB.data(), fd(Bd)),
               ex = worst_error(dx.data(), fd(xd));
  EXPECT_LE(eA, kLoraGradTol) << "dA";
  EXPECT_LE(eB, kLoraGradTol) << "dB";
  EXPECT_LE(ex, kLoraGradTol) << "dx";
  char worst[32];
  std::snprintf(worst, sizeof worst, "%.3g", std::max({eA, eB, ex}));
  RecordProperty("worst_rel_error", worst);

  // A second backward doubles every accumulator exactly (a + a is exact), and dx = null is allowed.
  std::vector<float> dA1(dA.begin(), dA.begin() + r * K), dB1(dB.begin(), dB.begin() + N * r);
  lora_backward_ref(R.data(), x.data(), u.data(), M, K, N, r, A.data(), B.data(), s, dA.data(), dB.data(), nullptr);
  for (int64_t i = 0; i < r * K; ++i) ASSERT_EQ(dA[i], 2 * dA1[i]) << "dA must accumulate, entry " << i;
  for (int64_t i = 0; i < N * r; ++i) ASSERT_EQ(dB[i], 2 * dB1[i]) << "dB must accumulate, entry " << i;
}

std::vector<GradCase> grad_cases() {
  std::vector<GradCase> out;
  for (int64_t M : {1, 3, 7})
    for (int64_t K : {5, 17})
      for (int64_t N : {3, 9})
        for (int64_t r : {1, 2, 4}) out.push_back({M, K, N, r});
  return out;
}

INSTANTIATE_TEST_SUITE_P(LoraSizes, LoraLinearGrad, ::testing::ValuesIn(grad_cases()),
                         [](const ::testing::TestParamInfo<GradCase>& i) {
                           return "M" + std::to_string(i.param.M) + "K" + std::to_string(i.param.K) + "N" +
                                  std::to_string(i.param.N) + "r" + std::to_string(i.param.r);
                         });

TEST(LoraLinear, ZeroBLeavesOutputUnchanged) {
  Rng rng(3);
  const int64_t M = 3, K = 17, N = 9, r = 4;
  auto x = uniform(rng, M * K), A = uniform(rng, r * K), y = uniform(rng, M * N);
  std::vector<float> B(N * r, 0.0f), y0 = y, u(M * r);
  lora_forward_ref(x.data(), M, K, A.data(), B.data(), r, N, 2.0f, y.data(), u.data());
  EXPECT_EQ(y, y0);
}

TEST(LoraLinear, DropoutMaskAndBackward) {
  // The LoRA branch composed with kernels/dropout.h (whose own tests are tests/test_dropout.cpp): the mask is
  // the documented function of (key, i), and dx reaches x through it.
  const int64_t M = 7, K = 17, N = 9, r = 2, n = M * K;
  const float p = 0.25f;
  const uint64_t key = dropout_key(77, 3, 5);
  Rng data(5);
  auto x = uniform(data, n), A = uniform(data, r * K), B = uniform(data, N * r), R = uniform(data, M * N);
  std::vector<float> xd(n), keep(n);
  dropout_forward_ref(x.data(), n, p, key, xd.data());
  int dropped = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool drop = dropout_uniform(key, i) < p;
    dropped += drop;
    keep[i] = drop ? 0.0f : 1.0f / (1.0f - p);
    ASSERT_EQ(xd[i], keep[i] * x[i]) << i;
  }
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, n);

  // dx through the mask: the LoRA branch of f(x) = s·((keep ⊙ x) Aᵀ) Bᵀ against finite differences.
  const float s = 0.5f;
  std::vector<float> u(M * r), y(M * N, 0.0f), dA(r * K, 0.0f), dB(N * r, 0.0f), dxd(n, 0.0f), dx(n, 0.0f);
  lora_forward_ref(xd.data(), M, K, A.data(), B.data(), r, N, s, y.data(), u.data());
  lora_backward_ref(R.data(), xd.data(), u.data(), M, K, N, r, A.data(), B.data(), s, dA.data(), dB.data(),
                    dxd.data());
  dropout_backward_ref(dxd.data(), n, p, key, dx.data());
  std::vector<double> xv = widen(x), fd(n);
  const auto Ad = widen(A), Bd = widen(B);
  auto loss = [&] {
    std::vector<double> masked(n);
    for (int64_t i = 0; i < n; ++i) masked[i] = double(keep[i]) * xv[i];
    const auto yy = lora_forward_f64(masked, Ad, Bd, M, K, N, r, s);
    double L = 0;
    for (int64_t i = 0; i < M * N; ++i) L += double(R[i]) * yy[i];
    return L;
  };
  for (int64_t i = 0; i < n; ++i) {
    const double h = kFdStep, keep_x = xv[i];
    xv[i] = keep_x + h;
    const double lp = loss();
    xv[i] = keep_x - h;
    const double lm = loss();
    xv[i] = keep_x;
    fd[i] = (lp - lm) / (2 * h);
  }
  EXPECT_LE(worst_error(dx.data(), fd), kLoraGradTol);
}

// ---- config --------------------------------------------------------------------------------------------------

TEST(LoraConfig, Scaling) {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  EXPECT_EQ(c.scaling(), 2.0);
  c.use_rslora = true;
  EXPECT_EQ(c.scaling(), 4.0);  // 8 / √4
  c.r = 8;
  c.alpha = 16;
  EXPECT_DOUBLE_EQ(c.scaling(), 16.0 / std::sqrt(8.0));
  c.use_rslora = false;
  EXPECT_EQ(c.scaling(), 2.0);
}

TEST(LoraConfig, ParseTargets) {
  using V = std::vector<std::string>;
  EXPECT_EQ(parse_lora_targets("q_proj,v_proj"), (V{"q_proj", "v_proj"}));
  EXPECT_EQ(parse_lora_targets(" v_proj , q_proj,q_proj "), (V{"q_proj", "v_proj"}));  // table order, deduplicated
  EXPECT_EQ(parse_lora_targets("all-linear"),
            (V{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
  EXPECT_EQ(parse_lora_targets("down_proj"), (V{"down_proj"}));
  const std::string e = error_of([] { parse_lora_targets("q_proj,lm_head"); });
  EXPECT_NE(e.find("unknown LoRA target 'lm_head'"), std::string::npos) << e;
  EXPECT_NE(e.find("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"), std::string::npos) << e;
  EXPECT_NE(error_of([] { parse_lora_targets(""); }).find("empty LoRA target"), std::string::npos);
  EXPECT_NE(error_of([] { parse_lora_targets("q_proj,,v_proj"); }).find("empty LoRA target"), std::string::npos);
}

LoraConfig sample_config() {
  LoraConfig c;
  c.r = 16;
  c.alpha = 32;
  c.dropout = 0.05;
  c.use_rslora = true;
  c.target_modules = parse_lora_targets("all-linear");
  c.base_model = "Qwen/Qwen2.5-7B-Instruct";
  return c;
}

TEST(LoraConfig, JsonRoundTripAndPeftFieldNames) {
  const LoraConfig c = sample_config();
  const std::string text = lora_config_to_json(c);
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j.at("peft_type"), "LORA");
  EXPECT_EQ(j.at("task_type"), "CAUSAL_LM");
  EXPECT_EQ(j.at("r"), 16);
  EXPECT_TRUE(j.at("lora_alpha").is_number_integer());
  EXPECT_EQ(j.at("lora_alpha"), 32);
  EXPECT_EQ(j.at("lora_dropout"), 0.05);
  EXPECT_EQ(j.at("bias"), "none");
  EXPECT_EQ(j.at("use_rslora"), true);
  EXPECT_EQ(j.at("use_dora"), false);
  EXPECT_EQ(j.at("fan_in_fan_out"), false);
  EXPECT_EQ(j.at("inference_mode"), true);
  EXPECT_EQ(j.at("init_lora_weights"), true);
  EXPECT_EQ(j.at("base_model_name_or_path"), "Qwen/Qwen2.5-7B-Instruct");
  EXPECT_TRUE(j.at("modules_to_save").is_null());
  EXPECT_TRUE(j.at("layers_to_transform").is_null());
  EXPECT_TRUE(j.at("layers_pattern").is_null());
  EXPECT_TRUE(j.at("rank_pattern").is_object() && j.at("rank_pattern").empty());
  EXPECT_TRUE(j.at("alpha_pattern").is_object() && j.at("alpha_pattern").empty());
  EXPECT_EQ(j.at("target_modules").size(), 7u);

  const LoraConfig back = parse_lora_config_json(text, "adapter_config.json");
  EXPECT_EQ(back.r, c.r);
  EXPECT_EQ(back.alpha, c.alpha);
  EXPECT_EQ(back.dropout, c.dropout);
  EXPECT_EQ(back.use_rslora, c.use_rslora);
  EXPECT_EQ(back.target_modules, c.target_modules);
  EXPECT_EQ(back.base_model, c.base_model);

  LoraConfig odd;  // non-integral alpha, no base model
  odd.alpha = 12.5;
  const auto jo = nlohmann::json::parse(lora_config_to_json(odd));
  EXPECT_TRUE(jo.at("base_model_name_or_path").is_null());
  EXPECT_EQ(parse_lora_config_json(jo.dump(), "x").alpha, 12.5);
}

// What PEFT 0.15.2 writes (LoraConfig(...).to_dict() with save_pretrained's additions), targets in set order.
nlohmann::json peft_015_config() {
  return nlohmann::json::parse(R"({
    "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "/tmp/base", "bias": "none",
    "corda_config": null, "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false,
    "inference_mode": true, "init_lora_weights": true, "layer_replication": null, "layers_pattern": null,
    "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8, "lora_bias": false, "lora_dropout": 0.0,
    "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA",
    "r": 4, "rank_pattern": {}, "revision": null,
    "target_modules": ["up_proj", "o_proj", "k_proj", "down_proj", "gate_proj", "q_proj", "v_proj"],
    "task_type": "CAUSAL_LM", "trainable_token_indices": null, "use_dora": false, "use_rslora": false})");
}

TEST(LoraConfig, ReadsPeft015) {
  const LoraConfig c = parse_lora_config_json(peft_015_config().dump(), "adapter_config.json");
  EXPECT_EQ(c.r, 4);
  EXPECT_EQ(c.alpha, 8);
  EXPECT_EQ(c.scaling(), 2.0);
  EXPECT_EQ(c.target_modules, parse_lora_targets("all-linear"));
  EXPECT_EQ(c.base_model, "/tmp/base");
  auto j = peft_015_config();
  j["target_modules"] = "all-linear";
  EXPECT_EQ(parse_lora_config_json(j.dump(), "f").target_modules.size(), 7u);
  j["target_modules"] = "v_proj";
  EXPECT_EQ(parse_lora_config_json(j.dump(), "f").target_modules, std::vector<std::string>{"v_proj"});
  j["init_lora_weights"] = "gaussian";
  EXPECT_NO_THROW(parse_lora_config_json(j.dump(), "f"));
}

TEST(LoraConfig, RefusesUnsupportedFields) {
  struct Case {
    const char* key;
    nlohmann::json value;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"bias", "all", "\"bias\""},
      {"bias", "lora_only", "\"bias\""},
      {"modules_to_save", {"lm_head"}, "modules_to_save"},
      {"use_dora", "yes", "\"use_dora\" must be true or false"},
      {"lora_bias", true, "lora_bias"},
      {"fan_in_fan_out", true, "fan_in_fan_out"},
      // PEFT's finer selection (lora/lora_select.h) is read; what PEFT itself refuses, or cannot mean, is refused.
      {"layers_pattern", "layers", "layers_pattern needs layers_to_transform"},
      {"layers_to_transform", {0, -1}, "layers_to_transform must hold layer indexes"},
      {"layers_to_transform", "0", "layers_to_transform must hold layer indexes"},
      {"rank_pattern", {{"q_proj", 0}}, "rank_pattern \"q_proj\" must be a positive integer"},
      {"rank_pattern", {{"q_proj", 2.5}}, "rank_pattern \"q_proj\" must be a positive integer"},
      {"rank_pattern", {"q_proj"}, "\"rank_pattern\" must be an object"},
      {"alpha_pattern", {{"q_proj", "x"}}, "alpha_pattern \"q_proj\" must be a number"},
      {"exclude_modules", 3, "\"exclude_modules\" must be a string or a list of strings"},
      {"init_lora_weights", "pissa", "init_lora_weights"},
      {"target_modules", "(?P<name>.*)\\.q_proj", "(?P< (a named group)"},
      {"target_modules", ".*(?<=self_attn)\\.q_proj", "(?<= (lookbehind)"},
      {"target_modules", "(?i).*Q_PROJ", "(?i (inline flags)"},
      {"target_modules", ".*\\.q_proj\\Z", "\\Z"},
      {"target_modules", ".*([", "not a regular expression qwenq can read"},
      {"exclude_modules", "(?P<x>a)", "exclude_modules: the pattern"},
      {"rank_pattern", {{"(?<=x)q", 2}}, "rank_pattern key: the pattern"},
      {"target_modules", {"q_proj", "lm_head"}, "\"lm_head\""},
      {"peft_type", "IA3", "peft_type"},
      {"task_type", "SEQ_2_SEQ_LM", "task_type"},
      {"r", 0, "\"r\""},
      {"r", 2.5, "\"r\""},
      {"lora_dropout", 1.0, "dropout"},
  };
  for (const Case& c : cases) {
    auto j = peft_015_config();
    j[c.key] = c.value;
    const std::string e = error_of([&] { parse_lora_config_json(j.dump(), "/x/adapter_config.json"); });
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.key << " = " << c.value.dump() << ": " << e;
    EXPECT_NE(e.find("/x/adapter_config.json"), std::string::npos) << e;
  }
  auto j = peft_015_config();
  j.erase("target_modules");
  EXPECT_NE(error_of([&] { parse_lora_config_json(j.dump(), "f"); }).find("target_modules"), std::string::npos);
  EXPECT_NE(error_of([] { parse_lora_config_json("{not json", "f"); }).find("not valid JSON"), std::string::npos);
}

// A LoraConfig built in code (the trainer's flags) is checked as a file's is, one message per problem.
TEST(LoraConfig, ValidateNamesEachProblem) {
  const auto problem = [](auto edit) {
    LoraConfig c = sample_config();
    edit(c);
    return error_of([&] { c.validate(); });
  };
  EXPECT_EQ(problem([](LoraConfig&) {}), "<no error>");
  EXPECT_NE(problem([](LoraConfig& c) { c.r = 0; }).find("LoRA rank r must be at least 1, got 0"), std::string::npos);
  EXPECT_NE(problem([](LoraConfig& c) { c.alpha = std::nan(""); }).find("LoRA alpha must be a finite number"),
            std::string::npos);
  EXPECT_NE(problem([](LoraConfig& c) { c.alpha = INFINITY; }).find("LoRA alpha must be a finite number, got inf"),
            std::string::npos);
  EXPECT_NE(problem([](LoraConfig& c) { c.dropout = -0.1; }).find("LoRA dropout must be in [0, 1), got -0.1"),
            std::string::npos);
  EXPECT_NE(problem([](LoraConfig& c) { c.target_modules.clear(); }).find("LoRA target_modules is empty (valid: q_proj"),
            std::string::npos);
  const std::string bad = problem([](LoraConfig& c) { c.target_modules = {"q_proj", "c_attn"}; });
  EXPECT_NE(bad.find("unknown LoRA target module 'c_attn' (valid: q_proj, k_proj"), std::string::npos) << bad;
  EXPECT_NE(bad.find("all-linear, or a module path ending in one: self_attn.q_proj"), std::string::npos) << bad;
  // The first problem alone: a bad rank is named, not also the targets.
  EXPECT_EQ(problem([](LoraConfig& c) { c.r = 0, c.target_modules = {"c_attn"}; }).find("c_attn"), std::string::npos);
}

// ---- adapter weights ---------------------------------------------------------------------------------------

LoraDims tiny_dims(int64_t layers = 2) { return LoraDims{64, 128, 64, 32, layers}; }

LoraConfig all_linear(int64_t r, double alpha = 8) {
  LoraConfig c;
  c.r = r;
  c.alpha = alpha;
  c.target_modules = parse_lora_targets("all-linear");
  return c;
}

TEST(LoraAdapter, ShapesAndLookup) {
  LoraConfig c = all_linear(4);
  c.target_modules = parse_lora_targets("v_proj,down_proj");
  const LoraAdapter a(tiny_dims(), c);
  EXPECT_EQ(a.targets(), (std::vector<LoraTarget>{LoraTarget::VProj, LoraTarget::DownProj}));
  EXPECT_EQ(a.at(1, LoraTarget::VProj).N, 32);
  EXPECT_EQ(a.at(1, LoraTarget::VProj).K, 64);
  EXPECT_EQ(a.at(0, LoraTarget::DownProj).N, 64);
  EXPECT_EQ(a.at(0, LoraTarget::DownProj).K, 128);
  EXPECT_EQ(a.at(0, LoraTarget::DownProj).A.size(), 4u * 128);
  EXPECT_EQ(a.at(0, LoraTarget::DownProj).B.size(), 64u * 4);
  EXPECT_FALSE(a.has(0, LoraTarget::QProj));
  EXPECT_FALSE(a.has(2, LoraTarget::VProj));
  EXPECT_EQ(a.num_parameters(), 2 * 4 * ((32 + 64) + (64 + 128)));
  const std::string e = error_of([&] { a.at(0, LoraTarget::QProj); });
  EXPECT_NE(e.find("model.layers.0.self_attn.q_proj"), std::string::npos) << e;
  const LoraShape s = lora_target_shape(tiny_dims(), LoraTarget::OProj);
  EXPECT_EQ(s.N, 64);
  EXPECT_EQ(s.K, 64);
}

TEST(LoraAdapter, RankLargerThanLayerIsRefused) {
  const std::string e = error_of([] { LoraAdapter(tiny_dims(), all_linear(40)); });
  EXPECT_NE(e.find("r=40"), std::string::npos) << e;
  EXPECT_NE(e.find("self_attn.k_proj [32, 64]"), std::string::npos) << e;
  LoraConfig q_only = all_linear(40);
  q_only.target_modules = {"q_proj"};
  EXPECT_NO_THROW(LoraAdapter(tiny_dims(), q_only));  // q_proj is 64 x 64
  EXPECT_NE(error_of([] { LoraAdapter(LoraDims{64, 128, 64, 32, 0}, all_linear(4)); }).find("positive"),
            std::string::npos);
}

TEST(LoraAdapter, PeftInitialisation) {
  const uint64_t seed = 42;
  LoraAdapter a(tiny_dims(), all_linear(8));
  a.init_peft(seed);
  // Statistics per fan-in K: every value inside ±1/√K, mean and variance those of U(-b, b).
  for (int64_t K : {64, 128}) {
    const double b = 1.0 / std::sqrt(double(K));
    double sum = 0, sq = 0;
    int64_t n = 0;
    for (int64_t l = 0; l < 2; ++l)
      for (LoraTarget t : a.targets()) {
        const LoraWeights& w = a.at(l, t);
        for (float v : w.B) ASSERT_EQ(v, 0.0f);
        if (w.K != K) continue;
        for (float v : w.A) {
          ASSERT_LE(std::fabs(v), b) << "layer " << l << " " << lora_target_name(t);
          sum += v;
          sq += double(v) * v;
          ++n;
        }
      }
    ASSERT_GE(n, 2048);
    const double mean = sum / n, var = sq / n - mean * mean;
    SCOPED_TRACE("K=" + std::to_string(K) + " n=" + std::to_string(n) + " seed=" + std::to_string(seed));
    EXPECT_LE(std::fabs(mean), kInitSigmas * b / std::sqrt(3.0 * n));
    EXPECT_LE(std::fabs(var / (b * b / 3) - 1), kInitSigmas * std::sqrt(0.8 / n));
  }
  // The documented draw order: layer 0 q_proj's A first, then k_proj's, ...
  Rng rng(seed);
  const float b64 = static_cast<float>(1.0 / std::sqrt(64.0));
  EXPECT_EQ(a.at(0, LoraTarget::QProj).A[0], rng.uniform(-b64, b64));
  for (int i = 1; i < 8 * 64; ++i) rng.uniform();
  EXPECT_EQ(a.at(0, LoraTarget::KProj).A[0], rng.uniform(-b64, b64));
  // Deterministic per seed; another seed gives other values.
  LoraAdapter again(tiny_dims(), all_linear(8)), other(tiny_dims(), all_linear(8));
  again.init_peft(seed);
  other.init_peft(seed + 1);
  EXPECT_EQ(again.at(1, LoraTarget::DownProj).A, a.at(1, LoraTarget::DownProj).A);
  EXPECT_NE(other.at(1, LoraTarget::DownProj).A, a.at(1, LoraTarget::DownProj).A);
}

// ---- save / load -----------------------------------------------------------------------------------------------

// An initialised adapter with seeded random nonzero B (so both halves are checked).
LoraAdapter random_adapter(const LoraDims& dims, const LoraConfig& c, uint64_t seed) {
  LoraAdapter a(dims, c);
  a.init_peft(seed);
  Rng rng(seed + 1);
  for (int64_t l = 0; l < dims.num_layers; ++l)
    for (LoraTarget t : a.targets())
      for (float& v : a.at(l, t).B) v = static_cast<float>(rng.normal() * 0.1);
  return a;
}

void expect_same_weights(const LoraAdapter& a, const LoraAdapter& b) {
  ASSERT_EQ(a.targets(), b.targets());
  for (int64_t l = 0; l < a.dims().num_layers; ++l)
    for (LoraTarget t : a.targets()) {
      ASSERT_EQ(std::memcmp(a.at(l, t).A.data(), b.at(l, t).A.data(), a.at(l, t).A.size() * 4), 0);
      ASSERT_EQ(std::memcmp(a.at(l, t).B.data(), b.at(l, t).B.data(), a.at(l, t).B.size() * 4), 0);
    }
}

TEST(PeftIo, TensorNames) {
  EXPECT_EQ(peft_tensor_name(3, LoraTarget::QProj, false),
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(peft_tensor_name(0, LoraTarget::DownProj, true),
            "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight");
}

TEST(PeftIo, RoundTripF32BitExact) {
  const std::string dir = path_join(scratch_dir(), "adapter");
  LoraConfig c = all_linear(4, 16);
  c.use_rslora = true;
  c.base_model = "Qwen/Qwen2.5-0.5B";
  const LoraAdapter a = random_adapter(tiny_dims(), c, 9);
  save_peft_adapter(dir, a);
  SafetensorsFile f(path_join(dir, "adapter_model.safetensors"));
  EXPECT_EQ(f.names().size(), 2u * 7 * 2);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorView& down_a = f.get("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(down_a.dtype, DType::F32);
  EXPECT_EQ(down_a.shape, (std::vector<int64_t>{4, 128}));
  EXPECT_EQ(f.get("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight").shape,
            (std::vector<int64_t>{32, 4}));
  const LoraAdapter b = load_peft_adapter(dir, tiny_dims());
  EXPECT_EQ(b.config().r, 4);
  EXPECT_EQ(b.config().alpha, 16);
  EXPECT_TRUE(b.config().use_rslora);
  EXPECT_EQ(b.config().base_model, "Qwen/Qwen2.5-0.5B");
  EXPECT_EQ(b.uniform_scaling(), 8.0);
  expect_same_weights(a, b);

  // An existing directory is refused unless overwrite is asked for; nothing partial is left behind.
  EXPECT_NE(error_of([&] { save_peft_adapter(dir, a); }).find("exists"), std::string::npos);
  PeftSaveOptions o;
  o.overwrite = true;
  EXPECT_NO_THROW(save_peft_adapter(dir, a, o));
  EXPECT_FALSE(dir_exists(dir + ".partial." + std::to_string(::getpid())));
}

TEST(PeftIo, Bf16RoundsToNearestEven) {
  const std::string dir = path_join(scratch_dir(), "adapter");
  const LoraAdapter a = random_adapter(tiny_dims(), all_linear(2), 10);
  PeftSaveOptions o;
  o.dtype = DType::BF16;
  save_peft_adapter(dir, a, o);
  SafetensorsFile f(path_join(dir, "adapter_model.safetensors"));
  EXPECT_EQ(f.get(peft_tensor_name(0, LoraTarget::UpProj, false)).dtype, DType::BF16);
  const LoraAdapter b = load_peft_adapter(dir, tiny_dims());
  for (int64_t l = 0; l < 2; ++l)
    for (LoraTarget t : a.targets()) {
      const auto& wa = a.at(l, t);
      const auto& wb = b.at(l, t);
      for (size_t i = 0; i < wa.A.size(); ++i) ASSERT_EQ(wb.A[i], bf16_round(wa.A[i]));
      for (size_t i = 0; i < wa.B.size(); ++i) ASSERT_EQ(wb.B[i], bf16_round(wa.B[i]));
    }
  o.dtype = DType::F64;
  EXPECT_NE(error_of([&] { save_peft_adapter(dir + "2", a, o); }).find("F32 or BF16"), std::string::npos);
}

using test::rewrite_adapter_weights;

TEST(PeftIo, ReadsF16) {
  const std::string dir = path_join(scratch_dir(), "adapter");
  const LoraAdapter a = random_adapter(tiny_dims(1), all_linear(2), 12);
  save_peft_adapter(dir, a);
  rewrite_adapter_weights(dir, [](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                          SafetensorsWriter& w) {
    std::vector<uint8_t> half(v.numel() * 2);
    from_f32(DType::F16, reinterpret_cast<const float*>(bytes.data()), half.data(), v.numel());
    w.add_owned(name, DType::F16, v.shape, std::move(half));
  });
  const LoraAdapter b = load_peft_adapter(dir, tiny_dims(1));
  const auto& wa = a.at(0, LoraTarget::GateProj);
  const auto& wb = b.at(0, LoraTarget::GateProj);
  for (size_t i = 0; i < wa.B.size(); ++i) ASSERT_EQ(wb.B[i], f16_to_f32(f32_to_f16(wa.B[i])));
}

TEST(PeftIo, LoadErrors) {
  const std::string root = scratch_dir();
  const std::string dir = path_join(root, "adapter");
  const LoraAdapter a = random_adapter(tiny_dims(), all_linear(4), 13);
  save_peft_adapter(dir, a);
  const std::string weights = path_join(dir, "adapter_model.safetensors");

  // A base with another hidden size: the first tensor checked is named with both shapes.
  LoraDims other = tiny_dims();
  other.hidden_size = 96;
  std::string e = error_of([&] { load_peft_adapter(dir, other); });
  EXPECT_NE(e.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [4, 64], expected "
                   "[4, 96]"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find(weights), std::string::npos) << e;
  EXPECT_NE(e.find("different base"), std::string::npos) << e;
  // A base with fewer layers: layer 1's tensors are unexplained.
  e = error_of([&] { load_peft_adapter(dir, tiny_dims(1)); });
  EXPECT_NE(e.find("unexpected tensor base_model.model.model.layers.1."), std::string::npos) << e;
  // A base with more layers: layer 2 is missing.
  e = error_of([&] { load_peft_adapter(dir, tiny_dims(3)); });
  EXPECT_NE(e.find("layers.2.self_attn.q_proj.lora_A.weight is missing"), std::string::npos) << e;

  // Unknown key.
  rewrite_adapter_weights(dir, [](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                          SafetensorsWriter& w) {
    w.add_owned(name, v.dtype, v.shape, std::move(bytes));
    if (name == peft_tensor_name(0, LoraTarget::QProj, true))
      w.add_owned("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", DType::F32, {1},
                  std::vector<uint8_t>(4, 0));
  });
  e = error_of([&] { load_peft_adapter(dir, tiny_dims()); });
  EXPECT_NE(e.find("unexpected tensor base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
            std::string::npos)
      << e;

  // A missing tensor.
  rewrite_adapter_weights(dir, [](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                          SafetensorsWriter& w) {
    if (name.find("lora_magnitude_vector") != std::string::npos) return;
    if (name == peft_tensor_name(1, LoraTarget::UpProj, true)) return;
    w.add_owned(name, v.dtype, v.shape, std::move(bytes));
  });
  e = error_of([&] { load_peft_adapter(dir, tiny_dims()); });
  EXPECT_NE(e.find("layers.1.mlp.up_proj.lora_B.weight is missing"), std::string::npos) << e;

  // An integer dtype.
  rewrite_adapter_weights(dir, [](const std::string& name, const TensorView& v, std::vector<uint8_t> bytes,
                          SafetensorsWriter& w) {
    w.add_owned(name, name == peft_tensor_name(0, LoraTarget::QProj, false) ? DType::I32 : v.dtype, v.shape,
                std::move(bytes));
  });
  e = error_of([&] { load_peft_adapter(dir, tiny_dims()); });
  EXPECT_NE(e.find("dtype I32"), std::string::npos) << e;

  // Unsupported config field.
  save_peft_adapter(dir, a, PeftSaveOptions{DType::F32, true});
  auto cfg = nlohmann::json::parse(read_file(path_join(dir, "adapter_config.json")));
  cfg["fan_in_fan_out"] = true;
  write_file_atomic(path_join(dir, "adapter_config.json"), cfg.dump());
  e = error_of([&] { load_peft_adapter(dir, tiny_dims()); });
  EXPECT_NE(e.find("\"fan_in_fan_out\""), std::string::npos) << e;
  EXPECT_NE(e.find(path_join(dir, "adapter_config.json")), std::string::npos) << e;

  // Missing files and directories.
  save_peft_adapter(dir, a, PeftSaveOptions{DType::F32, true});
  std::remove(weights.c_str());
  e = error_of([&] { load_peft_adapter(dir, tiny_dims()); });
  EXPECT_NE(e.find("no adapter_model.safetensors in " + dir), std::string::npos) << e;
  write_file_atomic(path_join(dir, "adapter_model.bin"), "pickle");
  e = error_of([&] { load_peft_adapter(dir, tiny_dims()); });
  EXPECT_NE(e.find("adapter_model.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("safe_serialization=True"), std::string::npos) << e;
  std::remove(path_join(dir, "adapter_config.json").c_str());
  e = error_of([&] { load_peft_adapter(dir, tiny_dims()); });
  EXPECT_NE(e.find("no adapter_config.json in " + dir), std::string::npos) << e;
  e = error_of([&] { load_peft_adapter(path_join(root, "nowhere"), tiny_dims()); });
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
}

// ---- the C++ half of tests/oracle/test_peft_oracle.py ----------------------------------------------------------
// The script leaves in $QWENQ_ORACLE_PEFT_DIR: base/ (a tiny random Qwen2ForCausalLM), peft_adapter/ (its
// save_pretrained output: r=4, alpha 8, all seven targets, random nonzero B) and peft_expected.safetensors (every
// lora_A/lora_B as fp32 under "layers.{l}.{name}.A|B"). We load the PEFT adapter and require equal values, then
// write ours_f32/ and ours_bf16/ (seeded) for the script to load with PeftModel.from_pretrained.

TEST(PeftOracle, ReadsPeftAdapterAndWritesOurs) {
  const char* env = std::getenv("QWENQ_ORACLE_PEFT_DIR");
  if (!env || !*env) GTEST_SKIP() << "QWENQ_ORACLE_PEFT_DIR not set (run tests/oracle/test_peft_oracle.py)";
  const std::string dir = env;
  const QwenConfig qc = load_qwen_config(path_join(dir, "base"));
  const LoraDims dims{qc.hidden_size, qc.intermediate_size, qc.q_dim(), qc.kv_dim(), qc.num_layers};

  const LoraAdapter peft = load_peft_adapter(path_join(dir, "peft_adapter"), dims);
  EXPECT_EQ(peft.config().r, 4);
  EXPECT_EQ(peft.config().alpha, 8);
  EXPECT_EQ(peft.uniform_scaling(), 2.0);
  EXPECT_EQ(peft.targets().size(), 7u);
  SafetensorsFile expected(path_join(dir, "peft_expected.safetensors"));
  int64_t compared = 0;
  for (int64_t l = 0; l < dims.num_layers; ++l)
    for (LoraTarget t : peft.targets()) {
      const LoraWeights& w = peft.at(l, t);
      const std::string base = "layers." + std::to_string(l) + "." + lora_target_name(t);
      for (const auto& [suffix, values] : {std::pair<const char*, const std::vector<float>*>{".A", &w.A},
                                           std::pair<const char*, const std::vector<float>*>{".B", &w.B}}) {
        const TensorView& v = expected.get(base + suffix);
        ASSERT_EQ(v.dtype, DType::F32);
        ASSERT_EQ(static_cast<size_t>(v.numel()), values->size()) << base << suffix;
        ASSERT_EQ(std::memcmp(v.data, values->data(), values->size() * 4), 0) << base << suffix << " differs";
        ++compared;
      }
    }
  EXPECT_EQ(compared, dims.num_layers * 7 * 2);

  LoraConfig c = all_linear(4, 8);
  c.base_model = path_join(dir, "base");
  const LoraAdapter ours = random_adapter(dims, c, 2024);
  PeftSaveOptions o;
  o.overwrite = true;
  save_peft_adapter(path_join(dir, "ours_f32"), ours, o);
  o.dtype = DType::BF16;
  save_peft_adapter(path_join(dir, "ours_bf16"), ours, o);
}

}  // namespace
}  // namespace qwenq
