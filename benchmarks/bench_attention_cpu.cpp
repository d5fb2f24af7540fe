// CPU decode attention, one query per sequence against its KV cache (kernels/attention_decode.h):
// attention_decode_cpu (the CPU model's decode step: the query group at once, Eigen GEMMs over 256-key blocks)
// against attention_decode_ref (plain loops, a (sequence, head) per task, the GPU kernels' twin) in the same run, fp32 and bf16 caches, at the Qwen2.5-0.5B (14/2, D 64), 7B (28/4, D 128) and 72B (64/8, D 128)
// heads, one sequence of 1K to 32K cached keys. Counters: GB/s of the unique K/V bytes (each key and value row of
// the sequence once); the speed-up is the ratio of the two rows' times.
//
//   build/bench_attention_cpu [benchmark flags]     (threads: QWENQ_THREADS or all cores)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/attention_decode.h"

namespace {

struct Heads {
  int64_t H, Hkv, D;
};
constexpr Heads kHeads[] = {{14, 2, 64}, {28, 4, 128}, {64, 8, 128}};

// args: heads index, cached keys, bf16 cache (0/1), variant (0 ref, 1 cpu).
void BM_DecodeAttention(benchmark::State& state) {
  const Heads h = kHeads[state.range(0)];
  const int64_t len = state.range(1);
  const bool bf16 = state.range(2) != 0, cpu = state.range(3) != 0;
  qwenq::Rng rng(7);
  std::vector<float> q(static_cast<size_t>(h.H * h.D)), out(q.size());
  for (auto& x : q) x = static_cast<float>(rng.normal());
  const size_t n = static_cast<size_t>(len * h.Hkv * h.D);
  std::vector<float> k(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    k[i] = static_cast<float>(rng.normal());
    v[i] = rng.uniform(-1.f, 1.f);
  }
  std::vector<uint16_t> k16(n), v16(n);
  for (size_t i = 0; i < n; ++i) {
    k16[i] = qwenq::f32_to_bf16(k[i]);
    v16[i] = qwenq::f32_to_bf16(v[i]);
  }
  const int32_t lens = static_cast<int32_t>(len);
  for (auto _ : state) {
    if (bf16 && cpu)
      qwenq::attention_decode_bf16_cpu(q.data(), k16.data(), v16.data(), &lens, 1, h.H, h.Hkv, h.D, len, len,
                                       out.data());
    else if (bf16)
      qwenq::attention_decode_bf16_ref(q.data(), k16.data(), v16.data(), &lens, 1, h.H, h.Hkv, h.D, len, len,
                                       out.data());
    else if (cpu)
      qwenq::attention_decode_cpu(q.data(), k.data(), v.data(), &lens, 1, h.H, h.Hkv, h.D, len, len, out.data());
    else
      qwenq::attention_decode_ref(q.data(), k.data(), v.data(), &lens, 1, h.H, h.Hkv, h.D, len, len, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  const double bytes = 2.0 * static_cast<double>(n) * (bf16 ? 2 : 4);
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(cpu ? "cpu" : "ref") + (bf16 ? " bf16" : " f32") + " H" + std::to_string(h.H) + "/" +
                 std::to_string(h.Hkv) + " D" + std::to_string(h.D));
}

void Args(benchmark::internal::Benchmark* b) {
  for (int64_t heads = 0; heads < 3; ++heads)
    for (int64_t len : {1024, 4096, 32768})
      for (int64_t bf16 : {0, 1})
        for (int64_t cpu : {0, 1}) b->Args({heads, len, bf16, cpu});
}

BENCHMARK(BM_DecodeAttention)->Apply(Args)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.3);

}  // namespace

BENCHMARK_MAIN();
