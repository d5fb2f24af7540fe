// Flash attention (kernels/flash_attention.cu), forward and backward, and on sm_90 the Hopper kernels
// (kernels/flash_attention_wgmma.cu, their own columns, wgmma_* in the CSV: 0 where not run), in the FlashAttention-2/3 papers' setting
// (REFERENCE B4): bf16, causal, head dim 128, batch chosen so that the tokens total 16K, sequence lengths
// 2K..16K; heads H = 32 query / Hkv = 8 kv (GQA as Qwen2.5-7B..72B; hidden 4096).
//
//   bench_attention_cuda [--csv out.csv] [--reps 10] [--seqs 2048,4096,8192,16384] [--tokens 16384]
//                        [--heads 32] [--kv-heads 8] [--dim 128]
//
// FLOPs as FlashAttention counts them: forward 4 · L² · D · H per sequence, halved for causal; backward 2.5 x the
// forward (its 5 products against the forward's 2; the dq pass here recomputes 2 more, which are not counted).
// Timing: 3 warm-up calls, then `reps` calls each timed alone with CUDA events; the median is reported. The
// inputs (a few hundred MB at most) are rewritten by nobody between calls: attention is compute-bound, its
// working set per block is a few tiles, so no L2 flush. Each call includes the host-side tile plan and its
// upload, as a training step would pay them. Without a CUDA device it prints one line and exits 0.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <sstream>
#include <string>
#include <vector>

#include "benchmarks/bench_main.h"
#include "benchmarks/cuda_bench.cuh"
#include "kernels/flash_attention.h"

namespace {

using namespace qwenq;
using bench::ck;
template <typename T>
using Dev = bench::DeviceArray<T>;

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path, seqs_arg = "2048,4096,8192,16384";
  int reps = 10;
  int64_t tokens = 16384, H = 32, Hkv = 8, D = 128;
  bench::Args args;
  args.add("--csv", &csv_path, "out.csv");
  args.add("--reps", &reps);
  args.add("--seqs", &seqs_arg);
  args.add("--tokens", &tokens);
  args.add("--heads", &H);
  args.add("--kv-heads", &Hkv);
  args.add("--dim", &D);
  if (const int rc = args.parse(argc, argv); rc >= 0) return rc;
  return bench::run_on_device(argv[0], [&](const bench::Stamp& stamp) {
    const std::string& device = stamp.device;
    const bench::Peaks peaks = bench::device_peaks(device);
    std::ostringstream csv;
    csv << "date,device,driver,commit,seqlen,batch,H,Hkv,D,causal,fwd_ms,bwd_ms,fwd_TFLOPs,bwd_TFLOPs,fwdbwd_TFLOPs,"
           "fwd_pct_peak,bwd_pct_peak,wgmma_fwd_ms,wgmma_fwd_TFLOPs,wgmma_fwd_pct_peak,wgmma_bwd_ms,wgmma_bwd_TFLOPs,"
           "wgmma_bwd_pct_peak\n";
    std::fprintf(stderr, "device: %s; %s; dense bf16 peak %.0f TFLOP/s; commit %s; H=%lld Hkv=%lld D=%lld causal, %lld tokens per call\n",
                 device.c_str(), stamp.driver.c_str(), peaks.bf16_tflops, stamp.commit.c_str(), static_cast<long long>(H), static_cast<long long>(Hkv),
                 static_cast<long long>(D), static_cast<long long>(tokens));
    const bool wg = cuda_wgmma_supported();  // the Hopper kernels (kernels/flash_attention_wgmma.cu)
    std::fprintf(stderr, "%7s %5s | %9s %9s | %9s %9s %9s%s\n", "seqlen", "batch", "fwd ms", "bwd ms", "fwd TF/s",
                 "bwd TF/s", "f+b TF/s", wg ? " | wgmma fwd ms  TF/s  bwd ms  TF/s" : "");
    for (int64_t L : bench::parse_list(seqs_arg)) {
      const int64_t batch = std::max<int64_t>(1, tokens / L), T = batch * L;
      std::vector<int32_t> cu(static_cast<size_t>(batch + 1));
      for (int64_t s = 0; s <= batch; ++s) cu[s] = static_cast<int32_t>(s * L);
      const size_t nq = static_cast<size_t>(T * H * D), nkv = static_cast<size_t>(T * Hkv * D);
      Dev<uint16_t> q(nq), k(nkv), v(nkv), out(nq), dout(nq);
      Dev<float> lse(static_cast<size_t>(T * H)), dq(nq), dk(nkv), dv(nkv);
      bench::fill_bf16(q.p, static_cast<int64_t>(nq), 1, 3.4f);
      bench::fill_bf16(k.p, static_cast<int64_t>(nkv), 2, 3.4f);
      bench::fill_bf16(v.p, static_cast<int64_t>(nkv), 3, 3.4f);
      bench::fill_bf16(dout.p, static_cast<int64_t>(nq), 4, 3.4f);
      ck(cudaDeviceSynchronize(), "fill");
      const double t_fwd = bench::time_ms(
          [&] { attention_forward_cuda(q.p, k.p, v.p, cu.data(), batch, H, Hkv, D, out.p, lse.p, DType::BF16); }, reps);
      const double t_bwd = bench::time_ms(
          [&] {
            attention_backward_cuda(dout.p, q.p, k.p, v.p, out.p, lse.p, cu.data(), batch, H, Hkv, D, dq.p, dk.p, dv.p,
                                    DType::BF16);
          },
          reps);
      const double t_wg = wg ? bench::time_ms(
                                   [&] {
                                     attention_forward_wgmma_cuda(q.p, k.p, v.p, cu.data(), batch, H, Hkv, D, out.p,
                                                                  lse.p, DType::BF16);
                                   },
                                   reps)
                             : 0.0;
      const double t_wgb = wg ? bench::time_ms(
                                    [&] {
                                      attention_backward_wgmma_cuda(dout.p, q.p, k.p, v.p, out.p, lse.p, cu.data(),
                                                                    batch, H, Hkv, D, dq.p, dk.p, dv.p, DType::BF16);
                                    },
                                    reps)
                              : 0.0;
      const double fwd_flops = 4.0 * static_cast<double>(L) * L * D * H * batch / 2.0;  // causal
      const double bwd_flops = 2.5 * fwd_flops;
      const double fwd_tf = fwd_flops / (t_fwd * 1e9), bwd_tf = bwd_flops / (t_bwd * 1e9);
      const double all_tf = (fwd_flops + bwd_flops) / ((t_fwd + t_bwd) * 1e9);
      const double wg_tf = wg ? fwd_flops / (t_wg * 1e9) : 0.0, wgb_tf = wg ? bwd_flops / (t_wgb * 1e9) : 0.0;
      std::fprintf(stderr, "%7lld %5lld | %9.3f %9.3f | %9.1f %9.1f %9.1f", static_cast<long long>(L),
                   static_cast<long long>(batch), t_fwd, t_bwd, fwd_tf, bwd_tf, all_tf);
      if (wg) std::fprintf(stderr, " | %12.3f %5.1f %7.3f %5.1f", t_wg, wg_tf, t_wgb, wgb_tf);
      std::fprintf(stderr, "\n");
      const auto pct = [&](double tf) { return peaks.bf16_tflops > 0 ? 100.0 * tf / peaks.bf16_tflops : 0.0; };
      csv << stamp.csv() << "," << L << "," << batch << "," << H << "," << Hkv
          << "," << D << ",1," << t_fwd << "," << t_bwd << "," << fwd_tf << "," << bwd_tf << "," << all_tf << "," << pct(fwd_tf) << ","
          << pct(bwd_tf) << "," << t_wg << "," << wg_tf << "," << pct(wg_tf) << "," << t_wgb << "," << wgb_tf << ","
          << pct(wgb_tf) << "\n";
    }
    bench::write_csv(csv_path, csv.str());
  });
}
