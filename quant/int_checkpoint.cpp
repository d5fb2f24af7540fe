#include "quant/int_checkpoint.h"

#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/files.h"
#include "quant/format/int_pack.h"

namespace qwenq {

namespace {

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

template <typename T>
std::vector<T> fetch(const Checkpoint& ckpt, const std::string& name, DType dtype, std::vector<int64_t> shape) {
  QWENQ_CHECK(ckpt.has(name), "tensor '" << name << "' not found in checkpoint " << ckpt.dir());
  const TensorView& t = ckpt.get(name);
  QWENQ_CHECK(t.dtype == dtype, ckpt.file_of(name) << ": tensor '" << name << "' has dtype " << dtype_name(t.dtype)
                                                   << ", expected " << dtype_name(dtype));
  QWENQ_CHECK(t.shape == shape, ckpt.file_of(name) << ": tensor '" << name << "' has shape " << shape_str(t.shape)
                                                   << ", expected " << shape_str(shape));
  std::vector<T> out(t.numel());
  if (!out.empty()) std::memcpy(out.data(), t.data, t.nbytes());
  release_mapped_pages(t.data, t.nbytes());  // the copy is what stays resident, not the file's pages too
  return out;
}

bool is_gptq(IntLayout l) { return l != IntLayout::AwqGemm; }

}  // namespace

const char* int_layout_name(IntLayout layout) {
  switch (layout) {
    case IntLayout::GptqV1: return "gptq";
    case IntLayout::GptqV2: return "gptq_v2";
    case IntLayout::AwqGemm: return "awq-gemm";
  }
  return "?";
}

PackedIntLinear pack_int_linear(const uint8_t* codes, const GroupGrid& grid, const int32_t* g_idx, IntLayout layout) {
  PackedIntLinear p;
  p.layout = layout;
  p.bits = grid.bits;
  p.K = grid.K;
  p.N = grid.N;
  p.group = grid.group;
  const int64_t G = p.num_groups();
  p.scales.resize(G * p.N);
  for (size_t i = 0; i < p.scales.size(); ++i) p.scales[i] = f32_to_f16(grid.scale[i]);
  if (is_gptq(layout)) {
    const GptqFormat fmt = layout == IntLayout::GptqV1 ? GptqFormat::V1 : GptqFormat::V2;
    p.qweight.resize(p.K * p.bits / 32 * p.N);
    gptq_pack_qweight(codes, p.K, p.N, p.bits, p.qweight.data());
    p.qzeros.resize(G * p.N * p.bits / 32);
    gptq_pack_qzeros(grid.zero.data(), G, p.N, p.bits, fmt, p.qzeros.data());
    p.g_idx.resize(p.K);
    for (int64_t k = 0; k < p.K; ++k) p.g_idx[k] = g_idx ? g_idx[k] : static_cast<int32_t>(k / p.group);
  } else {
    QWENQ_CHECK(p.bits == 4, "AWQ GEMM layout holds 4-bit codes only, not " << p.bits << "-bit");
    for (int64_t k = 0; g_idx && k < p.K; ++k) {
      QWENQ_CHECK(g_idx[k] == k / p.group, "AWQ GEMM has no g_idx: act-order (desc_act) cannot be stored in it");
    }
    p.qweight.resize(p.K * p.N / 8);
    awq_pack(codes, p.K, p.N, p.qweight.data());
    p.qzeros.resize(G * p.N / 8);
    awq_pack(grid.zero.data(), G, p.N, p.qzeros.data());
  }
  return p;
}

std::vector<float> dequantize_int_linear(const PackedIntLinear& p) {
  const int64_t G = p.num_groups();
  std::vector<uint8_t> codes(p.K * p.N), zeros(G * p.N);
  if (is_gptq(p.layout)) {
    const GptqFormat fmt = p.layout == IntLayout::GptqV1 ? GptqFormat::V1 : GptqFormat::V2;
    gptq_unpack_qweight(p.qweight.data(), p.K, p.N, p.bits, codes.data());
    gptq_unpack_qzeros(p.qzeros.data(), G, p.N, p.bits, fmt, zeros.data());
  } else {
    awq_unpack(p.qweight.data(), p.K, p.N, codes.data());
    awq_unpack(p.qzeros.data(), G, p.N, zeros.data());
  }
  std::vector<float> W(p.N * p.K);
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t g = p.g_idx.empty() ? k / p.group : p.g_idx[k];
    QWENQ_CHECK(g >= 0 && g < G, "g_idx[" << k << "] = " << g << " is outside [0, " << G << ")");
    for (int64_t n = 0; n < p.N; ++n) {
      W[n * p.K + k] = dequantize_value(codes[k * p.N + n], f16_to_f32(p.scales[g * p.N + n]), zeros[g * p.N + n]);
    }
  }
  return W;
}

void add_int_linear(SafetensorsWriter& w, const std::string& prefix, const PackedIntLinear& p) {
  const int64_t G = p.num_groups();
  if (is_gptq(p.layout)) {
    w.add_owned(prefix + ".qweight", DType::I32, {p.K * p.bits / 32, p.N}, bytes_of(p.qweight));
    w.add_owned(prefix + ".qzeros", DType::I32, {G, p.N * p.bits / 32}, bytes_of(p.qzeros));
    w.add_owned(prefix + ".scales", DType::F16, {G, p.N}, bytes_of(p.scales));
    w.add_owned(prefix + ".g_idx", DType::I32, {p.K}, bytes_of(p.g_idx));
  } else {
    w.add_owned(prefix + ".qweight", DType::I32, {p.K, p.N / 8}, bytes_of(p.qweight));
    w.add_owned(prefix + ".qzeros", DType::I32, {G, p.N / 8}, bytes_of(p.qzeros));
    w.add_owned(prefix + ".scales", DType::F16, {G, p.N}, bytes_of(p.scales));
  }
}

PackedIntLinear read_int_linear(const Checkpoint& ckpt, const std::string& prefix, IntLayout layout, int bits,
                                int64_t group, int64_t K, int64_t N) {
  PackedIntLinear p;
  p.layout = layout;
  p.bits = bits;
  p.K = K;
  p.N = N;
  p.group = group == -1 ? K : group;
  QWENQ_CHECK(p.group > 0, "group size must be positive or -1, got " << group);
  const int64_t G = p.num_groups();
  if (is_gptq(layout)) {
    QWENQ_CHECK(gptq_bits_supported(bits), "GPTQ checkpoints with " << bits << "-bit codes are not supported (2, 3, 4, 8)");
    QWENQ_CHECK(K % gptq_pack_multiple(bits) == 0 && N % gptq_pack_multiple(bits) == 0,
                prefix << ": K=" << K << ", N=" << N << " do not pack into int32 words of " << bits << "-bit codes");
    p.qweight = fetch<int32_t>(ckpt, prefix + ".qweight", DType::I32, {K * bits / 32, N});
    p.qzeros = fetch<int32_t>(ckpt, prefix + ".qzeros", DType::I32, {G, N * bits / 32});
    p.g_idx = fetch<int32_t>(ckpt, prefix + ".g_idx", DType::I32, {K});
    for (int64_t k = 0; k < K; ++k) {
      QWENQ_CHECK(p.g_idx[k] >= 0 && p.g_idx[k] < G, ckpt.file_of(prefix + ".g_idx")
                                                          << ": " << prefix << ".g_idx[" << k << "] = " << p.g_idx[k]
                                                          << " is outside [0, " << G << ")");
    }
  } else {
    QWENQ_CHECK(bits == 4, "AWQ GEMM checkpoints hold 4-bit codes only, not " << bits);
    QWENQ_CHECK(N % 8 == 0, prefix << ": N=" << N << " is not a multiple of 8 (AWQ GEMM packs 8 columns per int32)");
    p.qweight = fetch<int32_t>(ckpt, prefix + ".qweight", DType::I32, {K, N / 8});
    p.qzeros = fetch<int32_t>(ckpt, prefix + ".qzeros", DType::I32, {G, N / 8});
  }
  p.scales = fetch<uint16_t>(ckpt, prefix + ".scales", DType::F16, {G, N});
  return p;
}

nlohmann::ordered_json gptq_quantization_config(int bits, int64_t group_size, bool sym, bool desc_act,
                                                bool static_groups, double damp, IntLayout layout) {
  QWENQ_CHECK(is_gptq(layout), "gptq_quantization_config: layout " << int_layout_name(layout) << " is not GPTQ");
  return {{"quant_method", "gptq"},
          {"bits", bits},
          {"group_size", group_size},
          {"desc_act", desc_act},
          {"sym", sym},
          {"static_groups", static_groups},
          {"damp_percent", damp},
          {"true_sequential", true},
          {"checkpoint_format", int_layout_name(layout)},
          {"pack_dtype", "int32"},
          {"lm_head", false},
          {"meta", {{"quantizer", {"qwenq:0.1.0"}}, {"damp_percent", damp}, {"static_groups", static_groups},
                    {"true_sequential", true}}}};
}

nlohmann::ordered_json awq_quantization_config(int bits, int64_t group_size) {
  return {{"quant_method", "awq"}, {"zero_point", true},    {"group_size", group_size},
          {"bits", bits},          {"version", "gemm"},     {"modules_to_not_convert", nullptr}};
}

}  // namespace qwenq
