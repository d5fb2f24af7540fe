// The CPU path of a packed Linear, y[M, N] = x[M, K] · ŵᵀ through apply_linear (trainer/qwen_weights.h). Up to a
// format's row limit (quant/packed_matvec.h) it multiplies the packed bytes directly; beyond, it dequantizes
// the weight to fp32 (dequantize_int_linear, nf4_dequantize, dequantize_ggml_linear) and runs linear_forward_ref. At
// the Qwen2.5-7B MLP shapes (K 3584 -> N 18944 gate/up, K 18944 -> N 3584 down), for
//   gptq   GPTQ v1 4-bit, group 128        gptq_act  the same with act-order (a scattered g_idx)
//   awq    AWQ GEMM 4-bit, group 128
//   nf4    NF4, block 64, double quant     q4_k   GGUF Q4_K
//   q6_k   GGUF Q6_K (Q4_K_M files hold it for half the down_proj and the output table)   q8_0   GGUF Q8_0
// against the same product on the fp32 weight in the same run (dense_f32, no dequantization). Rows:
//   linear_<fmt>/M   apply_linear, the path the programs take, M in {1, 512}
//   matvec_<fmt>/M and dequant_gemm_<fmt>/M   each path forced, M from 1 to 512: where they cross sets the
//                    format's limit; matvec_t_ and dequant_gemm_t_ the same for the transposed product
//                    dx = dy · Ŵ (apply_linear_backward_input), M up to 64
//   int8_<fmt>/M     the GGUF formats through llama.cpp's int8 products (quant/ggml_dot_int8.h: activations rounded to
//                    8 bits, integer sums; `--int8-activations`), and GPTQ through quant/int_dot_int8.h (AWQ runs
//                    the same code after its load-time repack), against matvec_<fmt> (exact)
//   dequant_<fmt>    the dequantization alone, into a new vector
// Counters: Gvalues/s (weights dequantized per second) and GFLOP/s (2·M·N·K).
//
//   build/bench_dequant_cpu [--benchmark_filter=gptq] [benchmark flags]      (threads: OMP_NUM_THREADS)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "kernels/gemm.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_dot_int8.h"
#include "quant/grid.h"
#include "quant/int_checkpoint.h"
#include "quant/int_dot_int8.h"
#include "quant/nf4.h"
#include "quant/packed_matvec.h"
#include "quant/quantize_step.h"
#include "trainer/qwen_weights.h"

namespace {

using namespace qwenq;

struct Shape {
  int64_t K, N;
};
constexpr Shape kShapes[] = {{3584, 18944}, {18944, 3584}};
constexpr int64_t kRows[] = {1, 512};
constexpr int64_t kCrossoverRows[] = {1, 8, 16, 32, 64, 128, 256, 512};

std::vector<float> random_vec(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& f : v) f = rng.uniform(-1.f, 1.f);
  return v;
}

// The fp32 weight [N, K], and the packed formats the benchmark reads (the GGUF blocks are kept alive by `bytes`).
struct Weights {
  std::vector<float> dense;
  LinearWeight gptq, gptq_act, gptq_act_sorted, awq, nf4, q4k, q6k, q80, fp8;
  std::vector<uint8_t> q4k_bytes, q6k_bytes, q80_bytes, fp8_bytes;
};

LinearWeight packed_int(const std::vector<float>& W, int64_t N, int64_t K, IntLayout layout, bool act_order = false) {
  const GridRule rule = layout == IntLayout::AwqGemm ? GridRule::Awq : GridRule::Gptq;
  GroupGrid grid;
  grid.bits = 4;
  grid.group = 128;
  grid.K = K;
  grid.N = N;
  grid.scale.resize(static_cast<size_t>(grid.num_groups() * N));
  grid.zero.resize(grid.scale.size());
  std::vector<uint8_t> codes(static_cast<size_t>(N * K));
  rtn_quantize_ref(W.data(), N, K, 4, 128, layout != IntLayout::AwqGemm, rule, grid.scale.data(), grid.zero.data(),
                   codes.data());
  LinearWeight w;
  w.N = N;
  w.K = K;
  std::vector<int32_t> g_idx(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) g_idx[k] = static_cast<int32_t>(k / grid.group);
  Rng rng(3);  // act-order's scattered groups (the codes stay those of k / 128: only the access pattern matters)
  for (int64_t k = K - 1; act_order && k > 0; --k) std::swap(g_idx[k], g_idx[rng.below(k + 1)]);
  w.packed = std::make_shared<PackedIntLinear>(pack_int_linear(codes.data(), grid, g_idx.data(), layout));
  return w;
}

const Weights& weights_for(int64_t K, int64_t N) {
  static std::unique_ptr<Weights> cached[2];
  const int slot = K < N ? 0 : 1;
  if (cached[slot]) return *cached[slot];
  auto w = std::make_unique<Weights>();
  w->dense = random_vec(static_cast<size_t>(N * K), 2);
  w->gptq = packed_int(w->dense, N, K, IntLayout::GptqV1);
  w->gptq_act = packed_int(w->dense, N, K, IntLayout::GptqV1, true);
  // As `--int8-activations` loads it: rows sorted by group (quant/int_checkpoint.h), x gathered on every call.
  w->gptq_act_sorted = w->gptq_act;
  w->gptq_act_sorted.packed = std::make_shared<PackedIntLinear>(int_linear_for_int8(*w->gptq_act.packed));
  w->awq = packed_int(w->dense, N, K, IntLayout::AwqGemm);
  Nf4Options o;
  o.double_quant = true;
  auto nf4 = std::make_shared<Nf4Linear>();
  nf4->q = nf4_quantize(w->dense.data(), N * K, o);
  nf4->shape = {N, K};
  w->nf4.N = N;
  w->nf4.K = K;
  w->nf4.nf4 = nf4;
  const auto ggml = [&](GgmlType type, std::vector<uint8_t>& bytes, LinearWeight& lw) {
    bytes = quantize_ggml(type, w->dense.data(), N, K, nullptr);
    lw.N = N;
    lw.K = K;
    lw.ggml = std::make_shared<GgmlLinear>(GgmlLinear{type, bytes.data(), N, K, 0});
  };
  // Block-wise FP8 (128 x 128, as Qwen's releases): random finite codes and scales (only the access pattern and the
  // decoding matter for speed).
  {
    Rng rng(4);
    w->fp8_bytes.resize(static_cast<size_t>(N * K));
    for (auto& b : w->fp8_bytes) b = static_cast<uint8_t>(rng.below(126)) | static_cast<uint8_t>(rng.below(2) << 7);
    auto f = std::make_shared<Fp8Linear>();
    f->N = N;
    f->K = K;
    f->data = w->fp8_bytes.data();
    f->scale_inv.assign(static_cast<size_t>(((N + 127) / 128) * f->scale_cols()), 1e-3f);
    w->fp8.N = N;
    w->fp8.K = K;
    w->fp8.fp8 = f;
  }
  ggml(GgmlType::Q4_K, w->q4k_bytes, w->q4k);
  ggml(GgmlType::Q6_K, w->q6k_bytes, w->q6k);
  ggml(GgmlType::Q8_0, w->q80_bytes, w->q80);
  cached[slot] = std::move(w);
  return *cached[slot];
}

const LinearWeight& format(const Weights& w, const std::string& name) {
  if (name == "gptq") return w.gptq;
  if (name == "gptq_act") return w.gptq_act;
  if (name == "gptq_act_sorted") return w.gptq_act_sorted;
  if (name == "awq") return w.awq;
  if (name == "nf4") return w.nf4;
  if (name == "q6_k") return w.q6k;
  if (name == "q8_0") return w.q80;
  if (name == "fp8") return w.fp8;
  return w.q4k;
}

void counters(benchmark::State& state, int64_t M, int64_t K, int64_t N, bool dequantizes) {
  if (M > 0)
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  if (dequantizes)
    state.counters["Gvalues/s"] = benchmark::Counter(static_cast<double>(N * K) / 1e9,
                                                     benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = num_threads();
}

void bm_apply(benchmark::State& state, std::string fmt, int64_t M, int64_t K, int64_t N) {
  const Weights& w = weights_for(K, N);
  const std::vector<float> x = random_vec(static_cast<size_t>(M * K), 1);
  std::vector<float> y(static_cast<size_t>(M * N));
  for (auto _ : state) {
    if (fmt == "dense_f32")
      linear_forward_ref(x.data(), M, K, w.dense.data(), DType::F32, N, nullptr, DType::F32, y.data());
    else
      apply_linear(format(w, fmt), x.data(), M, TensorView{}, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  counters(state, M, K, N, fmt != "dense_f32");
}

// One path forced: "matvec" (quant/packed_matvec.h), "int8" (quant/ggml_dot_int8.h, quant/int_dot_int8.h) or "dequant_gemm"
// (dequantize into a reused buffer, then linear_forward_ref), whatever M; `transposed`: the input-gradient product dx = dy · Ŵ of each path.
void bm_path(benchmark::State& state, std::string fmt, std::string path, bool transposed, int64_t M, int64_t K,
             int64_t N) {
  const Weights& w = weights_for(K, N);
  const LinearWeight& lw = format(w, fmt);
  const std::vector<float> x = random_vec(static_cast<size_t>(M * K), 1);
  std::vector<float> y(static_cast<size_t>(M * N)), W(path == "matvec" ? 0 : static_cast<size_t>(N * K));
  std::vector<float> dy(transposed ? static_cast<size_t>(M * N) : 0), dx(transposed ? static_cast<size_t>(M * K) : 0);
  for (float& v : dy) v = 0.5f;
  for (auto _ : state) {
    if (transposed && path == "dequant_gemm") {
      lw.dequantize_into(W.data());
      linear_backward_input_ref(dy.data(), M, N, W.data(), DType::F32, K, dx.data());
    } else if (transposed && lw.packed) {
      int_linear_matvec_t(*lw.packed, dy.data(), M, dx.data());
    } else if (transposed && lw.fp8) {
      fp8_linear_matvec_t(*lw.fp8, dy.data(), M, dx.data());
    } else if (transposed && lw.nf4) {
      nf4_linear_matvec_t(lw.nf4->q, N, K, dy.data(), M, dx.data());
    } else if (transposed) {
      ggml_linear_matvec_t(*lw.ggml, dy.data(), M, dx.data());
    } else if (path == "int8" && lw.packed) {
      int_linear_matvec_int8(*lw.packed, x.data(), M, y.data());
    } else if (path == "int8") {
      ggml_linear_matvec_int8(*lw.ggml, x.data(), M, y.data());
    } else if (path == "dequant_gemm") {
      lw.dequantize_into(W.data());
      linear_forward_ref(x.data(), M, K, W.data(), DType::F32, N, nullptr, DType::F32, y.data());
    } else if (lw.packed) {
      int_linear_matvec(*lw.packed, x.data(), M, y.data());
    } else if (lw.nf4) {
      nf4_linear_matvec(lw.nf4->q, N, K, x.data(), M, y.data());
    } else if (lw.fp8) {
      fp8_linear_matvec(*lw.fp8, x.data(), M, y.data());
    } else {
      ggml_linear_matvec(*lw.ggml, x.data(), M, y.data());
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  counters(state, M, K, N, true);
}

// The sort of an act-order Linear's rows by group (what a load with `--int8-activations` adds per Linear).
void bm_sort_inputs(benchmark::State& state, int64_t K, int64_t N) {
  const Weights& w = weights_for(K, N);
  for (auto _ : state) {
    PackedIntLinear sorted = int_linear_sort_inputs_by_group(*w.gptq_act.packed);
    benchmark::DoNotOptimize(sorted.qweight.data());
    benchmark::ClobberMemory();
  }
  counters(state, 0, K, N, true);
}

void bm_dequant(benchmark::State& state, std::string fmt, int64_t K, int64_t N) {
  const Weights& w = weights_for(K, N);
  for (auto _ : state) {
    std::vector<float> W = format(w, fmt).dequantize();
    benchmark::DoNotOptimize(W.data());
    benchmark::ClobberMemory();
  }
  counters(state, 0, K, N, true);
}

}  // namespace

int main(int argc, char** argv) {
  for (const Shape& s : kShapes) {
    const std::string shape = "/K" + std::to_string(s.K) + "_N" + std::to_string(s.N);
    for (const char* fmt : {"gptq", "gptq_act", "gptq_act_sorted", "awq", "nf4", "q4_k", "q6_k", "q8_0", "fp8"}) {
      benchmark::RegisterBenchmark((std::string("dequant_") + fmt + shape).c_str(), bm_dequant, fmt, s.K, s.N)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
    benchmark::RegisterBenchmark(("sort_inputs_gptq_act" + shape).c_str(), bm_sort_inputs, s.K, s.N)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    for (int64_t M : kRows) {
      for (const char* fmt : {"dense_f32", "gptq", "gptq_act", "awq", "nf4", "q4_k", "q6_k", "q8_0", "fp8"}) {
        benchmark::RegisterBenchmark((std::string("linear_") + fmt + shape + "/M" + std::to_string(M)).c_str(),
                                     bm_apply, fmt, M, s.K, s.N)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
    }
    for (int64_t M : kCrossoverRows) {
      for (const char* path : {"matvec", "dequant_gemm", "int8"}) {
        for (const char* fmt : {"gptq", "gptq_act", "gptq_act_sorted", "awq", "nf4", "q4_k", "q6_k", "q8_0", "fp8"}) {
          const std::string f = fmt;
          if (std::string(path) == "int8" && f.rfind("q", 0) != 0 && f != "gptq" && f != "gptq_act_sorted") continue;
          benchmark::RegisterBenchmark((std::string(path) + "_" + fmt + shape + "/M" + std::to_string(M)).c_str(),
                                       bm_path, fmt, path, false, M, s.K, s.N)
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
          if (M > 64 || std::string(path) == "int8") continue;
          benchmark::RegisterBenchmark((std::string(path) + "_t_" + fmt + shape + "/M" + std::to_string(M)).c_str(),
                                       bm_path, fmt, path, true, M, s.K, s.N)
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
