// RoPE frequency tables (formulas in rope_table.h), computed op for op as transformers 4.51.3 does in torch:
// every tensor op is one fp32 rounding, and a Python float meeting an fp32 tensor is first rounded to fp32
// (torch's scalar rule), except inside the scalar-only expressions (yarn's correction range, llama3's wavelength
// bounds, get_mscale), which Python evaluates in double:
//   θ^(2i/D)        powf((float)θ, (float)(2i) / (float)D)
//   1 / t           the fp32 reciprocal (torch: `c / t` is reciprocal(t)·(float)c)
//   t / c, t·c      one fp32 division / product by (float)c
//   a·b + c·d       two rounded products, then a rounded sum: this file is compiled with -ffp-contract=off
//                   (CMakeLists.txt) so that no product is fused into an FMA, which torch does not do either
//   t > c           compared against (float)c
#include "kernels/rope_table.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qwenq {

namespace {

constexpr double kPi = 3.141592653589793;

bool finite_positive(double v) { return std::isfinite(v) && v > 0; }

// transformers' default table: 1 / θ^(2i/D) in fp32.
std::vector<float> default_inv_freq(double theta, int64_t D) {
  const float base = static_cast<float>(theta);
  std::vector<float> inv(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(D);
    inv[i] = 1.0f / std::pow(base, exponent);
  }
  return inv;
}

// YaRN's inverse dimension formula: the index d at which a frequency turns `rotations` times over `context`.
double yarn_correction_dim(double rotations, int64_t D, double theta, double context) {
  return (static_cast<double>(D) * std::log(context / (rotations * 2 * kPi))) / (2 * std::log(theta));
}

std::vector<float> yarn_inv_freq(const RopeSpec& s, int64_t D, const char* name) {
  const double lo_d = std::floor(yarn_correction_dim(s.beta_fast, D, s.theta, s.original_max_position_embeddings));
  const double hi_d = std::ceil(yarn_correction_dim(s.beta_slow, D, s.theta, s.original_max_position_embeddings));
  QWENQ_CHECK(std::isfinite(lo_d) && std::isfinite(hi_d),
              name << ": yarn correction range [" << lo_d << ", " << hi_d << "] is not finite (beta_fast="
                   << s.beta_fast << " beta_slow=" << s.beta_slow << " theta=" << s.theta << ")");
  const double low = std::max(lo_d, 0.0), high = std::min(hi_d, static_cast<double>(D - 1));
  // linear_ramp_factor: a zero-width ramp is widened by 0.001 (in double) before the fp32 division.
  const float span = static_cast<float>(low == high ? (high + 0.001) - low : high - low);
  const float base = static_cast<float>(s.theta);
  const float factor = static_cast<float>(s.factor);
  std::vector<float> inv(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) {
    const float pos_freq = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(D));
    const float extrapolation = 1.0f / pos_freq;
    const float interpolation = 1.0f / (factor * pos_freq);
    const float ramp = std::min(std::max((static_cast<float>(i) - static_cast<float>(low)) / span, 0.0f), 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    inv[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return inv;
}

std::vector<float> llama3_inv_freq(const RopeSpec& s, int64_t D) {
  std::vector<float> inv = default_inv_freq(s.theta, D);
  const double context = static_cast<double>(s.original_max_position_embeddings);
  const float low_wavelen = static_cast<float>(context / s.low_freq_factor);
  const float high_wavelen = static_cast<float>(context / s.high_freq_factor);
  const float two_pi = static_cast<float>(2 * kPi), factor = static_cast<float>(s.factor);
  const float context_f = static_cast<float>(context), low_f = static_cast<float>(s.low_freq_factor);
  const float smooth_span = static_cast<float>(s.high_freq_factor - s.low_freq_factor);
  for (float& f : inv) {
    const float wavelen = (1.0f / f) * two_pi;
    const float scaled = wavelen > low_wavelen ? f / factor : f;
    const float smooth = ((1.0f / wavelen) * context_f - low_f) / smooth_span;
    const float smoothed = ((1.0f - smooth) * scaled) / factor + smooth * scaled;
    const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    f = medium ? smoothed : scaled;
  }
  return inv;
}

}  // namespace

const char* rope_type_name(RopeType t) {
  switch (t) {
    case RopeType::Default: return "default";
    case RopeType::Linear: return "linear";
    case RopeType::Yarn: return "yarn";
    case RopeType::Llama3: return "llama3";
  }
  return "?";
}

RopeSpec rope_spec_default(double theta) {
  RopeSpec s;
  s.theta = theta;
  return s;
}

double yarn_default_attention_factor(double factor, double mscale, double mscale_all_dim) {
  const auto m = [&](double k) { return factor <= 1 ? 1.0 : 0.1 * k * std::log(factor) + 1.0; };
  if (mscale != 0 && mscale_all_dim != 0) return m(mscale) / m(mscale_all_dim);
  return m(1.0);
}

RopeTable rope_table(const RopeSpec& s, int64_t D, const char* name) {
  QWENQ_CHECK(D > 0 && D % 2 == 0, name << ": head dim D=" << D << " must be even");
  QWENQ_CHECK(s.theta > 0, name << ": rope theta must be > 0, got " << s.theta);
  QWENQ_CHECK(std::isfinite(s.theta), name << ": rope theta must be finite, got " << s.theta);
  RopeTable t;
  if (s.type != RopeType::Default) {
    QWENQ_CHECK(finite_positive(s.factor),
                name << ": rope_scaling " << rope_type_name(s.type) << " factor must be > 0, got " << s.factor);
  }
  if (s.type == RopeType::Yarn || s.type == RopeType::Llama3) {
    QWENQ_CHECK(s.original_max_position_embeddings > 0,
                name << ": rope_scaling " << rope_type_name(s.type) << " needs original_max_position_embeddings > 0, got "
                     << s.original_max_position_embeddings);
  }
  switch (s.type) {
    case RopeType::Default:
      t.inv_freq = default_inv_freq(s.theta, D);
      break;
    case RopeType::Linear: {
      t.inv_freq = default_inv_freq(s.theta, D);
      const float factor = static_cast<float>(s.factor);
      for (float& f : t.inv_freq) f = f / factor;
      break;
    }
    case RopeType::Yarn:
      QWENQ_CHECK(finite_positive(s.beta_fast) && finite_positive(s.beta_slow),
                  name << ": rope_scaling yarn beta_fast and beta_slow must be > 0, got " << s.beta_fast << " and "
                       << s.beta_slow);
      QWENQ_CHECK(finite_positive(s.attention_factor),
                  name << ": rope_scaling yarn attention_factor must be > 0, got " << s.attention_factor);
      t.inv_freq = yarn_inv_freq(s, D, name);
      t.attention_scaling = static_cast<float>(s.attention_factor);
      break;
    case RopeType::Llama3:
      QWENQ_CHECK(finite_positive(s.low_freq_factor) && s.high_freq_factor > s.low_freq_factor &&
                      std::isfinite(s.high_freq_factor),
                  name << ": rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor, got "
                       << s.low_freq_factor << " and " << s.high_freq_factor);
      t.inv_freq = llama3_inv_freq(s, D);
      break;
  }
  if (s.type != RopeType::Yarn) {
    QWENQ_CHECK(s.attention_factor == 1.0, name << ": rope_scaling " << rope_type_name(s.type)
                                                << " has no attention_factor, got " << s.attention_factor);
  }
  return t;
}

}  // namespace qwenq
