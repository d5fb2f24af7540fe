// bitsandbytes NF4/FP4: code books against the published constants, the dynamic map, packing, nearest-code
// choice, blockwise quantization with and without double quantization, and the safetensors layout that
// transformers writes (round trip and refusals). Nf4Oracle.* is the C++ half of tests/oracle/test_nf4_oracle.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/error.h"
#include "core/files.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "quant/format/nf4_pack.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "tests/support/scoped_threads.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

using test::error_of;

constexpr uint64_t kSeed = 20261123;

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

std::vector<float> random_weights(int64_t n, uint64_t seed, float sigma = 0.02f) {
  Rng rng(seed);
  std::vector<float> w(n);
  for (auto& v : w) v = static_cast<float>(rng.normal()) * sigma;
  return w;
}

// ---- code books -------------------------------------------------------------------------------------------

TEST(Nf4CodeBook, EqualsThePublishedConstants) {
  // bnb functional.get_4bit_type("nf4"), as Python doubles; each is exactly a float32.
  const double published[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                                0.7229568362236023, 1.0};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(static_cast<double>(kNf4Code[i]), published[i]) << "index " << i;
  // bnb's dQuantizeNF4 decision-tree literals are the midpoints; as float32 they equal ours.
  const double tree[15] = {-0.8480964004993439,  -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
                           -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
                           0.1202552504837513,   0.2035212516784668,  0.2920137718319893,  0.3893125355243683,
                           0.5016634166240692,   0.6427869200706482,  0.8614784181118011};
  for (int j = 0; j < 15; ++j) EXPECT_EQ(kNf4Midpoints[j], static_cast<float>(tree[j])) << "midpoint " << j;
}

TEST(Nf4CodeBook, Fp4IsTheRawTableOverTwelve) {
  const float raw[16] = {0, 0.0625f, 8, 12, 4, 6, 2, 3, -0.0f, -0.0625f, -8, -12, -4, -6, -2, -3};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(kFp4Code[i], raw[i] / 12.0f) << "index " << i;
  EXPECT_FALSE(std::signbit(kFp4Code[8]));  // bnb writes the integer -0, i.e. +0.0
}

// ---- dynamic map ------------------------------------------------------------------------------------------

TEST(DynamicMap, HasTheShapeOfBnbsSignedMap) {
  const auto& m = dynamic_map();
  ASSERT_EQ(m.size(), 256u);
  for (int i = 1; i < 256; ++i) ASSERT_LT(m[i - 1], m[i]) << "not strictly ascending at " << i;
  EXPECT_EQ(m[kDynamicZeroIndex], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  for (int j = 0; j < 127; ++j) EXPECT_TRUE(same_bits(m[128 + j], -m[126 - j])) << "not symmetric at " << j;
  // 2^e positive entries per decade (10^(e-7), 10^(e-6)), e = 0..6, plus 1.0.
  for (int e = 0; e < 7; ++e) {
    const double lo = std::pow(10.0, e - 7), hi = std::pow(10.0, e - 6);
    int count = 0;
    for (float v : m) count += v > lo && v < hi;
    EXPECT_EQ(count, 1 << e) << "decade " << e;
  }
}

TEST(DynamicMap, SpotValuesMatchTorch) {
  // Values printed by torch 2.5.1 for bitsandbytes.functional.create_dynamic_map(); 137, 165 and 224 differ
  // from a construction that rounds start + step·k twice instead of torch.linspace's fused multiply-add.
  const std::map<int, double> want = {{0, -0.992968738079071},     {1, -0.9789062738418579},
                                      {126, -5.500000384017767e-07}, {128, 5.500000384017767e-07},
                                      {129, 3.250000190746505e-06},  {130, 7.749999895168003e-06},
                                      {137, 0.0003812500217463821},  {165, 0.028281250968575478},
                                      {191, 0.10703125596046448},    {192, 0.12109375},
                                      {200, 0.23359374701976776},    {224, 0.5710937976837158},
                                      {240, 0.796093761920929},      {254, 0.992968738079071}};
  for (const auto& [i, v] : want) EXPECT_EQ(static_cast<double>(dynamic_map()[i]), v) << "index " << i;
}

TEST(DynamicMap, IndexIsNearestWithTiesLow) {
  const auto& m = dynamic_map();
  for (int i = 0; i < 256; ++i) EXPECT_EQ(dynamic_map_index(m.data(), m[i]), i);
  EXPECT_EQ(dynamic_map_index(m.data(), -1.0f), 0);
  EXPECT_EQ(dynamic_map_index(m.data(), 1.0f), 255);
  // Float32 midpoints that are exactly equidistant from both neighbours go to the lower index.
  int ties = 0;
  for (int i = 0; i + 1 < 256; ++i) {
    const float mid = (m[i] + m[i + 1]) / 2;
    if (std::fabs(mid - m[i]) != std::fabs(mid - m[i + 1])) continue;
    ++ties;
    EXPECT_EQ(dynamic_map_index(m.data(), mid), i) << "tie between " << i << " and " << i + 1;
  }
  EXPECT_GT(ties, 100);
  Rng rng(kSeed);
  for (int k = 0; k < 20000; ++k) {
    const float x = rng.uniform(-1.0f, 1.0f);
    int best = 0;
    for (int i = 1; i < 256; ++i)
      if (std::fabs(x - m[i]) < std::fabs(x - m[best])) best = i;
    ASSERT_EQ(dynamic_map_index(m.data(), x), best) << "x=" << x;
  }
}

// ---- packing and code choice ------------------------------------------------------------------------------

TEST(Nf4Pack, HighNibbleFirstAndOddPadding) {
  const uint8_t codes[5] = {1, 2, 3, 4, 5};
  EXPECT_EQ(nf4_pack(codes, 5), (std::vector<uint8_t>{0x12, 0x34, 0x50}));
  EXPECT_EQ(nf4_pack(codes, 4), (std::vector<uint8_t>{0x12, 0x34}));
  for (int64_t n : {1, 2, 63, 64, 1001}) {
    Rng rng(kSeed + n);
    std::vector<uint8_t> c(n), back(n);
    for (auto& v : c) v = static_cast<uint8_t>(rng.below(16));
    auto p = nf4_pack(c.data(), n);
    ASSERT_EQ(static_cast<int64_t>(p.size()), nf4_packed_bytes(n));
    nf4_unpack(p.data(), n, back.data());
    ASSERT_EQ(back, c) << "n=" << n;
  }
  const uint8_t bad[2] = {3, 16};
  EXPECT_NE(error_of([&] { nf4_pack(bad, 2); }).find("code 16 at index 1 does not fit 4 bits"), std::string::npos);
}

TEST(Nf4Code, ExactCodesMidpointsAndNeighbours) {
  for (int i = 0; i < 16; ++i) EXPECT_EQ(nf4_code_of(kNf4Code[i]), i);
  for (int j = 0; j < 15; ++j) {
    const float m = kNf4Midpoints[j];
    EXPECT_EQ(nf4_code_of(m), j) << "a midpoint goes to the lower code";
    EXPECT_EQ(nf4_code_of(std::nextafter(m, 2.0f)), j + 1);
    EXPECT_EQ(nf4_code_of(std::nextafter(m, -2.0f)), j);
  }
  // Away from midpoints the choice is argmin |x - c| (ties to the lower index, as torch.argmin).
  Rng rng(kSeed);
  for (int k = 0; k < 20000; ++k) {
    const float x = rng.uniform(-1.0f, 1.0f);
    int best = 0;
    for (int i = 1; i < 16; ++i)
      if (std::fabs(x - kNf4Code[i]) < std::fabs(x - kNf4Code[best])) best = i;
    ASSERT_EQ(nf4_code_of(x), best) << "x=" << x;
  }
}

TEST(Nf4Code, Fp4SignMagnitude) {
  for (int i = 0; i < 16; ++i) EXPECT_EQ(fp4_code_of(kFp4Code[i]), i == 8 ? 0 : i) << "index " << i;
  EXPECT_EQ(fp4_code_of(-0.0f), 0);
  EXPECT_EQ(fp4_code_of(-1e-30f), 8);
  for (int j = 0; j < 7; ++j) {
    const float t = kFp4Thresholds[j];
    EXPECT_EQ(fp4_code_of(t), kFp4RankCode[j]);
    EXPECT_EQ(fp4_code_of(std::nextafter(t, 2.0f)), kFp4RankCode[j + 1]);
    EXPECT_EQ(fp4_code_of(-t), 8 | kFp4RankCode[j]);
  }
}

// ---- blockwise quantization -------------------------------------------------------------------------------

// Weights that are exactly code · absmax: every block holds ±absmax once, so its absmax is known.
std::vector<float> on_grid_weights(int64_t n, int64_t B, bool fp4, uint64_t seed, std::vector<uint8_t>* codes) {
  Rng rng(seed);
  const float* book = code_book(fp4);
  std::vector<float> w(n);
  codes->resize(n);
  for (int64_t b = 0; b * B < n; ++b) {
    const float a = 0.001f + rng.uniform() * 0.1f;
    for (int64_t i = b * B; i < std::min(n, (b + 1) * B); ++i) {
      uint8_t c = static_cast<uint8_t>(rng.below(16));
      if (i == b * B) c = fp4 ? 3 : 15;  // +1.0
      if (fp4 && c == 8) c = 0;          // +0 has two FP4 codes; the quantizer picks 0
      (*codes)[i] = c;
      w[i] = book[c] * a;
    }
  }
  return w;
}

TEST(Nf4Quantize, ValuesOnTheGridComeBackExactly) {
  for (bool fp4 : {false, true}) {
    for (int64_t B : {32, 64, 128}) {
      const int64_t n = 5 * B + 13;  // partial last block, odd count
      SCOPED_TRACE(::testing::Message() << (fp4 ? "fp4" : "nf4") << " blocksize " << B << " seed " << kSeed);
      std::vector<uint8_t> codes;
      const auto w = on_grid_weights(n, B, fp4, kSeed + B, &codes);
      Nf4Options o;
      o.fp4 = fp4;
      o.blocksize = B;
      const Nf4Tensor t = nf4_quantize(w.data(), n, o);
      ASSERT_EQ(t.num_blocks(), 6);
      EXPECT_EQ(t.packed, nf4_pack(codes.data(), n));
      EXPECT_EQ(t.packed.back() & 0x0F, 0) << "odd n pads the last low nibble with 0";
      const auto back = nf4_dequantize(t);
      for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(back[i], w[i])) << "i=" << i;
    }
  }
}

TEST(Nf4Quantize, PartialBlockAndZeroBlock) {
  const int64_t B = 64, n = 3 * B + 10;
  auto w = random_weights(n, kSeed);
  for (int64_t i = B; i < 2 * B; ++i) w[i] = 0.0f;  // block 1 all zero
  w[3 * B + 4] = -0.5f;                              // the partial block's absmax
  const Nf4Tensor t = nf4_quantize(w.data(), n);
  ASSERT_EQ(t.absmax.size(), 4u);
  EXPECT_EQ(t.absmax[1], 0.0f);
  EXPECT_EQ(t.absmax[3], 0.5f);
  std::vector<uint8_t> codes(n);
  nf4_unpack(t.packed.data(), n, codes.data());
  for (int64_t i = B; i < 2 * B; ++i) ASSERT_EQ(codes[i], kNf4ZeroCode);
  EXPECT_EQ(codes[3 * B + 4], 0);  // -1.0
  const auto back = nf4_dequantize(t);
  for (int64_t i = B; i < 2 * B; ++i) ASSERT_TRUE(same_bits(back[i], 0.0f)) << "+0 in the zero block";
  // Rounding error is at most half the widest NF4 gap (-1 to -0.6961928: 0.1519036) of the block's absmax.
  for (int64_t i = 0; i < n; ++i) ASSERT_LE(std::fabs(back[i] - w[i]), 0.152f * t.absmax[i / B]) << "i=" << i;
}

TEST(Nf4Quantize, RefusesBadInput) {
  std::vector<float> w(64, 0.1f);
  w[17] = NAN;
  EXPECT_NE(error_of([&] { nf4_quantize(w.data(), 64); }).find("weight 17 is nan"), std::string::npos);
  w[17] = 0.1f;
  Nf4Options o;
  o.blocksize = 48;
  EXPECT_NE(error_of([&] { nf4_quantize(w.data(), 64, o); }).find("blocksize 48 is not a power of two"),
            std::string::npos);
}

TEST(Nf4DoubleQuant, ScalesFollowTheBnbFormula) {
  const int64_t B = 64, n = 300 * B + 5;  // 301 blocks: a partial nested block
  const auto w = random_weights(n, kSeed + 7);
  Nf4Options o;
  o.double_quant = true;
  const Nf4Tensor t = nf4_quantize(w.data(), n, o);
  const Nf4Tensor plain = nf4_quantize(w.data(), n);
  ASSERT_EQ(t.absmax_q.size(), 301u);
  ASSERT_EQ(t.nested_absmax.size(), 2u);
  EXPECT_TRUE(t.absmax.empty());
  EXPECT_EQ(t.packed, plain.packed) << "4-bit codes come from the exact absmax";
  double mean = 0;
  for (float a : plain.absmax) mean += a;
  EXPECT_EQ(t.nested_offset, static_cast<float>(mean / 301));
  const auto& m = dynamic_map();
  const auto rec = nf4_block_absmax(t);
  for (int64_t i = 0; i < 301; ++i) {
    volatile float p = m[t.absmax_q[i]] * t.nested_absmax[i / 256];
    ASSERT_TRUE(same_bits(rec[i], p + t.nested_offset)) << "block " << i;
    // The dynamic map's widest gap near ±1 is 0.0140625, so the error is at most half of it.
    ASSERT_LE(std::fabs(rec[i] - plain.absmax[i]), 0.00704f * t.nested_absmax[i / 256] + 1e-7f) << "block " << i;
  }
  const auto back = nf4_dequantize(t);
  std::vector<uint8_t> codes(n);
  nf4_unpack(t.packed.data(), n, codes.data());
  for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(back[i], kNf4Code[codes[i]] * rec[i / B])) << "i=" << i;
}

// The nested blocks run in parallel (16 per chunk at least): 100 nested blocks and a partial one, at 1, 2 and 4
// threads, give the same bytes, and every index is the formula's (nearest map entry of (absmax - offset) scaled
// by the float32 reciprocal of its nested block's absmax) — the sequential definition, element by element.
TEST(Nf4DoubleQuant, ParallelNestedBlocksAreTheFormulaAtAnyThreadCount) {
  const int64_t B = 64, n = (100 * 256 + 77) * B + 9;
  const auto w = random_weights(n, kSeed + 13);
  Nf4Options o;
  o.double_quant = true;
  const Nf4Tensor plain = nf4_quantize(w.data(), n);
  std::vector<Nf4Tensor> runs;
  for (int threads : {1, 2, 4}) {
    test::ScopedThreads scoped(threads);
    runs.push_back(nf4_quantize(w.data(), n, o));
  }
  const Nf4Tensor& t = runs[0];
  ASSERT_EQ(t.nested_absmax.size(), 101u);
  for (size_t r = 1; r < runs.size(); ++r) {
    EXPECT_EQ(runs[r].packed, t.packed) << "run " << r;
    EXPECT_EQ(runs[r].absmax_q, t.absmax_q) << "run " << r;
    EXPECT_EQ(runs[r].nested_absmax, t.nested_absmax) << "run " << r;
    EXPECT_TRUE(same_bits(runs[r].nested_offset, t.nested_offset)) << "run " << r;
  }
  const auto& m = dynamic_map();
  const int64_t nb = t.num_blocks();
  for (int64_t b = 0; b < t.num_nested_blocks(); ++b) {
    float a2 = 0.f;
    for (int64_t i = b * 256; i < std::min(nb, (b + 1) * 256); ++i)
      a2 = std::max(a2, std::fabs(plain.absmax[i] - t.nested_offset));
    ASSERT_TRUE(same_bits(t.nested_absmax[b], a2)) << "nested block " << b;
    for (int64_t i = b * 256; i < std::min(nb, (b + 1) * 256); ++i) {
      const float x = std::min(1.f, std::max(-1.f, (plain.absmax[i] - t.nested_offset) * (1.f / a2)));
      ASSERT_EQ(t.absmax_q[i], dynamic_map_index(m.data(), x)) << "block " << i << " seed " << kSeed + 13;
    }
  }
}

TEST(Nf4DoubleQuant, EqualScalesAreExact) {
  std::vector<float> w(64 * 10);
  for (size_t i = 0; i < w.size(); ++i) w[i] = i % 64 == 0 ? 0.25f : 0.01f;
  Nf4Options o;
  o.double_quant = true;
  const Nf4Tensor t = nf4_quantize(w.data(), static_cast<int64_t>(w.size()), o);
  EXPECT_EQ(t.nested_offset, 0.25f);
  EXPECT_EQ(t.nested_absmax[0], 0.0f);
  for (float a : nf4_block_absmax(t)) EXPECT_EQ(a, 0.25f);
}

TEST(Nf4DoubleQuant, OverheadIsAbout0127BitsPerWeight) {
  const int64_t n = 64 * 256 * 4;
  const auto w = random_weights(n, kSeed + 9);
  Nf4Options o;
  const Nf4Tensor plain = nf4_quantize(w.data(), n, o);
  o.double_quant = true;
  const Nf4Tensor dq = nf4_quantize(w.data(), n, o);
  const double plain_bits = 32.0 * plain.absmax.size() / n;
  const double dq_bits = (8.0 * dq.absmax_q.size() + 32.0 * dq.nested_absmax.size() + 32.0) / n;
  EXPECT_EQ(plain_bits, 0.5);
  EXPECT_NEAR(dq_bits, 0.127, 0.001);
  EXPECT_EQ(8.0 * plain.packed.size() / n, 4.0);
}

// ---- checkpoint layout ------------------------------------------------------------------------------------

TEST(Nf4Checkpoint, PythonFloatRepr) {
  const std::map<double, std::string> want = {
      {0.0, "0.0"},         {1.0, "1.0"},           {-2.5, "-2.5"},          {0.1, "0.1"},
      {1e-05, "1e-05"},     {0.0001, "0.0001"},     {1.5e-07, "1.5e-07"},    {123456789.0, "123456789.0"},
      {1e16, "1e+16"},      {1234567890123456.0, "1234567890123456.0"},      {1e100, "1e+100"},
      {static_cast<double>(0.1f), "0.10000000149011612"}, {static_cast<double>(0.0123f), "0.012299999594688416"}};
  for (const auto& [v, s] : want) EXPECT_EQ(python_float_repr(v), s) << v;
  EXPECT_EQ(python_float_repr(-0.0), "-0.0");
}

TEST(Nf4Checkpoint, QuantStateJsonIsWhatPythonWrites) {
  const auto w = random_weights(6 * 10, kSeed);
  Nf4Tensor t = nf4_quantize(w.data(), 60);
  EXPECT_EQ(nf4_quant_state_json(t, {6, 10}, "bfloat16"),
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [6, 10]}");
  Nf4Options o;
  o.double_quant = true;
  o.fp4 = true;
  t = nf4_quantize(w.data(), 60, o);
  t.nested_offset = 0.0123f;
  EXPECT_EQ(nf4_quant_state_json(t, {6, 10}, "float16"),
            "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [6, 10], "
            "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.012299999594688416}");
  EXPECT_NE(error_of([&] { nf4_quant_state_json(t, {6, 11}, "float16"); }).find("does not hold the tensor's 60"),
            std::string::npos);
}

struct Layer {
  std::string prefix;
  Nf4Options opts;
};

void expect_same(const Nf4Tensor& a, const Nf4Tensor& b) {
  EXPECT_EQ(a.fp4, b.fp4);
  EXPECT_EQ(a.blocksize, b.blocksize);
  EXPECT_EQ(a.n, b.n);
  EXPECT_EQ(a.packed, b.packed);
  EXPECT_EQ(a.double_quant, b.double_quant);
  EXPECT_EQ(a.absmax, b.absmax);
  EXPECT_EQ(a.absmax_q, b.absmax_q);
  EXPECT_EQ(a.nested_absmax, b.nested_absmax);
  EXPECT_EQ(a.nested_code, b.nested_code);
  EXPECT_TRUE(same_bits(a.nested_offset, b.nested_offset));
  EXPECT_EQ(a.nested_blocksize, b.nested_blocksize);
}

TEST(Nf4Checkpoint, WriteReadRoundTrip) {
  const std::string dir = test::scratch_dir();
  const int64_t N = 96, K = 172;
  std::vector<Layer> layers(3);
  layers[0].prefix = "model.layers.0.mlp.down_proj";
  layers[1].prefix = "model.layers.0.self_attn.q_proj";
  layers[1].opts.double_quant = true;
  layers[2].prefix = "model.layers.1.mlp.up_proj";
  layers[2].opts.fp4 = true;
  layers[2].opts.blocksize = 128;
  std::vector<Nf4Tensor> qs;
  SafetensorsWriter wr;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto w = random_weights(N * K, kSeed + l);
    qs.push_back(nf4_quantize(w.data(), N * K, layers[l].opts));
    add_nf4_linear(wr, layers[l].prefix, qs.back(), {N, K}, l == 2 ? "float16" : "bfloat16");
  }
  wr.write(path_join(dir, "model.safetensors"));

  Checkpoint ckpt(dir);
  const auto& base = layers[1].prefix;
  EXPECT_EQ(ckpt.get(base + ".weight").shape, (std::vector<int64_t>{N * K / 2, 1}));
  EXPECT_EQ(ckpt.get(base + ".weight.absmax").dtype, DType::U8);
  EXPECT_EQ(ckpt.get(base + ".weight.nested_absmax").shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(ckpt.get(base + ".weight.nested_quant_map").shape, (std::vector<int64_t>{256}));
  EXPECT_EQ(ckpt.get(layers[0].prefix + ".weight.absmax").dtype, DType::F32);
  EXPECT_FALSE(ckpt.has(layers[0].prefix + ".weight.nested_absmax"));
  EXPECT_TRUE(ckpt.has(layers[2].prefix + ".weight.quant_state.bitsandbytes__fp4"));
  EXPECT_TRUE(has_nf4_linear(ckpt, base));
  EXPECT_FALSE(has_nf4_linear(ckpt, "model.layers.0.mlp.gate_proj"));
  SafetensorsFile file(path_join(dir, "model.safetensors"));
  for (size_t l = 0; l < layers.size(); ++l) {
    SCOPED_TRACE(layers[l].prefix);
    const Nf4Linear got = read_nf4_linear(ckpt, layers[l].prefix);
    EXPECT_EQ(got.shape, (std::vector<int64_t>{N, K}));
    EXPECT_EQ(got.dtype, l == 2 ? "float16" : "bfloat16");
    expect_same(got.q, qs[l]);
    EXPECT_EQ(nf4_dequantize(got.q), nf4_dequantize(qs[l]));
    expect_same(read_nf4_linear(file, layers[l].prefix).q, qs[l]);
  }
}

// A tensor of a safetensors file, copied so that it can be altered and written again.
struct Part {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::map<std::string, Part> good_layer(const std::string& dir, bool dq) {
  const auto w = random_weights(8 * 40, kSeed);
  Nf4Options o;
  o.double_quant = dq;
  SafetensorsWriter wr;
  add_nf4_linear(wr, "l", nf4_quantize(w.data(), 320, o), {8, 40});
  const std::string path = path_join(dir, "good.safetensors");
  wr.write(path);
  SafetensorsFile f(path);
  std::map<std::string, Part> parts;
  for (const auto& name : f.names()) {
    const TensorView& v = f.get(name);
    const auto* p = static_cast<const uint8_t*>(v.data);
    parts[name] = Part{v.dtype, v.shape, std::vector<uint8_t>(p, p + v.nbytes())};
  }
  return parts;
}

// Writes `parts` and returns the error read_nf4_linear gives for it.
std::string read_error(const std::string& dir, const std::map<std::string, Part>& parts) {
  SafetensorsWriter wr;
  for (const auto& [name, p] : parts) wr.add_owned(name, p.dtype, p.shape, p.bytes);
  const std::string path = path_join(dir, "model.safetensors");
  wr.write(path);
  return error_of([&] { read_nf4_linear(Checkpoint(dir), "l"); });
}

void expect_error(const std::string& err, const std::string& what) {
  EXPECT_NE(err.find(what), std::string::npos) << err;
  EXPECT_NE(err.find("model.safetensors"), std::string::npos) << "names the file: " << err;
}
void expect_missing(const std::string& err, const std::string& what) {
  EXPECT_NE(err.find(what), std::string::npos) << err;
}

TEST(Nf4Checkpoint, CorruptSizesGiveClearErrors) {
  const std::string dir = test::scratch_dir();
  auto parts = good_layer(dir, false);
  EXPECT_EQ(read_error(dir, parts), "<no error>");

  auto p = parts;
  p["l.weight.absmax"].shape = {4};
  p["l.weight.absmax"].bytes.resize(16);
  expect_error(read_error(dir, p), "tensor 'l.weight.absmax' in " + dir + "/model.safetensors is F32 [4], expected F32 [5]");

  p = parts;
  p["l.weight"].shape = {159, 1};
  p["l.weight"].bytes.resize(159);
  expect_error(read_error(dir, p), "tensor 'l.weight' in " + dir + "/model.safetensors is U8 [159, 1], expected U8 [160, 1]");

  p = parts;
  std::memset(p["l.weight.quant_map"].bytes.data() + 4 * 3, 0, 4);
  expect_error(read_error(dir, p), "differs from the published nf4 code book at index 3");

  p = parts;
  p.erase("l.weight.quant_map");
  expect_missing(read_error(dir, p), "tensor 'l.weight.quant_map' in checkpoint " + dir + " is missing");

  p = parts;
  std::string js = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [8, 41]}";
  p["l.weight.quant_state.bitsandbytes__nf4"] = Part{DType::U8, {int64_t(js.size())}, {js.begin(), js.end()}};
  expect_error(read_error(dir, p), "expected U8 [164, 1] for shape [8, 41]");

  p = parts;
  js = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [8, 40], \"extra\": 1}";
  p["l.weight.quant_state.bitsandbytes__nf4"] = Part{DType::U8, {int64_t(js.size())}, {js.begin(), js.end()}};
  expect_error(read_error(dir, p), "has the key \"extra\", which bitsandbytes does not accept");

  p = parts;
  js = "{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"bfloat16\", \"shape\": [8, 40]}";
  p["l.weight.quant_state.bitsandbytes__nf4"] = Part{DType::U8, {int64_t(js.size())}, {js.begin(), js.end()}};
  expect_error(read_error(dir, p), "blocksize 48 is not a power of two");

  p = parts;
  p["l.weight.quant_state.bitsandbytes__fp4"] = p["l.weight.quant_state.bitsandbytes__nf4"];
  expect_error(read_error(dir, p), "are both present");

  auto dq = good_layer(dir, true);
  EXPECT_EQ(read_error(dir, dq), "<no error>");
  p = dq;
  p["l.weight.absmax"].dtype = DType::I8;
  expect_error(read_error(dir, p), "is I8 [5], expected U8 [5]");
  p = dq;
  p["l.weight.nested_absmax"].shape = {2};
  p["l.weight.nested_absmax"].bytes.resize(8);
  expect_error(read_error(dir, p), "tensor 'l.weight.nested_absmax' in " + dir + "/model.safetensors is F32 [2], expected F32 [1]");
  p = dq;
  p.erase("l.weight.nested_absmax");
  expect_error(read_error(dir, p), "has nested_* keys but 'l.weight.nested_absmax' is missing");
}

// The quant_state JSON (and the tensors it names) as bnb's QuantState.from_dict could meet them in a damaged or
// hand-edited file: each refusal names the layer, the tensor, the file and what is wrong, and nothing crashes.
TEST(Nf4Checkpoint, CorruptQuantStateGivesClearErrors) {
  const std::string dir = test::scratch_dir();
  const std::string nf4 = "l.weight.quant_state.bitsandbytes__nf4", fp4 = "l.weight.quant_state.bitsandbytes__fp4";
  const auto parts = good_layer(dir, false);
  const auto with_json = [&](const std::map<std::string, Part>& base, const std::string& js, const std::string& name) {
    auto p = base;
    p.erase(nf4);
    p[name] = Part{DType::U8, {int64_t(js.size())}, {js.begin(), js.end()}};
    return read_error(dir, p);
  };
  const auto plain = [&](const std::string& fields) {
    return with_json(parts, "{\"quant_type\": \"nf4\", " + fields + "}", nf4);
  };
  const std::string qs_in = "tensor '" + nf4 + "' in " + dir + "/model.safetensors ";

  // Neither quant_state item (bnb: "Expected packed or unpacked quant_state items, found neither").
  auto p = parts;
  p.erase(nf4);
  expect_missing(read_error(dir, p), "bnb 4-bit layer 'l': tensor '" + nf4 + "' in checkpoint " + dir +
                                         " is missing, and so is '" + fp4 + "' (not a bnb 4-bit layer?)");
  // The quant_state is not the 1-D U8 tensor of JSON bytes.
  p = parts;
  p[nf4].shape = {1, int64_t(p[nf4].bytes.size())};
  expect_error(read_error(dir, p), qs_in + "is U8 [1, " + std::to_string(p[nf4].bytes.size()) + "], expected U8 [len]");
  p = parts;
  p[nf4].dtype = DType::I8;
  expect_error(read_error(dir, p), "is I8 [" + std::to_string(p[nf4].bytes.size()) + "], expected U8 [len]");
  // Not a JSON object.
  expect_error(with_json(parts, "{\"quant_type\": \"nf4\", ", nf4), "does not hold a JSON object: '{\"quant_type\"");
  expect_error(with_json(parts, "[64, 8, 40]", nf4), qs_in + "does not hold a JSON object: '[64, 8, 40]'");
  // Zero-filled (an interrupted download): the bytes are shown, not NULs the terminal hides; a long one is cut.
  expect_error(with_json(parts, std::string(4, '\0'), nf4), qs_in + "does not hold a JSON object: '\\x00\\x00\\x00\\x00'");
  const std::string garbage = with_json(parts, std::string(1 << 16, '\0'), nf4);
  expect_error(garbage, "does not hold a JSON object: '" + [] {
    std::string s;
    for (int i = 0; i < 200; ++i) s += "\\x00";
    return s;
  }() + "... (65536 bytes)'");
  EXPECT_LT(garbage.size(), 1200u);
  // quant_type: missing, not a string, or not the one the item's name says.
  expect_error(with_json(parts, "{\"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [8, 40]}", nf4),
               qs_in + "has no string \"quant_type\"");
  expect_error(with_json(parts, "{\"quant_type\": 4, \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [8, 40]}", nf4),
               "has no string \"quant_type\"");
  expect_error(with_json(parts, "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [8, 40]}", nf4),
               qs_in + "says quant_type \"fp4\", which its name contradicts");
  expect_error(with_json(parts, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [8, 40]}", fp4),
               "tensor '" + fp4 + "' in " + dir + "/model.safetensors says quant_type \"nf4\", which its name contradicts");
  // blocksize and dtype.
  expect_error(plain("\"blocksize\": \"64\", \"dtype\": \"bfloat16\", \"shape\": [8, 40]"), "has no integer \"blocksize\"");
  expect_error(plain("\"blocksize\": 64.5, \"dtype\": \"bfloat16\", \"shape\": [8, 40]"), "has no integer \"blocksize\"");
  expect_error(plain("\"blocksize\": 64, \"shape\": [8, 40]"), "has no string \"dtype\"");
  expect_error(plain("\"blocksize\": 64, \"dtype\": \"int8\", \"shape\": [8, 40]"),
               qs_in + "has dtype \"int8\" (expected bfloat16, float16 or float32)");
  // shape: missing, not two positive integers, or too large to count.
  for (const std::string sh : {"", ", \"shape\": null", ", \"shape\": [320]", ", \"shape\": [8, 40, 1]",
                               ", \"shape\": [8, \"40\"]", ", \"shape\": [8.0, 40]", ", \"shape\": [8, 0]",
                               ", \"shape\": [-8, -40]", ", \"shape\": {\"N\": 8, \"K\": 40}"})
    expect_error(plain("\"blocksize\": 64, \"dtype\": \"bfloat16\"" + sh), qs_in + "needs \"shape\": [N, K] with positive N and K");
  expect_error(plain("\"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4294967296, 4294967296]"),
               qs_in + "has \"shape\": [4294967296, 4294967296], more weights than a tensor can hold");
  expect_error(plain("\"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [8, 18446744073709551615]"),
               qs_in + "needs \"shape\": [N, K] with positive N and K");
  // The packed codes' tensor: any storage dtype of the right byte count, but shaped [bytes, 1].
  p = parts;
  p["l.weight"].shape = {160};
  expect_error(read_error(dir, p), "tensor 'l.weight' in " + dir + "/model.safetensors is U8 [160], expected U8 [160, 1]");
  p = parts;
  p["l.weight"].shape = {80, 2};
  expect_error(read_error(dir, p), "is U8 [80, 2], expected U8 [160, 1] for shape [8, 40]");
  p = parts;
  p["l.weight"].dtype = DType::BF16;  // bnb_4bit_quant_storage=bfloat16: the same bytes, half the elements
  p["l.weight"].shape = {80, 1};
  EXPECT_EQ(read_error(dir, p), "<no error>");

  // Double quantization: the nested_* keys and the nested tensors go together.
  const auto dq = good_layer(dir, true);
  const std::string dq_json(dq.at(nf4).bytes.begin(), dq.at(nf4).bytes.end());
  const size_t cut = dq_json.find(", \"nested_blocksize\"");
  ASSERT_NE(cut, std::string::npos) << dq_json;
  const std::string head = dq_json.substr(0, cut);
  expect_error(with_json(dq, head + "}", nf4),
               qs_in + "lacks the nested_* keys although 'l.weight.nested_absmax' exists");
  expect_error(with_json(dq, head + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float16\", \"nested_offset\": 0.01}", nf4),
               qs_in + "has nested_dtype \"float16\"; bnb writes float32");
  expect_error(with_json(dq, head + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": \"0.01\"}", nf4),
               qs_in + "has no numeric \"nested_offset\"");
  expect_error(with_json(dq, head + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\"}", nf4),
               qs_in + "has no numeric \"nested_offset\"");
  expect_error(with_json(dq, head + ", \"nested_dtype\": \"float32\", \"nested_offset\": 0.01}", nf4),
               qs_in + "has no integer \"nested_blocksize\"");
  expect_error(with_json(dq, head + ", \"nested_blocksize\": 256, \"nested_offset\": 0.01}", nf4),
               qs_in + "has no string \"nested_dtype\"");
  p = dq;
  p.erase("l.weight.nested_quant_map");
  expect_missing(read_error(dir, p), "tensor 'l.weight.nested_quant_map' in checkpoint " + dir + " is missing (the dynamic map)");
}

TEST(Nf4Checkpoint, QuantizationConfigMatchesTransformers) {
  const auto j = nf4_quantization_config_json(true, "bfloat16");
  EXPECT_EQ(j.at("quant_method"), "bitsandbytes");
  EXPECT_EQ(j.at("load_in_4bit"), true);
  EXPECT_EQ(j.at("load_in_8bit"), false);
  EXPECT_EQ(j.at("_load_in_4bit"), true);
  EXPECT_EQ(j.at("bnb_4bit_quant_type"), "nf4");
  EXPECT_EQ(j.at("bnb_4bit_use_double_quant"), true);
  EXPECT_EQ(j.at("bnb_4bit_compute_dtype"), "bfloat16");
  EXPECT_EQ(j.at("bnb_4bit_quant_storage"), "uint8");
  EXPECT_EQ(j.at("llm_int8_threshold"), 6.0);
  EXPECT_TRUE(j.at("llm_int8_skip_modules").is_null());
  EXPECT_EQ(j.size(), 13u);
  EXPECT_NE(error_of([] { nf4_quantization_config_json(false, "fp8"); }).find("\"fp8\""), std::string::npos);
}

// ---- oracle half ------------------------------------------------------------------------------------------

// Writes three layers of seeded random [96, 172] weights (258 blocks of 64: the second nested block holds 2)
// to $QWENQ_ORACLE_NF4_DIR/model.safetensors (nf4, nf4 + DQ, fp4), with the source weights and our dequantized
// weights in expected.safetensors and config.json's quantization_config, for test_nf4_oracle.py.
TEST(Nf4Oracle, WritesLayersForTheOracle) {
  const char* env = std::getenv("QWENQ_ORACLE_NF4_DIR");
  if (!env || !*env) GTEST_SKIP() << "QWENQ_ORACLE_NF4_DIR not set (run tests/oracle/test_nf4_oracle.py)";
  const std::string dir = env;
  const int64_t N = 96, K = 172, n = N * K;
  std::vector<Layer> layers(3);
  layers[0].prefix = "model.layers.0.mlp.down_proj";
  layers[1].prefix = "model.layers.0.self_attn.q_proj";
  layers[1].opts.double_quant = true;
  layers[2].prefix = "model.layers.0.mlp.up_proj";
  layers[2].opts.fp4 = true;
  SafetensorsWriter model, expected;
  std::vector<std::vector<float>> keep;
  keep.reserve(2 * layers.size());  // the writers point into these buffers
  for (size_t l = 0; l < layers.size(); ++l) {
    auto w = random_weights(n, kSeed + 100 + l);
    for (int64_t i = 5 * 64; i < 6 * 64; ++i) w[i] = 0.0f;  // one all-zero block
    w[1000] = 0.3f;                                          // an outlier block
    const Nf4Tensor q = nf4_quantize(w.data(), n, layers[l].opts);
    add_nf4_linear(model, layers[l].prefix, q, {N, K}, "bfloat16");
    keep.push_back(w);
    keep.push_back(nf4_dequantize(q));
    expected.add(layers[l].prefix + ".source", DType::F32, {N, K}, keep[keep.size() - 2].data());
    expected.add(layers[l].prefix + ".dequant", DType::F32, {N, K}, keep.back().data());
  }
  model.write(path_join(dir, "model.safetensors"));
  expected.write(path_join(dir, "expected.safetensors"));
  nlohmann::json cfg;
  cfg["quantization_config"] = nf4_quantization_config_json(true, "bfloat16");
  write_file_atomic(path_join(dir, "config.json"), cfg.dump(2));
  Checkpoint ckpt(dir);
  for (size_t l = 0; l < layers.size(); ++l)
    EXPECT_EQ(nf4_dequantize(read_nf4_linear(ckpt, layers[l].prefix).q), keep[2 * l + 1]) << layers[l].prefix;
}

}  // namespace
}  // namespace qwenq
