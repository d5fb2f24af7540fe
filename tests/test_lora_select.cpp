// PEFT's finer module selection as lora/lora_select.h applies it: which Linears, with which rank and scaling, for
// keys PEFT 0.15's rules decide (check_target_module_exists, get_pattern_key) — including their corners: a list
// entry matches a name's dotted suffix, a rank pattern must match whole dotted components, the first pattern in file
// order wins, the layer index without layers_pattern is the last "<name>.<digits>." of the key (a MoE expert's index);
// and the refusals (nothing selected, a regex that selects lm_head or a router, experts with ranks of their own).
// tests/oracle/test_lora_select_oracle.py checks the same against PEFT itself (modules, ranks, scalings, logits).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "lora/lora_config.h"
#include "lora/lora_select.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using test::error_of;

LoraDims dense_dims() {
  LoraDims d;
  d.hidden_size = 16;
  d.intermediate_size = 32;
  d.q_dim = 16;
  d.kv_dim = 8;
  d.num_layers = 4;
  return d;
}

// Layer 1 a MoE layer of 3 experts of width 8 and a shared expert of width 8.
LoraDims moe_dims() {
  LoraDims d = dense_dims();
  d.num_layers = 2;
  d.moe_layer = {false, true};
  d.num_experts = 3;
  d.moe_intermediate_size = 8;
  d.shared_expert_intermediate_size = 8;
  return d;
}

LoraConfig config(std::vector<std::string> targets) {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.target_modules = std::move(targets);
  return c;
}

// key -> (r, scaling) of the plan.
std::map<std::string, std::pair<int64_t, double>> plan_of(const LoraDims& d, const LoraConfig& c) {
  std::map<std::string, std::pair<int64_t, double>> out;
  for (const LoraPlanSlot& p : lora_plan(d, c, "test")) out[lora_module_key(p.slot)] = {p.r, p.scaling};
  return out;
}

std::set<std::string> keys_of(const LoraDims& d, const LoraConfig& c) {
  std::set<std::string> out;
  for (const auto& kv : plan_of(d, c)) out.insert(kv.first);
  return out;
}

TEST(LoraSelect, LayersToTransformKeepsTheListedLayers) {
  LoraConfig c = config({"q_proj", "down_proj"});
  c.layers_to_transform = {1, 3};
  EXPECT_EQ(keys_of(dense_dims(), c),
            (std::set<std::string>{"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj",
                                   "model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj"}));
  c.layers_pattern = {"h", "layers"};  // the first pattern that finds an index decides
  EXPECT_EQ(keys_of(dense_dims(), c).size(), 4u);
  c.layers_pattern = {"blocks"};  // no index found: nothing (PEFT's target_module_found = False)
  EXPECT_NE(error_of([&] { lora_plan(dense_dims(), c, "cfg.json"); }).find("cfg.json: the module selection"),
            std::string::npos);
}

// Without layers_pattern PEFT reads re.match(r".*\.[^.]*\.(\d+)\.", key): the greedy ".*" takes the last numbered
// name, which for an expert's Linear is "experts.<e>.": its expert index, not its layer's. With layers_pattern
// "layers" the layer's.
TEST(LoraSelect, LayerIndexWithoutPatternIsTheLastNumberedName) {
  LoraConfig c = config({"up_proj"});
  c.layers_to_transform = {0};
  EXPECT_EQ(keys_of(moe_dims(), c),
            (std::set<std::string>{"model.layers.0.mlp.up_proj", "model.layers.1.mlp.experts.0.up_proj"}));
  c.layers_pattern = {"layers"};
  EXPECT_EQ(keys_of(moe_dims(), c), (std::set<std::string>{"model.layers.0.mlp.up_proj"}));
}

// A list entry may be a module path: PEFT adapts a module whose name is the entry (then layers_to_transform does not
// apply: its first branch) or ends with "." + entry.
TEST(LoraSelect, ModulePathEntries) {
  LoraConfig c = config({"v_proj", "self_attn.q_proj", "model.layers.3.mlp.down_proj", "experts.2.up_proj"});
  c.layers_to_transform = {0};
  EXPECT_TRUE(c.selects_finely());
  EXPECT_TRUE(c.targets(LoraTarget::DownProj));
  EXPECT_FALSE(c.targets(LoraTarget::KProj));
  EXPECT_EQ(keys_of(dense_dims(), c),
            (std::set<std::string>{"model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.q_proj",
                                   "model.layers.3.mlp.down_proj"}));  // named in full: layer 3 despite the filter
  c.layers_to_transform.clear();
  EXPECT_EQ(keys_of(moe_dims(), c).count("model.layers.1.mlp.experts.2.up_proj"), 1u);
  EXPECT_EQ(keys_of(moe_dims(), c).count("model.layers.1.mlp.experts.1.up_proj"), 0u);
  const LoraConfig back = parse_lora_config_json(lora_config_to_json(c), "a");
  EXPECT_EQ(back.target_modules, (std::vector<std::string>{"v_proj", "self_attn.q_proj", "model.layers.3.mlp.down_proj",
                                                           "experts.2.up_proj"}));
  EXPECT_EQ(parse_lora_targets("self_attn.q_proj, v_proj"), (std::vector<std::string>{"v_proj", "self_attn.q_proj"}));
  EXPECT_NE(error_of([] { parse_lora_targets("self_attn.q"); }).find("unknown LoRA target 'self_attn.q'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_lora_targets(".q_proj"); }).find("unknown LoRA target"), std::string::npos);
}

TEST(LoraSelect, RankAndAlphaPatternsFirstMatchWins) {
  LoraConfig c = config({"q_proj", "v_proj"});
  c.rank_pattern = {{"q_proj", 2}, {"layers.1.self_attn.q_proj", 6}, {"proj", 3}};
  c.alpha_pattern = {{"v_proj", 32}};
  auto p = plan_of(dense_dims(), c);
  EXPECT_EQ(p.at("model.layers.1.self_attn.q_proj"), std::make_pair(int64_t{2}, 4.0));  // the first key matches
  EXPECT_EQ(p.at("model.layers.0.self_attn.v_proj"), std::make_pair(int64_t{4}, 8.0));  // 32 / 4; "proj" is no suffix
  c.rank_pattern = {{"layers.1.self_attn.q_proj", 6}, {"q_proj", 2}};
  p = plan_of(dense_dims(), c);
  EXPECT_EQ(p.at("model.layers.1.self_attn.q_proj").first, 6);
  EXPECT_EQ(p.at("model.layers.2.self_attn.q_proj").first, 2);
  c.rank_pattern = {{"layers\\.[02]\\.self_attn\\.q_proj", 5}};  // a key is a regex too
  c.use_rslora = true;
  p = plan_of(dense_dims(), c);
  EXPECT_EQ(p.at("model.layers.2.self_attn.q_proj"), std::make_pair(int64_t{5}, 8.0 / std::sqrt(5.0)));
  EXPECT_EQ(p.at("model.layers.3.self_attn.q_proj"), std::make_pair(int64_t{4}, 8.0 / 2.0));
  EXPECT_EQ(p.at("model.layers.3.self_attn.v_proj"), std::make_pair(int64_t{4}, 32.0 / 2.0));
}

TEST(LoraSelect, ExcludeModulesByNameSuffixOrRegex) {
  LoraConfig c = config({"q_proj", "k_proj"});
  c.exclude_modules = {"k_proj", "0.self_attn.q_proj", "model.layers.2.self_attn.q_proj"};
  EXPECT_EQ(keys_of(dense_dims(), c),
            (std::set<std::string>{"model.layers.1.self_attn.q_proj", "model.layers.3.self_attn.q_proj"}));
  c.exclude_modules.clear();
  c.exclude_regex = ".*layers\\.[02]\\..*";
  EXPECT_EQ(keys_of(dense_dims(), c).size(), 4u);  // layers 1 and 3, q and k
  EXPECT_EQ(keys_of(dense_dims(), c).count("model.layers.0.self_attn.k_proj"), 0u);
}

TEST(LoraSelect, RegexTargetsMatchWholeNames) {
  LoraConfig c = config({});
  c.target_regex = ".*\\.(q|v)_proj";
  EXPECT_EQ(keys_of(dense_dims(), c).size(), 8u);
  c.target_regex = "q_proj";  // fullmatch: not a suffix search
  EXPECT_NE(error_of([&] { lora_plan(dense_dims(), c, "f"); }).find("matches no Linear"), std::string::npos);
  c.target_regex = "model\\.layers\\.1\\.mlp\\.experts\\.\\d+\\.down_proj";
  EXPECT_EQ(keys_of(moe_dims(), c).size(), 3u);  // the routed experts, not the shared one
  // A regex that also selects a Linear no adapter here can carry is refused, naming it.
  c.target_regex = ".*";
  EXPECT_NE(error_of([&] { lora_plan(dense_dims(), c, "f"); }).find("selects lm_head"), std::string::npos);
  c.target_regex = ".*\\.mlp\\.(gate|up_proj)";
  EXPECT_NE(error_of([&] { lora_plan(moe_dims(), c, "f"); }).find("selects model.layers.1.mlp.gate,"), std::string::npos);
  c.exclude_regex = ".*\\.mlp\\.gate";  // excluded first, as PEFT checks
  EXPECT_EQ(keys_of(moe_dims(), c), (std::set<std::string>{"model.layers.0.mlp.up_proj"}));
}

TEST(LoraSelect, ExpertsKeepTheConfigsRankAndAlpha) {
  LoraConfig c = config({"q_proj", "up_proj"});
  c.rank_pattern = {{"q_proj", 2}};  // attention: fine on a MoE model
  EXPECT_EQ(plan_of(moe_dims(), c).at("model.layers.1.self_attn.q_proj").first, 2);
  c.rank_pattern = {{"up_proj", 2}};  // the dense layer 0's up_proj alone would be fine; layer 1's experts are not
  EXPECT_NE(error_of([&] { lora_plan(moe_dims(), c, "f"); }).find("mixture-of-experts layer's experts"),
            std::string::npos);
  c.rank_pattern = {{"up_proj", 32}};
  EXPECT_NE(error_of([&] { lora_plan(dense_dims(), c, "f"); }).find("exceeds min(N, K) = 16 of model.layers.0.mlp.up_proj"),
            std::string::npos);
}

TEST(LoraSelect, GpuRefusalOnlyWhenTheLayoutIsNotUniform) {
  const LoraDims d = dense_dims();
  auto refusal = [&](const LoraConfig& c) { return lora_plan_gpu_refusal(lora_plan(d, c, "t"), d, c); };
  LoraConfig c = config({"q_proj", "v_proj"});
  EXPECT_EQ(refusal(c), "");
  c.target_modules.clear();
  c.target_regex = ".*\\.(q|v)_proj";  // a regex that selects every layer's q and v: uniform
  EXPECT_EQ(refusal(c), "");
  c.rank_pattern = {{"q_proj", 4}};  // the config's own rank: still uniform
  EXPECT_EQ(refusal(c), "");
  c.rank_pattern = {{"q_proj", 2}};
  EXPECT_NE(refusal(c).find("rank or alpha of its own"), std::string::npos);
  c.rank_pattern.clear();
  c.exclude_modules = {"3.self_attn.v_proj"};
  EXPECT_NE(refusal(c).find("other Linears in some layers"), std::string::npos);
  const LoraAdapter a(d, c);
  EXPECT_EQ(a.slots().size(), 7u);
  EXPECT_FALSE(a.gpu_refusal().empty());
  EXPECT_EQ(a.uniform_rank(), 4);  // one rank, but not every layer's targets: the GPU paths still refuse
}

TEST(LoraSelect, AdapterSlotsFollowThePlan) {
  LoraConfig c = config({"q_proj", "v_proj", "down_proj"});
  c.layers_to_transform = {0, 2};
  c.rank_pattern = {{"down_proj", 8}};
  const LoraAdapter a(dense_dims(), c);
  EXPECT_EQ(a.slots().size(), 6u);
  EXPECT_TRUE(a.has(2, LoraTarget::VProj));
  EXPECT_FALSE(a.has(1, LoraTarget::VProj));
  EXPECT_FALSE(a.has(3, LoraTarget::QProj));
  EXPECT_EQ(a.at(2, LoraTarget::DownProj).A.size(), 8u * 32u);
  EXPECT_EQ(a.at(2, LoraTarget::DownProj).scaling, 1.0);
  EXPECT_EQ(a.num_parameters(), 2 * (4 * (16 + 16) + 4 * (8 + 16) + 8 * (16 + 32)));
  EXPECT_NE(error_of([&] { a.uniform_rank(); }).find("model.layers.0.mlp.down_proj the rank 8"), std::string::npos);
  EXPECT_NE(error_of([&] { a.at(1, LoraTarget::QProj); }).find("no weights for model.layers.1.self_attn.q_proj"),
            std::string::npos);
}

TEST(LoraSelect, ConfigFileRoundTripKeepsPatternOrder) {
  LoraConfig c = config({"q_proj", "down_proj"});
  c.layers_to_transform = {0, 3};
  c.layers_pattern = {"layers"};
  c.exclude_modules = {"3.mlp.down_proj"};
  c.rank_pattern = {{"v_proj", 2}, {"down_proj", 8}};  // not sorted: the order is the first-match order
  c.alpha_pattern = {{"q_proj", 2.5}};
  const std::string text = lora_config_to_json(c);
  EXPECT_LT(text.find("\"v_proj\": 2"), text.find("\"down_proj\": 8")) << text;
  const LoraConfig back = parse_lora_config_json(text, "adapter_config.json");
  EXPECT_TRUE(same_lora_selection(back, c));
  EXPECT_EQ(back.rank_pattern, c.rank_pattern);
  // exclude_modules is written only when set (PEFT before 0.14 refuses the field); a regex target as a string.
  LoraConfig r = config({});
  r.target_regex = ".*\\.q_proj";
  const std::string rt = lora_config_to_json(r);
  EXPECT_EQ(rt.find("exclude_modules"), std::string::npos);
  EXPECT_NE(rt.find("\"target_modules\": \".*\\\\.q_proj\""), std::string::npos) << rt;
  EXPECT_EQ(parse_lora_config_json(rt, "a").target_regex, r.target_regex);
  EXPECT_EQ(lora_selection_str(c),
            "q_proj,down_proj; layers_to_transform [0,3]; layers_pattern [\"layers\"]; exclude_modules "
            "[\"3.mlp.down_proj\"]; rank_pattern {\"v_proj\":2,\"down_proj\":8}; alpha_pattern {\"q_proj\":2.5}");
}

TEST(LoraSelect, PeftsOwnRefusals) {
  LoraConfig c = config({});
  c.target_regex = ".*q_proj";
  c.layers_to_transform = {0};
  EXPECT_NE(error_of([&] { c.validate(); }).find("cannot be used when target_modules is a regular expression"),
            std::string::npos);
  c = config({"q_proj"});
  c.layers_pattern = {"layers"};
  EXPECT_NE(error_of([&] { c.validate(); }).find("layers_pattern needs layers_to_transform"), std::string::npos);
  c = config({"q_proj"});
  c.exclude_modules = {"k_proj"};
  c.exclude_regex = "x";
  EXPECT_NE(error_of([&] { c.validate(); }).find("not both"), std::string::npos);
}

TEST(LoraSelect, CommandLineLists) {
  EXPECT_EQ(parse_layer_list("3, 0,5-7,6", "--layers-to-transform"), (std::vector<int64_t>{0, 3, 5, 6, 7}));
  EXPECT_NE(error_of([] { parse_layer_list("1,x", "--layers-to-transform"); }).find("'x'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_layer_list("7-5", "--l"); }).find("runs backwards"), std::string::npos);
  EXPECT_NE(error_of([] { parse_layer_list("1,,2", "--l"); }).find("empty item"), std::string::npos);
  EXPECT_EQ(parse_rank_pattern(R"({"v_proj": 2, "down_proj": 16})", "--rank-pattern"),
            (std::vector<std::pair<std::string, int64_t>>{{"v_proj", 2}, {"down_proj", 16}}));
  EXPECT_NE(error_of([] { parse_rank_pattern(R"({"v_proj": 2.5})", "--rank-pattern"); }).find("not a rank"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_rank_pattern("[1]", "--rank-pattern"); }).find("must be a JSON object"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_alpha_pattern(R"({"v_proj": -1})", "--alpha-pattern"); }).find("not an alpha"),
            std::string::npos);
}

}  // namespace
}  // namespace qwenq
