#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "core/threads.h"
#include "quant/awq_search.h"
#include "quant/grid.h"

namespace qwenq {

std::vector<float> awq_fake_quantize(const float* W, int64_t N, int64_t K, int bits, int64_t group_size) {
  const GroupGrid grid = find_grid(W, N, K, bits, group_size, /*sym=*/false, GridRule::Awq);
  return dequantize_codes(quantize_rtn(W, grid).data(), grid);
}

std::vector<float> awq_activation_mean(const float* x, int64_t T, int64_t K) {
  QWENQ_CHECK(T > 0, "awq: no calibration tokens");
  std::vector<double> sum(K, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) sum[k] += std::fabs(x[t * K + k]);
  }
  std::vector<float> mean(K);
  for (int64_t k = 0; k < K; ++k) mean[k] = static_cast<float>(sum[k] / T);
  return mean;
}

std::vector<float> awq_weight_mean(const std::vector<const float*>& weights, const std::vector<int64_t>& rows, int64_t K,
                                   int64_t group_size) {
  const int64_t G = group_size > 0 ? group_size : K;
  std::vector<double> sum(K, 0.0);
  int64_t total_rows = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    for (int64_t n = 0; n < rows[i]; ++n) {
      const float* w = weights[i] + n * K;
      for (int64_t k0 = 0; k0 < K; k0 += G) {
        const int64_t k1 = std::min(K, k0 + G);
        float mx = 0.f;
        for (int64_t k = k0; k < k1; ++k) mx = std::max(mx, std::fabs(w[k]));
        for (int64_t k = k0; k < k1; ++k) sum[k] += std::fabs(w[k]) / (mx + 1e-6f);
      }
    }
    total_rows += rows[i];
  }
  std::vector<float> mean(K);
  for (int64_t k = 0; k < K; ++k) mean[k] = static_cast<float>(sum[k] / total_rows);
  return mean;
}

std::vector<float> awq_candidate_scales(const std::vector<float>& x_mean, const std::vector<float>& w_mean, double alpha,
                                        bool duo_scaling) {
  const size_t K = x_mean.size();
  QWENQ_CHECK(w_mean.size() == K, "awq: activation and weight statistics differ in length");
  std::vector<float> s(K);
  const float a = static_cast<float>(alpha);
  for (size_t k = 0; k < K; ++k) {
    float v = std::pow(x_mean[k], a);  // pow(0, 0) = 1, as torch
    if (duo_scaling) v = v / (std::pow(w_mean[k], 1.f - a) + 1e-4f);
    s[k] = std::max(v, 1e-4f);
  }
  const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
  const float norm = std::sqrt(*hi * *lo);
  for (auto& v : s) v /= norm;
  return s;
}

AwqScaleResult awq_search_scale(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                                const AwqSearchOptions& opt, const std::function<double(const std::vector<float>&)>& loss) {
  QWENQ_CHECK(opt.n_grid >= 1, "awq: the scale grid needs at least one point, got " << opt.n_grid);
  AwqScaleResult r;
  r.best_loss = std::numeric_limits<double>::infinity();
  for (int i = 0; i < opt.n_grid; ++i) {
    const double alpha = static_cast<double>(i) / opt.n_grid;
    std::vector<float> s = awq_candidate_scales(x_mean, w_mean, alpha, opt.duo_scaling);
    const double l = loss(s);
    QWENQ_CHECK(std::isfinite(l), "awq: the module's output is not finite for scale exponent " << alpha);
    r.losses.push_back(l);
    if (l < r.best_loss) {
      r.best_loss = l;
      r.best_alpha = alpha;
      r.scales = std::move(s);
    }
  }
  return r;
}

int64_t awq_clip_token_step(int64_t T, const AwqSearchOptions& opt) {
  QWENQ_CHECK(opt.n_sample_tokens >= 1, "awq: n_sample_tokens must be >= 1, got " << opt.n_sample_tokens);
  return std::max<int64_t>(1, T / opt.n_sample_tokens);
}

std::vector<float> awq_search_clip(const float* W, int64_t N, int64_t K, const float* x, int64_t T,
                                   const AwqSearchOptions& opt) {
  const int64_t G = opt.group_size > 0 ? opt.group_size : K;
  const int64_t step = awq_clip_token_step(T, opt), S = awq_clip_rows(T, step);
  std::vector<float> best(static_cast<size_t>(N * ((K + G - 1) / G)));
  if (step == 1) {
    awq_clip_search_ref(W, N, K, x, S, opt, best.data());
  } else {
    std::vector<float> rows(static_cast<size_t>(S * K));
    awq_clip_inputs_ref(x, T, K, step, nullptr, K, rows.data());
    awq_clip_search_ref(W, N, K, rows.data(), S, opt, best.data());
  }
  return best;
}

void awq_apply_clip(float* W, int64_t N, int64_t K, int64_t group_size, const std::vector<float>& max_val) {
  const int64_t G = group_size > 0 ? group_size : K;
  const int64_t n_groups = (K + G - 1) / G;
  QWENQ_CHECK(static_cast<int64_t>(max_val.size()) == N * n_groups,
              "awq: clip bounds hold " << max_val.size() << " values, the weight needs " << N << " x " << n_groups);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const float m = max_val[n * n_groups + k / G];
      W[n * K + k] = std::min(std::max(W[n * K + k], -m), m);
    }
  }
}

void save_awq_search(const std::string& path, const AwqSearchResult& r) {
  SafetensorsWriter w;
  w.set_metadata("format", "qwenq-awq-search");
  w.set_metadata("version", "1");
  w.set_metadata("bits", std::to_string(r.bits));
  w.set_metadata("group_size", std::to_string(r.group_size));
  w.set_metadata("intermediate_size", std::to_string(r.intermediate_size));
  auto bytes_of = [](const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * sizeof(float));
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  for (const auto& [name, s] : r.scales) w.add_owned(name + ".awq_scales", DType::F32, {(int64_t)s.size()}, bytes_of(s));
  for (const auto& [name, c] : r.clips) w.add_owned(name + ".awq_clip", DType::F32, c.second, bytes_of(c.first));
  w.write(path);  // atomic: temporary name, then rename
}

AwqSearchResult load_awq_search(const std::string& path) {
  SafetensorsFile f(path);
  const auto& meta = f.metadata();
  auto field = [&](const char* key) -> std::string {
    auto it = meta.find(key);
    QWENQ_CHECK(it != meta.end(), path << ": not an AWQ search file (metadata has no \"" << key << "\")");
    return it->second;
  };
  QWENQ_CHECK(field("format") == "qwenq-awq-search",
              path << ": not an AWQ search file (metadata format is \"" << field("format") << "\")");
  QWENQ_CHECK(field("version") == "1", path << ": AWQ search file version " << field("version") << " is not supported");
  AwqSearchResult r;
  try {
    r.bits = std::stoi(field("bits"));
    r.group_size = std::stoll(field("group_size"));
    r.intermediate_size = std::stoll(field("intermediate_size"));
  } catch (const std::logic_error&) {
    QWENQ_FAIL(path << ": malformed bits/group_size/intermediate_size in the metadata");
  }
  for (const auto& name : f.names()) {
    const TensorView& t = f.get(name);
    QWENQ_CHECK(t.dtype == DType::F32, path << ": " << name << " must be F32");
    const float* p = static_cast<const float*>(t.data);
    std::vector<float> v(p, p + t.numel());
    auto ends_in = [&](const char* suffix) { return has_proper_suffix(name, suffix); };
    if (ends_in(".awq_scales")) {
      QWENQ_CHECK(t.shape.size() == 1, path << ": " << name << " must be one-dimensional");
      for (float x : v) QWENQ_CHECK(std::isfinite(x) && x > 0.f, path << ": " << name << " holds a scale that is not positive");
      r.scales[name.substr(0, name.size() - 11)] = std::move(v);
    } else if (ends_in(".awq_clip")) {
      QWENQ_CHECK(t.shape.size() == 2, path << ": " << name << " must be [N, groups]");
      for (float x : v) QWENQ_CHECK(std::isfinite(x) && x >= 0.f, path << ": " << name << " holds a negative clip bound");
      r.clips[name.substr(0, name.size() - 9)] = {std::move(v), t.shape};
    } else {
      QWENQ_FAIL(path << ": unexpected tensor " << name << " in an AWQ search file");
    }
  }
  return r;
}

}  // namespace qwenq
