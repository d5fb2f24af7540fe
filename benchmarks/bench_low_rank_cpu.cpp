// The rank-r step of LoftQ (lora/low_rank.h) on Qwen2.5 Linear shapes: the exact path (double Gram matrix + eigen
// decomposition) against the randomized one (4 subspace iterations) in the same run, and the error each leaves,
// on a matrix shaped like a 4-bit residual (noise with a weak low-rank part). Time per Linear; a whole model's LoftQ
// is about (Linears per layer) x layers x that.
//
//   build/bench_low_rank_cpu [--benchmark_filter=7b] [benchmark flags]      (threads: OMP_NUM_THREADS)
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "lora/low_rank.h"

namespace {

// A residual-like matrix: iid noise plus 32 directions of decaying strength.
std::vector<float> residual(int64_t N, int64_t K, uint64_t seed) {
  qwenq::Rng rng(seed);
  std::vector<float> E(N * K);
  for (float& e : E) e = static_cast<float>(0.01 * rng.normal());
  for (int j = 0; j < 32; ++j) {
    std::vector<float> u(N), v(K);
    for (float& x : u) x = static_cast<float>(rng.normal());
    for (float& x : v) x = static_cast<float>(rng.normal());
    const float a = static_cast<float>(0.05 * std::pow(0.9, j) / std::sqrt(double(K)));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) E[n * K + k] += a * u[n] * v[k];
  }
  return E;
}

void run(benchmark::State& state, int64_t N, int64_t K, bool exact) {
  const int64_t r = state.range(0);
  const std::vector<float> E = residual(N, K, 1);
  qwenq::LowRankOptions opt;
  opt.exact_max_dim = exact ? (int64_t{1} << 40) : 0;
  qwenq::LowRankFactors f;
  for (auto _ : state) {
    f = qwenq::low_rank_approx(E.data(), N, K, r, opt);
    benchmark::DoNotOptimize(f.L.data());
  }
  double total = 0;
  for (float e : E) total += double(e) * e;
  state.counters["error/||E||"] = qwenq::low_rank_error(E.data(), f) / std::sqrt(total);
}

}  // namespace

// Qwen2.5-0.5B gate/up [4864, 896] and q/o [896, 896]; Qwen2.5-7B gate/up [18944, 3584] (randomized only: the exact
// path there is minutes per Linear).
BENCHMARK_CAPTURE(run, 0_5b_gate_exact, 4864, 896, true)->Arg(16)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_CAPTURE(run, 0_5b_gate_randomized, 4864, 896, false)->Arg(16)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_CAPTURE(run, 0_5b_q_exact, 896, 896, true)->Arg(16)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_CAPTURE(run, 0_5b_q_randomized, 896, 896, false)->Arg(16)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_CAPTURE(run, 7b_gate_randomized, 18944, 3584, false)->Arg(16)->Arg(64)->Unit(benchmark::kMillisecond)->Iterations(1);

BENCHMARK_MAIN();
