#pragma once
// The exponentials of the CPU cross-entropy (kernels/loss_ref.cpp), over whole rows of logits:
//
//   exp_sum_row:   Σ_v exp(l[v] − m)           (fp32 exponentials, their sum in double)
//   exp_scale_row: out[v] = exp(l[v] − m) · c  (out may be l)
//
// exp_f32(x), e^x in fp32 within kExpMaxUlp ulp (tests/test_exp_rows.cpp, against exp in double):
//   x clamped to [−104, 89] (below, e^x rounds to 0; above, to +inf); NaN returned as it is;
//   n = rint(x · log2 e)                    (one fma onto 1.5·2^23);
//   r = x − n·ln2                           (ln2 in two parts, one fma each; |r| <= ln2/2);
//   p = Σ_{k=0..7} r^k / k!                 (Horner, one fma a step; the truncation is below 1e-8 relative);
//   e^x = (p · 2^⌊n/2⌋) · 2^(n − ⌊n/2⌋)    (the first product exact, the second rounds once, subnormals too).
// The sum runs over 16 lanes in double: element v goes to lane v mod 16, in order, and the lanes are added in a
// fixed tree (8, 4, 2, 1). Every operation is one IEEE operation written out, so the AVX-512 path, the AVX2 + FMA
// path and the portable loop give the same bits (the file is built with -ffp-contract=off); the best one the CPU
// has runs (checked at run time).
#include <cstdint>

namespace qwenq {

// The bound tests/test_exp_rows.cpp checks exp_f32 against (measured worst 0.915 ulp over every 97th float of the
// range, at x = 26.686).
constexpr double kExpMaxUlp = 1.0;

float exp_f32(float x);
double exp_sum_row(const float* l, int64_t n, float m);
void exp_scale_row(const float* l, int64_t n, float m, float c, float* out);

// Which loop runs: 0 portable, 1 AVX2 + FMA, 2 AVX-512.
int exp_rows_path();
// The best path this CPU has (what exp_rows_path returns unless a test chose another).
int exp_rows_best_path();
// For tests: run path p (at most exp_rows_best_path()); -1 restores the default.
void set_exp_rows_path_for_testing(int p);

}  // namespace qwenq
