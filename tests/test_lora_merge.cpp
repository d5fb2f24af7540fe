// Merging a LoRA adapter into its base (trainer/lora_merge): the merged model, in memory or written to a directory,
// computes the logits of the adapted model (trainer/lora_model's lora_forward_logits, base + s·(x Aᵀ) Bᵀ) for dense
// and 4-bit bases; the written directory is dense and complete; adapters of another base are refused naming both
// directories, leaving nothing behind.
#include <gtest/gtest.h>

#include <dirent.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "tests/support/test_training.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// x (W + sBA)ᵀ and x Wᵀ + s(xAᵀ)Bᵀ differ only by fp32 reassociation: a few ulp of each Linear output, carried
// through two layers. Measured < 1e-6 of max |logit| on these models; the bound leaves 10x room.
constexpr double kMergeRelTol = 1e-5;
// The adapter must move the logits far more than the tolerance, or the comparisons would prove nothing.
constexpr double kMinAdapterEffect = 1e-2;

std::string make_model(const std::string& dir, int64_t layers = 0) {
  return test::make_tiny_model(dir, /*seed=*/31, /*kv_heads=*/0, layers);
}

// PEFT init for A, then B ~ 0.3·N(0, 1) from Rng(seed + 1) so the adapter changes the model (r 4, alpha 8).
LoraAdapter random_adapter(const QwenConfig& c, std::vector<std::string> targets, bool rslora, uint64_t seed) {
  return test::adapter_with_random_b(c, std::move(targets), 4, 8, rslora, seed, 0.3f);
}

const std::vector<std::string> kAllTargets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"};

PackedBatch test_batch() {
  return PackedBatch::from_sequences({{1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17}, {42, 17, 99, 100}, {7}});
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// max |a - b| / max |ref|.
double rel_err(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& ref) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m / max_abs(ref);
}

nlohmann::json config_of(const std::string& dir) { return nlohmann::json::parse(read_file(dir + "/config.json")); }

// Names in `parent` starting with `stem` (to find leftovers such as "<out>.partial.<pid>").
std::vector<std::string> entries_starting_with(const std::string& parent, const std::string& stem) {
  std::vector<std::string> out;
  if (DIR* d = opendir(parent.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.compare(0, stem.size(), stem) == 0) out.push_back(name);
    }
    closedir(d);
  }
  return out;
}

struct MergeCase {
  const char* name;
  std::vector<std::string> targets;
  bool rslora;
};

TEST(LoraMerge, InMemoryMergeGivesTheAdaptedLogits) {
  const std::string dir = make_model(test::scratch_dir() + "/m");
  const PackedBatch batch = test_batch();
  const MergeCase cases[] = {{"all targets", kAllTargets, false}, {"q,v,down rsLoRA", {"q_proj", "v_proj", "down_proj"}, true}};
  for (const MergeCase& c : cases) {
    SCOPED_TRACE(c.name);
    const QwenModel base(dir);
    const LoraAdapter adapter = random_adapter(base.config(), c.targets, c.rslora, 7);
    const std::vector<float> want = lora_forward_logits(base, adapter, batch);
    const std::vector<float> plain = base.forward_logits(batch);
    ASSERT_GT(rel_err(want, plain, want), kMinAdapterEffect);

    QwenModel merged(dir);
    merge_adapter_in_memory(merged, adapter);
    const std::vector<float> got = merged.forward_logits(batch);
    const double err = rel_err(got, want, want);
    EXPECT_LE(err, kMergeRelTol) << "max |logit| " << max_abs(want);
    // Untargeted Linears are untouched (still views into the checkpoint).
    if (!adapter.config().targets(LoraTarget::KProj)) {
      EXPECT_EQ(merged.weights().layers[0].k.owned, nullptr);
    }
    // Decoding with the KV cache (what generate runs) sees the merged weights too.
    const std::vector<int32_t> seq = {1, 5, 9, 200, 3};
    KvCache cache = merged.make_cache(8);
    const std::vector<float> step = merged.forward_step(seq, &cache);
    const std::vector<float> ref = lora_forward_logits(base, adapter, PackedBatch::from_sequences({seq}));
    const int64_t V = base.config().vocab_size;
    const std::vector<float> last(ref.end() - V, ref.end());
    EXPECT_LE(rel_err(step, last, last), kMergeRelTol);
  }
}

TEST(LoraMerge, MergedDirectoryComputesTheAdaptedModel) {
  const std::string root = test::scratch_dir();
  const std::string dir = make_model(root + "/base");
  const QwenModel base(dir);
  const LoraAdapter adapter = random_adapter(base.config(), {"q_proj", "k_proj", "o_proj", "up_proj"}, false, 11);
  save_peft_adapter(root + "/adapter", adapter);
  const PackedBatch batch = test_batch();
  const std::vector<float> want = lora_forward_logits(base, adapter, batch);
  EXPECT_EQ(default_merge_dtype(dir), DType::F32);

  MergeOptions o;
  o.model_dir = dir;
  o.adapter_dir = root + "/adapter";
  o.out_dir = root + "/merged";
  o.quiet = true;  // dtype unset: the base's fp32
  const QuantizeReport r = merge_adapter_to_dir(o);
  const int64_t L = base.config().num_layers;
  EXPECT_EQ(r.linears, 4 * L);
  EXPECT_GT(r.params_quantized, 0);
  EXPECT_EQ(r.shards, 1);

  const QwenModel merged(o.out_dir);
  EXPECT_EQ(merged.quant_config().method, QuantConfig::Method::None);
  const nlohmann::json cfg = config_of(o.out_dir);
  EXPECT_FALSE(cfg.contains("quantization_config"));
  EXPECT_EQ(cfg["torch_dtype"], "float32");
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json"}) {
    EXPECT_EQ(read_file(o.out_dir + "/" + f), read_file(dir + "/" + f)) << f;  // the tokenizer files copied
  }
  EXPECT_LE(rel_err(merged.forward_logits(batch), want, want), kMergeRelTol);
  // The same tensors as the base, nothing more or less.
  EXPECT_EQ(Checkpoint(o.out_dir).names(), Checkpoint(dir).names());

  // Untargeted Linears and everything else are copied byte for byte.
  const Checkpoint in(dir), out(o.out_dir);
  for (const char* name : {"model.layers.0.self_attn.v_proj.weight", "model.layers.1.mlp.down_proj.weight",
                           "model.embed_tokens.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.bias"}) {
    SCOPED_TRACE(name);
    const TensorView &a = in.get(name), &b = out.get(name);
    ASSERT_EQ(a.dtype, b.dtype);
    ASSERT_EQ(a.shape, b.shape);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes()), 0);
  }

  // bf16 output: every decoder Linear in bf16, the rest as stored; the merged model is the adapted one up to the
  // rounding of W' to bf16 (2⁻⁹ relative per weight), so only a loose check of the logits.
  o.out_dir = root + "/merged_bf16";
  o.dtype = DType::BF16;
  merge_adapter_to_dir(o);
  const Checkpoint bf(o.out_dir);
  EXPECT_EQ(bf.get("model.layers.0.self_attn.q_proj.weight").dtype, DType::BF16);
  EXPECT_EQ(bf.get("model.layers.0.self_attn.v_proj.weight").dtype, DType::BF16);
  EXPECT_EQ(bf.get("model.embed_tokens.weight").dtype, DType::F32);
  EXPECT_EQ(config_of(o.out_dir)["torch_dtype"], "bfloat16");
  EXPECT_LE(rel_err(QwenModel(o.out_dir).forward_logits(batch), want, want), 2e-2);

  // An existing output is replaced only with overwrite.
  o.dtype = DType::F32;
  EXPECT_NE(test::error_of([&] { merge_adapter_to_dir(o); }).find("--overwrite"), std::string::npos);
  o.overwrite = true;
  merge_adapter_to_dir(o);
  EXPECT_EQ(config_of(o.out_dir)["torch_dtype"], "float32");
  // The output may not be an input.
  o.out_dir = dir;
  EXPECT_NE(test::error_of([&] { merge_adapter_to_dir(o); }).find("is an input"), std::string::npos);
}

TEST(LoraMerge, QuantizedBaseMergesIntoADenseModel) {
  const std::string root = test::scratch_dir();
  const std::string src = make_model(root + "/fp32");
  const PackedBatch batch = test_batch();
  for (auto method : {QuantizeOptions::Method::Nf4, QuantizeOptions::Method::Rtn}) {
    QuantizeOptions q;
    q.method = method;
    q.group_size = 32;
    q.model_dir = src;
    q.out_dir = root + "/q" + std::to_string(static_cast<int>(method));
    q.quiet = true;
    quantize_model(q);
    SCOPED_TRACE(q.out_dir);
    const QwenModel base(q.out_dir);
    ASSERT_NE(base.quant_config().method, QuantConfig::Method::None);
    const LoraAdapter adapter = random_adapter(base.config(), kAllTargets, false, 13);
    const std::vector<float> want = lora_forward_logits(base, adapter, batch);

    QwenModel in_memory(q.out_dir);
    merge_adapter_in_memory(in_memory, adapter);
    EXPECT_TRUE(in_memory.weights().layers[1].down.is_dense());
    EXPECT_LE(rel_err(in_memory.forward_logits(batch), want, want), kMergeRelTol);

    const std::string adapter_dir = q.out_dir + "_adapter";
    save_peft_adapter(adapter_dir, adapter);
    EXPECT_EQ(default_merge_dtype(q.out_dir), DType::BF16);
    MergeOptions o;
    o.model_dir = q.out_dir;
    o.adapter_dir = adapter_dir;
    o.out_dir = q.out_dir + "_merged";
    o.dtype = DType::F32;
    o.quiet = true;
    const QuantizeReport r = merge_adapter_to_dir(o);
    EXPECT_EQ(r.linears, 7 * base.config().num_layers);
    const QwenModel merged(o.out_dir);
    EXPECT_EQ(merged.quant_config().method, QuantConfig::Method::None);
    EXPECT_FALSE(config_of(o.out_dir).contains("quantization_config"));
    EXPECT_TRUE(merged.weights().layers[0].q.is_dense());
    EXPECT_LE(rel_err(merged.forward_logits(batch), want, want), kMergeRelTol);
    // No packed tensors (qweight, absmax, ...) survive: every name is one a dense model has.
    const std::vector<std::string> names = Checkpoint(o.out_dir).names();
    EXPECT_EQ(names, Checkpoint(src).names());
  }
}

TEST(LoraMerge, AdapterOfAnotherBaseIsRefusedNamingBothDirectories) {
  const std::string root = test::scratch_dir();
  const std::string dir = make_model(root + "/base");           // 2 layers
  const std::string other = make_model(root + "/other", 3);     // 3 layers
  const QwenModel other_model(other);
  save_peft_adapter(root + "/adapter3", random_adapter(other_model.config(), kAllTargets, false, 5));

  MergeOptions o;
  o.model_dir = dir;
  o.adapter_dir = root + "/adapter3";
  o.out_dir = root + "/merged";
  o.quiet = true;
  const std::string msg = test::error_of([&] { merge_adapter_to_dir(o); });
  EXPECT_NE(msg.find("cannot merge the LoRA adapter " + o.adapter_dir + " into the base model " + dir), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("layers.2"), std::string::npos) << msg;  // load_peft_adapter's reason: a layer the base lacks
  EXPECT_FALSE(dir_exists(o.out_dir));
  EXPECT_TRUE(entries_starting_with(root, "merged").empty());

  // A directory that is not an adapter at all.
  o.adapter_dir = root + "/missing";
  const std::string missing = test::error_of([&] { merge_adapter_to_dir(o); });
  EXPECT_NE(missing.find(root + "/missing"), std::string::npos) << missing;
  EXPECT_NE(missing.find(dir), std::string::npos) << missing;
  EXPECT_TRUE(entries_starting_with(root, "merged").empty());

  // In memory: the dimensions are checked before any weight changes.
  QwenModel m(dir);
  const LoraAdapter a3 = random_adapter(other_model.config(), kAllTargets, false, 5);
  const std::string mem = test::error_of([&] { merge_adapter_in_memory(m, a3); });
  EXPECT_NE(mem.find("another base model"), std::string::npos) << mem;
  EXPECT_EQ(m.weights().layers[0].q.owned, nullptr);
}

TEST(LoraMerge, MergeWeightsIsTheFormula) {
  // Small exact values: W + s·B A with integers and a power-of-two scale is exact in fp32.
  LoraWeights lw;
  lw.N = 2;
  lw.K = 3;
  lw.r = 2;
  lw.A = {1, 2, 3, 4, 5, 6};  // [2, 3]
  lw.B = {1, -1, 2, 0};       // [2, 2]
  std::vector<float> W = {10, 20, 30, 40, 50, 60};
  merge_lora_weights(W.data(), 2, 3, lw, 0.5f);
  // B A = [[1-4, 2-5, 3-6], [2, 4, 6]] = [[-3, -3, -3], [2, 4, 6]]
  EXPECT_EQ(W, (std::vector<float>{8.5f, 18.5f, 28.5f, 41, 52, 63}));
  EXPECT_NE(test::error_of([&] { merge_lora_weights(W.data(), 3, 2, lw, 1.f); }).find("do not fit"), std::string::npos);
}

}  // namespace
}  // namespace qwenq

namespace qwenq {
namespace {

// LoraTarget and trainer/qwen_model.h's kDecoderLinears list the seven Linears in one order; lora_target_slot and
// the trainers index one by the other, so a reordering of either must fail here.
TEST(LoraMerge, TargetsFollowTheDecoderLinearTable) {
  for (int i = 0; i < kNumLoraTargets; ++i) {
    const LoraTarget t = static_cast<LoraTarget>(i);
    EXPECT_EQ(lora_target_path(t), kDecoderLinears[i].name) << "target " << i;
    const LoraTargetSlot slot = lora_target_slot(t);
    EXPECT_EQ(slot.group, kDecoderLinears[i].group) << "target " << i;
    EXPECT_EQ(slot.index, kDecoderLinears[i].index) << "target " << i;
  }
}

}  // namespace
}  // namespace qwenq
