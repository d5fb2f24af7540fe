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
// The mean is one sequential sum (its order fixes the offset's bits); the nested blocks are independent and run
// in parallel, each writing only its own entries.
void compress_absmax(const std::vector<float>& absmax, Nf4Tensor& t) {
  double sum = 0.0;
  for (float a : absmax) sum += a;
  t.nested_offset = static_cast<float>(sum / static_cast<double>(absmax.size()));
  const auto& map = dynamic_map();
  t.nested_code.assign(map.begin(), map.end());
  const int64_t nb = static_cast<int64_t>(absmax.size()), nnb = t.nested_blocksize;
  t.absmax_q.assign(nb, kDynamicZeroIndex);
  t.nested_absmax.assign((nb + nnb - 1) / nnb, 0.0f);
  const float offset = t.nested_offset;
  parallel_for(static_cast<int64_t>(t.nested_absmax.size()), 16, [&](int64_t b0, int64_t b1) {
    std::vector<float> v(nnb);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * nnb, len = std::min(nnb, nb - begin);
      for (int64_t i = 0; i < len; ++i) v[i] = absmax[begin + i] - offset;
      const float a2 = block_absmax(v.data(), len);
      t.nested_absmax[b] = a2;
      if (a2 == 0.0f) continue;  // every value equals the offset: index 127 (0) reproduces it
      const BlockScale scale(a2);
      for (int64_t i = 0; i < len; ++i) t.absmax_q[begin + i] = dynamic_map_index(map.data(), scale(v[i]));
    }
  });
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

void throw_nf4_nonfinite(int64_t i, float value) {
  QWENQ_FAIL("nf4_quantize: weight " << i << " is " << value << "; 4-bit quantization needs finite weights");
}

void nf4_quantize_blocks(const float* w, int64_t n, int64_t blocksize, bool fp4, uint8_t* packed, float* absmax) {
  Nf4Options opts;
  opts.blocksize = blocksize;
  nf4_check_options(opts, "nf4_quantize");
  QWENQ_CHECK(n > 0 && w != nullptr, "nf4_quantize: nothing to quantize (n=" << n << ")");
  const int64_t bad = first_nonfinite(w, n);
  if (bad >= 0) throw_nf4_nonfinite(bad, w[bad]);
  const int64_t B = blocksize, nb = (n + B - 1) / B;
  const uint8_t zero_code = fp4 ? kFp4ZeroCode : kNf4ZeroCode;
  // B is even, so every byte holds two codes of one block (the last one's low nibble is 0 when n is odd).
  parallel_for(nb, 64, [&](int64_t b0, int64_t b1) {
    uint8_t codes[2];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * B, len = std::min(B, n - begin);
      absmax[b] = block_absmax(w + begin, len);
      const BlockScale scale(absmax[b]);
      for (int64_t i = begin; i < begin + len; i += 2) {
        for (int64_t e = 0; e < 2; ++e) {
          const int64_t k = i + e;
          codes[e] = k >= begin + len         ? 0
                     : absmax[b] == 0.0f      ? zero_code
                     : fp4                    ? fp4_code_of(scale(w[k]))
                                              : nf4_code_of(scale(w[k]));
        }
        packed[i / 2] = static_cast<uint8_t>(codes[0] << 4 | codes[1]);
      }
    }
  });
}

Nf4Tensor nf4_from_blocks(const Nf4Options& opts, int64_t n, std::vector<uint8_t> packed, std::vector<float> absmax) {
  nf4_check_options(opts, "nf4_quantize");
  Nf4Tensor t;
  t.fp4 = opts.fp4;
  t.blocksize = opts.blocksize;
  t.n = n;
  t.double_quant = opts.double_quant;
  t.nested_blocksize = opts.nested_blocksize;
  QWENQ_CHECK(static_cast<int64_t>(packed.size()) == nf4_packed_bytes(n) &&
                  static_cast<int64_t>(absmax.size()) == t.num_blocks(),
              "nf4_from_blocks: " << packed.size() << " packed bytes and " << absmax.size() << " absmax for n=" << n
                                  << " at blocksize " << opts.blocksize);
  t.packed = std::move(packed);
  if (t.double_quant)
    compress_absmax(absmax, t);
  else
    t.absmax = std::move(absmax);
  return t;
}

Nf4Tensor nf4_quantize(const float* w, int64_t n, const Nf4Options& opts) {
  nf4_check_options(opts, "nf4_quantize");
  QWENQ_CHECK(n > 0 && w != nullptr, "nf4_quantize: nothing to quantize (n=" << n << ")");
  const int64_t nb = (n + opts.blocksize - 1) / opts.blocksize;
  std::vector<uint8_t> packed(nf4_packed_bytes(n));
  std::vector<float> absmax(nb);
  nf4_quantize_blocks(w, n, opts.blocksize, opts.fp4, packed.data(), absmax.data());
  return nf4_from_blocks(opts, n, std::move(packed), std::move(absmax));
}

std::vector<float> nf4_block_absmax(const Nf4Tensor& t) {
  nf4_check(t, "nf4_block_absmax");
  if (!t.double_quant) return t.absmax;
  const int64_t nb = t.num_blocks();
  std::vector<float> a(nb);
  parallel_for(nb, int64_t{1} << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      a[i] = mul_then_add(t.nested_code[t.absmax_q[i]], t.nested_absmax[i / t.nested_blocksize], t.nested_offset);
  });
  return a;
}

std::vector<float> nf4_dequantize(const Nf4Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.n));
  nf4_dequantize_into(t, out.data());
  return out;
}

void nf4_dequantize_into(const Nf4Tensor& t, float* out) {
  const std::vector<float> absmax = nf4_block_absmax(t);
  const float* code = code_book(t.fp4);
  parallel_for(t.num_blocks(), 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {  // a block's scale once; its codes two to a byte, high nibble first
      const float a = absmax[b];
      const int64_t begin = b * t.blocksize, end = std::min(t.n, begin + t.blocksize);
      for (int64_t i = begin; i < end; ++i) {
        const uint8_t byte = t.packed[i >> 1];
        out[i] = code[(i & 1) == 0 ? byte >> 4 : byte & 0x0F] * a;
      }
    }
  });
}

}  // namespace qwenq
