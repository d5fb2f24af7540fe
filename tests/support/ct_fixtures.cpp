#include "tests/support/ct_fixtures.h"

#include <cstring>
#include <filesystem>
#include <vector>

#include "core/dtype.h"
#include "core/files.h"
#include "core/safetensors.h"

namespace qwenq::test {

using nlohmann::json;

json scheme_config(const std::string& format, const json& weights, const json& ignore) {
  return {{"quant_method", "compressed-tensors"},
          {"format", format},
          {"quantization_status", "compressed"},
          {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", weights},
                                          {"input_activations", nullptr}, {"output_activations", nullptr}}}}},
          {"ignore", ignore},
          {"kv_cache_scheme", nullptr}};
}

json int_weights(int bits, bool sym, const std::string& strategy, int64_t group) {
  json w = {{"num_bits", bits}, {"type", "int"}, {"symmetric", sym}, {"strategy", strategy}, {"dynamic", false},
            {"actorder", nullptr}, {"observer", "minmax"}};
  w["group_size"] = group > 0 ? json(group) : json(nullptr);
  return w;
}

void gptq_v2_to_compressed_tensors(const std::string& src, const std::string& dst, int bits, int64_t group) {
  std::filesystem::create_directories(dst);
  for (const auto& e : std::filesystem::directory_iterator(src)) {
    if (e.path().extension() != ".safetensors") {
      std::filesystem::copy_file(e.path(), dst + "/" + e.path().filename().string(),
                                 std::filesystem::copy_options::overwrite_existing);
    }
  }
  const int f = 32 / bits;
  SafetensorsWriter out;
  SafetensorsFile in(path_join(src, "model.safetensors"));
  for (const std::string& name : in.names()) {
    const TensorView& t = in.get(name);
    const auto ends = [&](const std::string& s) {
      return name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    const std::string prefix = name.substr(0, name.rfind('.'));
    if (ends(".qweight")) {
      const int64_t words = t.shape[0], N = t.shape[1];
      std::vector<int32_t> packed(static_cast<size_t>(words * N));
      for (int64_t j = 0; j < words; ++j)
        for (int64_t n = 0; n < N; ++n) packed[n * words + j] = t.as<int32_t>()[j * N + n];
      out.add_owned(prefix + ".weight_packed", DType::I32, {N, words}, bytes_of(packed));
      out.add_owned(prefix + ".weight_shape", DType::I64, {2}, bytes_of(std::vector<int64_t>{N, words * f}));
    } else if (ends(".scales")) {
      const int64_t G = t.shape[0], N = t.shape[1];
      std::vector<uint16_t> s(static_cast<size_t>(G * N));
      for (int64_t g = 0; g < G; ++g)
        for (int64_t n = 0; n < N; ++n) s[n * G + g] = t.as<uint16_t>()[g * N + n];
      out.add_owned(prefix + ".weight_scale", DType::F16, {N, G}, bytes_of(s));
    } else if (!ends(".qzeros") && !ends(".g_idx")) {
      const uint8_t* p = static_cast<const uint8_t*>(t.data);
      out.add_owned(name, t.dtype, t.shape, std::vector<uint8_t>(p, p + t.nbytes()));
    }
  }
  out.write(path_join(dst, "model.safetensors"));
  json cfg = json::parse(read_file(path_join(src, "config.json")));
  // As llm-compressor's MoE recipes write it: the routers ignored (they are stored dense either way).
  cfg["quantization_config"] = scheme_config("pack-quantized", int_weights(bits, true, "group", group),
                                             {"lm_head", "re:.*mlp\\.gate$", "re:.*shared_expert_gate$"});
  write_file_atomic(path_join(dst, "config.json"), cfg.dump(2));
}

}  // namespace qwenq::test
