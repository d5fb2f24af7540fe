// The bitsandbytes 4-bit layout (REFERENCE A3): the NF4 and FP4 code books, which code a scaled value
// gets, the nibble packing, and the 8-bit dynamic map that double quantization indexes.
//
// Code books (bnb functional.get_4bit_type), index -> value, float32:
//   NF4: the published constants below (index 7 is exactly 0; 7 negative and 8 positive levels), sorted.
//   FP4: float32(raw) / 12 in float32, raw = [0, 0.0625, 8, 12, 4, 6, 2, 3] for indices 0..7 and the negatives
//        for 8..15 (index 8 is +0: bnb writes the integer -0). Bit 3 is the sign, so the table is not sorted.
// Nearest code (what bnb's CUDA kernel kQuantizeBlockwise does, which made virtually every bnb checkpoint):
//   NF4: code = #{ j : x > m_j } over the 15 midpoints m_j = (c_j + c_{j+1}) / 2 computed in float32. This is
//        bucketize(x, m, right=False); a value exactly on a midpoint goes to the LOWER code. The literals of
//        bnb's dQuantizeNF4 tree round to exactly these float32 midpoints (checked in tests/test_quant_nf4.cpp).
//   FP4: sign = 8 if x < 0 (so -0.0 -> code 0); the magnitude |x| is bucketed against bnb's dQuantizeFP4
//        literals, again ties to the lower magnitude. Those literals are the magnitude midpoints rounded to
//        6-8 digits: as float32 they sit -6 (0.583333), -1 (three of them), 0 or +14 (0.00260417) ulps from
//        the float32 midpoints, so FP4 is "nearest" only up to those slivers, exactly as in bnb.
// (bnb's torch fallback instead takes argmin |x - c|; that differs only for x within an ulp of a midpoint.)
// Packing: byte i = (code[2i] << 4) | code[2i+1]; an odd count pads the last low nibble with 0.
//
// Dynamic map (bnb functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)): for
// e = 0..6, n = 2^e + 1 boundaries b = torch.linspace(0.1, 1, n) in float32, means (b_k + b_{k+1}) / 2 in
// float32, times float32(10^(e-6)) in float32, each with both signs; plus 0 and 1; sorted. 127 negative
// values, 0 at index 127, 128 positive ones ending with 1.0 at index 255, and map[128 + j] = -map[126 - j].
// Every step is float32. torch.linspace(start, end, n) computes step = (end - start) / (n - 1) and then
// fma(step, k, start) for k < n/2 and fma(-step, n - 1 - k, end) otherwise (one rounding each; the CPU kernel
// is built with FMA). We call std::fma to get the same bits everywhere; a plain start + step·k differs from
// torch in a few boundaries for n >= 9.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace qwenq {

constexpr float kNf4Code[16] = {-1.0f,
                                -0.6961928009986877f,
                                -0.5250730514526367f,
                                -0.39491748809814453f,
                                -0.28444138169288635f,
                                -0.18477343022823334f,
                                -0.09105003625154495f,
                                0.0f,
                                0.07958029955625534f,
                                0.16093020141124725f,
                                0.24611230194568634f,
                                0.33791524171829224f,
                                0.44070982933044434f,
                                0.5626170039176941f,
                                0.7229568362236023f,
                                1.0f};
constexpr float kFp4Code[16] = {0.0f,  0.0052083334885537624f,  0.6666666865348816f,  1.0f,
                                0.3333333432674408f,  0.5f,  0.1666666716337204f,  0.25f,
                                0.0f, -0.0052083334885537624f, -0.6666666865348816f, -1.0f,
                                -0.3333333432674408f, -0.5f, -0.1666666716337204f, -0.25f};

// The float32 midpoints of the NF4 code book.
constexpr float kNf4Midpoints[15] = {
    (kNf4Code[0] + kNf4Code[1]) / 2,   (kNf4Code[1] + kNf4Code[2]) / 2,   (kNf4Code[2] + kNf4Code[3]) / 2,
    (kNf4Code[3] + kNf4Code[4]) / 2,   (kNf4Code[4] + kNf4Code[5]) / 2,   (kNf4Code[5] + kNf4Code[6]) / 2,
    (kNf4Code[6] + kNf4Code[7]) / 2,   (kNf4Code[7] + kNf4Code[8]) / 2,   (kNf4Code[8] + kNf4Code[9]) / 2,
    (kNf4Code[9] + kNf4Code[10]) / 2,  (kNf4Code[10] + kNf4Code[11]) / 2, (kNf4Code[11] + kNf4Code[12]) / 2,
    (kNf4Code[12] + kNf4Code[13]) / 2, (kNf4Code[13] + kNf4Code[14]) / 2, (kNf4Code[14] + kNf4Code[15]) / 2};
// bnb dQuantizeFP4 thresholds on |x|, ascending, and the FP4 code of each magnitude rank.
constexpr float kFp4Thresholds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                     0.4166667f,  0.583333f,  0.8333333f};
constexpr uint8_t kFp4RankCode[8] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};

constexpr uint8_t kNf4ZeroCode = 7;  // the code of 0.0 in each book
constexpr uint8_t kFp4ZeroCode = 0;
constexpr int kDynamicMapSize = 256;
constexpr uint8_t kDynamicZeroIndex = 127;

namespace nf4_detail {
constexpr bool ascending(const float* v, int n) {
  for (int i = 1; i < n; ++i)
    if (!(v[i - 1] < v[i])) return false;
  return true;
}
}  // namespace nf4_detail

static_assert(sizeof(kNf4Code) == 16 * sizeof(float) && sizeof(kFp4Code) == 16 * sizeof(float), "16 codes");
static_assert(sizeof(kNf4Midpoints) == 15 * sizeof(float), "15 NF4 midpoints");
static_assert(nf4_detail::ascending(kNf4Code, 16) && nf4_detail::ascending(kNf4Midpoints, 15), "NF4 is sorted");
static_assert(nf4_detail::ascending(kFp4Thresholds, 7), "FP4 thresholds ascend");
static_assert(kNf4Code[kNf4ZeroCode] == 0.0f && kFp4Code[kFp4ZeroCode] == 0.0f, "zero codes");
static_assert(kFp4Code[kFp4RankCode[7]] == 1.0f && kFp4Code[kFp4RankCode[1]] < kFp4Code[kFp4RankCode[2]],
              "FP4 rank table follows the code book");

inline const float* code_book(bool fp4) { return fp4 ? kFp4Code : kNf4Code; }

// Code of a value already scaled by 1/absmax (NaN gives code 0; callers never pass one).
inline uint8_t nf4_code_of(float x) {
  int c = 0;
  for (float m : kNf4Midpoints) c += x > m;
  return static_cast<uint8_t>(c);
}
inline uint8_t fp4_code_of(float x) {
  const float a = x < 0 ? -x : x;
  int rank = 0;
  for (float t : kFp4Thresholds) rank += a > t;
  return static_cast<uint8_t>((x < 0 ? 8 : 0) | kFp4RankCode[rank]);
}

// Packed size of n 4-bit codes.
inline int64_t nf4_packed_bytes(int64_t n) { return (n + 1) / 2; }
// n codes (each < 16) -> ceil(n/2) bytes, high nibble first.
std::vector<uint8_t> nf4_pack(const uint8_t* codes, int64_t n);
// ceil(n/2) bytes -> n codes.
void nf4_unpack(const uint8_t* packed, int64_t n, uint8_t* codes);

// bnb's 256-entry signed dynamic map, computed once.
const std::array<float, kDynamicMapSize>& dynamic_map();
// Index of the entry nearest to x (x in [-1, 1]); an exact tie between two entries takes the lower index,
// as torch.argmin over |x - map| does. |x - map_i| is evaluated in float32.
uint8_t dynamic_map_index(const float* map, float x);

}  // namespace qwenq
