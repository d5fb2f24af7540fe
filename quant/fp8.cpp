#include "quant/fp8.h"

#include <algorithm>
#include <array>
#include <limits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "core/threads.h"

namespace qwenq {

namespace {

// The 256 float8_e4m3fn values (f8_e4m3_to_f32), looked up per weight.
const std::array<float, 256>& fp8_values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) t[static_cast<size_t>(b)] = f8_e4m3_to_f32(static_cast<uint8_t>(b));
    return t;
  }();
  return table;
}

// A float8_e4m3fn byte b as fp32 bits without a table: |b| << 20 puts the exponent field e and the mantissa m in
// fp32's fields, and adding 120 << 23 rebiases e (7 -> 127), giving 2^(e − 7)·(1 + m/8) exactly. For e = 0 that is
// 2^−7·(1 + m/8); (f − 2^−7)·2 = m·2^−9 is the subnormal value, exactly. |b| = 0x7F is NaN; the sign bit is b's top
// bit. Then one multiply by the block's scale, as the table path does: the same bits (NaN stays NaN).
#if defined(__AVX512F__)
inline __m512 fp8_decode16(const uint8_t* p, __m512 scale) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i mag = _mm512_and_si512(b, _mm512_set1_epi32(0x7F));
  __m512 f = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23)));
  const __mmask16 sub = _mm512_cmplt_epi32_mask(mag, _mm512_set1_epi32(8));
  f = _mm512_mask_mul_ps(f, sub, _mm512_sub_ps(f, _mm512_set1_ps(0x1p-7f)), _mm512_set1_ps(2.0f));
  f = _mm512_mask_mov_ps(f, _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F)),
                         _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24);
  return _mm512_mul_ps(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign)), scale);
}
#elif defined(__AVX2__)
inline __m256 fp8_decode8(const uint8_t* p, __m256 scale) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i mag = _mm256_and_si256(b, _mm256_set1_epi32(0x7F));
  __m256 f = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23)));
  const __m256 sub = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag));
  f = _mm256_blendv_ps(f, _mm256_mul_ps(_mm256_sub_ps(f, _mm256_set1_ps(0x1p-7f)), _mm256_set1_ps(2.0f)), sub);
  const __m256 nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F)));
  f = _mm256_blendv_ps(f, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), nan);
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
  return _mm256_mul_ps(_mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(f), sign)), scale);
}
#endif

}  // namespace

bool has_fp8_linear(const Checkpoint& ckpt, const std::string& prefix) {
  const std::string name = prefix + ".weight";
  return ckpt.has(name) && ckpt.get(name).dtype == DType::F8_E4M3;
}

Fp8Linear read_fp8_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t block_n, int64_t block_k,
                          int64_t N, int64_t K) {
  return read_fp8_linear_scaled(ckpt, prefix, "weight_scale_inv", "the per-block scales of quant_method fp8", block_n,
                                block_k, N, K);
}

Fp8Linear read_fp8_linear_scaled(const Checkpoint& ckpt, const std::string& prefix, const std::string& scale,
                                 const char* what, int64_t block_n, int64_t block_k, int64_t N, int64_t K) {
  QWENQ_CHECK(block_n > 0 && block_k > 0, "FP8 weight_block_size must be positive, got [" << block_n << ", " << block_k << "]");
  const std::string wname = prefix + ".weight", sname = prefix + "." + scale;
  QWENQ_CHECK(ckpt.has(wname), "tensor '" << wname << "' not found in checkpoint " << ckpt.dir());
  const TensorView& w = ckpt.get(wname);
  QWENQ_CHECK(w.dtype == DType::F8_E4M3, ckpt.file_of(wname) << ": tensor '" << wname << "' has dtype "
                                                              << dtype_name(w.dtype) << ", expected F8_E4M3");
  QWENQ_CHECK(w.shape == std::vector<int64_t>({N, K}), ckpt.file_of(wname) << ": tensor '" << wname << "' has shape "
                                                                            << shape_str(w.shape) << " but config.json implies "
                                                                            << shape_str({N, K}));
  Fp8Linear f;
  f.N = N;
  f.K = K;
  f.block_n = block_n;
  f.block_k = block_k;
  f.data = static_cast<const uint8_t*>(w.data);
  const std::vector<int64_t> sshape = {(N + block_n - 1) / block_n, (K + block_k - 1) / block_k};
  QWENQ_CHECK(ckpt.has(sname), ckpt.file_of(wname) << ": FP8 weight '" << wname << "' has no '" << sname << "' ("
                                                   << what << ")");
  const TensorView& s = ckpt.get(sname);
  // One scale for the whole tensor may be stored as [1] or as a scalar too.
  const bool one = sshape == std::vector<int64_t>({1, 1}) && s.numel() == 1 && s.shape.size() <= 2;
  QWENQ_CHECK(s.shape == sshape || one, ckpt.file_of(sname) << ": tensor '" << sname << "' has shape " << shape_str(s.shape)
                                                     << ", expected " << shape_str(sshape) << " (blocks of " << block_n
                                                     << " x " << block_k << " over [" << N << ", " << K << "])");
  f.scale_inv = read_finite_f32(ckpt, sname);
  return f;
}

void fp8_row(const Fp8Linear& w, int64_t n, int64_t k0, int64_t len, float* out) {
  const std::array<float, 256>& value = fp8_values();
  const uint8_t* q = w.data + n * w.K;
  const float* scale = w.scale_inv.data() + (n / w.block_n) * w.scale_cols();
  for (int64_t k = k0; k < k0 + len;) {
    const int64_t end = std::min(k0 + len, (k / w.block_k + 1) * w.block_k);
    const float s = scale[k / w.block_k];
#if defined(__AVX512F__)
    const __m512 vs = _mm512_set1_ps(s);
    for (; k + 16 <= end; k += 16) _mm512_storeu_ps(out + (k - k0), fp8_decode16(q + k, vs));
#elif defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(s);
    for (; k + 8 <= end; k += 8) _mm256_storeu_ps(out + (k - k0), fp8_decode8(q + k, vs));
#endif
    for (; k < end; ++k) out[k - k0] = value[q[k]] * s;
  }
}

void dequantize_fp8_linear_into(const Fp8Linear& w, float* W) {
  parallel_for(w.N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) fp8_row(w, n, 0, w.K, W + n * w.K);
  });
}

}  // namespace qwenq
