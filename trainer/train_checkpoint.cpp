#include "trainer/train_checkpoint.h"

#include <dirent.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "trainer/best_model.h"

namespace qwenq {

namespace {

constexpr const char* kPrefix = "checkpoint-";

// Steps of the complete checkpoints in out_dir, ascending.
std::vector<int64_t> checkpoint_steps(const std::string& out_dir) {
  std::vector<int64_t> steps;
  DIR* d = ::opendir(out_dir.c_str());
  if (!d) return steps;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.compare(0, std::strlen(kPrefix), kPrefix) != 0) continue;
    const std::string num = name.substr(std::strlen(kPrefix));
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;  // skips .partial.<pid>
    if (!file_exists(path_join(path_join(out_dir, name), "trainer_state.json"))) continue;
    steps.push_back(std::stoll(num));
  }
  ::closedir(d);
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(float));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace

std::string checkpoint_dir(const std::string& out_dir, int64_t step) {
  return path_join(out_dir, kPrefix + std::to_string(step));
}

void save_train_checkpoint(const std::string& out_dir, const LoraAdapter& adapter, const LoraAdapter& m,
                           const LoraAdapter& v, const TrainState& state, int64_t keep, int64_t best_step) {
  const std::string final_dir = checkpoint_dir(out_dir, state.step);
  StagedDir staged(final_dir, /*overwrite=*/true);
  PeftSaveOptions po;
  po.dtype = DType::F32;
  save_peft_adapter(path_join(staged.path(), "adapter"), adapter, po);
  SafetensorsWriter w;
  w.set_metadata("format", "qwenq-adamw");
  for (size_t i = 0; i < adapter.slots().size(); ++i) {
    const LoraSlot& sl = adapter.slots()[i];
    const LoraWeights& mw = m.weights(i);
    const LoraWeights& vw = v.weights(i);
    for (bool is_b : {false, true}) {
      const std::string name = peft_tensor_name(sl, is_b);
      const std::vector<int64_t> shape = is_b ? std::vector<int64_t>{mw.N, mw.r} : std::vector<int64_t>{mw.r, mw.K};
      w.add_owned("m." + name, DType::F32, shape, f32_bytes(is_b ? mw.B : mw.A));
      w.add_owned("v." + name, DType::F32, shape, f32_bytes(is_b ? vw.B : vw.A));
    }
    if (adapter.use_dora()) {  // AdamW's moments of the DoRA magnitude [N]
      const std::string name = peft_magnitude_name(sl);
      w.add_owned("m." + name, DType::F32, {mw.N}, f32_bytes(mw.m));
      w.add_owned("v." + name, DType::F32, {vw.N}, f32_bytes(vw.m));
    }
  }
  if (adapter.config().seq_cls()) {  // AdamW's moments of the score head
    const std::vector<int64_t> shape = {adapter.config().num_labels, adapter.dims().hidden_size};
    w.add_owned(std::string("m.") + kPeftScoreName, DType::F32, shape, f32_bytes(m.score()));
    w.add_owned(std::string("v.") + kPeftScoreName, DType::F32, shape, f32_bytes(v.score()));
  }
  w.write(path_join(staged.path(), "optimizer.safetensors"));
  nlohmann::json j;
  j["step"] = state.step;
  j["cursor"] = {{"epoch", state.cursor.epoch}, {"index", state.cursor.index}, {"num_examples", state.cursor.num_examples}};
  j["tokens_seen"] = state.tokens_seen;
  j["elapsed_s"] = state.elapsed_s;
  j["options"] = state.options;
  if (!state.best_model.is_null()) j["best_model"] = state.best_model;
  if (!state.lr_plateau.is_null()) j["lr_plateau"] = state.lr_plateau;
  write_file_atomic(path_join(staged.path(), "trainer_state.json"), j.dump(2) + "\n");
  staged.commit();
  const std::vector<int64_t> steps = checkpoint_steps(out_dir);
  const std::vector<int64_t> kept = checkpoints_to_keep(steps, keep, best_step);
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i] == state.step || std::find(kept.begin(), kept.end(), steps[i]) != kept.end()) continue;
    // Renamed first (no longer a checkpoint the moment it moves), then removed.
    const std::string old = checkpoint_dir(out_dir, steps[i]), doomed = old + ".removing";
    if (std::rename(old.c_str(), doomed.c_str()) == 0) remove_tree(doomed);
  }
}

std::string latest_checkpoint(const std::string& out_dir) {
  const std::vector<int64_t> steps = checkpoint_steps(out_dir);
  return steps.empty() ? "" : checkpoint_dir(out_dir, steps.back());
}

void load_train_checkpoint(const std::string& dir, const LoraDims& dims, LoraAdapter* adapter, LoraAdapter* m,
                           LoraAdapter* v, TrainState* state) {
  *adapter = load_peft_adapter(path_join(dir, "adapter"), dims);
  *m = *adapter;
  *v = *adapter;
  SafetensorsFile f(path_join(dir, "optimizer.safetensors"));
  const auto read = [&f](const std::string& name, std::vector<float>* out) {  // one F32 moment tensor
    QWENQ_CHECK(f.has(name), f.path() << ": no " << name);
    const TensorView& tv = f.get(name);
    QWENQ_CHECK(tv.dtype == DType::F32 && tv.numel() == static_cast<int64_t>(out->size()),
                f.path() << ": " << name << " is not F32 with " << out->size() << " values");
    std::memcpy(out->data(), tv.data, out->size() * sizeof(float));
  };
  for (auto [which, dst] : {std::pair<std::string, LoraAdapter*>{"m.", m}, {"v.", v}}) {
    for (size_t i = 0; i < adapter->slots().size(); ++i) {
      const LoraSlot& sl = adapter->slots()[i];
      LoraWeights& w = dst->weights(i);
      read(which + peft_tensor_name(sl, false), &w.A);
      read(which + peft_tensor_name(sl, true), &w.B);
      if (adapter->use_dora()) read(which + peft_magnitude_name(sl), &w.m);
    }
    if (adapter->config().seq_cls()) read(which + kPeftScoreName, &dst->score());  // the reward model's head
  }
  const std::string state_path = path_join(dir, "trainer_state.json");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(state_path));
    state->step = j.at("step").get<int64_t>();
    state->cursor.epoch = j.at("cursor").at("epoch").get<int64_t>();
    state->cursor.index = j.at("cursor").at("index").get<int64_t>();
    state->cursor.num_examples = j.at("cursor").at("num_examples").get<int64_t>();
    state->tokens_seen = j.at("tokens_seen").get<int64_t>();
    state->elapsed_s = j.at("elapsed_s").get<double>();
    state->options = j.at("options");
    state->best_model = j.contains("best_model") ? j["best_model"] : nlohmann::json();
    state->lr_plateau = j.contains("lr_plateau") ? j["lr_plateau"] : nlohmann::json();
  } catch (const nlohmann::json::exception& e) {
    QWENQ_FAIL(state_path << ": malformed trainer state (" << e.what() << ")");
  }
}

}  // namespace qwenq
