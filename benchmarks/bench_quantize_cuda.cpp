// The calibration-free quantization step on the GPU (quant/quantize_step.h: weight_to_f32_cuda + rtn_quantize_cuda
// or nf4_quantize_blocks_cuda, what `qwen-quant rtn|nf4 --device cuda` runs per Linear) against the CPU twins on the
// same inputs (all CPU threads), on the Linear shapes of Qwen2.5-7B (hidden 3584, intermediate 18944, 28 layers, k/v
// 3584 -> 512), and the extrapolated time of all 7 x 28 Linears. The step starts from the bf16 weight already on the
// device and ends with the codes there (the host<->device copies, the packing and the writing are not included:
// quantize_model overlaps the upload of the next Linear with this step). RTN: 4 bits, group 128, sym, GPTQ rule.
// NF4: blocks of 64 (the double quantization runs on the host either way).
// AWQ (quant/awq_search.h, what `qwen-quant awq --device cuda` runs per block besides the module evaluations): one
// scale-grid point's candidate Q(W·s)/s of each Linear (20 grid points per block: 20 x 7 x 28 candidates, an upper
// bound: o_proj is searched only without GQA) and the clip search on S = 512 sampled tokens, 10 shrinks, group 128
// (v, o, gate, up, down: 5 x 28). The CPU clip search runs on a slice of kCpuClipRows rows and is scaled to N (its
// work is linear in N).
//
//   bench_quantize_cuda [--reps 5] [--csv out.csv]
//
// GPU: CUDA-event median of `reps` calls after warm-up (the launchers wait for their flag, so each call is complete).
// CPU: one call per shape. Without a CUDA device it prints one line and exits 0.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <tuple>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "core/threads.h"
#include "quant/format/nf4_pack.h"
#include "quant/awq_search.h"
#include "quant/quantize_step.h"

#include <cuda_runtime.h>

#include "benchmarks/bench_main.h"
#include "benchmarks/cuda_bench.h"
#include "benchmarks/qwen7b_shapes.h"

namespace {

using namespace qwenq;
using Clock = std::chrono::steady_clock;

using Shape = bench::Qwen7bLinearShape;
constexpr const Shape (&kShapes)[4] = bench::kQwen7bShapes;
constexpr int kLayers = bench::kQwen7bLayers;
constexpr int kGridPoints = 20;
constexpr int64_t kClipTokens = 512;
constexpr int64_t kCpuClipRows = 256;
// Clipped Linears of each shape per layer (AutoAWQ skips q and k).
constexpr int clipped_per_layer(const Shape& s) { return s.N == 18944 ? 2 : 1; }

template <typename F>
double cpu_seconds(F&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  std::string csv_path;
  bench::Args args;
  args.add("--reps", &reps);
  args.add("--csv", &csv_path, "out.csv");
  if (const int rc = args.parse(argc, argv); rc >= 0) return rc;
  reps = std::max(1, reps);
  return bench::run_on_device(argv[0], [&](const bench::Stamp& stamp) {
    std::printf("device: %s, %s, commit %s; CPU baseline on %d threads\n", stamp.device.c_str(), stamp.driver.c_str(),
                stamp.commit.c_str(), num_threads());
    std::ostringstream csv;
    csv << "date,device,driver,commit,method,shape,K,N,gpu_ms,cpu_ms\n";
    std::printf("%-6s %-18s %6s %6s %10s %10s %9s\n", "method", "shape", "K", "N", "gpu ms", "cpu ms", "speed-up");
    for (const char* method : {"rtn", "nf4"}) {
      const bool nf4 = std::string(method) == "nf4";
      double total_gpu = 0, total_cpu = 0;
      for (const Shape& s : kShapes) {
        const int64_t n = s.N * s.K, cells = (s.K + 127) / 128 * s.N, nb = (n + 63) / 64;
        Rng rng(77 + s.K + s.N);
        std::vector<uint16_t> w16(n);
        for (auto& h : w16) h = f32_to_bf16(static_cast<float>(0.02 * rng.normal()));
        bench::DeviceArray<uint16_t> d_w16(n);
        bench::DeviceArray<float> d_W(n), d_scale(nf4 ? nb : cells);
        bench::DeviceArray<uint8_t> d_zero(cells), d_codes(nf4 ? nf4_packed_bytes(n) : n);
        bench::ck(cudaMemcpy(d_w16.p, w16.data(), n * 2, cudaMemcpyHostToDevice), "upload");
        const auto gpu_step = [&] {
          weight_to_f32_cuda(DType::BF16, d_w16.p, s.N, s.K, s.N, s.K, d_W.p);
          if (nf4)
            nf4_quantize_blocks_cuda(d_W.p, n, 64, false, d_codes.p, d_scale.p);
          else
            rtn_quantize_cuda(d_W.p, s.N, s.K, 4, 128, true, GridRule::Gptq, d_scale.p, d_zero.p, d_codes.p);
        };
        const double gpu_ms = bench::time_ms(gpu_step, reps);
        std::vector<float> W(n), scale(nf4 ? nb : cells);
        std::vector<uint8_t> zero(cells), codes(nf4 ? nf4_packed_bytes(n) : n);
        const double cpu_ms = 1e3 * cpu_seconds([&] {
          weight_to_f32_ref(DType::BF16, w16.data(), s.N, s.K, s.N, s.K, W.data());
          if (nf4)
            nf4_quantize_blocks_ref(W.data(), n, 64, false, codes.data(), scale.data());
          else
            rtn_quantize_ref(W.data(), s.N, s.K, 4, 128, true, GridRule::Gptq, scale.data(), zero.data(), codes.data());
        });
        std::printf("%-6s %-18s %6lld %6lld %10.3f %10.1f %8.1fx\n", method, s.name, static_cast<long long>(s.K),
                    static_cast<long long>(s.N), gpu_ms, cpu_ms, cpu_ms / gpu_ms);
        csv << stamp.csv() << "," << method << "," << s.name << "," << s.K << "," << s.N << "," << gpu_ms << ","
            << cpu_ms << "\n";
        total_gpu += kLayers * s.per_layer * gpu_ms;
        total_cpu += kLayers * s.per_layer * cpu_ms;
      }
      std::printf("%s, Qwen2.5-7B, all 7 x %d Linears: gpu %.2f s, cpu %.1f s (%.0fx)\n", method, kLayers,
                  total_gpu / 1e3, total_cpu / 1e3, total_cpu / total_gpu);
    }
    // AWQ: candidates and the clip search.
    double cand_gpu = 0, cand_cpu = 0, clip_gpu = 0, clip_cpu = 0;
    for (const Shape& s : kShapes) {
      const int64_t n = s.N * s.K, groups = (s.K + 127) / 128;
      Rng rng(91 + s.K + s.N);
      std::vector<float> W(n), x(kClipTokens * s.K), sc(s.K), out(n), bounds(s.N * groups);
      for (auto& v : W) v = static_cast<float>(0.02 * rng.normal());
      for (auto& v : x) v = static_cast<float>(rng.normal());
      for (auto& v : sc) v = static_cast<float>(std::exp(rng.normal()));
      bench::DeviceArray<float> d_W(n), d_x(kClipTokens * s.K), d_s(s.K), d_out(n), d_bounds(s.N * groups);
      bench::ck(cudaMemcpy(d_W.p, W.data(), n * 4, cudaMemcpyHostToDevice), "upload");
      bench::ck(cudaMemcpy(d_x.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice), "upload");
      bench::ck(cudaMemcpy(d_s.p, sc.data(), sc.size() * 4, cudaMemcpyHostToDevice), "upload");
      AwqSearchOptions o;
      const double cg = bench::time_ms([&] { awq_candidate_cuda(d_W.p, s.N, s.K, d_s.p, 4, 128, d_out.p); }, reps);
      const double cc = 1e3 * cpu_seconds([&] { awq_candidate_ref(W.data(), s.N, s.K, sc.data(), 4, 128, out.data()); });
      const double kg = bench::time_ms(
          [&] { awq_clip_search_cuda(d_W.p, s.N, s.K, d_x.p, kClipTokens, o, d_bounds.p); }, reps);
      const int64_t rows = std::min(s.N, kCpuClipRows);
      const double kc = 1e3 * cpu_seconds([&] {
        awq_clip_search_ref(W.data(), rows, s.K, x.data(), kClipTokens, o, bounds.data());
      }) * static_cast<double>(s.N) / static_cast<double>(rows);
      for (const auto& [method, g, c] : {std::make_tuple("awq-cand", cg, cc), std::make_tuple("awq-clip", kg, kc)}) {
        std::printf("%-8s %-16s %6lld %6lld %10.3f %10.1f %8.1fx\n", method, s.name, static_cast<long long>(s.K),
                    static_cast<long long>(s.N), g, c, c / g);
        csv << stamp.csv() << "," << method << "," << s.name << "," << s.K << "," << s.N << "," << g << "," << c
            << "\n";
      }
      cand_gpu += kLayers * kGridPoints * s.per_layer * cg;
      cand_cpu += kLayers * kGridPoints * s.per_layer * cc;
      clip_gpu += kLayers * clipped_per_layer(s) * kg;
      clip_cpu += kLayers * clipped_per_layer(s) * kc;
    }
    std::printf("awq, Qwen2.5-7B: %d x 7 x %d candidates gpu %.2f s, cpu %.1f s; clip search of 5 x %d Linears gpu "
                "%.2f s, cpu %.1f s (%.0fx)\n",
                kGridPoints, kLayers, cand_gpu / 1e3, cand_cpu / 1e3, kLayers, clip_gpu / 1e3, clip_cpu / 1e3,
                clip_cpu / clip_gpu);
    if (!csv_path.empty()) bench::write_csv(csv_path, csv.str());
  });
}
