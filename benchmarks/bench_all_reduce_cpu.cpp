// The data-parallel trainer's gradient sum (core/process_group.h: the ring all-reduce over Unix sockets, and the
// shared-memory sums large calls take by default), the ranks as threads of one process (the same sockets, segment and
// code as processes), at the fp32 gradient sizes of a LoRA r = 16 on every Linear: Qwen2.5-7B (40.4M values, 161 MB)
// and 72B (211M, 842 MB), for 2, 4 and 8 ranks; second argument 0: the ring (QWENQ_DP_SHM=0), 1: shared memory.
// Reported per call: time, and the bus bandwidth NCCL's tests print (2·(R − 1)/R · bytes / time: what each rank
// sends and receives in a ring), with a memcpy of the same bytes in the same run as the baseline. On a GPU run the trainer adds a device -> host and
// a host -> device copy of the bytes (LoraModelCuda::all_reduce_grads) to this.
//
//   build/bench_all_reduce_cpu [--benchmark_filter=7b] [benchmark flags]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/process_group.h"

namespace {

constexpr int64_t k7bValues = 40'370'176;    // 28 layers x 16 x (2·(3584+3584) + 2·(3584+512) + 3·(3584+18944))
constexpr int64_t k72bValues = 210'534'400;  // 80 layers x 16 x (2·(8192+8192) + 2·(8192+1024) + 3·(8192+29568))

void all_reduce(benchmark::State& state, int64_t n) {
  const int world = static_cast<int>(state.range(0));
  setenv("QWENQ_DP_SHM", state.range(1) ? "1" : "0", 1);  // read at each group's first large sum
  const auto fds = qwenq::make_ring_sockets(world);
  std::vector<std::unique_ptr<qwenq::ProcessGroup>> g;
  for (int r = 0; r < world; ++r) g.push_back(std::make_unique<qwenq::ProcessGroup>(r, world, fds[r].first, fds[r].second));
  std::vector<std::vector<float>> x(static_cast<size_t>(world), std::vector<float>(static_cast<size_t>(n), 1e-3f));
  const auto once = [&] {
    std::vector<std::thread> th;
    for (int r = 1; r < world; ++r) th.emplace_back([&, r] { g[r]->all_reduce_sum(x[r].data(), n); });
    g[0]->all_reduce_sum(x[0].data(), n);
    for (auto& t : th) t.join();
  };
  once();  // sets the transport up (the segment's pages are reserved then), as a run's first step does
  for (auto _ : state) once();
  const double bytes = 4.0 * static_cast<double>(n);
  state.counters["busGB/s"] = benchmark::Counter(2.0 * (world - 1) / world * bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MB"] = bytes * 1e-6;
  state.SetLabel(g[0]->shared_sums() ? "shared memory" : "ring");
}

void copy_baseline(benchmark::State& state, int64_t n) {
  std::vector<float> a(static_cast<size_t>(n), 1.f), b(static_cast<size_t>(n));
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), a.size() * sizeof(float));
    benchmark::DoNotOptimize(b.data());
  }
  state.counters["GB/s"] = benchmark::Counter(4.0 * static_cast<double>(n) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK_CAPTURE(copy_baseline, 7b_memcpy, k7bValues)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_CAPTURE(all_reduce, 7b_r16, k7bValues)->ArgsProduct({{2, 4, 8}, {0, 1}})->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK_CAPTURE(copy_baseline, 72b_memcpy, k72bValues)->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();
BENCHMARK_CAPTURE(all_reduce, 72b_r16, k72bValues)->ArgsProduct({{2, 4, 8}, {0, 1}})->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();

BENCHMARK_MAIN();
