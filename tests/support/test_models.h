// Models the tests make: a seeded tiny random one (any machine) and the real stories260K (needs ../shared); and
// seeded token batches to run them on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "trainer/perplexity.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq::test {

// The "tiny" preset (trainer/random_model.h) with fp32 weights from `seed`; layers / kv_heads 0 keep the preset's.
// Returns dir.
std::string make_tiny_model(const std::string& dir, uint64_t seed, int64_t kv_heads = 0, int64_t layers = 0);

// The trainer/random_model.h preset `preset` in `dtype` from `seed`; layers 0 keeps the preset's. Returns dir.
std::string make_random_model(const std::string& dir, const std::string& preset, DType dtype, uint64_t seed,
                              int64_t layers = 0);

// stories260K imported from ../shared/data into dir as an fp32 Hugging Face directory (call
// QWENQ_REQUIRE_SHARED_DATA first). Returns dir.
std::string import_stories260k(const std::string& dir);

// The shared data's tinystories/tinystories_val.txt encoded by model_dir's tokenizer (call
// QWENQ_REQUIRE_SHARED_DATA first).
std::vector<int32_t> tinystories_tokens(const std::string& model_dir);

// At least `bytes` bytes of seeded lowercase words (1 to 8 letters; a line ends after about one word in ten) written
// to `path`: calibration text for the random models, whose byte-level tokenizer turns any text into tokens.
// Returns path.
std::string write_random_words(const std::string& path, size_t bytes, uint64_t seed);

// GPTQ of a tiny random model for the CPU driver's tests: group 32, quiet, 12 windows of 48 tokens of `calib` drawn
// with `seed`, written to out_dir (the defaults elsewhere: one chunk of 16384 tokens, fp32 calibration).
GptqModelOptions tiny_gptq_options(const std::string& model_dir, const std::string& calib, uint64_t seed,
                                   const std::string& out_dir);

// The first n tokens of the first 20,000 characters of TinyStories (model_dir's tokenizer; call
// QWENQ_REQUIRE_SHARED_DATA first).
// gptq --desc-act (group 32, the intermediate padded to it) of the imported stories260K at hf into out_dir, calibrated
// on `samples` windows of `seq_len` tokens of the shared C4 documents (call QWENQ_REQUIRE_SHARED_DATA first).
// Returns out_dir.
std::string gptq_act_order_stories260k(const std::string& hf, const std::string& out_dir, int64_t samples,
                                       int64_t seq_len);

std::vector<int32_t> tinystories_prefix_tokens(const std::string& model_dir, size_t n);
// The mean next-token NLL of m over one sequence (QwenModel::next_token_nll).
double mean_next_token_nll(const QwenModel& m, const std::vector<int32_t>& tokens);
// `--int8-activations` switched on (trainer/qwen_weights.h's set_int8_activations) for a test section, off on exit.
class ScopedInt8Activations {
 public:
  ScopedInt8Activations();
  ~ScopedInt8Activations();
  ScopedInt8Activations(const ScopedInt8Activations&) = delete;
  ScopedInt8Activations& operator=(const ScopedInt8Activations&) = delete;
};
// A copy of the model directory `src` at `dst` (replaced) whose lm_head.weight (fp32) has seeded N(0, sigma²) noise
// added (Rng(seed)): a second model that agrees with the first on some top-1 tokens and not on others. A tied model
// (no lm_head.weight, e.g. stories260K) is untied in the copy: its lm_head is the embedding plus the noise. Returns
// dst.
std::string copy_with_noisy_lm_head(const std::string& src, const std::string& dst, uint64_t seed, float sigma);
// The model directory `src` quantized to 4-bit GPTQ (v1 layout) by round-to-nearest with groups of `group`, written
// to `dst` (quiet): a packed base in a few milliseconds. Returns dst.
std::string rtn_gptq_model(const std::string& src, const std::string& dst, int64_t group = 32);
// One decode step of two sequences together (forward_steps) gives the second the bits of its lone forward_step, on
// `model` as it stands (an attached adapter included); prompts of a few small token ids.
void expect_batched_step_is_lone_step(const QwenModel& model);
// n tokens in [0, vocab) from a 32-bit linear congruential generator seeded with `seed` (the same on every platform).
std::vector<int32_t> lcg_tokens(int64_t n, int64_t vocab, uint32_t seed);
// One sequence per entry of `lengths`, each token uniform in [0, vocab) from Rng(seed) (rng.below), packed.
PackedBatch random_batch(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed);

// stories260K (fp32, from dense) as a Qwen2-MoE in dir with E copies of each layer's MLP as its experts (zero-padded
// from 172 to 192 channels, a function-preserving change that lets the 4-bit layouts pack them), top 2 of E with
// renormalized weights and a random router: out = Σ_j w_j·MLP(x) = MLP(x), so the MoE model computes what
// stories260K does, while each expert sees other tokens. No shared expert. Returns dir.
std::string upcycle_stories260k(const std::string& dense, const std::string& dir, int64_t E);

// Perplexity of a model directory on the first 32 windows of 256 TinyStories tokens (stories260K's tokenizer; call
// QWENQ_REQUIRE_SHARED_DATA first).
class TinyStoriesPerplexity {
 public:
  explicit TinyStoriesPerplexity(const std::string& stories_dir);
  double operator()(const std::string& dir) const;

 private:
  std::vector<int32_t> ids_;
  PerplexityOptions po_;
};

// `model_dir` written as a GGUF file of `type` at `path` (quiet). Returns path.
std::string export_gguf_to(const std::string& model_dir, const std::string& path, const std::string& type);

// The AWQ setting of the driver tests: `model` into `out` in `layout`, group 32, calibrated on 8 random windows of 64
// tokens of `calib` (seed 3), quiet.
AwqModelOptions awq_test_options(const std::string& model, const std::string& out, const std::string& calib,
                                 IntLayout layout = IntLayout::AwqGemm);

// The acceptance setting of AWQ on a trained mixture of experts (tests/test_awq_moe.cpp and its GPU twin in
// tests/gpu/test_awq_moe_cuda.cpp): stories260K imported into root/fp32 and upcycled to 4 experts top 2 in root/moe;
// AWQ of it into root/awq, 4-bit g64, calibrated on 32 windows of 128 tokens of the shared C4 documents (call
// QWENQ_REQUIRE_SHARED_DATA first).
struct UpcycledAwq {
  std::string dense, moe;
  AwqModelOptions options;
};
UpcycledAwq upcycled_stories260k_awq(const std::string& root);

}  // namespace qwenq::test
