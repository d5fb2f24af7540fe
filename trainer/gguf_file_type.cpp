// Tensor types of the GGUF file types (rules at the top of trainer/gguf_file_type.h).
#include "trainer/gguf_file_type.h"

#include <cctype>

#include "core/error.h"

namespace qwenq {

namespace {

constexpr GgufFileType kTypes[] = {
    {"f32", 0, GgmlType::F32, false},     {"f16", 1, GgmlType::F16, false},
    {"bf16", 32, GgmlType::BF16, false},  {"q8_0", 7, GgmlType::Q8_0, false},
    {"q4_0", 2, GgmlType::Q4_0, true},    {"q4_1", 3, GgmlType::Q4_1, true},
    {"q5_0", 8, GgmlType::Q5_0, true},    {"q5_1", 9, GgmlType::Q5_1, true},
    {"q2_k", 10, GgmlType::Q2_K, true},   {"q3_k_s", 11, GgmlType::Q3_K, true},
    {"q3_k_m", 12, GgmlType::Q3_K, true}, {"q3_k_l", 13, GgmlType::Q3_K, true},
    {"q4_k_s", 14, GgmlType::Q4_K, true}, {"q4_k_m", 15, GgmlType::Q4_K, true},
    {"q5_k_s", 16, GgmlType::Q5_K, true}, {"q5_k_m", 17, GgmlType::Q5_K, true},
    {"q6_k", 18, GgmlType::Q6_K, true},   {"iq4_nl", 25, GgmlType::IQ4_NL, true},
    {"iq4_xs", 30, GgmlType::IQ4_XS, true},
};

int64_t block_of(GgmlType t) { return ggml_type_info(static_cast<uint32_t>(t))->block; }

bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

}  // namespace

std::string gguf_file_type_names() {
  std::string s;
  for (const GgufFileType& t : kTypes) s += std::string(s.empty() ? "" : ", ") + t.name;
  return s;
}

std::vector<std::string> gguf_file_type_list() {
  std::vector<std::string> v;
  for (const GgufFileType& t : kTypes) v.push_back(t.name);
  return v;
}

const GgufFileType& gguf_file_type(const std::string& name) {
  std::string low;
  for (char c : name) low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const GgufFileType& t : kTypes)
    if (low == t.name) return t;
  QWENQ_FAIL("unknown GGUF type '" << name << "'; choose one of " << gguf_file_type_names());
}

GgmlType gguf_tensor_type(const GgufFileType& ft, GgufRole role, int64_t layer, int64_t n_layers, int64_t ne0,
                          bool tied, bool* fell_back, int64_t n_gqa, bool imatrix, int64_t n_expert) {
  *fell_back = false;
  GgmlType t = ft.base;
  if (!ft.llama_quantize) {
    if (ne0 % block_of(t) != 0) {
      *fell_back = true;
      return GgmlType::F16;
    }
    return t;
  }
  const std::string n = ft.name;
  if (role == GgufRole::Output || (role == GgufRole::TokenEmbd && tied)) {
    t = GgmlType::Q6_K;  // Q8_0 when its rows do not split into 256-blocks (below)
  } else if (role == GgufRole::AttnV) {
    if (n == "q2_k") t = n_gqa >= 4 ? GgmlType::Q4_K : GgmlType::Q3_K;
    else if (n == "q3_k_m") t = layer < 2 ? GgmlType::Q5_K : GgmlType::Q4_K;
    else if (n == "q3_k_l") t = GgmlType::Q5_K;
    else if (n == "q4_k_m" || n == "q5_k_m") t = use_more_bits(layer, n_layers) ? GgmlType::Q6_K : t;
    else if (n == "q4_k_s") t = layer < 4 ? GgmlType::Q5_K : t;
    else if ((n == "iq4_nl" || n == "iq4_xs") && n_gqa >= 4) t = GgmlType::Q5_K;
    if (n_layers == 80 && (t == GgmlType::Q3_K || t == GgmlType::Q4_K)) t = GgmlType::Q5_K;
    if (n_expert == 8) t = GgmlType::Q8_0;
  } else if (role == GgufRole::AttnK) {
    if (n_expert == 8) t = GgmlType::Q8_0;
  } else if (role == GgufRole::AttnOutput && n_expert == 8) {
    for (const char* m : {"q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m", "iq4_nl", "iq4_xs"})
      if (n == m) t = GgmlType::Q5_K;
  } else if (role == GgufRole::FfnDown) {
    if (n == "q2_k") t = GgmlType::Q3_K;
    else if (n == "q3_k_m") t = layer < n_layers / 16 ? GgmlType::Q5_K : GgmlType::Q4_K;
    else if (n == "q3_k_l") t = GgmlType::Q5_K;
    else if (n == "q4_k_m" || n == "q5_k_m") t = use_more_bits(layer, n_layers) ? GgmlType::Q6_K : t;
    else if (n == "q4_k_s") t = layer < n_layers / 8 ? GgmlType::Q5_K : t;
    else if ((n == "iq4_nl" || n == "iq4_xs") && !imatrix && layer < n_layers / 8) t = GgmlType::Q5_K;
    else if ((n == "q4_0" || n == "q5_0") && imatrix && layer < n_layers / 8)
      t = n == "q4_0" ? GgmlType::Q4_1 : GgmlType::Q5_1;
  } else if (role == GgufRole::AttnOutput) {
    if (n == "q2_k") t = GgmlType::Q3_K;
    else if (n == "q3_k_m") t = GgmlType::Q4_K;
    else if (n == "q3_k_l") t = GgmlType::Q5_K;
  }
  if (ne0 % block_of(t) != 0) {
    *fell_back = true;
    t = t == GgmlType::Q2_K || t == GgmlType::Q3_K ? GgmlType::Q4_0
        : t == GgmlType::IQ4_XS                    ? GgmlType::IQ4_NL
        : t == GgmlType::Q4_K                      ? GgmlType::Q5_0
        : t == GgmlType::Q5_K                      ? GgmlType::Q5_1
        : t == GgmlType::Q6_K                      ? GgmlType::Q8_0
                                                   : t;
    if (ne0 % block_of(t) != 0) t = GgmlType::F16;
  }
  return t;
}

}  // namespace qwenq
