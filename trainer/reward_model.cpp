// The reward model of trainer/reward_model.h: the texts, their tokens, and the pooled score of packed forwards.
#include "trainer/reward_model.h"

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "lora/lora_config.h"
#include "trainer/chat_record.h"
#include "trainer/lora_merge.h"
#include "trainer/model_dir.h"
#include "trainer/reward.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

// An adapter directory's base: its adapter_config.json's base_model_name_or_path, resolved as --model resolves one.
std::string adapter_base(const std::string& adapter_dir) {
  const LoraConfig c = load_lora_config(adapter_dir);
  QWENQ_CHECK(!c.base_model.empty(), "reward model " << adapter_dir << ": adapter_config.json names no base model "
                                                     << "(base_model_name_or_path); merge it into its base with "
                                                     << "`qwen-qlora merge` and give that directory");
  try {
    return resolve_model_dir(c.base_model, "main");
  } catch (const Error& e) {
    QWENQ_FAIL("reward model " << adapter_dir << ": its base \"" << c.base_model
                               << "\" (adapter_config.json's base_model_name_or_path) is not a model here: "
                               << e.what());
  }
}

}  // namespace

bool is_adapter_dir(const std::string& dir) {
  return file_exists(path_join(dir, "adapter_config.json")) && !file_exists(path_join(dir, "config.json"));
}

RewardModel::RewardModel(const std::string& dir)
    : dir_(dir), base_dir_(is_adapter_dir(dir) ? adapter_base(dir) : dir) {
  if (!is_adapter_dir(dir)) {
    model_ = std::make_unique<QwenModel>(dir, ModelHead::kSequenceScore);
    head_ = tensor_to_f32(model_->weights().score);
  } else {
    // The base as it is (a reward model directory trained further keeps its decoder; its own head is replaced by the
    // adapter's, PEFT's modules_to_save).
    model_ = std::make_unique<QwenModel>(base_dir_, sequence_classifier_dir(base_dir_) ? ModelHead::kSequenceScore
                                                                                       : ModelHead::kLanguageModel);
    adapter_ = std::make_unique<LoraAdapter>(
        load_adapter_for_base(dir, base_dir_, model_->config(), AdapterUse::Score));
    layout_ = std::make_unique<LoraInferenceLayout>(lora_inference_layout(*adapter_, model_->config(), dir));
    model_->attach_adapter(layout_.get());
    head_ = adapter_->score();
  }
  tok_ = std::make_unique<Tokenizer>(Tokenizer::from_dir(base_dir_));
  pad_id_ = reward_pad_id(base_dir_, *tok_);
}

RewardModel::~RewardModel() {
  if (model_) model_->attach_adapter(nullptr);
}

int64_t RewardModel::num_labels() const {
  return static_cast<int64_t>(head_.size()) / model_->config().hidden_size;
}

std::string RewardModel::text(const Json& prompt, const std::string& completion) const {
  if (prompt.is_string()) return prompt.get<std::string>() + completion;
  QWENQ_CHECK(prompt.is_array(), "reward model " << dir_ << ": a prompt is a string or a message list, not "
                                                 << prompt.type_name());
  QWENQ_CHECK(tok_->has_chat_template(), "reward model " << dir_ << ": its tokenizer has no chat template, so a "
                                                           "conversational prompt cannot be rendered for it");
  Json messages = prompt;
  messages.push_back(Json{{"role", "assistant"}, {"content", completion}});
  std::vector<ChatMessage> parsed;
  const std::string why = parse_chat_record(Json{{"messages", messages}}, /*need_assistant=*/true, &parsed, nullptr);
  QWENQ_CHECK(why.empty(), "reward model " << dir_ << ": the prompt's messages: " << why);
  return tok_->apply_chat_template(parsed, /*add_generation_prompt=*/false);
}

std::vector<int32_t> RewardModel::tokens(const std::string& text) const {
  return tok_->encode(text, /*add_special_tokens=*/false);
}

int64_t RewardModel::pooled_position(const std::vector<int32_t>& sequence) const {
  return last_non_pad(sequence.data(), static_cast<int64_t>(sequence.size()), pad_id_);
}

std::vector<double> RewardModel::score(const std::vector<std::vector<int32_t>>& sequences) const {
  const int64_t C = model_->config().hidden_size;
  const std::vector<float>& head = head_;  // row 0 is the reward's
  std::vector<double> out(sequences.size());
  std::vector<float> hidden;
  size_t i = 0;
  while (i < sequences.size()) {  // packs of up to kRewardPackTokens tokens (a longer sequence alone)
    std::vector<std::vector<int32_t>> pack;
    int64_t tokens = 0;
    const size_t first = i;
    while (i < sequences.size() &&
           (pack.empty() || tokens + static_cast<int64_t>(sequences[i].size()) <= kRewardPackTokens)) {
      QWENQ_CHECK(!sequences[i].empty(), "reward model " << dir_ << ": sequence " << i << " has no tokens");
      tokens += static_cast<int64_t>(sequences[i].size());
      pack.push_back(sequences[i++]);
    }
    const PackedBatch b = PackedBatch::from_sequences(pack);
    model_->forward_hidden(b, &hidden);
    for (size_t k = 0; k < pack.size(); ++k) {
      const float* h = hidden.data() + (b.cu_seqlens[k] + pooled_position(pack[k])) * C;
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += static_cast<double>(h[c]) * head[static_cast<size_t>(c)];
      out[first + k] = s;
    }
  }
  return out;
}

}  // namespace qwenq
