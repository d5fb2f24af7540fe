// kernels/dora.h's CPU twins against three oracles:
//   - the header's fp32 formulas written out here with one rounding per operation that no compiler can fuse (each
//     result stored through a volatile float): every elementwise output and the row norms bit for bit;
//   - trainer/lora_model.h's dora_row_norms, dora_combine, dora_split_grad (PEFT's DoraLinearLayer as the CPU trainer
//     runs it): split grad bit for bit; row norms and combine within the bound of an FMA per product, since that file
//     is compiled with GCC's default -ffp-contract=fast (on a machine with FMAs its combine is y + fma(g − 1, z, g·v));
//   - the definitions in long double: the norm ‖Ŵ[j] + s·(B A)[j]‖₂, PEFT's unmerged inference y_base + b +
//     (g − 1)·y_base + g·v and the training forward and backward, within named bounds of the fp32 evaluation;
// over dense F32/BF16/F16 weights and Q4 layouts (GPTQ, GPTQ act-order, AWQ, NF4 with double quantization, FP4, and
// hand-made layouts of awkward shapes whose padding holds garbage that must never be read), checked against the same
// math on q4_unpack's fp32 weights. Mutants (s dropped, the act-order permutation ignored, g in place of g − 1, the
// bias term dropped) must fail the same bounds, and bad arguments are refused naming the function and the values.
// tests/gpu/test_dora_cuda.cpp holds the CUDA twins to these.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/dora.h"
#include "lora/lora_adapter.h"
#include "quant/format/qgemm_layout.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "tests/support/dora_cases.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_random.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_weights.h"

namespace qwenq {
namespace {

using test::padded_q4;

constexpr double kU = 0x1p-24;  // fp32 unit roundoff
// γ_m = m·u / (1 − m·u): the classic bound of m fp32 roundings in a dot product (Higham, §3.1).
double gamma_of(int64_t m) { return static_cast<double>(m) * kU / (1.0 - static_cast<double>(m) * kU); }
// dora_scale_rows: forming y_in = (y_base + b) + v (2 roundings), g = m / n (1), 1 − g (1), the two products (1 each)
// and the sum (1): 6·u of |g|·(|y_base| + |b| + |v|) + |1 − g|·|b| bounds them; 8·u leaves room.
constexpr double kScaleRowsUlps = 8.0;
// dora_combine against long double: g (1 rounding), g − 1 (1), two products, two sums: 6·u of the terms' magnitudes
// |y| + |(g − 1)·z| + |g|·(|z| + |v|); 8·u leaves room. Against the trainer (one product fused into an FMA there): the two inner
// sums differ by u·|(g − 1)·z| before their roundings, then y + … rounds once more in each: 4·u of the terms plus
// an ulp of the result.
constexpr double kCombineUlps = 8.0;
constexpr double kTrainerFmaUlps = 4.0;
// dm's double sum of rows exact products in any order: within rows·2⁻⁵² of Σ|terms| of the exact sum (and of another
// order), then / n and the roundings to float and of the addition to dm.
constexpr double kSumTolPerRow = 0x1p-52;

// One rounding per operation, immune to contraction: each result passes through a volatile float, which the compiler
// must round and store (GCC narrows (float)((double)a · b) to a float product, which it may then fuse into an FMA).
float fmul(float a, float b) {
  volatile float r = a * b;
  return r;
}
float fadd(float a, float b) {
  volatile float r = a + b;
  return r;
}
float fsub(float a, float b) {
  volatile float r = a - b;
  return r;
}
float fdiv(float a, float b) {
  volatile float r = a / b;
  return r;
}

double ulp_of(float x) {
  const float a = std::fabs(x);
  return static_cast<double>(std::nextafter(a, INFINITY)) - a;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

int64_t count_bit_diffs(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  int64_t bad = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) bad += same_bits(a[i], b[i]) ? 0 : 1;
  return bad;
}

// ---------------------------------------------------------------------------------------------------------------
// Row norms

struct Lora {
  int64_t N, K, r;
  float s;
  std::vector<float> A, B;  // [r, K], [N, r]
};

Lora make_lora(int64_t N, int64_t K, int64_t r, float s, uint64_t seed) {
  return Lora{N, K, r, s, test::normal_vector(r * K, seed, 0.1f), test::normal_vector(N * r, seed + 1, 0.1f)};
}

LoraWeights lora_weights(const Lora& l) { return LoraWeights{l.N, l.K, l.r, l.s, l.A, l.B, {}}; }

// The norms of the header's formula with unfusable fp32 operations, k ascending in double: the ref's bits.
std::vector<float> norms_formula(const std::vector<float>& W, const Lora& l) {
  std::vector<float> n(static_cast<size_t>(l.N));
  for (int64_t j = 0; j < l.N; ++j) {
    double ss = 0;
    for (int64_t k = 0; k < l.K; ++k) {
      float ba = 0.f;
      for (int64_t i = 0; i < l.r; ++i) ba = fadd(ba, fmul(l.B[j * l.r + i], l.A[i * l.K + k]));
      const double e = fadd(W[j * l.K + k], fmul(l.s, ba));
      ss += e * e;
    }
    n[j] = static_cast<float>(std::sqrt(ss));
  }
  return n;
}

// The exact norm in long double and each row's bound for an fp32 evaluation of it: e = ŵ + s·Σ B A rounds at most
// r + 2 times, so |e_fp32 − e| ≤ γ_{r+2}·mass_k (mass_k = |ŵ| + |s|·Σ_i |B A|) and | ‖e_fp32‖ − ‖e‖ | ≤ γ_{r+2}·‖mass‖₂;
// then the double sum (K·2⁻⁵³ relative of n², half that of n) and the rounding to float.
struct NormOracle {
  std::vector<long double> exact;
  std::vector<double> mass_norm;  // ‖mass‖₂ per row
};

NormOracle norms_exact(const std::vector<float>& W, const Lora& l) {
  NormOracle o{std::vector<long double>(static_cast<size_t>(l.N)), std::vector<double>(static_cast<size_t>(l.N))};
  for (int64_t j = 0; j < l.N; ++j) {
    long double ss = 0, mm = 0;
    for (int64_t k = 0; k < l.K; ++k) {
      long double ba = 0, abs_ba = 0;
      for (int64_t i = 0; i < l.r; ++i) {
        const long double t = static_cast<long double>(l.B[j * l.r + i]) * l.A[i * l.K + k];
        ba += t;
        abs_ba += std::fabs(t);
      }
      const long double e = W[j * l.K + k] + static_cast<long double>(l.s) * ba;
      const long double mass = std::fabs(static_cast<long double>(W[j * l.K + k])) + std::fabs(l.s) * abs_ba;
      ss += e * e;
      mm += mass * mass;
    }
    o.exact[j] = std::sqrt(ss);
    o.mass_norm[j] = static_cast<double>(std::sqrt(mm));
  }
  return o;
}

// Rows of `got` outside `evaluations` fp32 evaluations' bound of the exact norms (1: against the exact value; 2: two
// fp32 evaluations, e.g. the ref and the trainer, against each other).
int64_t norms_outside(const std::vector<float>& got, const NormOracle& o, const Lora& l, int evaluations,
                      const std::vector<float>* other = nullptr, bool report = true) {
  int64_t bad = 0;
  for (int64_t j = 0; j < l.N; ++j) {
    const long double want = other ? static_cast<long double>((*other)[j]) : o.exact[j];
    const double tol = evaluations * gamma_of(l.r + 2) * o.mass_norm[j] + 2 * ulp_of(got[j]) +
                       static_cast<double>(l.K) * 0x1p-52 * static_cast<double>(o.exact[j]);
    const double diff = static_cast<double>(std::fabs(static_cast<long double>(got[j]) - want));
    if (!(diff <= tol)) {
      ++bad;
      if (report && bad <= 5)
        ADD_FAILURE() << "row " << j << ": " << got[j] << " vs " << static_cast<double>(want) << " (|diff| " << diff
                      << ", tolerance " << tol << ")";
    }
  }
  return bad;
}

// A dense weight [N, K] as `dtype` bits and its fp32 values.
struct Dense {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};

Dense make_dense(int64_t N, int64_t K, DType dtype, uint64_t seed, float stddev = 0.05f) {
  Dense d;
  d.values = test::normal_vector(N * K, seed, stddev);
  d.bytes.resize(static_cast<size_t>(N * K) * dtype_size(dtype));
  for (int64_t i = 0; i < N * K; ++i) {
    if (dtype == DType::F32) {
      std::memcpy(d.bytes.data() + 4 * i, &d.values[i], 4);
      continue;
    }
    const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(d.values[i]) : f32_to_f16(d.values[i]);
    std::memcpy(d.bytes.data() + 2 * i, &h, 2);
    d.values[i] = dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
  return d;
}

// The trainer's view of a dense weight.
LinearWeight linear_of(const Dense& d, int64_t N, int64_t K, DType dtype) {
  LinearWeight w;
  w.N = N;
  w.K = K;
  w.dense.data = d.bytes.data();
  w.dense.dtype = dtype;
  w.dense.shape = {N, K};
  return w;
}


enum class Src { GptqV1, GptqV2ActOrder, Awq, Nf4Dq, Fp4 };
const char* src_name(Src s) {
  return s == Src::GptqV1 ? "gptq" : s == Src::GptqV2ActOrder ? "gptq_v2_act_order" : s == Src::Awq ? "awq"
                                                                                    : s == Src::Nf4Dq ? "nf4_dq" : "fp4";
}
Q4Layout format_q4(Src s, int64_t N, int64_t K, uint64_t seed) {
  switch (s) {
    case Src::GptqV1: return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV1, K, N, 32, false, seed));
    case Src::GptqV2ActOrder:
      return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::GptqV2, K, N, 32, true, seed));
    case Src::Awq: return q4_from_int_linear(q4_synthetic_int_linear(IntLayout::AwqGemm, K, N, 64, false, seed));
    case Src::Nf4Dq: return q4_from_nf4(q4_synthetic_nf4(N, K, false, 64, true, seed), N, K);
    default: return q4_from_nf4(q4_synthetic_nf4(N, K, true, 64, false, seed), N, K);
  }
}

std::vector<float> ref_norms(const DoraBaseWeight& W, const Lora& l) {
  std::vector<float> n(static_cast<size_t>(l.N), -1.f);
  dora_row_norms_ref(W, l.N, l.K, l.A.data(), l.B.data(), l.r, l.s, n.data());
  return n;
}

struct NormCase {
  int64_t N, K, r;
};
const NormCase kNormCases[] = {{1, 1, 1},   {7, 13, 1},  {33, 70, 8},   {64, 129, 16},
                               {20, 300, 64}, {5, 96, 65}, {48, 896, 16}, {3, 4864, 8}};

TEST(DoraKernels, RowNormsOfDenseWeightsAreTheFormulaAndTheTrainers) {
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    for (const NormCase& c : kNormCases) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dtype) << " N " << c.N << " K " << c.K << " r " << c.r);
      const Lora l = make_lora(c.N, c.K, c.r, 0.75f, 100 + c.N + c.K);
      const Dense d = make_dense(c.N, c.K, dtype, 200 + c.r);
      const std::vector<float> got = ref_norms(DoraBaseWeight{d.bytes.data(), dtype, nullptr}, l);
      EXPECT_EQ(count_bit_diffs(got, norms_formula(d.values, l)), 0) << "the formula, bit for bit";
      const NormOracle o = norms_exact(d.values, l);
      EXPECT_EQ(norms_outside(got, o, l, 1), 0) << "the exact norms";
      const std::vector<float> trainer = dora_row_norms(linear_of(d, c.N, c.K, dtype), lora_weights(l), l.s);
      EXPECT_EQ(norms_outside(got, o, l, 2, &trainer), 0) << "trainer/lora_model's dora_row_norms";
    }
  }
}

TEST(DoraKernels, RowNormsOfQ4WeightsAreThoseOfTheUnpackedWeight) {
  struct Case {
    bool format;  // a source format's layout, else a hand-made one with garbage pads
    Src src;
    Q4Kind kind;
    int64_t N, K, group, r;
    bool act_order;
  };
  const Case cases[] = {
      {true, Src::GptqV1, Q4Kind::Int, 24, 64, 0, 8, false},
      {true, Src::GptqV2ActOrder, Q4Kind::Int, 40, 96, 0, 16, true},
      {true, Src::Awq, Q4Kind::Int, 16, 200, 0, 4, false},
      {true, Src::Nf4Dq, Q4Kind::Nf4, 9, 128, 0, 16, false},
      {true, Src::Fp4, Q4Kind::Fp4, 11, 64, 0, 1, false},
      {false, Src::GptqV1, Q4Kind::Int, 1, 1, 8, 1, false},
      {false, Src::GptqV1, Q4Kind::Int, 13, 37, 16, 8, true},
      {false, Src::GptqV1, Q4Kind::Int, 50, 70, 8, 64, false},
      {false, Src::GptqV1, Q4Kind::Nf4, 7, 45, 24, 16, true},
      {false, Src::GptqV1, Q4Kind::Fp4, 30, 130, 136, 65, false},
  };
  for (const Case& c : cases) {
    const Q4Layout q = c.format ? format_q4(c.src, c.N, c.K, 300 + c.N) : padded_q4(c.kind, c.N, c.K, c.group,
                                                                                   c.act_order, 300 + c.N);
    SCOPED_TRACE(::testing::Message() << (c.format ? src_name(c.src) : "hand-made ") << (c.format ? "" : q4_kind_name(c.kind))
                                      << " N " << c.N << " K " << c.K << " group " << q.group << " r " << c.r
                                      << (q.perm.empty() ? "" : " act-order"));
    ASSERT_EQ(q.perm.empty(), !c.act_order);
    const Q4View view = q.view();
    const Lora l = make_lora(c.N, c.K, c.r, 2.0f, 400 + c.K);
    const std::vector<float> got = ref_norms(DoraBaseWeight{nullptr, DType::F32, &view}, l);
    const std::vector<float> W = q4_unpack(view);
    EXPECT_EQ(count_bit_diffs(got, ref_norms(DoraBaseWeight{W.data(), DType::F32, nullptr}, l)), 0)
        << "the dense twin on q4_unpack's weights";
    EXPECT_EQ(count_bit_diffs(got, norms_formula(W, l)), 0) << "the formula on q4_unpack's weights";
    const NormOracle o = norms_exact(W, l);
    EXPECT_EQ(norms_outside(got, o, l, 1), 0) << "the exact norms";
    const std::vector<float> trainer = dora_row_norms(LinearWeight::from_fp32(W, c.N, c.K), lora_weights(l), l.s);
    EXPECT_EQ(norms_outside(got, o, l, 2, &trainer), 0) << "trainer/lora_model's dora_row_norms";
  }
}

// The bounds above are tight enough to see a wrong formula.
TEST(DoraKernels, RowNormMutantsFailTheBounds) {
  const int64_t N = 40, K = 96, r = 16;
  const Lora l = make_lora(N, K, r, 0.75f, 7);
  const Dense d = make_dense(N, K, DType::F32, 8);
  const NormOracle o = norms_exact(d.values, l);
  Lora no_s = l;
  no_s.s = 1.f;  // s dropped
  const std::vector<float> mutant = ref_norms(DoraBaseWeight{d.bytes.data(), DType::F32, nullptr}, no_s);
  EXPECT_GT(norms_outside(mutant, o, l, 1, nullptr, false), N / 2) << "s dropped";
  Lora transposed = l;  // B A read as B[i, j] (the wrong stride)
  for (int64_t j = 0; j < N; ++j)
    for (int64_t i = 0; i < r; ++i) transposed.B[j * r + i] = l.B[(i * N + j) % (N * r)];
  const std::vector<float> mutant2 = ref_norms(DoraBaseWeight{d.bytes.data(), DType::F32, nullptr}, transposed);
  EXPECT_GT(norms_outside(mutant2, o, l, 1, nullptr, false), N / 2) << "B's stride";
  // The act-order permutation ignored: the right codes at the wrong input columns.
  const Q4Layout q = padded_q4(Q4Kind::Int, N, K, 32, true, 9);
  Q4View no_perm = q.view();
  no_perm.perm = nullptr;
  const std::vector<float> W = q4_unpack(q.view());
  const std::vector<float> mutant3 = ref_norms(DoraBaseWeight{nullptr, DType::F32, &no_perm}, l);
  EXPECT_GT(norms_outside(mutant3, norms_exact(W, l), l, 1, nullptr, false), N / 2) << "perm ignored";
}

// ---------------------------------------------------------------------------------------------------------------
// Gain, scale rows, combine, split grad

struct Rows {
  int64_t rows, N;
  std::vector<float> m, n, z, v, y, dy;
};

// n > 0 around 1, m = n·(1 + 0.3·N(0, 1)): g = m / n spread around 1, g − 1 of either sign.
Rows make_rows(int64_t rows, int64_t N, uint64_t seed) {
  Rows d{rows, N, {}, {}, {}, {}, {}, {}};
  d.n = test::normal_vector(N, seed);
  for (float& x : d.n) x = std::fabs(x) + 0.5f;
  d.m = test::normal_vector(N, seed + 1, 0.3f);
  for (int64_t j = 0; j < N; ++j) d.m[j] = d.n[j] * (1.f + d.m[j]);
  d.z = test::normal_vector(rows * N, seed + 2);
  d.v = test::normal_vector(rows * N, seed + 3, 0.2f);
  d.y = test::normal_vector(rows * N, seed + 4);
  d.dy = test::normal_vector(rows * N, seed + 5);
  return d;
}

struct RowsCase {
  int64_t rows, N;
};
const RowsCase kRowsCases[] = {{1, 1}, {1, 13}, {7, 96}, {7, 257}, {300, 13}, {300, 200}, {33, 1}};

TEST(DoraKernels, GainIsTheQuotient) {
  const Rows d = make_rows(1, 257, 11);
  std::vector<float> g(257);
  dora_gain_ref(d.m.data(), d.n.data(), 257, g.data());
  for (int64_t j = 0; j < 257; ++j) ASSERT_TRUE(same_bits(g[j], fdiv(d.m[j], d.n[j]))) << j;
}

// PEFT's unmerged inference: result = y_base + b + (g − 1)·y_base + g·v, y_base = x Ŵᵀ, v the LoRA branch's s·u Bᵀ.
TEST(DoraKernels, ScaleRowsIsPeftsFormula) {
  for (const RowsCase& c : kRowsCases) {
    for (int bias_kind = 0; bias_kind < 4; ++bias_kind) {  // none, F32, BF16, F16
      const DType dtype = bias_kind == 2 ? DType::BF16 : bias_kind == 3 ? DType::F16 : DType::F32;
      SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " N " << c.N << " bias "
                                        << (bias_kind ? dtype_name(dtype) : "none"));
      const Rows d = make_rows(c.rows, c.N, 20 + c.N);
      const Dense bias = make_dense(1, c.N, dtype, 21 + c.rows, 1.f);
      const std::vector<float> b = bias_kind ? bias.values : std::vector<float>(static_cast<size_t>(c.N), 0.f);
      std::vector<float> g(static_cast<size_t>(c.N));
      dora_gain_ref(d.m.data(), d.n.data(), c.N, g.data());
      const std::vector<float>& y_base = d.z;
      std::vector<float> y(static_cast<size_t>(c.rows * c.N));  // the forward's y = x Ŵᵀ + b + s·u Bᵀ, in fp32
      for (int64_t i = 0; i < c.rows * c.N; ++i) y[i] = fadd(fadd(y_base[i], b[i % c.N]), d.v[i]);
      std::vector<float> got = y;
      dora_scale_rows_ref(got.data(), c.rows, c.N, g.data(), bias_kind ? bias.bytes.data() : nullptr, dtype);
      int64_t formula_bad = 0, peft_bad = 0, no_bias_bad = 0, sign_bad = 0;
      for (int64_t t = 0; t < c.rows; ++t) {
        for (int64_t j = 0; j < c.N; ++j) {
          const int64_t i = t * c.N + j;
          const float want = bias_kind ? fadd(fmul(g[j], y[i]), fmul(fsub(1.f, g[j]), b[j])) : fmul(g[j], y[i]);
          formula_bad += same_bits(got[i], want) ? 0 : 1;
          const long double G = static_cast<long double>(d.m[j]) / d.n[j];
          const long double peft = (static_cast<long double>(y_base[i]) + b[j]) + (G - 1) * y_base[i] + G * d.v[i];
          const double mass = std::fabs(static_cast<double>(G)) * (std::fabs(y_base[i]) + std::fabs(b[j]) +
                                                                    std::fabs(d.v[i])) +
                              std::fabs(static_cast<double>(1 - G)) * std::fabs(b[j]);
          const double tol = kScaleRowsUlps * kU * mass;
          const auto outside = [&](float x) { return !(std::fabs(static_cast<double>(x - peft)) <= tol); };
          if (outside(got[i]) && ++peft_bad <= 5)
            ADD_FAILURE() << "row " << t << " col " << j << ": " << got[i] << " vs " << static_cast<double>(peft);
          // Mutants: the bias term dropped; (g − 1)·b in place of (1 − g)·b.
          no_bias_bad += outside(fmul(g[j], y[i])) ? 1 : 0;
          sign_bad += outside(fadd(fmul(g[j], y[i]), fmul(fsub(g[j], 1.f), b[j]))) ? 1 : 0;
        }
      }
      EXPECT_EQ(formula_bad, 0) << "the formula, bit for bit";
      EXPECT_EQ(peft_bad, 0);
      if (bias_kind && c.rows * c.N >= 13) {
        EXPECT_GT(no_bias_bad, c.rows * c.N / 2) << "mutant without (1 − g)·b";
        EXPECT_GT(sign_bad, c.rows * c.N / 2) << "mutant with (g − 1)·b";
      }
    }
  }
}

TEST(DoraKernels, CombineIsTheFormulaAndTheTrainers) {
  for (const RowsCase& c : kRowsCases) {
    SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " N " << c.N);
    const Rows d = make_rows(c.rows, c.N, 30 + c.N + c.rows);
    std::vector<float> got = d.y, trainer = d.y;
    dora_combine_ref(d.m.data(), d.n.data(), d.z.data(), d.v.data(), c.rows, c.N, got.data());
    dora_combine(d.m.data(), d.n.data(), d.z.data(), d.v.data(), c.rows, c.N, trainer.data());
    int64_t formula_bad = 0, exact_bad = 0, trainer_bad = 0, trainer_same = 0, mutant_bad = 0;
    for (int64_t t = 0; t < c.rows; ++t) {
      for (int64_t j = 0; j < c.N; ++j) {
        const int64_t i = t * c.N + j;
        const float g = fdiv(d.m[j], d.n[j]);
        const float want = fadd(d.y[i], fadd(fmul(fsub(g, 1.f), d.z[i]), fmul(g, d.v[i])));
        formula_bad += same_bits(got[i], want) ? 0 : 1;
        const long double G = static_cast<long double>(d.m[j]) / d.n[j];
        const long double exact = d.y[i] + (G - 1) * d.z[i] + G * d.v[i];
        // g's rounding moves g − 1 by u·|g|, not u·|g − 1|: |g|·|z| is in the magnitudes as well.
        const double terms = std::fabs(d.y[i]) + std::fabs(static_cast<double>((G - 1) * d.z[i])) +
                             std::fabs(static_cast<double>(G)) * (std::fabs(d.z[i]) + std::fabs(d.v[i]));
        const auto outside = [&](float x) { return !(std::fabs(static_cast<double>(x - exact)) <= kCombineUlps * kU * terms); };
        if (outside(got[i]) && ++exact_bad <= 5)
          ADD_FAILURE() << "row " << t << " col " << j << ": " << got[i] << " vs " << static_cast<double>(exact);
        // Mutant: g in place of g − 1 (the base term counted twice).
        mutant_bad += outside(fadd(d.y[i], fadd(fmul(g, d.z[i]), fmul(g, d.v[i])))) ? 1 : 0;
        const double inner = std::fabs(static_cast<double>((G - 1) * d.z[i])) + std::fabs(static_cast<double>(G * d.v[i]));
        const double tol = kTrainerFmaUlps * kU * inner + ulp_of(got[i]);
        if (!(std::fabs(static_cast<double>(got[i]) - trainer[i]) <= tol) && ++trainer_bad <= 5)
          ADD_FAILURE() << "trainer row " << t << " col " << j << ": " << got[i] << " vs " << trainer[i];
        trainer_same += same_bits(got[i], trainer[i]) ? 1 : 0;
      }
    }
    EXPECT_EQ(formula_bad, 0) << "the formula, bit for bit";
    EXPECT_EQ(exact_bad, 0);
    EXPECT_EQ(trainer_bad, 0) << "trainer/lora_model's dora_combine (" << trainer_same << " of " << c.rows * c.N
                              << " the same bits)";
    EXPECT_GT(mutant_bad, c.rows * c.N / 2) << "mutant with g in place of g − 1";
  }
}

TEST(DoraKernels, SplitGradIsTheFormulaAndTheTrainersBitForBit) {
  for (const RowsCase& c : kRowsCases) {
    SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " N " << c.N);
    const Rows d = make_rows(c.rows, c.N, 40 + c.N + c.rows);
    const std::vector<float> dm0 = test::normal_vector(c.N, 41 + c.N);  // accumulated into
    std::vector<float> dm = dm0, dz(static_cast<size_t>(c.rows * c.N), -7.f), dv = dz;
    std::vector<float> tdm = dm0, tdz = dz, tdv = dz;
    dora_split_grad_ref(d.m.data(), d.n.data(), d.z.data(), d.v.data(), d.dy.data(), c.rows, c.N, dm.data(), dz.data(),
                        dv.data());
    dora_split_grad(d.m.data(), d.n.data(), d.z.data(), d.v.data(), d.dy.data(), c.rows, c.N, tdm.data(), tdz.data(),
                    tdv.data());
    EXPECT_EQ(count_bit_diffs(dm, tdm), 0) << "dm vs the trainer";
    EXPECT_EQ(count_bit_diffs(dz, tdz), 0) << "dz vs the trainer";
    EXPECT_EQ(count_bit_diffs(dv, tdv), 0) << "dv vs the trainer";
    int64_t bad = 0;
    for (int64_t j = 0; j < c.N; ++j) {
      const float g = fdiv(d.m[j], d.n[j]);
      long double sum = 0, mass = 0;
      double ordered = 0;
      for (int64_t t = 0; t < c.rows; ++t) {
        const int64_t i = t * c.N + j;
        bad += same_bits(dz[i], fmul(fsub(g, 1.f), d.dy[i])) ? 0 : 1;
        bad += same_bits(dv[i], fmul(g, d.dy[i])) ? 0 : 1;
        const float zv = fadd(d.z[i], d.v[i]);
        const double term = static_cast<double>(d.dy[i]) * zv;  // exact
        ordered += term;
        sum += term;
        mass += std::fabs(term);
      }
      bad += same_bits(dm[j], fadd(dm0[j], static_cast<float>(ordered / d.n[j]))) ? 0 : 1;
      // dm against the exact sum: the double sum's error, then the roundings of the quotient to float and of the sum.
      const long double exact = dm0[j] + sum / d.n[j];
      const float q = static_cast<float>(ordered / d.n[j]);
      const double tol = c.rows * kSumTolPerRow * static_cast<double>(mass) / d.n[j] + ulp_of(q) + ulp_of(dm[j]);
      EXPECT_LE(std::fabs(static_cast<double>(dm[j] - exact)), tol) << "dm " << j;
      // Mutant: dm without the division by n.
      if (std::fabs(d.n[j] - 1.f) > 0.1f && std::fabs(static_cast<double>(sum)) > 1e-3) {
        EXPECT_GT(std::fabs(static_cast<double>(fadd(dm0[j], static_cast<float>(ordered)) - exact)), tol)
            << "mutant dm without / n, column " << j;
      }
    }
    EXPECT_EQ(bad, 0) << "the formula, bit for bit";
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Refusals

TEST(DoraKernels, RefusesBadArguments) {
  const int64_t N = 12, K = 16, r = 2;
  const std::vector<float> W(N * K, 0.5f), A(r * K, 0.1f), B(N * r, 0.1f), x(N * 3, 1.f);
  std::vector<float> n(N), y(N * 3), out(N * 3), out2(N * 3), dm(N);
  const DoraBaseWeight dense{W.data(), DType::F32, nullptr};
  const auto norms = [&](const DoraBaseWeight& w, int64_t NN, int64_t KK, const float* a, const float* b, int64_t rr,
                         float* nn) { dora_row_norms_ref(w, NN, KK, a, b, rr, 1.f, nn); };
  const char* fn = "dora_row_norms_ref";
  test::expect_error([&] { norms(dense, 0, K, A.data(), B.data(), r, n.data()); }, {fn, "bad shape", "N=0"});
  test::expect_error([&] { norms(dense, N, -3, A.data(), B.data(), r, n.data()); }, {fn, "bad shape", "K=-3"});
  test::expect_error([&] { norms(dense, N, K, A.data(), B.data(), 0, n.data()); }, {fn, "bad shape", "r=0"});
  test::expect_error([&] { norms(dense, N, K, nullptr, B.data(), r, n.data()); }, {fn, "null pointer (A)"});
  test::expect_error([&] { norms(dense, N, K, A.data(), nullptr, r, n.data()); }, {fn, "null pointer (B)"});
  test::expect_error([&] { norms(dense, N, K, A.data(), B.data(), r, nullptr); }, {fn, "null pointer (n)"});
  test::expect_error([&] { norms(DoraBaseWeight{}, N, K, A.data(), B.data(), r, n.data()); },
                     {fn, "null pointer", "dense weight"});
  test::expect_error([&] { norms(DoraBaseWeight{W.data(), DType::I32, nullptr}, N, K, A.data(), B.data(), r, n.data()); },
                     {fn, "weight dtype", dtype_name(DType::I32), "not supported"});
  const Q4Layout q = padded_q4(Q4Kind::Int, N, K, 8, false, 1);
  const Q4View view = q.view();
  test::expect_error([&] { norms(DoraBaseWeight{nullptr, DType::F32, &view}, N + 1, K, A.data(), B.data(), r, n.data()); },
                     {fn, "Q4 weight is [N=12, K=16]", "[N=13, K=16]"});
  test::expect_error([&] { norms(DoraBaseWeight{nullptr, DType::F32, &view}, N, K - 8, A.data(), B.data(), r, n.data()); },
                     {fn, "Q4 weight is [N=12, K=16]", "[N=12, K=8]"});
  Q4View bad_group = view;
  bad_group.group = 12;
  test::expect_error([&] { norms(DoraBaseWeight{nullptr, DType::F32, &bad_group}, N, K, A.data(), B.data(), r, n.data()); },
                     {fn, "group 12"});

  test::expect_error([&] { dora_gain_ref(x.data(), x.data(), 0, n.data()); }, {"dora_gain_ref", "N=0"});
  test::expect_error([&] { dora_gain_ref(x.data(), nullptr, N, n.data()); }, {"dora_gain_ref", "null pointer (n)"});

  fn = "dora_scale_rows_ref";
  test::expect_error([&] { dora_scale_rows_ref(y.data(), 0, N, x.data(), nullptr, DType::F32); }, {fn, "rows=0"});
  test::expect_error([&] { dora_scale_rows_ref(y.data(), 3, -1, x.data(), nullptr, DType::F32); }, {fn, "N=-1"});
  test::expect_error([&] { dora_scale_rows_ref(y.data(), 3, N, nullptr, nullptr, DType::F32); }, {fn, "null pointer (g)"});
  test::expect_error([&] { dora_scale_rows_ref(nullptr, 3, N, x.data(), nullptr, DType::F32); }, {fn, "null pointer (y)"});
  test::expect_error([&] { dora_scale_rows_ref(y.data(), 3, N, x.data(), x.data(), DType::F64); },
                     {fn, "bias dtype", dtype_name(DType::F64), "not supported"});

  fn = "dora_combine_ref";
  test::expect_error([&] { dora_combine_ref(x.data(), x.data(), x.data(), x.data(), -2, N, y.data()); },
                     {fn, "rows=-2"});
  test::expect_error([&] { dora_combine_ref(x.data(), x.data(), x.data(), nullptr, 3, N, y.data()); },
                     {fn, "null pointer (v)"});
  test::expect_error([&] { dora_combine_ref(x.data(), x.data(), x.data(), x.data(), 3, N, nullptr); },
                     {fn, "null pointer (y)"});

  fn = "dora_split_grad_ref";
  test::expect_error([&] {
    dora_split_grad_ref(x.data(), x.data(), x.data(), x.data(), x.data(), 3, 0, dm.data(), out.data(), out2.data());
  }, {fn, "N=0"});
  test::expect_error([&] {
    dora_split_grad_ref(x.data(), x.data(), x.data(), x.data(), nullptr, 3, N, dm.data(), out.data(), out2.data());
  }, {fn, "null pointer (dy)"});
  test::expect_error([&] {
    dora_split_grad_ref(x.data(), x.data(), x.data(), x.data(), x.data(), 3, N, dm.data(), out.data(), nullptr);
  }, {fn, "null pointer (dv)"});
  test::expect_error([&] {
    dora_split_grad_ref(nullptr, x.data(), x.data(), x.data(), x.data(), 3, N, dm.data(), out.data(), out2.data());
  }, {fn, "null pointer (m)"});
}

}  // namespace
}  // namespace qwenq
