#include "quant/nf4.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "quant/format/nf4_pack.h"

namespace qwenq {

namespace {

bool power_of_two_in(int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi && (v & (v - 1)) == 0; }

// a·b + c rounded twice, as torch computes it in two kernels. The volatile keeps -march=native from fusing
// the two operations into one fma, which would change the last bit.
float mul_then_add(float a, float b, float c) {
  volatile float p = a * b;
  return p + c;
}

// Scale of one block as bnb applies it: the float32 reciprocal, or a division when that overflows.
struct BlockScale {
  float absmax, inv;
  bool divide;
  explicit BlockScale(float a) : absmax(a), inv(1.0f / a), divide(!std::isfinite(1.0f / a)) {}
  float operator()(float w) const {
    const float x = divide ? w / absmax : w * inv;
    return std::min(1.0f, std::max(-1.0f, x));
  }
};

float block_absmax(const float* w, int64_t len) {
  float m = 0.0f;
  for (int64_t i = 0; i < len; ++i) m = std::max(m, std::fabs(w[i]));
  return m;
}

// Double quantization of the first-level scales into t (absmax_q, nested_absmax, nested_offset, nested_code).
void compress_absmax(const std::vector<float>& absmax, Nf4Tensor& t) {
  double sum = 0.0;
  for (float a : absmax) sum += a;
  t.nested_offset = static_cast<float>(sum / static_cast<double>(absmax.size()));
  const auto& map = dynamic_map();
  t.nested_code.assign(map.begin(), map.end());
  const int64_t nb = static_cast<int64_t>(absmax.size()), nnb = t.nested_blocksize;
  t.absmax_q.assign(nb, kDynamicZeroIndex);
  t.nested_absmax.assign((nb + nnb - 1) / nnb, 0.0f);
  std::vector<float> v(nb);
  for (int64_t i = 0; i < nb; ++i) v[i] = absmax[i] - t.nested_offset;
  for (int64_t b = 0; b * nnb < nb; ++b) {
    const int64_t begin = b * nnb, len = std::min(nnb, nb - begin);
    const float a2 = block_absmax(v.data() + begin, len);
    t.nested_absmax[b] = a2;
    if (a2 == 0.0f) continue;  // every value equals the offset: index 127 (0) reproduces it
    const BlockScale scale(a2);
    for (int64_t i = begin; i < begin + len; ++i) t.absmax_q[i] = dynamic_map_index(map.data(), scale(v[i]));
  }
}

}  // namespace

void nf4_check_options(const Nf4Options& opts, const std::string& what) {
  QWENQ_CHECK(power_of_two_in(opts.blocksize, 32, 4096),
              what << ": 4-bit blocksize " << opts.blocksize << " is not a power of two in [32, 4096]");
  QWENQ_CHECK(!opts.double_quant || power_of_two_in(opts.nested_blocksize, 64, 4096),
              what << ": nested blocksize " << opts.nested_blocksize << " is not a power of two in [64, 4096]");
}

void nf4_check(const Nf4Tensor& t, const std::string& what) {
  Nf4Options o;
  o.blocksize = t.blocksize;
  o.double_quant = t.double_quant;
  o.nested_blocksize = t.nested_blocksize;
  nf4_check_options(o, what);
  QWENQ_CHECK(t.n > 0, what << ": 4-bit tensor has n=" << t.n << " weights");
  QWENQ_CHECK(static_cast<int64_t>(t.packed.size()) == nf4_packed_bytes(t.n),
              what << ": packed codes hold " << t.packed.size() << " bytes, n=" << t.n << " needs "
                   << nf4_packed_bytes(t.n));
  const int64_t nb = t.num_blocks();
  if (!t.double_quant) {
    QWENQ_CHECK(static_cast<int64_t>(t.absmax.size()) == nb,
                what << ": absmax has " << t.absmax.size() << " entries, n=" << t.n << " / blocksize=" << t.blocksize
                     << " needs " << nb);
    return;
  }
  QWENQ_CHECK(static_cast<int64_t>(t.absmax_q.size()) == nb,
              what << ": quantized absmax has " << t.absmax_q.size() << " entries, n=" << t.n
                   << " / blocksize=" << t.blocksize << " needs " << nb);
  QWENQ_CHECK(static_cast<int64_t>(t.nested_absmax.size()) == t.num_nested_blocks(),
              what << ": nested_absmax has " << t.nested_absmax.size() << " entries, " << nb << " blocks / "
                   << t.nested_blocksize << " need " << t.num_nested_blocks());
  QWENQ_CHECK(t.nested_code.size() == kDynamicMapSize,
              what << ": nested code book has " << t.nested_code.size() << " entries, not 256");
}

Nf4Tensor nf4_quantize(const float* w, int64_t n, const Nf4Options& opts) {
  nf4_check_options(opts, "nf4_quantize");
  QWENQ_CHECK(n > 0 && w != nullptr, "nf4_quantize: nothing to quantize (n=" << n << ")");
  Nf4Tensor t;
  t.fp4 = opts.fp4;
  t.blocksize = opts.blocksize;
  t.n = n;
  t.double_quant = opts.double_quant;
  t.nested_blocksize = opts.nested_blocksize;
  const int64_t B = t.blocksize, nb = t.num_blocks();
  std::vector<float> absmax(nb);
  std::vector<uint8_t> codes(n);
  const uint8_t zero_code = t.fp4 ? kFp4ZeroCode : kNf4ZeroCode;
  for (int64_t i = 0; i < n; ++i)
    QWENQ_CHECK(std::isfinite(w[i]), "nf4_quantize: weight " << i << " is " << w[i]
                                                             << "; 4-bit quantization needs finite weights");
  parallel_for(nb, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * B, len = std::min(B, n - begin);
      absmax[b] = block_absmax(w + begin, len);
      if (absmax[b] == 0.0f) {
        std::fill(codes.begin() + begin, codes.begin() + begin + len, zero_code);
        continue;
      }
      const BlockScale scale(absmax[b]);
      for (int64_t i = begin; i < begin + len; ++i)
        codes[i] = t.fp4 ? fp4_code_of(scale(w[i])) : nf4_code_of(scale(w[i]));
    }
  });
  t.packed = nf4_pack(codes.data(), n);
  if (t.double_quant)
    compress_absmax(absmax, t);
  else
    t.absmax = std::move(absmax);
  return t;
}

std::vector<float> nf4_block_absmax(const Nf4Tensor& t) {
  nf4_check(t, "nf4_block_absmax");
  if (!t.double_quant) return t.absmax;
  const int64_t nb = t.num_blocks();
  std::vector<float> a(nb);
  for (int64_t i = 0; i < nb; ++i)
    a[i] = mul_then_add(t.nested_code[t.absmax_q[i]], t.nested_absmax[i / t.nested_blocksize], t.nested_offset);
  return a;
}

std::vector<float> nf4_dequantize(const Nf4Tensor& t) {
  const std::vector<float> absmax = nf4_block_absmax(t);
  const float* code = code_book(t.fp4);
  std::vector<float> out(t.n);
  parallel_for(t.num_blocks(), 64, [&](int64_t b0, int64_t b1) {
    const int64_t end = std::min(t.n, b1 * t.blocksize);
    for (int64_t i = b0 * t.blocksize; i < end; ++i) {
      const uint8_t byte = t.packed[i / 2];
      const uint8_t c = i % 2 == 0 ? byte >> 4 : byte & 0x0F;
      out[i] = code[c] * absmax[i / t.blocksize];
    }
  });
  return out;
}

}  // namespace qwenq
