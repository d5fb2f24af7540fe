// CPU forward throughput of a Qwen2.5-0.5B-shaped model with random weights (speed does not depend on the
// values): prefill tokens/s at several lengths, and decode tokens/s with the KV cache after a 64-token
// prompt (each decode step includes the lm_head over the 151,936-row vocabulary).
// The same with a LoRA adapter (r 16, all seven targets, random A and B), /0 applied unmerged on the model as stored
// (QwenModel::attach_adapter: what eval/generate/chat do) and /1 merged into an fp32 copy of each Linear
// (merge_adapter_in_memory: their path before); the merged copy's bytes beside the base's are printed once.
//
//   build/bench_forward_cpu [--model DIR] [benchmark flags]
// Without --model, a random bf16 qwen2.5-0.5b model is written once to $TMPDIR/qwenq-bench-0.5b; give --model a
// quantized directory (qwen-quant nf4/gptq --model that directory) to see a 4-bit base.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "core/files.h"
#include "core/rng.h"
#include "core/threads.h"
#include "lora/lora_adapter.h"
#include "trainer/lora_inference.h"
#include "trainer/lora_merge.h"
#include "trainer/lora_model.h"
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

// The adapter: PEFT's init for A, B drawn at the same scale (a trained adapter's B is far from its zero init).
const qwenq::LoraAdapter& adapter() {
  static const qwenq::LoraAdapter a = [] {
    qwenq::LoraConfig c;
    c.r = 16;
    c.alpha = 32;
    c.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    qwenq::LoraAdapter out(qwenq::lora_dims_of(model().config()), c);
    out.init_peft(1);
    qwenq::Rng rng(2);
    for (size_t i = 0; i < out.slots().size(); ++i) {
      for (float& v : out.weights(i).B) v = 0.01f * rng.normal();
    }
    return out;
  }();
  return a;
}

// mode 0: the base model with the adapter attached unmerged; 1: a second copy with the adapter merged in.
qwenq::QwenModel& adapted(int64_t mode) {
  static const qwenq::LoraInferenceLayout layout =
      qwenq::lora_inference_layout(adapter(), model().config(), "the benchmark's adapter");
  static qwenq::QwenModel& unmerged = [&]() -> qwenq::QwenModel& {
    static qwenq::QwenModel m(g_model_dir);
    m.attach_adapter(&layout);
    return m;
  }();
  static qwenq::QwenModel& merged = []() -> qwenq::QwenModel& {
    static qwenq::QwenModel m(g_model_dir);
    qwenq::merge_adapter_in_memory(m, adapter());
    double fp32 = 0;  // what the merge holds: each adapted Linear's N·K values in fp32
    for (const qwenq::LoraSlot& sl : adapter().slots()) {
      const qwenq::LoraShape sh = qwenq::lora_target_shape(adapter().dims(), sl.target);
      fp32 += 4.0 * sh.N * sh.K;
    }
    std::fprintf(stderr, "the merged copy holds %.1f MiB of fp32 Linears; the unmerged adapter's arena %.1f MiB\n",
                 fp32 / 1048576.0, layout.bytes() / 1048576.0);
    return m;
  }();
  return mode == 0 ? unmerged : merged;
}

double forward_flops_per_token(const qwenq::QwenConfig& c, int64_t T) {
  const double C = c.hidden_size, I = c.intermediate_size;
  const double per_layer = 2 * C * (c.q_dim() + 2 * c.kv_dim()) + 2 * c.q_dim() * C + 3 * 2 * C * I +
                           2.0 * 2 * c.q_dim() * (T / 2.0);  // QK^T and PV over the causal half
  return c.num_layers * per_layer;
}

// Prefill of T tokens by m: tok/s and GFLOP/s.
void prefill(benchmark::State& state, const qwenq::QwenModel& m, int64_t T) {
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

// `steps` decode steps by m after a 64-token prompt (prefill, measured above, so not timed): tok/s.
void decode(benchmark::State& state, const qwenq::QwenModel& m, int64_t steps) {
  for (auto _ : state) {
    state.PauseTiming();
    qwenq::KvCache cache = m.make_cache(64 + steps);
    m.forward_step(tokens(64), &cache);
    state.ResumeTiming();
    for (int64_t i = 0; i < steps; ++i) benchmark::DoNotOptimize(m.forward_step({static_cast<int32_t>(i % 200)}, &cache));
  }
  state.counters["tok/s"] = benchmark::Counter(static_cast<double>(steps), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Prefill(benchmark::State& state) { prefill(state, model(), state.range(0)); }
void BM_Decode(benchmark::State& state) { decode(state, model(), state.range(0)); }
void BM_PrefillAdapter(benchmark::State& state) { prefill(state, adapted(state.range(1)), state.range(0)); }
void BM_DecodeAdapter(benchmark::State& state) { decode(state, adapted(state.range(1)), state.range(0)); }

BENCHMARK(BM_Prefill)->Arg(16)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_Decode)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_PrefillAdapter)->ArgsProduct({{512}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_DecodeAdapter)->ArgsProduct({{16}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

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
