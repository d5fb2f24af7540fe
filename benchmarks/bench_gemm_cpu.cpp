// CPU linear layer y[M,N] = x[M,K] · W[N,K]ᵀ at the Qwen2.5-0.5B shapes (hidden 896, intermediate 4864):
//   K=896 → N=4864 (gate/up), K=4864 → N=896 (down), K=896 → N=896 (q/o), M in {1, 16, 128, 512} tokens,
// for linear_forward_ref with F32 and BF16 weights, against a baseline in the same run: a plain Eigen fp32
// GEMM (Y = X · Wᵀ on an fp32 copy of W, Eigen's own OpenMP threading, same thread count).
// Counters: GFLOP/s (2·M·N·K per call) and GB/s of weight bytes read (N·K·sizeof(dtype) per call).
//
// Then the 4-bit Linears on bf16 operands from their Q4 form (q4_bf16) against dequantizing them first.
//
//   build/bench_gemm_cpu [--benchmark_filter=bf16] [benchmark flags]      (threads: OMP_NUM_THREADS)
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"
#include "quant/format/qgemm_layout.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "quant/packed_matvec.h"

namespace {

using qwenq::DType;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Shape {
  int64_t K, N;
};
constexpr Shape kShapes[] = {{896, 4864}, {4864, 896}, {896, 896}};
constexpr int64_t kRows[] = {1, 16, 128, 512};

std::vector<float> random_vec(size_t n, uint64_t seed) {
  qwenq::Rng rng(seed);
  std::vector<float> v(n);
  for (auto& f : v) f = rng.uniform(-1.f, 1.f);
  return v;
}

void set_counters(benchmark::State& state, int64_t M, int64_t K, int64_t N, size_t w_bytes) {
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(w_bytes) / 1e9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = qwenq::num_threads();
}

// linear_forward_ref, or with bf16_ops linear_forward_bf16 (kernels/gemm_bf16.h: bf16 operands, fp32 sums; the
// AVX512_BF16 kernel where present, counter avx512_bf16).
void bm_linear(benchmark::State& state, int64_t M, int64_t K, int64_t N, DType dt, bool bf16_ops) {
  const std::vector<float> x = random_vec(static_cast<size_t>(M * K), 1);
  const std::vector<float> wf = random_vec(static_cast<size_t>(N * K), 2);
  std::vector<uint8_t> w(wf.size() * qwenq::dtype_size(dt));
  qwenq::from_f32(dt, wf.data(), w.data(), wf.size());
  std::vector<float> y(static_cast<size_t>(M * N));
  for (auto _ : state) {
    if (bf16_ops) {
      qwenq::linear_forward_bf16(x.data(), M, K, w.data(), dt, N, nullptr, DType::F32, y.data());
    } else {
      qwenq::linear_forward_ref(x.data(), M, K, w.data(), dt, N, nullptr, DType::F32, y.data());
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, M, K, N, w.size());
  if (bf16_ops) state.counters["avx512_bf16"] = qwenq::bf16_gemm_uses_avx512() ? 1 : 0;
}

void bm_eigen_baseline(benchmark::State& state, int64_t M, int64_t K, int64_t N) {
  const std::vector<float> x = random_vec(static_cast<size_t>(M * K), 1);
  const std::vector<float> wf = random_vec(static_cast<size_t>(N * K), 2);
  std::vector<float> y(static_cast<size_t>(M * N));
  Eigen::Map<const RowMat> X(x.data(), M, K), W(wf.data(), N, K);
  Eigen::Map<RowMat> Y(y.data(), M, N);
  // linear_forward_ref turns Eigen's threading off (it parallelizes itself); the baseline gets it back.
  const int saved = Eigen::nbThreads();
  Eigen::setNbThreads(qwenq::num_threads());
  for (auto _ : state) {
    if (M == 1) {
      Y.row(0).noalias() = (W * X.row(0).transpose()).transpose();  // GEMV, as Eigen would pick
    } else {
      Y.noalias() = X * W.transpose();
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(saved);
  set_counters(state, M, K, N, wf.size() * 4);
}

// dx[M,K] = dy[M,N] · W[N,K] (linear_backward_input_ref, or linear_backward_input_bf16 with bf16_ops), against
// Eigen's own threaded GEMM on an fp32 copy of W.
void bm_backward_input(benchmark::State& state, int64_t M, int64_t K, int64_t N, DType dt, bool bf16_ops) {
  const std::vector<float> dy = random_vec(static_cast<size_t>(M * N), 3);
  const std::vector<float> wf = random_vec(static_cast<size_t>(N * K), 2);
  std::vector<uint8_t> w(wf.size() * qwenq::dtype_size(dt));
  qwenq::from_f32(dt, wf.data(), w.data(), wf.size());
  std::vector<float> dx(static_cast<size_t>(M * K));
  for (auto _ : state) {
    if (bf16_ops) {
      qwenq::linear_backward_input_bf16(dy.data(), M, N, w.data(), dt, K, dx.data());
    } else {
      qwenq::linear_backward_input_ref(dy.data(), M, N, w.data(), dt, K, dx.data());
    }
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, M, K, N, w.size());
}

void bm_backward_input_eigen(benchmark::State& state, int64_t M, int64_t K, int64_t N) {
  const std::vector<float> dy = random_vec(static_cast<size_t>(M * N), 3);
  const std::vector<float> wf = random_vec(static_cast<size_t>(N * K), 2);
  std::vector<float> dx(static_cast<size_t>(M * K));
  Eigen::Map<const RowMat> DY(dy.data(), M, N), W(wf.data(), N, K);
  Eigen::Map<RowMat> DX(dx.data(), M, K);
  const int saved = Eigen::nbThreads();
  Eigen::setNbThreads(qwenq::num_threads());
  for (auto _ : state) {
    DX.noalias() = DY * W;
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(saved);
  set_counters(state, M, K, N, wf.size() * 4);
}

// A 4-bit Linear (GPTQ or AWQ group 128, or NF4 with double quantization: the trainer's 4-bit bases) on bf16 operands,
// forward y = x·Ŵᵀ or the input gradient dx = dy·Ŵ, as the trainer runs it per call: q4_bf16 makes the weight's Q4
// form (q4_transient_*: GPTQ's words borrowed, AWQ's transposed, NF4's nibble-swapped) and multiplies from it
// (qgemm_int4_*_bf16: each panel's piece of ŵ dequantized into a tile, no fp32 copy); q4_dequant_bf16 as the trainer
// did before, the whole fp32 weight dequantized per call and then linear_*_bf16 on it. The same bits; GB/s counts
// the packed bytes.
enum class Q4Source { Gptq, GptqActOrder, Awq, Nf4 };  // act-order: rows sorted at load, as the loader holds them
// The benchmarks' 4-bit Linear of kind src (group 128; NF4 blocks of 64 with double quantization): p or nf.
void make_q4_source(Q4Source src, int64_t N, int64_t K, qwenq::PackedIntLinear* p, qwenq::Nf4Tensor* nf) {
  if (src == Q4Source::Nf4) {
    *nf = qwenq::q4_synthetic_nf4(N, K, false, 64, true, 9);
    return;
  }
  *p = qwenq::q4_synthetic_int_linear(src == Q4Source::Awq ? qwenq::IntLayout::AwqGemm : qwenq::IntLayout::GptqV1, K,
                                      N, 128, src == Q4Source::GptqActOrder, 9);
  if (src == Q4Source::GptqActOrder) *p = qwenq::int_linear_sort_inputs_by_group(*p);
}

void bm_q4(benchmark::State& state, Q4Source src, int64_t M, int64_t K, int64_t N, bool transposed, bool tiles) {
  qwenq::PackedIntLinear p;
  qwenq::Nf4Tensor nf;
  make_q4_source(src, N, K, &p, &nf);
  const std::vector<float> in = random_vec(static_cast<size_t>(M * (transposed ? N : K)), 3);
  std::vector<float> out(static_cast<size_t>(M * (transposed ? K : N))), W;
  if (!tiles) W.resize(static_cast<size_t>(N * K));
  for (auto _ : state) {
    if (tiles) {
      const qwenq::Q4Transient q4 =
          src == Q4Source::Nf4 ? qwenq::q4_transient_nf4(nf, N, K) : qwenq::q4_transient_int_linear(p);
      if (transposed) {
        qwenq::qgemm_int4_backward_input_bf16(q4.view, in.data(), M, out.data());
      } else {
        qwenq::qgemm_int4_forward_bf16(q4.view, in.data(), M, nullptr, DType::F32, out.data());
      }
    } else {
      if (src == Q4Source::Nf4) {
        qwenq::nf4_dequantize_into(nf, W.data());
      } else {
        qwenq::dequantize_int_linear_into(p, W.data());
      }
      if (transposed) {
        qwenq::linear_backward_input_bf16(in.data(), M, N, W.data(), DType::F32, K, out.data());
      } else {
        qwenq::linear_forward_bf16(in.data(), M, K, W.data(), DType::F32, N, nullptr, DType::F32, out.data());
      }
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, M, K, N, src == Q4Source::Nf4 ? nf.packed.size() : p.qweight.size() * 4 + p.scales.size() * 2);
}

// The forward of a 4-bit Linear at M rows both ways eval's --cpu-matmul bf16 can take it: the packed fp32 product
// (quant/packed_matvec.h, exact ŵ and x; apply_linear's choice up to its row limit) and the Q4 tiles on bf16 operands
// (qgemm_int4_forward_bf16, the form made per call). Where the second overtakes the first sets kCpuBf16Q4MinRows.
void bm_q4_rows(benchmark::State& state, Q4Source src, int64_t M, int64_t K, int64_t N, bool bf16) {
  qwenq::PackedIntLinear p;
  qwenq::Nf4Tensor nf;
  make_q4_source(src, N, K, &p, &nf);
  const std::vector<float> in = random_vec(static_cast<size_t>(M * K), 3);
  std::vector<float> out(static_cast<size_t>(M * N));
  for (auto _ : state) {
    if (bf16) {
      const qwenq::Q4Transient q4 =
          src == Q4Source::Nf4 ? qwenq::q4_transient_nf4(nf, N, K) : qwenq::q4_transient_int_linear(p);
      qwenq::qgemm_int4_forward_bf16(q4.view, in.data(), M, nullptr, DType::F32, out.data());
    } else if (src == Q4Source::Nf4) {
      qwenq::nf4_linear_matvec(nf, N, K, in.data(), M, out.data());
    } else {
      qwenq::int_linear_matvec(p, in.data(), M, out.data());
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, M, K, N, src == Q4Source::Nf4 ? nf.packed.size() : p.qweight.size() * 4 + p.scales.size() * 2);
}

}  // namespace

int main(int argc, char** argv) {
  for (const Shape& s : kShapes) {
    for (int64_t M : kRows) {
      const std::string shape = "/K" + std::to_string(s.K) + "_N" + std::to_string(s.N) + "/M" + std::to_string(M);
      benchmark::RegisterBenchmark(("linear_f32" + shape).c_str(), bm_linear, M, s.K, s.N, DType::F32, false)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("linear_bf16" + shape).c_str(), bm_linear, M, s.K, s.N, DType::BF16, false)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("linear_bf16_ops_f32w" + shape).c_str(), bm_linear, M, s.K, s.N,
                                   DType::F32, true)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("eigen_f32_baseline" + shape).c_str(), bm_eigen_baseline, M, s.K, s.N)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
  }
  // Where bf16 operands start to pay on a bf16 weight (the B panels are packed per call: at one row that packing
  // costs more than the fp32 matvec's single read of W): kCpuBf16MinRows in trainer/qwen_weights.h comes from these.
  for (const Shape& s : kShapes) {
    for (int64_t M : {1, 2, 4, 8, 16}) {
      const std::string shape = "/K" + std::to_string(s.K) + "_N" + std::to_string(s.N) + "/M" + std::to_string(M);
      benchmark::RegisterBenchmark(("few_rows_linear_bf16" + shape).c_str(), bm_linear, M, s.K, s.N, DType::BF16, false)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("few_rows_linear_bf16_ops_bf16w" + shape).c_str(), bm_linear, M, s.K, s.N,
                                   DType::BF16, true)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
  }
  // The backward products the trainer runs: the 4-bit Linears' dx on their fp32 dequantization (M = 512 tokens),
  // and the lm_head's on its bf16 table for one chunk of logits rows (logits_block_rows(151936) = 110).
  struct Bwd {
    int64_t M, K, N;
    DType dt;
  };
  constexpr Bwd kBackward[] = {{512, 896, 4864, DType::F32},
                               {512, 4864, 896, DType::F32},
                               {512, 896, 896, DType::F32},
                               {110, 896, 151936, DType::BF16}};
  for (const Bwd& b : kBackward) {
    const std::string shape = "/K" + std::to_string(b.K) + "_N" + std::to_string(b.N) + "/M" + std::to_string(b.M);
    benchmark::RegisterBenchmark(("backward_input_" + std::string(qwenq::dtype_name(b.dt)) + shape).c_str(),
                                 bm_backward_input, b.M, b.K, b.N, b.dt, false)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("backward_input_bf16_ops_" + std::string(qwenq::dtype_name(b.dt)) + "w" + shape).c_str(),
                                 bm_backward_input, b.M, b.K, b.N, b.dt, true)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("backward_input_eigen_f32_baseline" + shape).c_str(), bm_backward_input_eigen, b.M,
                                 b.K, b.N)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  // The lm_head's forward on the same chunk (the forward shapes above are the decoder's).
  benchmark::RegisterBenchmark("linear_bf16/K896_N151936/M110", bm_linear, 110, 896, 151936, DType::BF16, false)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("linear_bf16_ops_bf16w/K896_N151936/M110", bm_linear, 110, 896, 151936,
                               DType::BF16, true)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("eigen_f32_baseline/K896_N151936/M110", bm_eigen_baseline, 110, 896, 151936)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  // A 4-bit Linear's forward at few to many rows: packed fp32 product against the Q4 tiles on bf16 operands.
  for (const auto& [src, src_name] : {std::pair<Q4Source, const char*>{Q4Source::Gptq, "gptq"},
                                      {Q4Source::GptqActOrder, "gptq_act_order"}, {Q4Source::Awq, "awq"},
                                      {Q4Source::Nf4, "nf4"}})
    for (const Shape& s : {kShapes[0], kShapes[1]})
      for (int64_t M : {8, 16, 32, 64, 128, 512})
        for (bool bf16 : {false, true}) {
          const std::string name = std::string(bf16 ? "q4_rows_bf16_" : "q4_rows_packed_f32_") + src_name + "/K" +
                                   std::to_string(s.K) + "_N" + std::to_string(s.N) + "/M" + std::to_string(M);
          benchmark::RegisterBenchmark(name.c_str(), bm_q4_rows, src, M, s.K, s.N, bf16)
              ->Unit(benchmark::kMicrosecond)
              ->UseRealTime();
        }
  // The trainer's 4-bit Linears at 512 tokens, forward and input gradient, from their Q4 form and dequantized.
  for (const auto& [src, src_name] : {std::pair<Q4Source, const char*>{Q4Source::Gptq, "gptq"},
                                      {Q4Source::GptqActOrder, "gptq_act_order"}, {Q4Source::Awq, "awq"},
                                      {Q4Source::Nf4, "nf4"}}) {
    for (const Shape& s : kShapes) {
      for (bool transposed : {false, true}) {
        const std::string name = std::string(transposed ? "_backward_input_" : "_forward_") + src_name + "/K" +
                                 std::to_string(s.K) + "_N" + std::to_string(s.N) + "/M512";
        benchmark::RegisterBenchmark(("q4_bf16" + name).c_str(), bm_q4, src, 512, s.K, s.N, transposed, true)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        benchmark::RegisterBenchmark(("q4_dequant_bf16" + name).c_str(), bm_q4, src, 512, s.K, s.N, transposed, false)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
