// CPU decode attention, one query per sequence against its KV cache (kernels/attention_decode.h):
// attention_decode_cpu (the CPU model's decode step: the query group at once, Eigen GEMMs over 256-key blocks)
// against attention_decode_ref (plain loops, a (sequence, head) per task, the GPU kernels' twin) in the same run, fp32 and bf16 caches, at the Qwen2.5-0.5B (14/2, D 64), 7B (28/4, D 128) and 72B (64/8, D 128)
// heads, one sequence of 1K to 32K cached keys. Counters: GB/s of the unique K/V bytes (each key and value row of
// the sequence once); the speed-up is the ratio of the two rows' times.
//
// Also the packed causal attention of a prompt or a training sequence (BM_PackedAttention, forward and backward).
//
//   build/bench_attention_cpu [benchmark flags]     (threads: QWENQ_THREADS or all cores)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/attention.h"
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

// The packed causal attention of a prompt or a training sequence (attention_forward_ref, with lse; and its backward)
// over one sequence of T tokens: args heads index, T, backward (0/1), bf16 operands (0/1: the fp32 products, or
// --cpu-matmul bf16's, attention_forward_ref(..., bf16 = true) on AVX512_BF16 where the CPU has it, the baseline in
// the same run). GFLOP/s counts the causal half's products:
// forward 2·T²·D per head (S = QKᵀ and PV over T²/2 entries), backward 2.5x that (S, dP, dV, dK, dQ).
void BM_PackedAttention(benchmark::State& state) {
  const Heads h = kHeads[state.range(0)];
  const int64_t T = state.range(1);
  const bool backward = state.range(2) != 0, bf16 = state.range(3) != 0;
  qwenq::Rng rng(9);
  std::vector<float> q(static_cast<size_t>(T * h.H * h.D)), k(static_cast<size_t>(T * h.Hkv * h.D)), v(k.size());
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = static_cast<float>(rng.normal());
  std::vector<float> out(q.size()), lse(static_cast<size_t>(T * h.H)), dout(q.size()), dq(q.size()), dk(k.size()),
      dv(k.size());
  for (auto& x : dout) x = static_cast<float>(rng.normal());
  const int32_t cu[2] = {0, static_cast<int32_t>(T)};
  qwenq::attention_forward_ref(q.data(), k.data(), v.data(), cu, 1, h.H, h.Hkv, h.D, out.data(), lse.data(), bf16);
  for (auto _ : state) {
    if (backward)
      qwenq::attention_backward_ref(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), cu, 1, h.H,
                                    h.Hkv, h.D, dq.data(), dk.data(), dv.data(), bf16);
    else
      qwenq::attention_forward_ref(q.data(), k.data(), v.data(), cu, 1, h.H, h.Hkv, h.D, out.data(), lse.data(),
                                   bf16);
    benchmark::DoNotOptimize(out.data());
    benchmark::DoNotOptimize(dq.data());
  }
  const double flops = 2.0 * static_cast<double>(T) * static_cast<double>(T) * static_cast<double>(h.D * h.H) *
                       (backward ? 2.5 : 1.0);
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(backward ? "backward" : "forward") + (bf16 ? " bf16" : " fp32") + " H" +
                 std::to_string(h.H) + "/" + std::to_string(h.Hkv) + " D" + std::to_string(h.D));
}

void PackedArgs(benchmark::internal::Benchmark* b) {
  for (int64_t heads = 0; heads < 2; ++heads)
    for (int64_t T : {512, 2048, 8192})
      for (int64_t bwd : {0, 1})
        for (int64_t bf16 : {0, 1}) b->Args({heads, T, bwd, bf16});
}

BENCHMARK(BM_PackedAttention)->Apply(PackedArgs)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);

}  // namespace

BENCHMARK_MAIN();
