#include "quant/compressed_tensors.h"

#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/files.h"

namespace qwenq {

namespace {

const TensorView& tensor(const Checkpoint& ckpt, const std::string& name, const char* what) {
  QWENQ_CHECK(ckpt.has(name), "tensor '" << name << "' (" << what << ") not found in checkpoint " << ckpt.dir());
  return ckpt.get(name);
}

void check_dtype(const Checkpoint& ckpt, const std::string& name, const TensorView& t, DType want) {
  QWENQ_CHECK(t.dtype == want, ckpt.file_of(name) << ": tensor '" << name << "' has dtype " << dtype_name(t.dtype)
                                                  << ", expected " << dtype_name(want));
}

void check_shape(const Checkpoint& ckpt, const std::string& name, const TensorView& t, const std::vector<int64_t>& s) {
  QWENQ_CHECK(t.shape == s, ckpt.file_of(name) << ": tensor '" << name << "' has shape " << shape_str(t.shape)
                                               << ", expected " << shape_str(s));
}

// Scale columns per output for the strategy (1 for channel and tensor).
int64_t scale_columns(const CtWeightArgs& a, int64_t K) {
  return a.strategy == CtStrategy::Group ? (K + a.group_size - 1) / a.group_size : 1;
}

// weight_scale as fp32 [N, G] (a per-tensor scale repeated over N), every value finite.
std::vector<float> read_scales(const Checkpoint& ckpt, const std::string& prefix, const CtWeightArgs& a, int64_t N,
                               int64_t G) {
  const std::string name = prefix + ".weight_scale";
  const TensorView& t = tensor(ckpt, name, "the quantization scales");
  if (a.strategy == CtStrategy::Tensor) {
    QWENQ_CHECK(t.numel() == 1 && t.shape.size() <= 2, ckpt.file_of(name) << ": tensor '" << name << "' has shape "
                                                                          << shape_str(t.shape)
                                                                          << ", expected one scale (strategy tensor)");
  } else {
    check_shape(ckpt, name, t, {N, G});
  }
  std::vector<float> s = read_finite_f32(ckpt, name);
  release_mapped_pages(t.data, t.nbytes());
  if (a.strategy == CtStrategy::Tensor) s.assign(static_cast<size_t>(N * G), s[0]);
  return s;
}

void check_weight_shape(const Checkpoint& ckpt, const std::string& prefix, int64_t N, int64_t K) {
  const std::string name = prefix + ".weight_shape";
  if (!ckpt.has(name)) return;  // the packed shape and config.json already fix it
  const TensorView& t = ckpt.get(name);
  QWENQ_CHECK((t.dtype == DType::I32 || t.dtype == DType::I64) && t.numel() == 2,
              ckpt.file_of(name) << ": tensor '" << name << "' must hold 2 integers, has dtype " << dtype_name(t.dtype)
                                 << " and shape " << shape_str(t.shape));
  int64_t v[2];
  for (int i = 0; i < 2; ++i) {
    v[i] = t.dtype == DType::I32 ? static_cast<const int32_t*>(t.data)[i] : static_cast<const int64_t*>(t.data)[i];
  }
  QWENQ_CHECK(v[0] == N && v[1] == K, ckpt.file_of(name) << ": tensor '" << name << "' says [" << v[0] << ", " << v[1]
                                                         << "] but config.json implies " << shape_str({N, K}));
}

// src [rows, cols] as [cols, rows]: the file's row-major tensors and GPTQ's column-major words are each other's
// transposes, element for element (words, zero-point words, scales).
template <typename T>
std::vector<T> transposed(const T* src, int64_t rows, int64_t cols) {
  std::vector<T> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = src[r * cols + c];
  return out;
}

// The transposed scales [G, N] in fp16 when every one is exact there; else scales_f32 keeps them.
void set_scales(const std::vector<float>& nk, int64_t N, int64_t G, CtIntLinear* c) {
  std::vector<float> gn = transposed(nk.data(), N, G);
  std::vector<uint16_t>& h = c->packed.scales;
  h.resize(gn.size());
  bool exact = true;
  for (size_t i = 0; i < gn.size(); ++i) {
    h[i] = f32_to_f16(gn[i]);
    exact = exact && f16_to_f32(h[i]) == gn[i];
  }
  if (exact) return;
  c->scales_f32 = std::move(gn);
  std::fill(h.begin(), h.end(), uint16_t{0x3C00});  // 1.0: packed then dequantizes to q - zero exactly
}

// weight_g_idx when stored (each in [0, G)), else k / group.
std::vector<int32_t> read_g_idx(const Checkpoint& ckpt, const std::string& prefix, int64_t K, int64_t group, int64_t G) {
  std::vector<int32_t> g(static_cast<size_t>(K));
  const std::string name = prefix + ".weight_g_idx";
  if (!ckpt.has(name)) {
    for (int64_t k = 0; k < K; ++k) g[k] = static_cast<int32_t>(k / group);
    return g;
  }
  const TensorView& t = ckpt.get(name);
  QWENQ_CHECK(t.dtype == DType::I32 || t.dtype == DType::I64, ckpt.file_of(name) << ": tensor '" << name
                                                                                  << "' has dtype " << dtype_name(t.dtype)
                                                                                  << ", expected I32 or I64");
  check_shape(ckpt, name, t, {K});
  for (int64_t k = 0; k < K; ++k) {
    const int64_t v = t.dtype == DType::I32 ? static_cast<const int32_t*>(t.data)[k]
                                            : static_cast<const int64_t*>(t.data)[k];
    QWENQ_CHECK(v >= 0 && v < G, ckpt.file_of(name) << ": " << name << "[" << k << "] = " << v << " is outside [0, "
                                                    << G << ")");
    g[k] = static_cast<int32_t>(v);
  }
  return g;
}

PackedIntLinear empty_v2(int bits, int64_t N, int64_t K, int64_t group) {
  PackedIntLinear p;
  p.layout = IntLayout::GptqV2;
  p.bits = bits;
  p.N = N;
  p.K = K;
  p.group = group;
  return p;
}

}  // namespace

CtIntLinear read_ct_packed_linear(const Checkpoint& ckpt, const std::string& prefix, const CtWeightArgs& a, int64_t N,
                                  int64_t K) {
  QWENQ_CHECK(!a.is_float && (a.bits == 2 || a.bits == 4 || a.bits == 8),
              prefix << ": pack-quantized " << (a.is_float ? "float" : "int") << a.bits
                     << " is not supported (int2, int4 or int8)");
  QWENQ_CHECK(a.strategy != CtStrategy::Block, prefix << ": integer weights with strategy block are not supported");
  const int f = 32 / a.bits;
  QWENQ_CHECK(K % f == 0 && N % f == 0, prefix << ": [" << N << ", " << K << "] does not pack into int32 words of "
                                               << f << " codes along both sides (GPTQ's words, which qwenq computes "
                                                  "with); dequantize it with compressed-tensors instead");
  const int64_t G = scale_columns(a, K);
  const int64_t group = a.strategy == CtStrategy::Group ? a.group_size : K;
  CtIntLinear c;
  c.packed = empty_v2(a.bits, N, K, group);
  PackedIntLinear& p = c.packed;
  check_weight_shape(ckpt, prefix, N, K);

  const std::string wname = prefix + ".weight_packed";
  const TensorView& w = tensor(ckpt, wname, "the packed codes");
  check_dtype(ckpt, wname, w, DType::I32);
  check_shape(ckpt, wname, w, {N, K / f});
  // Word (n, j) holds inputs j·f .. j·f + f - 1 of output n: GPTQ's word (j, n), the same fields.
  p.qweight = transposed(static_cast<const int32_t*>(w.data), N, K / f);
  release_mapped_pages(w.data, w.nbytes());  // the transposed copy is what stays resident

  const int64_t zw = N / f;
  p.qzeros.resize(static_cast<size_t>(G * zw));
  if (a.sym) {
    // Every zero 2^(b-1): q - 0 in the signed codes.
    uint32_t word = 0;
    for (int i = 0; i < f; ++i) word |= uint32_t{1} << (a.bits - 1) << (a.bits * i);
    std::fill(p.qzeros.begin(), p.qzeros.end(), static_cast<int32_t>(word));
  } else {
    const std::string zname = prefix + ".weight_zero_point";
    const TensorView& z = tensor(ckpt, zname, "the packed zero points of an asymmetric scheme");
    check_dtype(ckpt, zname, z, DType::I32);
    check_shape(ckpt, zname, z, {zw, G});
    // Word (j, g) holds the zeros of outputs j·f + i, stored + 2^(b-1) as the codes: GPTQ v2's word (g, j).
    p.qzeros = transposed(static_cast<const int32_t*>(z.data), zw, G);
  }
  p.g_idx = read_g_idx(ckpt, prefix, K, group, G);
  set_scales(read_scales(ckpt, prefix, a, N, G), N, G, &c);
  return c;
}

CtIntLinear read_ct_int8_linear(const Checkpoint& ckpt, const std::string& prefix, const CtWeightArgs& a, int64_t N,
                                int64_t K) {
  QWENQ_CHECK(!a.is_float && a.bits == 8, prefix << ": integer weights stored unpacked must be int8, not "
                                                 << (a.is_float ? "float" : "int") << a.bits);
  QWENQ_CHECK(a.strategy != CtStrategy::Block, prefix << ": integer weights with strategy block are not supported");
  QWENQ_CHECK(K % 4 == 0 && N % 4 == 0, prefix << ": [" << N << ", " << K << "] is not a multiple of 4 on both sides "
                                                  "(the int32 words of GPTQ's 8-bit codes and zero points)");
  const int64_t G = scale_columns(a, K);
  const int64_t group = a.strategy == CtStrategy::Group ? a.group_size : K;
  CtIntLinear c;
  c.packed = empty_v2(8, N, K, group);
  PackedIntLinear& p = c.packed;
  const std::string wname = prefix + ".weight";
  const TensorView& w = tensor(ckpt, wname, "the int8 codes");
  check_dtype(ckpt, wname, w, DType::I8);
  check_shape(ckpt, wname, w, {N, K});
  const int8_t* q = static_cast<const int8_t*>(w.data);
  p.qweight.assign(static_cast<size_t>(K / 4 * N), 0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const uint32_t u = static_cast<uint8_t>(q[n * K + k] + 128);
      uint32_t& word = reinterpret_cast<uint32_t&>(p.qweight[(k / 4) * N + n]);
      word |= u << (8 * (k % 4));
    }
  }
  release_mapped_pages(w.data, w.nbytes());
  std::vector<uint8_t> zero(static_cast<size_t>(G * N), 128);
  if (!a.sym) {
    const std::string zname = prefix + ".weight_zero_point";
    const TensorView& z = tensor(ckpt, zname, "the zero points of an asymmetric scheme");
    check_dtype(ckpt, zname, z, DType::I8);
    const int8_t* zs = static_cast<const int8_t*>(z.data);
    if (a.strategy == CtStrategy::Tensor) {
      QWENQ_CHECK(z.numel() == 1, ckpt.file_of(zname) << ": tensor '" << zname << "' has shape " << shape_str(z.shape)
                                                      << ", expected one zero point (strategy tensor)");
      std::fill(zero.begin(), zero.end(), static_cast<uint8_t>(zs[0] + 128));
    } else {
      check_shape(ckpt, zname, z, {N, G});
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < G; ++g) zero[g * N + n] = static_cast<uint8_t>(zs[n * G + g] + 128);
    }
  }
  p.qzeros.assign(static_cast<size_t>(G * N / 4), 0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n)
      reinterpret_cast<uint32_t&>(p.qzeros[(g * N + n) / 4]) |= uint32_t{zero[g * N + n]} << (8 * (n % 4));
  p.g_idx = read_g_idx(ckpt, prefix, K, group, G);
  set_scales(read_scales(ckpt, prefix, a, N, G), N, G, &c);
  return c;
}

std::vector<float> dequantize_ct_int_linear(const CtIntLinear& c) {
  std::vector<float> W = dequantize_int_linear(c.packed);  // q - zero (scales 1.0), or the final ŵ
  if (c.scales_f32.empty()) return W;
  const PackedIntLinear& p = c.packed;
  const std::vector<int32_t> group = int_linear_group_of(p);
  const std::vector<int32_t>& in = p.perm;
  for (int64_t i = 0; i < p.K; ++i) {
    const int64_t k = in.empty() ? i : in[i];
    const float* s = c.scales_f32.data() + static_cast<int64_t>(group[i]) * p.N;
    for (int64_t n = 0; n < p.N; ++n) W[n * p.K + k] *= s[n];
  }
  return W;
}

Fp8Linear read_ct_fp8_linear(const Checkpoint& ckpt, const std::string& prefix, const CtWeightArgs& a, int64_t N,
                             int64_t K) {
  QWENQ_CHECK(a.is_float && a.bits == 8, prefix << ": float weights must be float8 (e4m3), not " << a.bits << " bits");
  int64_t bn = 1, bk = K;
  switch (a.strategy) {
    case CtStrategy::Tensor: bn = N; break;
    case CtStrategy::Channel: break;
    case CtStrategy::Group: bk = a.group_size; break;
    case CtStrategy::Block: bn = a.block_n, bk = a.block_k; break;
  }
  return read_fp8_linear_scaled(ckpt, prefix, "weight_scale", "the scales of a compressed-tensors float8 weight", bn,
                                bk, N, K);
}

void add_ct_packed_linear(SafetensorsWriter& w, const std::string& prefix, const PackedIntLinear& src, bool sym,
                          bool g_idx) {
  QWENQ_CHECK(src.perm.empty(), prefix << ": this Linear's rows were sorted by group in memory (for the packed "
                                          "products); no checkpoint layout holds that order, so it cannot be written");
  QWENQ_CHECK(src.bits == 2 || src.bits == 4 || src.bits == 8,
              prefix << ": compressed-tensors pack-quantized files are written with 2, 4 or 8-bit codes, not "
                     << src.bits);
  const PackedIntLinear p = int_linear_to_gptq_v2(src);  // GPTQ words along K (v1 keeps its zero - 1 fields)
  const int f = 32 / p.bits;
  const int64_t N = p.N, K = p.K, G = p.num_groups(), words = K / f;
  if (!g_idx) {
    QWENQ_CHECK(int_linear_groups_in_order(p), prefix << ": act-order groups (g_idx out of input order) need "
                                                         "actorder \"group\" and a stored weight_g_idx");
  }
  // Word (j, n) of qweight holds inputs j·f .. j·f + f - 1 of output n: the file's word (n, j), the same fields
  // (unsigned code = signed code + 2^(b-1)).
  w.add_owned(prefix + ".weight_packed", DType::I32, {N, words}, bytes_of(transposed(p.qweight.data(), words, N)));

  const std::vector<uint16_t> zeros = int_linear_zeros(p);  // [G, N], true zero points
  const uint16_t mid = static_cast<uint16_t>(1u << (p.bits - 1));
  if (sym) {
    for (size_t i = 0; i < zeros.size(); ++i) {
      QWENQ_CHECK(zeros[i] == mid, prefix << ": zero point " << zeros[i] << " of group " << i / N << ", output "
                                          << i % N << " is not " << mid << ", so the grid is not symmetric");
    }
  } else {
    // The signed zero z - 2^(b-1) stored + 2^(b-1): the true zero itself, f outputs per word along N.
    QWENQ_CHECK(N % f == 0, prefix << ": N=" << N << " is not a multiple of " << f << " (zero points per word)");
    std::vector<int32_t> zp(static_cast<size_t>(N / f * G), 0);
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t n = 0; n < N; ++n) {
        const uint32_t z = zeros[g * N + n];
        QWENQ_CHECK(z < (1u << p.bits), prefix << ": zero point " << z << " does not fit " << p.bits << " bits");
        reinterpret_cast<uint32_t&>(zp[(n / f) * G + g]) |= z << (p.bits * (n % f));
      }
    }
    w.add_owned(prefix + ".weight_zero_point", DType::I32, {N / f, G}, bytes_of(zp));
  }

  w.add_owned(prefix + ".weight_scale", DType::F16, {N, G}, bytes_of(transposed(p.scales.data(), G, N)));
  w.add_owned(prefix + ".weight_shape", DType::I64, {2}, bytes_of(std::vector<int64_t>{N, K}));
  if (g_idx) w.add_owned(prefix + ".weight_g_idx", DType::I32, {K}, bytes_of(int_linear_group_of(p)));
}

namespace {
// A QuantizationArgs as the library dumps it (every field, in its order).
nlohmann::ordered_json quant_args(const char* type, int bits, bool sym, const char* strategy,
                                  const nlohmann::ordered_json& group_size, const nlohmann::ordered_json& actorder,
                                  bool dynamic, const nlohmann::ordered_json& observer) {
  using nlohmann::ordered_json;
  return {{"actorder", actorder}, {"block_structure", nullptr}, {"dynamic", dynamic}, {"group_size", group_size},
          {"num_bits", bits},     {"observer", observer},        {"observer_kwargs", ordered_json::object()},
          {"strategy", strategy}, {"symmetric", sym},            {"type", type}};
}

nlohmann::ordered_json ct_config(const nlohmann::ordered_json& weights, const nlohmann::ordered_json& inputs,
                                 const char* format, const std::vector<std::string>& ignore) {
  using nlohmann::ordered_json;
  ordered_json group = {{"input_activations", inputs},
                        {"output_activations", nullptr},
                        {"targets", ordered_json::array({"Linear"})},
                        {"weights", weights}};
  return {{"config_groups", {{"group_0", group}}},
          {"format", format},
          {"global_compression_ratio", nullptr},
          {"ignore", ignore},
          {"kv_cache_scheme", nullptr},
          {"quant_method", "compressed-tensors"},
          {"quantization_status", "compressed"}};
}
}  // namespace

nlohmann::ordered_json ct_fp8_dynamic_quantization_config(const std::vector<std::string>& ignore) {
  return ct_config(quant_args("float", 8, true, "channel", nullptr, nullptr, false, "minmax"),
                   quant_args("float", 8, true, "token", nullptr, nullptr, true, nullptr), "float-quantized", ignore);
}

nlohmann::ordered_json ct_quantization_config(int bits, int64_t group_size, bool sym, const char* actorder,
                                              const std::vector<std::string>& ignore) {
  using nlohmann::ordered_json;
  const bool channel = group_size <= 0;
  const ordered_json group = channel ? ordered_json(nullptr) : ordered_json(group_size);
  const ordered_json order = actorder && !channel ? ordered_json(actorder) : ordered_json(nullptr);
  return ct_config(quant_args("int", bits, sym, channel ? "channel" : "group", group, order, false, "minmax"), nullptr,
                   "pack-quantized", ignore);
}

}  // namespace qwenq
