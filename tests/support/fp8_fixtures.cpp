#include "tests/support/fp8_fixtures.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <regex>

#include "core/dtype.h"
#include "core/files.h"
#include "core/safetensors.h"

namespace qwenq::test {

double e4m3_definition(int b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

Quantized quantize_fp8(const float* W, int64_t N, int64_t K) {
  const int64_t SN = (N + kBlockN - 1) / kBlockN, SK = (K + kBlockK - 1) / kBlockK;
  Quantized q;
  q.codes.resize(static_cast<size_t>(N * K));
  q.scales.resize(static_cast<size_t>(SN * SK));
  q.w_hat.resize(q.codes.size());
  for (int64_t bn = 0; bn < SN; ++bn) {
    for (int64_t bk = 0; bk < SK; ++bk) {
      float amax = 0.0f;
      for (int64_t n = bn * kBlockN; n < std::min(N, (bn + 1) * kBlockN); ++n)
        for (int64_t k = bk * kBlockK; k < std::min(K, (bk + 1) * kBlockK); ++k) amax = std::max(amax, std::fabs(W[n * K + k]));
      const uint16_t sb = f32_to_bf16(amax > 0.0f ? amax / 448.0f : 1.0f);
      const float s = bf16_to_f32(sb);
      q.scales[static_cast<size_t>(bn * SK + bk)] = sb;
      for (int64_t n = bn * kBlockN; n < std::min(N, (bn + 1) * kBlockN); ++n) {
        for (int64_t k = bk * kBlockK; k < std::min(K, (bk + 1) * kBlockK); ++k) {
          const double target = W[n * K + k] / double(s);
          int best = 0;
          for (int b = 1; b < 256; ++b) {
            if ((b & 0x7F) == 0x7F) continue;
            if (std::fabs(e4m3_definition(b) - target) < std::fabs(e4m3_definition(best) - target)) best = b;
          }
          q.codes[static_cast<size_t>(n * K + k)] = static_cast<uint8_t>(best);
          q.w_hat[static_cast<size_t>(n * K + k)] = static_cast<float>(e4m3_definition(best)) * s;
        }
      }
    }
  }
  return q;
}

void write_fp8_pair(const std::string& src, const std::string& fp8_dir, const std::string& ref_dir,
                    const nlohmann::json& qc) {
  const std::regex linear(R"(model\.layers\.\d+\..*_proj\.weight)");
  const Checkpoint ckpt(src);
  SafetensorsWriter fp8, ref;
  for (const std::string& name : ckpt.names()) {
    const TensorView& t = ckpt.get(name);
    if (!std::regex_match(name, linear)) {
      fp8.add(name, t.dtype, t.shape, t.data);
      ref.add(name, t.dtype, t.shape, t.data);
      continue;
    }
    ASSERT_EQ(t.dtype, DType::F32);
    const int64_t N = t.shape[0], K = t.shape[1];
    Quantized q = quantize_fp8(static_cast<const float*>(t.data), N, K);
    const std::string prefix = name.substr(0, name.size() - 7);
    fp8.add_owned(name, DType::F8_E4M3, {N, K}, std::move(q.codes));
    std::vector<uint8_t> sbytes(q.scales.size() * 2);
    std::memcpy(sbytes.data(), q.scales.data(), sbytes.size());
    fp8.add_owned(prefix + ".weight_scale_inv", DType::BF16,
                  {(N + kBlockN - 1) / kBlockN, (K + kBlockK - 1) / kBlockK}, std::move(sbytes));
    std::vector<uint8_t> wbytes(q.w_hat.size() * 4);
    std::memcpy(wbytes.data(), q.w_hat.data(), wbytes.size());
    ref.add_owned(name, DType::F32, {N, K}, std::move(wbytes));
  }
  for (const std::string& dir : {fp8_dir, ref_dir}) {
    std::filesystem::create_directories(dir);
    for (const auto& e : std::filesystem::directory_iterator(src)) {
      if (e.path().extension() != ".safetensors") std::filesystem::copy(e.path(), dir + "/" + e.path().filename().string());
    }
  }
  fp8.write(fp8_dir + "/model.safetensors");
  ref.write(ref_dir + "/model.safetensors");
  nlohmann::json cfg = nlohmann::json::parse(read_file(fp8_dir + "/config.json"));
  cfg["quantization_config"] = qc;
  write_file_atomic(fp8_dir + "/config.json", cfg.dump(2));
}

nlohmann::json qwen_fp8_config() {
  return {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
          {"weight_block_size", {kBlockN, kBlockK}}};
}

}  // namespace qwenq::test
