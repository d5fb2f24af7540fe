// CPU forward throughput of a Qwen2.5-0.5B-shaped model with random weights (speed does not depend on the
// values): prefill tokens/s at several lengths, and decode tokens/s with the KV cache after a 64-token
// prompt (each decode step includes the lm_head over the 151,936-row vocabulary).
//
//   build/bench_forward_cpu [--model DIR] [benchmark flags]
// Without --model, a random bf16 qwen2.5-0.5b model is written once to $TMPDIR/qwenq-bench-0.5b.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "core/files.h"
#include "core/threads.h"
#include "trainer/qwen_model.h"
#include "trainer/random_model.h"

namespace {

std::string g_model_dir;

qwenq::QwenModel& model() {
  static qwenq::QwenModel m(g_model_dir);
  return m;
}

std::vector<int32_t> tokens(int64_t n) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 7919) % 255);
  return t;
}

double forward_flops_per_token(const qwenq::QwenConfig& c, int64_t T) {
  const double C = c.hidden_size, I = c.intermediate_size;
  const double per_layer = 2 * C * (c.q_dim() + 2 * c.kv_dim()) + 2 * c.q_dim() * C + 3 * 2 * C * I +
                           2.0 * 2 * c.q_dim() * (T / 2.0);  // QK^T and PV over the causal half
  return c.num_layers * per_layer;
}

void BM_Prefill(benchmark::State& state) {
  const int64_t T = state.range(0);
  auto& m = model();
  auto batch = qwenq::PackedBatch::from_sequences({tokens(T)});
  std::vector<float> hidden;
  for (auto _ : state) {
    m.forward_hidden(batch, &hidden);
    benchmark::DoNotOptimize(hidden.data());
  }
  state.counters["tok/s"] = benchmark::Counter(static_cast<double>(T), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(forward_flops_per_token(m.config(), T) * T / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Decode(benchmark::State& state) {
  const int64_t steps = state.range(0);
  auto& m = model();
  for (auto _ : state) {
    state.PauseTiming();  // the 64-token prompt is prefill, measured above
    qwenq::KvCache cache = m.make_cache(64 + steps);
    m.forward_step(tokens(64), &cache);
    state.ResumeTiming();
    for (int64_t i = 0; i < steps; ++i) benchmark::DoNotOptimize(m.forward_step({static_cast<int32_t>(i % 200)}, &cache));
  }
  state.counters["tok/s"] = benchmark::Counter(static_cast<double>(steps), benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_Prefill)->Arg(16)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_Decode)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--model") == 0) {
      g_model_dir = argv[i + 1];
      for (int j = i; j + 2 <= argc; ++j) argv[j] = argv[j + 2];
      argc -= 2;
      break;
    }
  }
  if (g_model_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    g_model_dir = std::string(tmp ? tmp : "/tmp") + "/qwenq-bench-0.5b";
    if (!qwenq::file_exists(g_model_dir + "/model.safetensors")) {
      std::fprintf(stderr, "writing a random qwen2.5-0.5b model to %s (once)\n", g_model_dir.c_str());
      qwenq::RandomModelOptions o;
      o.preset = "qwen2.5-0.5b";
      o.out_dir = g_model_dir;
      o.overwrite = true;
      qwenq::write_random_model(o);
    }
  }
  std::fprintf(stderr, "model %s, %d threads\n", g_model_dir.c_str(), qwenq::num_threads());
  {  // warm-up: fault the mapped weights in, so the first timed iteration does not pay for page-ins
    qwenq::KvCache cache = model().make_cache(8);
    model().forward_step(tokens(8), &cache);
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
