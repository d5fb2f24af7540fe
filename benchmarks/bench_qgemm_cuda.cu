// W4A16 GEMM on the Q4 layout vs a cuBLASLt bf16 GEMM (cublasLtMatmul, fp32 accumulation) on Qwen2.5-7B and
// -72B Linear shapes, in two sections:
//   decode:  qgemm_int4_decode_cuda (and the transposed qgemm_int4_t_decode_cuda), M = 1, 4, 16, 64 (--ms):
//            memory bound, reported as GB/s, % of HBM peak and speed-up over cuBLASLt; then the forward on tensor
//            cores, qgemm_int4_decode_mma_cuda, in rows of its own (path decode_mma, no transposed time), on bf16 x
//            and on fp32 x split into three bf16 pieces (path decode_mma_f32: the exact decode's product).
//   prefill: the tensor-core qgemm_int4_tc_cuda / qgemm_int4_t_tc_cuda (the wgmma kernels on sm_90 and the
//            dense path qgemm_int4_dense_cuda, bf16 Ŵ + cuBLASLt, in rows of their own), M = 512, 2048, 8192
//            (--tc-ms): compute bound, reported as TFLOP/s against cuBLASLt's forward (y = x·Wᵀ) and
//            data-gradient (dx = dy·W) GEMMs and the ratio cuBLASLt time / Q4 time (target >= 0.9 at
//            M >= 2048); --tc-ms "" skips it.
//
//   bench_qgemm_cuda [--csv out.csv] [--reps 20] [--peak-gbs 4800] [--models 7b,72b] [--ms 1,4,16,64]
//                    [--tc-ms 512,2048,8192]
//
// Timing: 3 warm-up calls, then `reps` timed calls, each preceded by a write of 256 MiB (5x the 50 MB L2) so
// every call reads its weights from HBM; each call timed alone with CUDA events; the median is reported.
// Bytes moved (formulas below): Q4 = qweight + meta + x (bf16) + y (fp32); cuBLAS = W (bf16) + x + y (bf16).
// GB/s = bytes / time; "% HBM" = GB/s over the device's peak (H100 SXM 3350, H200 4800 GB/s, or --peak-gbs);
// at M = 1 the kernel should approach that peak. TFLOP/s = 2·M·N·K / time. speed-up = cuBLAS time / Q4 time
// (ideal 16 / 4.25 = 3.76 at group 128, REFERENCE B3). CSV rows carry date, device, driver and commit, and a last
// column `path` (decode, decode_mma, decode_mma_f32, tc, dense, dense_overlap: the dense path with its overlap,
// QWENQ_QGEMM_OVERLAP=1, where it cuts the weight; dequant: q4_dequantize_bf16_cuda alone, M = 0, or wgmma: the
// Hopper kernels qgemm_int4_wgmma_cuda / qgemm_int4_t_wgmma_cuda on sm_90, their own rows); in tc, wgmma and dense
// rows the GB/s columns use the same byte formulas, cublas_t_us is the cuBLASLt dx = dy·W time, speedup compares the
// forward times and q4_pct_bf16_peak is the forward's TFLOP/s over the device's dense bf16 peak
// (benchmarks/cuda_bench.h).
// Without a CUDA device it prints one line and exits 0.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <sstream>
#include <string>
#include <vector>

#include "benchmarks/bench_main.h"
#include "benchmarks/cuda_bench.cuh"
#include "core/rng.h"
#include "kernels/convert.h"
#include "kernels/qgemm.h"
#include "tests/support/scoped_env.h"

namespace {

using namespace qwenq;
using bench::ck;

void ck(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": cuBLAS status " + std::to_string(s));
}

template <typename T>
using Dev = bench::DeviceArray<T>;

// Median microseconds of fn(), each timed call after an L2 flush.
template <typename F>
double time_us(F&& fn, int reps, bench::L2Flush& flush) {
  return 1000.0 * bench::time_ms(fn, reps, &flush);
}

// A Q4 weight with random words (the speed does not depend on the values): fp16 scale 0.01, zero 8, group 128.
Q4Layout random_q4(int64_t K, int64_t N, uint64_t seed) {
  Q4Layout q;
  q.kind = Q4Kind::Int;
  q.K = K;
  q.N = N;
  q.Kp = (K + 7) / 8 * 8;
  q.Np = (N + 3) / 4 * 4;
  q.group = 128;
  Rng rng(seed);
  q.qweight.resize(q.Kp / 8 * q.Np);
  for (auto& w : q.qweight) w = static_cast<uint32_t>(rng.next_u64());
  q.meta.assign(q.num_groups() * q.Np, q4_int_meta(f32_to_f16(0.01f), 8));
  return q;
}

// cuBLASLt: y[M, N] (bf16, row-major) = x[M, K] · W[N, K]ᵀ. cuBLAS is column-major, so row-major y is the
// N x M matrix D (ld N) = op_T(A) · B with A = W seen as K x N (ld K) and B = x seen as K x M (ld K).
// dgrad = true: dx[M, K] = dy[M, N] · W, i.e. D (K x M, ld K) = op_N(A) · B with B = dy seen as N x M (ld N).
struct LtGemm {
  cublasLtHandle_t h = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulHeuristicResult_t algo{};
  void* ws = nullptr;
  size_t ws_bytes = 32u << 20;
  LtGemm(int64_t M, int64_t K, int64_t N, bool dgrad = false) {
    ck(cublasLtCreate(&h), "cublasLtCreate");
    ck(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
    const cublasOperation_t t = dgrad ? CUBLAS_OP_N : CUBLAS_OP_T, n = CUBLAS_OP_N;
    ck(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)), "transa");
    ck(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)), "transb");
    ck(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K), "layout A");
    if (dgrad) {
      ck(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, N, M, N), "layout B");
      ck(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, K, M, K), "layout D");
    } else {
      ck(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K), "layout B");
      ck(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, N, M, N), "layout D");
    }
    ck(cudaMalloc(&ws, ws_bytes), "cuBLASLt workspace");
    cublasLtMatmulPreference_t pref;
    ck(cublasLtMatmulPreferenceCreate(&pref), "pref");
    ck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)),
       "pref ws");
    int found = 0;
    ck(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, ld, ld, pref, 1, &algo, &found), "heuristic");
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) throw std::runtime_error("cuBLASLt found no algorithm");
  }
  void run(const void* W, const void* x, void* y) {
    const float alpha = 1.0f, beta = 0.0f;
    ck(cublasLtMatmul(h, op, &alpha, W, la, x, lb, &beta, y, ld, y, ld, &algo.algo, ws, ws_bytes, nullptr),
       "cublasLtMatmul");
  }
  ~LtGemm() {
    cudaFree(ws);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
    cublasLtDestroy(h);
  }
};

struct Layer {
  const char* model;
  const char* name;
  int64_t K, N;
};

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path, models = "7b,72b", ms_arg = "1,4,16,64", tc_ms_arg = "512,2048,8192";
  int reps = 20;
  double peak_gbs = 0;
  bench::Args args;
  args.add("--csv", &csv_path, "out.csv");
  args.add("--reps", &reps);
  args.add("--peak-gbs", &peak_gbs, "GB/s");
  args.add("--models", &models);
  args.add("--ms", &ms_arg);
  args.add("--tc-ms", &tc_ms_arg);
  if (const int rc = args.parse(argc, argv); rc >= 0) return rc;
  return bench::run_on_device(argv[0], [&](const bench::Stamp& stamp) {
    const std::string& device = stamp.device;
    const bench::Peaks peaks = bench::device_peaks(device);
    if (peak_gbs <= 0) peak_gbs = peaks.hbm_gbs;
    const std::vector<int64_t> Ms = bench::parse_list(ms_arg), tc_Ms = bench::parse_list(tc_ms_arg);
    const std::vector<Layer> all = {
        {"7b", "q_proj/o_proj", 3584, 3584},  {"7b", "k_proj/v_proj", 3584, 512}, {"7b", "gate/up_proj", 3584, 18944},
        {"7b", "down_proj", 18944, 3584},     {"72b", "q_proj/o_proj", 8192, 8192}, {"72b", "k_proj/v_proj", 8192, 1024},
        {"72b", "gate/up_proj", 8192, 29568}, {"72b", "down_proj", 29568, 8192}};

    std::ostringstream csv;
    csv << "date,device,driver,commit,model,layer,M,K,N,q4_us,q4_t_us,cublas_us,q4_GBps,q4_pct_hbm,q4_t_GBps,cublas_GBps,"
           "q4_TFLOPs,cublas_TFLOPs,speedup,q4_t_TFLOPs,cublas_t_us,q4_pct_bf16_peak,path\n";
    bench::L2Flush flush;
    std::fprintf(stderr, "device: %s; %s; peak %.0f GB/s, %.0f bf16 TFLOP/s; commit %s\n", device.c_str(),
                 stamp.driver.c_str(), peak_gbs, peaks.bf16_tflops, stamp.commit.c_str());
    std::fprintf(stderr, "%-4s %-14s %3s %6s %6s | %9s %9s %9s | %8s %6s %8s | %7s\n", "mdl", "layer", "M", "K", "N",
                 "q4 us", "q4ᵀ us", "cuBLAS us", "q4 GB/s", "%HBM", "cub GB/s", "speedup");
    uint64_t seed = 1;
    for (const Layer& L : all) {
      if (("," + models + ",").find(std::string(",") + L.model + ",") == std::string::npos) continue;
      const Q4Layout q = random_q4(L.K, L.N, ++seed);
      const Q4DeviceWeight dw(q);
      Dev<uint16_t> Wd(static_cast<size_t>(L.N) * L.K);
      bench::fill_bf16(Wd.p, L.N * L.K, 17, 0.1f);
      for (int64_t M : Ms) {
        Dev<uint16_t> x(M * L.K), dy(M * L.N), yb(M * L.N);
        Dev<float> y(M * L.N), dx(M * L.K);
        bench::fill_bf16(x.p, M * L.K, 3, 0.1f);
        bench::fill_bf16(dy.p, M * L.N, 5, 0.1f);
        ck(cudaDeviceSynchronize(), "fill");
        LtGemm lt(M, L.K, L.N);
        const double t_q4 =
            time_us([&] { qgemm_int4_decode_cuda(dw.view(), x.p, DType::BF16, M, y.p); }, reps, flush);
        const double t_q4t = time_us([&] { qgemm_int4_t_decode_cuda(dw.view(), dy.p, DType::BF16, M, dx.p); }, reps,
                                     flush);
        const double t_cub = time_us([&] { lt.run(Wd.p, x.p, yb.p); }, reps, flush);
        const double q4_bytes = static_cast<double>(dw.bytes()) + 2.0 * M * L.K + 4.0 * M * L.N;
        const double q4t_bytes = static_cast<double>(dw.bytes()) + 2.0 * M * L.N + 4.0 * M * L.K;
        const double cub_bytes = 2.0 * L.N * L.K + 2.0 * M * L.K + 2.0 * M * L.N;
        const double flops = 2.0 * M * L.N * L.K;
        const double q4_gbs = q4_bytes / (t_q4 * 1e3), q4t_gbs = q4t_bytes / (t_q4t * 1e3);
        const double cub_gbs = cub_bytes / (t_cub * 1e3);
        const double pct = peak_gbs > 0 ? 100.0 * q4_gbs / peak_gbs : 0.0;
        std::fprintf(stderr, "%-4s %-14s %3lld %6lld %6lld | %9.1f %9.1f %9.1f | %8.0f %5.1f%% %8.0f | %6.2fx\n", L.model,
                     L.name, static_cast<long long>(M), static_cast<long long>(L.K), static_cast<long long>(L.N), t_q4,
                     t_q4t, t_cub, q4_gbs, pct, cub_gbs, t_cub / t_q4);
        csv << stamp.csv() << "," << L.model << "," << L.name << "," << M << ","
            << L.K << "," << L.N << "," << t_q4 << "," << t_q4t << "," << t_cub << "," << q4_gbs << "," << pct << ","
            << q4t_gbs << "," << cub_gbs << "," << flops / (t_q4 * 1e6) << "," << flops / (t_cub * 1e6) << ","
            << t_cub / t_q4 << "," << flops / (t_q4t * 1e6) << ",,," << "decode\n";
        // The forward on tensor cores (kernels/qgemm_decode_mma.cu), same bytes, its own row (path decode_mma); and
        // the same product on fp32 x (the exact decode of generate, QWENQ_DECODE_MMA_F32=1): x split into three bf16
        // pieces first (one more launch), 3M kernel rows; x counts 4 bytes a value (path decode_mma_f32).
        if (qgemm_decode_mma_supports(dw.view())) {
          // One tensor-core decode row: its time t_mma and bytes, printed and written as `path`.
          // The label also names the launch (kernels/qgemm_decode_plan.h): K splits, blocks per SM, shared memory.
          const auto mma_row = [&](double t_mma, double bytes, const char* label, const char* path, DType xt) {
            const double mma_gbs = bytes / (t_mma * 1e3);
            const double mma_pct = peak_gbs > 0 ? 100.0 * mma_gbs / peak_gbs : 0.0;
            const QgemmDecodeMmaPlan plan = qgemm_decode_mma_plan(dw.view(), xt, M);
            std::fprintf(stderr,
                         "%-4s %-14s %3lld %6lld %6lld | %9.1f %9s %9.1f | %8.0f %5.1f%% %8.0f | %6.2fx  (%s; %lld "
                         "splits, %d/SM, %lld KB)\n",
                         L.model, L.name, static_cast<long long>(M), static_cast<long long>(L.K),
                         static_cast<long long>(L.N), t_mma, "-", t_cub, mma_gbs, mma_pct, cub_gbs, t_cub / t_mma,
                         label, static_cast<long long>(plan.splits), plan.resident_per_sm,
                         static_cast<long long>((plan.smem_bytes + 1023) / 1024));
            csv << stamp.csv() << "," << L.model << "," << L.name << "," << M << "," << L.K << "," << L.N << ","
                << t_mma << ",," << t_cub << "," << mma_gbs << "," << mma_pct << ",," << cub_gbs << ","
                << flops / (t_mma * 1e6) << "," << flops / (t_cub * 1e6) << "," << t_cub / t_mma << ",,,," << path
                << "\n";
          };
          mma_row(time_us([&] { qgemm_int4_decode_mma_cuda(dw.view(), x.p, DType::BF16, M, y.p); }, reps, flush),
                  q4_bytes, "mma", "decode_mma", DType::BF16);
          Dev<float> xf(M * L.K);
          bf16_to_f32_cuda(x.p, M * L.K, xf.p);
          mma_row(time_us([&] { qgemm_int4_decode_mma_cuda(dw.view(), xf.p, DType::F32, M, y.p); }, reps, flush),
                  q4_bytes + 2.0 * M * L.K, "mma, fp32 x", "decode_mma_f32", DType::F32);
        }
      }
    }

    // Prefill / training regime: the tensor-core kernels vs cuBLASLt bf16 forward and data-gradient GEMMs.
    // TFLOP/s = 2·M·N·K / time for all four; ratio = cuBLASLt time / Q4 time (>= 0.9 is the target at
    // M >= 2048). The Q4 kernels write fp32 outputs, cuBLASLt bf16 ones (the byte formulas above).
    if (!tc_Ms.empty()) {
      std::fprintf(stderr, "\nprefill (tensor cores): TFLOP/s, ratio = cuBLASLt time / Q4 time\n");
      std::fprintf(stderr, "%-4s %-14s %5s %6s %6s | %8s %8s %6s | %8s %8s %6s%s\n", "mdl", "layer", "M", "K", "N",
                   "q4 TF/s", "cub TF/s", "ratio", "q4ᵀ TF/s", "cubᵀ TF/s", "ratioᵀ",
                   cuda_wgmma_supported() ? " | wgmma TF/s  ratio  wgmmaᵀ TF/s ratioᵀ" : "");
    }
    for (const Layer& L : tc_Ms.empty() ? std::vector<Layer>{} : all) {
      if (("," + models + ",").find(std::string(",") + L.model + ",") == std::string::npos) continue;
      const Q4Layout q = random_q4(L.K, L.N, ++seed);
      const Q4DeviceWeight dw(q);
      Dev<uint16_t> Wd(static_cast<size_t>(L.N) * L.K);
      bench::fill_bf16(Wd.p, L.N * L.K, 17, 0.1f);
      {
        // The dense path's first step alone (q4_dequantize_bf16_cuda into a kept buffer): packed words + metas
        // read, bf16 Ŵ written; one line per layer, CSV path dequant (M = 0, q4_us its time).
        Dev<uint16_t> wb(static_cast<size_t>(L.N) * q.Kp);
        const double t_dq = time_us([&] { q4_dequantize_bf16_cuda(dw.view(), wb.p); }, reps, flush);
        const double dq_bytes = static_cast<double>(dw.bytes()) + 2.0 * L.N * q.Kp;
        const double dq_gbs = dq_bytes / (t_dq * 1e3), dq_pct = peak_gbs > 0 ? 100.0 * dq_gbs / peak_gbs : 0.0;
        std::fprintf(stderr, "%-4s %-14s dequantize to bf16: %8.1f us, %6.0f GB/s, %5.1f%% HBM\n", L.model, L.name, t_dq,
                     dq_gbs, dq_pct);
        csv << stamp.csv() << "," << L.model << "," << L.name << ",0," << L.K << "," << L.N << "," << t_dq << ",,,"
            << dq_gbs << "," << dq_pct << ",,,,,,,,,dequant\n";
      }
      for (int64_t M : tc_Ms) {
        Dev<uint16_t> x(M * L.K), dy(M * L.N), yb(M * L.N), dxb(M * L.K);
        Dev<float> y(M * L.N), dx(M * L.K);
        bench::fill_bf16(x.p, M * L.K, 3, 0.1f);
        bench::fill_bf16(dy.p, M * L.N, 5, 0.1f);
        ck(cudaDeviceSynchronize(), "fill");
        LtGemm lt(M, L.K, L.N), lt_t(M, L.K, L.N, /*dgrad=*/true);
        const double t_q4 =
            time_us([&] { qgemm_int4_tc_cuda(dw.view(), x.p, DType::BF16, M, y.p); }, reps, flush);
        const double t_q4t =
            time_us([&] { qgemm_int4_t_tc_cuda(dw.view(), dy.p, DType::BF16, M, dx.p); }, reps, flush);
        // The Hopper kernels (kernels/qgemm_wgmma.cu) where the device runs them: timed the same way, reported
        // in their own columns and as a CSV row with path wgmma (q4_us / q4t_us = their forward / dx times).
        const bool wg = cuda_wgmma_supported();
        const double t_wg =
            wg ? time_us([&] { qgemm_int4_wgmma_cuda(dw.view(), x.p, DType::BF16, M, y.p); }, reps, flush) : 0.0;
        const double t_wgt =
            wg ? time_us([&] { qgemm_int4_t_wgmma_cuda(dw.view(), dy.p, DType::BF16, M, dx.p); }, reps, flush) : 0.0;
        // The dense path (kernels/qgemm_dense.cu: Ŵ dequantized to bf16, then cuBLASLt), its own row (path dense).
        double t_dn = 0, t_dnt = 0;
        {
          const test::ScopedEnv off("QWENQ_QGEMM_OVERLAP", "0");  // whatever the caller exported
          t_dn = time_us([&] { qgemm_int4_dense_cuda(dw.view(), x.p, DType::BF16, M, y.p); }, reps, flush);
          t_dnt = time_us([&] { qgemm_int4_t_dense_cuda(dw.view(), dy.p, DType::BF16, M, dx.p); }, reps, flush);
        }
        // The same with the overlap (QWENQ_QGEMM_OVERLAP=1: Ŵ in pieces dequantized while the previous piece's GEMM
        // runs), path dense_overlap: its gain in the same run. Only where it cuts the weight (qgemm_dense_chunks > 1).
        double t_ds = 0, t_dst = 0;
        {
          const test::ScopedEnv on("QWENQ_QGEMM_OVERLAP", "1");
          if (qgemm_dense_chunks(L.N, q4_padded_k(L.K)) > 1) {
            t_ds = time_us([&] { qgemm_int4_dense_cuda(dw.view(), x.p, DType::BF16, M, y.p); }, reps, flush);
            t_dst = time_us([&] { qgemm_int4_t_dense_cuda(dw.view(), dy.p, DType::BF16, M, dx.p); }, reps, flush);
          }
        }
        const bool overlaps = t_ds > 0;
        const double t_cub = time_us([&] { lt.run(Wd.p, x.p, yb.p); }, reps, flush);
        const double t_cubt = time_us([&] { lt_t.run(Wd.p, dy.p, dxb.p); }, reps, flush);
        const double flops = 2.0 * M * L.N * L.K;
        const double tf = flops / (t_q4 * 1e6), tft = flops / (t_q4t * 1e6);
        const double ctf = flops / (t_cub * 1e6), ctft = flops / (t_cubt * 1e6);
        std::fprintf(stderr, "%-4s %-14s %5lld %6lld %6lld | %8.1f %8.1f %5.2fx | %8.1f %8.1f %5.2fx", L.model,
                     L.name, static_cast<long long>(M), static_cast<long long>(L.K), static_cast<long long>(L.N), tf,
                     ctf, t_cub / t_q4, tft, ctft, t_cubt / t_q4t);
        if (wg)
          std::fprintf(stderr, " | %8.1f %5.2fx %8.1f %5.2fx", flops / (t_wg * 1e6), t_cub / t_wg,
                       flops / (t_wgt * 1e6), t_cubt / t_wgt);
        std::fprintf(stderr, " | dense %8.1f %5.2fx %8.1f %5.2fx", flops / (t_dn * 1e6), t_cub / t_dn,
                     flops / (t_dnt * 1e6), t_cubt / t_dnt);
        if (overlaps) std::fprintf(stderr, " (overlap %5.2fx %5.2fx)", t_cub / t_ds, t_cubt / t_dst);
        std::fprintf(stderr, "\n");
        const double q4_bytes = static_cast<double>(dw.bytes()) + 2.0 * M * L.K + 4.0 * M * L.N;
        const double q4t_bytes = static_cast<double>(dw.bytes()) + 2.0 * M * L.N + 4.0 * M * L.K;
        const double cub_bytes = 2.0 * L.N * L.K + 2.0 * M * L.K + 2.0 * M * L.N;
        // One CSV row of a path with forward time t and dx time tt.
        const auto row = [&](double t, double tt, const char* path) {
          const double f = flops / (t * 1e6), ft = flops / (tt * 1e6), gbs = q4_bytes / (t * 1e3);
          csv << stamp.csv() << "," << L.model << "," << L.name << "," << M << "," << L.K << "," << L.N << "," << t
              << "," << tt << "," << t_cub << "," << gbs << "," << (peak_gbs > 0 ? 100.0 * gbs / peak_gbs : 0.0) << ","
              << q4t_bytes / (tt * 1e3) << "," << cub_bytes / (t_cub * 1e3) << "," << f << "," << ctf << ","
              << t_cub / t << "," << ft << "," << t_cubt << ","
              << (peaks.bf16_tflops > 0 ? 100.0 * f / peaks.bf16_tflops : 0.0) << "," << path << "\n";
        };
        row(t_q4, t_q4t, "tc");
        if (wg) row(t_wg, t_wgt, "wgmma");
        row(t_dn, t_dnt, "dense");
        if (overlaps) row(t_ds, t_dst, "dense_overlap");
      }
    }
    bench::write_csv(csv_path, csv.str());
  });
}
