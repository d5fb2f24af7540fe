// The reward model of trainer/reward_model.h: the texts, their tokens, and the pooled score of packed forwards.
#include "trainer/reward_model.h"

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "trainer/chat_record.h"
#include "trainer/json_fields.h"
#include "trainer/reward.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

// config.json's pad_token_id: an integer, or -1 when absent or null.
int32_t config_pad_id(const std::string& dir) {
  const std::string path = path_join(dir, "config.json");
  const nlohmann::json j = read_json_file(path);
  return static_cast<int32_t>(optional_int(j, "pad_token_id", -1, path));
}

}  // namespace

RewardModel::RewardModel(const std::string& dir)
    : dir_(dir),
      model_(std::make_unique<QwenModel>(dir, ModelHead::kSequenceScore)),
      tok_(Tokenizer::from_dir(dir)),
      pad_id_(config_pad_id(dir)) {}

int64_t RewardModel::num_labels() const { return model_->weights().score.shape.at(0); }

std::string RewardModel::text(const Json& prompt, const std::string& completion) const {
  if (prompt.is_string()) return prompt.get<std::string>() + completion;
  QWENQ_CHECK(prompt.is_array(), "reward model " << dir_ << ": a prompt is a string or a message list, not "
                                                 << prompt.type_name());
  QWENQ_CHECK(tok_.has_chat_template(), "reward model " << dir_ << ": its tokenizer has no chat template, so a "
                                                           "conversational prompt cannot be rendered for it");
  Json messages = prompt;
  messages.push_back(Json{{"role", "assistant"}, {"content", completion}});
  std::vector<ChatMessage> parsed;
  const std::string why = parse_chat_record(Json{{"messages", messages}}, /*need_assistant=*/true, &parsed, nullptr);
  QWENQ_CHECK(why.empty(), "reward model " << dir_ << ": the prompt's messages: " << why);
  return tok_.apply_chat_template(parsed, /*add_generation_prompt=*/false);
}

std::vector<int32_t> RewardModel::tokens(const std::string& text) const {
  return tok_.encode(text, /*add_special_tokens=*/false);
}

int64_t RewardModel::pooled_position(const std::vector<int32_t>& sequence) const {
  return last_non_pad(sequence.data(), static_cast<int64_t>(sequence.size()), pad_id_);
}

std::vector<double> RewardModel::score(const std::vector<std::vector<int32_t>>& sequences) const {
  const QwenWeights& w = model_->weights();
  const int64_t C = model_->config().hidden_size;
  const std::vector<float> head = tensor_to_f32(w.score);  // row 0 is the reward's
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
