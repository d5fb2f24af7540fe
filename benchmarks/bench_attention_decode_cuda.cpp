// Decode attention (kernels/attention_decode.h): one new query per sequence against an fp32 KV cache
// (attention_decode_cuda) and against a bf16 one (attention_decode_bf16_cuda) in the same run, at the Qwen2.5 head
// shapes 0.5B (14/2/64), 7B (28/4/128) and 72B (64/8/128), cache lengths 1K..32K; the ratio fp32 time / bf16 time
// is the speed-up of the bf16 cache (2 at most: half the bytes). The grouped kernel (QWENQ_DECODE_GROUPED=1,
// kernels/attention_decode_grouped.cu: a block per kv head and its query heads) is timed on the same inputs in the
// same run: columns g*, and its speed-up over the per-head kernel on the bf16 cache.
//
//   bench_attention_decode_cuda [--csv out.csv] [--reps 20] [--lens 1024,2048,4096,8192,16384,32768] [--batch 1]
//                               [--grid-len 32768]
//
// --grid-len N sizes every call's grid for max_len = N keys (at least len) over caches of that capacity holding len
// keys, as a graph-captured decode step does (trainer/qwen_decode_cuda.cpp: its grid is the cache's, the length on
// the device; kernels/attention_decode_split.h cuts each length its own way): compare with a run without it.
//
// The kernel is memory bound: each (sequence, kv head)'s keys and values are read once from HBM (the group's other
// query heads find them in L2), so the unique bytes are B · len · Hkv · D · e · 2 (e = 4 fp32, 2 bf16) and
// GB/s = bytes / time, against the device's HBM peak. An L2 flush precedes every timed call (in a real step the
// other layers' weights evict the cache). The inputs are zeros (finite; the speed does not depend on the values).
// Each call includes the scratch allocation of the split-K path (stream-ordered, from the pool). Without a CUDA
// device it prints one line and exits 0.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "benchmarks/bench_main.h"
#include "benchmarks/cuda_bench.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_decode_grouped.h"
#include "tests/support/scoped_env.h"

namespace {

using namespace qwenq;
using bench::ck;
template <typename T>
using Dev = bench::DeviceArray<T>;

struct Heads {
  const char* model;
  int64_t H, Hkv, D;
};

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path, lens_arg = "1024,2048,4096,8192,16384,32768";
  int reps = 20;
  int64_t B = 1, grid_len = 0;
  bench::Args args;
  args.add("--csv", &csv_path, "out.csv");
  args.add("--reps", &reps);
  args.add("--lens", &lens_arg);
  args.add("--batch", &B);
  args.add("--grid-len", &grid_len);
  if (const int rc = args.parse(argc, argv); rc >= 0) return rc;
  return bench::run_on_device(argv[0], [&](const bench::Stamp& stamp) {
    const std::string& device = stamp.device;
    const bench::Peaks peaks = bench::device_peaks(device);
    std::ostringstream csv;
    csv << "date,device,driver,commit,model,B,H,Hkv,D,len,max_len,splits,f32_us,f32_GBs,f32_pct_hbm_peak,bf16_us,"
           "bf16_GBs,bf16_pct_hbm_peak,f32_over_bf16_time,grouped_splits,gf32_us,gf32_GBs,gf32_pct_hbm_peak,gbf16_us,"
           "gbf16_GBs,gbf16_pct_hbm_peak,bf16_over_grouped_bf16_time\n";
    std::fprintf(stderr, "device: %s; %s; HBM peak %.0f GB/s; commit %s; batch %lld%s\n", device.c_str(),
                 stamp.driver.c_str(), peaks.hbm_gbs, stamp.commit.c_str(), static_cast<long long>(B),
                 grid_len > 0 ? ("; grids sized for " + std::to_string(grid_len) + " keys").c_str() : "");
    std::fprintf(stderr, "%-6s %8s %6s | %9s %9s %7s | %9s %9s %7s | %9s || %6s %9s %7s %9s %7s %9s\n", "heads",
                 "len", "splits", "f32 us", "GB/s", "% peak", "bf16 us", "GB/s", "% peak", "f32/bf16", "gsplit",
                 "g f32 us", "% peak", "g bf16 us", "% peak", "speed-up");
    bench::L2Flush flush;
    const Heads shapes[] = {{"0.5B", 14, 2, 64}, {"7B", 28, 4, 128}, {"72B", 64, 8, 128}};
    for (const Heads& s : shapes) {
      for (int64_t len : bench::parse_list(lens_arg)) {
        const int64_t cap = std::max(len, grid_len);  // the caches' capacity and every call's max_len
        const size_t nq = static_cast<size_t>(B * s.H * s.D), nkv = static_cast<size_t>(B * cap * s.Hkv * s.D);
        Dev<float> q(nq), k(nkv), v(nkv), out(nq);
        Dev<uint16_t> k16(nkv), v16(nkv);
        Dev<int32_t> lens(static_cast<size_t>(B));
        ck(cudaMemset(q.p, 0, nq * sizeof(float)), "memset q");
        ck(cudaMemset(k.p, 0, nkv * sizeof(float)), "memset k");
        ck(cudaMemset(v.p, 0, nkv * sizeof(float)), "memset v");
        ck(cudaMemset(k16.p, 0, nkv * sizeof(uint16_t)), "memset k16");
        ck(cudaMemset(v16.p, 0, nkv * sizeof(uint16_t)), "memset v16");
        const std::vector<int32_t> host_lens(static_cast<size_t>(B), static_cast<int32_t>(len));
        ck(cudaMemcpy(lens.p, host_lens.data(), host_lens.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "lens");
        const double ms32 = bench::time_ms(
            [&] { attention_decode_cuda(q.p, k.p, v.p, lens.p, B, s.H, s.Hkv, s.D, cap, cap, out.p); }, reps, &flush);
        const double ms16 = bench::time_ms(
            [&] { attention_decode_bf16_cuda(q.p, k16.p, v16.p, lens.p, B, s.H, s.Hkv, s.D, cap, cap, out.p); }, reps,
            &flush);
        double gms32 = 0, gms16 = 0;
        {
          const test::ScopedEnv grouped("QWENQ_DECODE_GROUPED", "1");
          gms32 = bench::time_ms(
              [&] { attention_decode_cuda(q.p, k.p, v.p, lens.p, B, s.H, s.Hkv, s.D, cap, cap, out.p); }, reps, &flush);
          gms16 = bench::time_ms(
              [&] { attention_decode_bf16_cuda(q.p, k16.p, v16.p, lens.p, B, s.H, s.Hkv, s.D, cap, cap, out.p); },
              reps, &flush);
        }
        const double keys = static_cast<double>(B * len * s.Hkv * s.D);  // the elements read (len of cap per row)
        const auto gbs_of = [&](double ms, size_t elem) { return 2.0 * keys * elem / (ms * 1e6); };
        const auto pct_of = [&](double gbs) { return peaks.hbm_gbs > 0 ? 100.0 * gbs / peaks.hbm_gbs : 0.0; };
        const double gbs32 = gbs_of(ms32, sizeof(float)), gbs16 = gbs_of(ms16, sizeof(uint16_t));
        const double ggbs32 = gbs_of(gms32, sizeof(float)), ggbs16 = gbs_of(gms16, sizeof(uint16_t));
        const int64_t splits = attention_decode_splits(B, s.H, cap);
        const int64_t gsplits = attention_decode_grouped_splits(B, s.H, s.Hkv, s.D, /*bf16=*/true, cap);
        std::fprintf(stderr,
                     "%-6s %8lld %6lld | %9.1f %9.0f %7.1f | %9.1f %9.0f %7.1f | %9.2f || %6lld %9.1f %7.1f %9.1f %7.1f "
                     "%8.1fx\n",
                     s.model, static_cast<long long>(len), static_cast<long long>(splits), ms32 * 1e3, gbs32,
                     pct_of(gbs32), ms16 * 1e3, gbs16, pct_of(gbs16), ms32 / ms16, static_cast<long long>(gsplits),
                     gms32 * 1e3, pct_of(ggbs32), gms16 * 1e3, pct_of(ggbs16), ms16 / gms16);
        csv << stamp.csv() << "," << s.model << "," << B << "," << s.H << "," << s.Hkv << "," << s.D << "," << len
            << "," << cap << "," << splits << "," << ms32 * 1e3 << "," << gbs32 << "," << pct_of(gbs32) << ","
            << ms16 * 1e3 << "," << gbs16 << "," << pct_of(gbs16) << "," << ms32 / ms16 << "," << gsplits << ","
            << gms32 * 1e3 << "," << ggbs32 << "," << pct_of(ggbs32) << "," << gms16 * 1e3 << "," << ggbs16 << "," << pct_of(ggbs16) << ","
            << ms16 / gms16 << "\n";
      }
    }
    bench::write_csv(csv_path, csv.str());
  });
}
