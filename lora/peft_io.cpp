#include "lora/peft_io.h"

#include <cmath>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "lora/lora_select.h"

namespace qwenq {

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";
constexpr const char* kPickleFile = "adapter_model.bin";

std::vector<uint8_t> encode(const std::vector<float>& v, DType dtype) {
  std::vector<uint8_t> bytes(v.size() * dtype_size(dtype));
  from_f32(dtype, v.data(), bytes.data(), v.size());
  return bytes;
}

// Tensor `name` of the adapter file at `path` widened to fp32 into out[0, n) (F32, BF16 or F16; another dtype is
// refused by name).
void read_adapter_tensor(const std::string& path, const std::string& name, const TensorView& v, float* out, size_t n) {
  QWENQ_CHECK(v.dtype == DType::F32 || v.dtype == DType::BF16 || v.dtype == DType::F16,
              path << ": tensor " << name << " has dtype " << dtype_name(v.dtype)
                   << "; adapter weights must be F32, BF16 or F16");
  to_f32(v.dtype, v.data, out, n);
}

}  // namespace

const char* const kPeftScoreName = "base_model.model.score.weight";

std::string peft_tensor_name(const LoraSlot& s, bool is_b) {
  return "base_model.model.model.layers." + std::to_string(s.layer) + "." + s.path +
         (is_b ? ".lora_B.weight" : ".lora_A.weight");
}

std::string peft_magnitude_name(const LoraSlot& s) {
  return "base_model.model.model.layers." + std::to_string(s.layer) + "." + s.path + ".lora_magnitude_vector";
}

std::string peft_tensor_name(int64_t layer, LoraTarget t, bool is_b) {
  return "base_model.model.model.layers." + std::to_string(layer) + "." + lora_target_path(t) +
         (is_b ? ".lora_B.weight" : ".lora_A.weight");
}

std::string peft_magnitude_name(int64_t layer, LoraTarget t) {
  return "base_model.model.model.layers." + std::to_string(layer) + "." + lora_target_path(t) +
         ".lora_magnitude_vector";
}

void save_peft_adapter(const std::string& dir, const LoraAdapter& adapter, const PeftSaveOptions& options) {
  QWENQ_CHECK(options.dtype == DType::F32 || options.dtype == DType::BF16,
              "LoRA adapters are saved as F32 or BF16, not " << dtype_name(options.dtype) << " (" << dir << ")");
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");  // what PEFT's save_pretrained writes
  for (size_t i = 0; i < adapter.slots().size(); ++i) {
    const LoraSlot& sl = adapter.slots()[i];
    const LoraWeights& w = adapter.weights(i);
    writer.add_owned(peft_tensor_name(sl, false), options.dtype, {w.r, w.K}, encode(w.A, options.dtype));
    writer.add_owned(peft_tensor_name(sl, true), options.dtype, {w.N, w.r}, encode(w.B, options.dtype));
    if (adapter.use_dora()) {
      QWENQ_CHECK(static_cast<int64_t>(w.m.size()) == w.N, "save_peft_adapter: the DoRA magnitude of model.layers."
                                                                << sl.layer << "." << sl.path << " holds "
                                                                << w.m.size() << " values, not " << w.N << " (" << dir
                                                                << ")");
      writer.add_owned(peft_magnitude_name(sl), options.dtype, {w.N}, encode(w.m, options.dtype));
    }
  }
  if (adapter.config().seq_cls()) {
    writer.add_owned(kPeftScoreName, options.dtype, {adapter.config().num_labels, adapter.dims().hidden_size},
                     encode(adapter.score(), options.dtype));
  }
  write_peft_adapter_dir(dir, adapter.config(), writer, options.overwrite);
}

void write_peft_adapter_dir(const std::string& dir, const LoraConfig& config, const SafetensorsWriter& weights,
                            bool overwrite) {
  const std::string config_json = lora_config_to_json(config);
  StagedDir staged(dir, overwrite);
  write_file_atomic(path_join(staged.path(), kConfigFile), config_json);
  weights.write(path_join(staged.path(), kWeightsFile));
  staged.commit();
}

std::string peft_weights_path(const std::string& dir) {
  const std::string path = path_join(dir, kWeightsFile);
  if (!file_exists(path)) {
    QWENQ_CHECK(!file_exists(path_join(dir, kPickleFile)),
                dir << " holds adapter_model.bin (a PyTorch pickle), which is not read; re-save the adapter with "
                    << "save_pretrained(..., safe_serialization=True) to get " << kWeightsFile);
    QWENQ_FAIL("no " << kWeightsFile << " in " << dir);
  }
  return path;
}

LoraAdapter load_peft_adapter(const std::string& dir, const LoraDims& dims) {
  QWENQ_CHECK(dir_exists(dir), "LoRA adapter directory " << dir << " does not exist");
  LoraConfig config = load_lora_config(dir);
  const std::string path = peft_weights_path(dir);
  SafetensorsFile file(path);
  std::set<std::string> expected;
  if (config.seq_cls()) {  // the classifier head: its row count is the label count
    QWENQ_CHECK(file.has(kPeftScoreName), path << ": tensor " << kPeftScoreName << " is missing (adapter_config.json "
                                               << "has task_type SEQ_CLS: the classifier head is saved with the adapter)");
    const TensorView& v = file.get(kPeftScoreName);
    QWENQ_CHECK(v.shape.size() == 2 && v.shape[0] >= 1 && v.shape[1] == dims.hidden_size,
                path << ": tensor " << kPeftScoreName << " has shape " << shape_str(v.shape) << ", expected [labels, "
                     << dims.hidden_size << "] (an adapter for a different base model?)");
    config.num_labels = v.shape[0];
  }
  LoraAdapter adapter(dims, config, path_join(dir, "adapter_config.json"));
  if (config.seq_cls()) {
    read_adapter_tensor(path, kPeftScoreName, file.get(kPeftScoreName), adapter.score().data(), adapter.score().size());
    for (float x : adapter.score())
      QWENQ_CHECK(std::isfinite(x), path << ": tensor " << kPeftScoreName << " holds the non-finite value " << x);
    expected.insert(kPeftScoreName);
  }
  for (size_t i = 0; i < adapter.slots().size(); ++i) {
    const LoraSlot& sl = adapter.slots()[i];
    LoraWeights& w = adapter.weights(i);
    for (bool is_b : {false, true}) {
      const std::string name = peft_tensor_name(sl, is_b);
      expected.insert(name);
      QWENQ_CHECK(file.has(name), path << ": tensor " << name << " is missing (adapter_config.json's "
                                       << (config.selects_finely() ? "selection" : "target_modules") << ", "
                                       << lora_selection_str(config) << ", adapts " << lora_module_key(sl) << ")");
      const TensorView& v = file.get(name);
      const std::vector<int64_t> want = is_b ? std::vector<int64_t>{w.N, w.r} : std::vector<int64_t>{w.r, w.K};
      QWENQ_CHECK(v.shape == want, path << ": tensor " << name << " has shape " << shape_str(v.shape)
                                        << ", expected " << shape_str(want) << " (r=" << w.r << " from adapter_config.json"
                                        << (w.r != config.r ? "'s rank_pattern" : "")
                                        << "; an adapter for a different base model?)");
      std::vector<float>& dst = is_b ? w.B : w.A;
      read_adapter_tensor(path, name, v, dst.data(), dst.size());
    }
    if (config.use_dora) {
      const std::string name = peft_magnitude_name(sl);
      expected.insert(name);
      QWENQ_CHECK(file.has(name), path << ": tensor " << name << " is missing (adapter_config.json has use_dora "
                                       << "= true: every adapted Linear needs its DoRA magnitude vector)");
      const TensorView& v = file.get(name);
      QWENQ_CHECK(v.shape == std::vector<int64_t>{w.N},
                  path << ": DoRA magnitude " << name << " has shape " << shape_str(v.shape) << ", expected ["
                       << w.N << "] (one value per output row; an adapter for a different base model?)");
      read_adapter_tensor(path, name, v, w.m.data(), w.m.size());
      for (int64_t row = 0; row < w.N; ++row) {
        QWENQ_CHECK(std::isfinite(w.m[static_cast<size_t>(row)]),
                    path << ": DoRA magnitude " << name << " has the non-finite value "
                         << w.m[static_cast<size_t>(row)] << " at row " << row);
      }
    }
  }
  for (const std::string& name : file.names()) {
    QWENQ_CHECK(expected.count(name),
                path << ": unexpected tensor " << name << " (expected lora_A/lora_B weights of the "
                     << adapter.slots().size() << " Linears adapter_config.json selects in " << dims.num_layers
                     << " layers"
                     << (config.use_dora ? ", and their DoRA magnitudes" : "")
                     << (config.seq_cls() ? ", and the score head" : "") << "; biases, "
                     << (config.use_dora ? "" : "DoRA magnitudes without use_dora = true, ")
                     << "embeddings or an adapter for a different base are not supported)");
  }
  return adapter;
}

}  // namespace qwenq
