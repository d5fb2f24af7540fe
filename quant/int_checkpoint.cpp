#include "quant/int_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/dtype.h"
#include "core/error.h"
#include "core/files.h"
#include "core/threads.h"
#include "quant/format/int_pack.h"

namespace qwenq {

namespace {

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

PackedIntLinear int_linear_to_gptq_v2(const PackedIntLinear& p) {
  if (p.layout != IntLayout::AwqGemm) return p;
  PackedIntLinear out;
  out.layout = IntLayout::GptqV2;
  out.bits = p.bits;
  out.K = p.K;
  out.N = p.N;
  out.group = p.group;
  out.scales = p.scales;
  const int64_t G = p.num_groups();
  std::vector<uint8_t> codes(static_cast<size_t>(p.K * p.N));
  awq_unpack(p.qweight.data(), p.K, p.N, codes.data());
  out.qweight.resize(static_cast<size_t>(p.K * p.bits / 32 * p.N));
  gptq_pack_qweight(codes.data(), p.K, p.N, p.bits, out.qweight.data());
  codes.resize(static_cast<size_t>(G * p.N));
  awq_unpack(p.qzeros.data(), G, p.N, codes.data());
  out.qzeros.resize(static_cast<size_t>(G * p.N * p.bits / 32));
  gptq_pack_qzeros(codes.data(), G, p.N, p.bits, GptqFormat::V2, out.qzeros.data());
  out.g_idx.resize(static_cast<size_t>(p.K));
  for (int64_t k = 0; k < p.K; ++k) out.g_idx[static_cast<size_t>(k)] = static_cast<int32_t>(k / p.group);
  return out;
}

PackedIntLinear int_linear_sort_inputs_by_group(const PackedIntLinear& p) {
  if (!is_gptq(p.layout) || !p.perm.empty() || int_linear_groups_in_order(p)) return p;
  const int64_t K = p.K, N = p.N;
  const std::vector<int32_t> group_of = int_linear_group_of(p);
  std::vector<int32_t> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return group_of[a] < group_of[b]; });
  PackedIntLinear out;
  out.layout = p.layout;
  out.bits = p.bits;
  out.K = K;
  out.N = N;
  out.group = p.group;
  out.qzeros = p.qzeros;
  out.scales = p.scales;
  out.g_idx.resize(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) out.g_idx[i] = group_of[order[i]];
  out.qweight.assign(p.qweight.size(), 0);
  if (p.bits == 3) {  // codes cross words: through the format's unpacker
    std::vector<uint8_t> codes(static_cast<size_t>(K * N)), sorted(codes.size());
    gptq_unpack_qweight(p.qweight.data(), K, N, p.bits, codes.data());
    for (int64_t i = 0; i < K; ++i) std::memcpy(&sorted[i * N], &codes[order[i] * N], static_cast<size_t>(N));
    gptq_pack_qweight(sorted.data(), K, N, p.bits, out.qweight.data());
  } else {
    // Word row r of the output holds sorted rows r·per + j at bits·j; each comes from its source row's word.
    const int per = gptq_pack_multiple(p.bits);
    const uint32_t mask = (1u << p.bits) - 1;
    const uint32_t* src = reinterpret_cast<const uint32_t*>(p.qweight.data());
    uint32_t* dst = reinterpret_cast<uint32_t*>(out.qweight.data());
    parallel_for(K / per, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        uint32_t* o = dst + r * N;
        for (int j = 0; j < per; ++j) {
          const int64_t k = order[r * per + j];
          const uint32_t* s = src + (k / per) * N;
          const int from = p.bits * static_cast<int>(k % per), to = p.bits * j;
          for (int64_t n = 0; n < N; ++n) o[n] |= ((s[n] >> from) & mask) << to;
        }
      }
    });
  }
  out.perm = std::move(order);
  return out;
}

std::vector<float> dequantize_int_linear(const PackedIntLinear& p) {
  std::vector<float> W(static_cast<size_t>(p.N * p.K));
  dequantize_int_linear_into(p, W.data());
  return W;
}

bool int_linear_groups_in_order(const PackedIntLinear& p) {
  int32_t group = 0;
  int64_t left = p.group;
  for (const int32_t g : p.g_idx) {
    if (g != group) return false;
    if (--left == 0) {
      ++group;
      left = p.group;
    }
  }
  return true;
}

std::vector<int32_t> int_linear_group_of(const PackedIntLinear& p) {
  const int64_t G = p.num_groups();
  std::vector<int32_t> group_of(static_cast<size_t>(p.K));
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t g = p.g_idx.empty() ? k / p.group : p.g_idx[k];
    QWENQ_CHECK(g >= 0 && g < G, "g_idx[" << k << "] = " << g << " is outside [0, " << G << ")");
    group_of[k] = static_cast<int32_t>(g);
  }
  return group_of;
}

std::vector<uint16_t> int_linear_zeros(const PackedIntLinear& p) {
  const int64_t G = p.num_groups(), N = p.N;
  std::vector<uint16_t> zeros(static_cast<size_t>(G * N));
  if (is_gptq(p.layout)) {
    gptq_unpack_qzeros(p.qzeros.data(), G, N, p.bits,
                       p.layout == IntLayout::GptqV1 ? GptqFormat::V1 : GptqFormat::V2, zeros.data());
  } else {
    std::vector<uint8_t> stored(zeros.size());
    awq_unpack(p.qzeros.data(), G, N, stored.data());
    zeros.assign(stored.begin(), stored.end());
  }
  return zeros;
}

void dequantize_int_linear_into(const PackedIntLinear& p, float* W) {
  const int64_t G = p.num_groups(), K = p.K, N = p.N;
  const std::vector<uint16_t> zeros = int_linear_zeros(p);
  const std::vector<int32_t> group_of = int_linear_group_of(p);
  std::vector<float> scale(static_cast<size_t>(G * N));
  parallel_for(G * N, int64_t{1} << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) scale[i] = f16_to_f32(p.scales[i]);
  });
  // The code of input k, output n read straight from the packed words: GPTQ's 2/4/8-bit words hold 32/bits
  // consecutive inputs of one output (low bits first), AWQ's hold 8 outputs of one input in kAwqOrder. GPTQ 3-bit
  // codes cross words: unpacked first.
  std::vector<uint8_t> codes;
  const bool crossing = is_gptq(p.layout) && p.bits == 3;
  if (crossing) {
    codes.resize(static_cast<size_t>(K * N));
    gptq_unpack_qweight(p.qweight.data(), K, N, p.bits, codes.data());
  }
  const int per = gptq_pack_multiple(p.bits);
  const uint32_t mask = (1u << p.bits) - 1;
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(p.qweight.data());
  // Tiles of kTileN outputs x kTileK inputs: within a tile, input by input, the kTileN outputs' codes come from
  // adjacent words (and scales, zeros) and go to kTileN W rows that stay in cache while the tile's kTileK inputs are
  // written. (Output by output instead, reading each word and scale across the inputs' stride, measured 1.5x slower.)
  constexpr int64_t kTileN = 16, kTileK = 512;
  const bool gptq = is_gptq(p.layout);
  // Rows sorted by group (p.perm): column k of W comes from stored row row_of[k], so the writes stay in order.
  std::vector<int32_t> row_of;
  if (!p.perm.empty()) {
    row_of.resize(static_cast<size_t>(K));
    for (int64_t i = 0; i < K; ++i) row_of[p.perm[i]] = static_cast<int32_t>(i);
  }
  parallel_for((N + kTileN - 1) / kTileN, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kTileN, n1 = std::min(N, n0 + kTileN);
      for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
        const int64_t k1 = std::min(K, k0 + kTileK);
        for (int64_t col = k0; col < k1; ++col) {
          const int64_t k = row_of.empty() ? col : row_of[col];  // the stored row
          const int64_t g = group_of[k];
          const float* s = scale.data() + g * N;
          const uint16_t* z = zeros.data() + g * N;
          float* out = W + col;
          if (crossing) {
            const uint8_t* c = codes.data() + k * N;
            for (int64_t n = n0; n < n1; ++n) out[n * K] = dequantize_value(c[n], s[n], z[n]);
          } else if (gptq) {
            const uint32_t* row = qw + (k / per) * N;
            const int shift = p.bits * static_cast<int>(k % per);
            for (int64_t n = n0; n < n1; ++n)
              out[n * K] = dequantize_value(static_cast<uint8_t>((row[n] >> shift) & mask), s[n], z[n]);
          } else {
            const uint32_t* row = qw + k * (N / 8);
            for (int64_t n = n0; n < n1; ++n) {
              const uint32_t code = (row[n >> 3] >> (4 * kAwqReverseOrder[n & 7])) & 15u;
              out[n * K] = dequantize_value(static_cast<uint8_t>(code), s[n], z[n]);
            }
          }
        }
      }
    }
  });
}

void add_int_linear(SafetensorsWriter& w, const std::string& prefix, const PackedIntLinear& p) {
  QWENQ_CHECK(p.perm.empty(), prefix << ": this Linear's rows were sorted by group in memory (for the "
                                        "packed products); no checkpoint layout holds that order, so it cannot be written");
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
