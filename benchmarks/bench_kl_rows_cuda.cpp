// KL divergence statistics of a perplexity window (kernels/kl_rows.h) at Qwen2.5's vocabulary, V = 152064: the
// device path of `eval --kl-base` with two GPU models (kl_rows_cuda over logits that stay on the GPU) against the
// host path it replaced (both models' logits copied to pageable host memory, as QwenModelCuda::logits_rows does,
// then kl_rows_ref on every host core), in the same run, for rows = 110 (one 2^24-logits block, the chunk
// evaluate_kl_divergence uses) and 512 (a whole 512-token window).
//
//   bench_kl_rows_cuda [--csv out.csv] [--reps 10] [--rows 110,512] [--vocab 152064]
//
// The kernel reads both [rows, V] fp32 blocks twice (arg-max pass, then the sums, the second read partly from L2);
// GB/s counts the unique bytes 2·rows·V·4 once, against the device's HBM peak. An L2 flush precedes every timed
// kernel call. host_ms is the wall time of the two copies plus kl_rows_ref (std::chrono, median of the calls);
// host_over_device is the speed-up of the statistics stage (the forwards and lm_head products are not in either).
// A second table times llama.cpp's base-file rows (kernels/kld_rows.h) the same way: kld_encode_rows_cuda (eval
// --save-kld: the logits stay, the 16-bit rows come back) and kld_score_rows_cuda (eval --kl-base FILE: the rows go
// up) against the host path (the logits copied down, then the CPU twin), per block of rows, in the same run.
// Without a CUDA device it prints one line and exits 0.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "benchmarks/bench_main.h"
#include "benchmarks/cuda_bench.h"
#include "core/threads.h"
#include "kernels/kl_rows.h"
#include "kernels/kld_rows.h"
#include "tests/support/test_random.h"

namespace {

using namespace qwenq;
using bench::ck;
template <typename T>
using Dev = bench::DeviceArray<T>;

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path, rows_arg = "110,512";
  int reps = 10;
  int64_t V = 152064;
  bench::Args args;
  args.add("--csv", &csv_path, "out.csv");
  args.add("--reps", &reps);
  args.add("--rows", &rows_arg);
  args.add("--vocab", &V);
  if (const int rc = args.parse(argc, argv); rc >= 0) return rc;
  return bench::run_on_device(argv[0], [&](const bench::Stamp& stamp) {
    const bench::Peaks peaks = bench::device_peaks(stamp.device);
    std::ostringstream csv;
    csv << "date,device,driver,commit,op,rows,V,device_us,device_GBs,device_pct_hbm_peak,host_ms,host_threads,"
           "host_over_device\n";
    std::fprintf(stderr, "device: %s; %s; HBM peak %.0f GB/s; commit %s; V %lld; host threads %d\n",
                 stamp.device.c_str(), stamp.driver.c_str(), peaks.hbm_gbs, stamp.commit.c_str(),
                 static_cast<long long>(V), num_threads());
    std::fprintf(stderr, "%6s | %10s %9s %7s | %10s | %9s\n", "rows", "device us", "GB/s", "% peak", "host ms",
                 "host/dev");
    bench::L2Flush flush;
    for (int64_t rows : bench::parse_list(rows_arg)) {
      const size_t n = static_cast<size_t>(rows * V);
      std::vector<float> b = test::normal_vector(static_cast<int64_t>(n), 1, 3.f), q = b;
      const std::vector<float> noise = test::normal_vector(static_cast<int64_t>(n), 2, 0.3f);
      for (size_t i = 0; i < n; ++i) q[i] += noise[i];
      std::vector<int32_t> t(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) t[r] = static_cast<int32_t>((r * 7919) % V);
      Dev<float> db(n), dq(n);
      Dev<int32_t> dt(t.size());
      Dev<KlRow> dout(t.size());
      ck(cudaMemcpy(db.p, b.data(), n * sizeof(float), cudaMemcpyHostToDevice), "upload b");
      ck(cudaMemcpy(dq.p, q.data(), n * sizeof(float), cudaMemcpyHostToDevice), "upload q");
      ck(cudaMemcpy(dt.p, t.data(), t.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "upload targets");
      // The launcher's own target check (a 4·rows-byte copy and a sync) is part of each call, as in the real path.
      const double dev_ms = bench::time_ms([&] { kl_rows_cuda(db.p, dq.p, rows, V, dt.p, dout.p); }, reps, &flush);
      std::vector<float> hb(n), hq(n);
      std::vector<KlRow> out(t.size());
      std::vector<double> host;
      for (int i = 0; i < reps + 1; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        ck(cudaMemcpy(hq.data(), dq.p, n * sizeof(float), cudaMemcpyDeviceToHost), "download q");
        ck(cudaMemcpy(hb.data(), db.p, n * sizeof(float), cudaMemcpyDeviceToHost), "download b");
        kl_rows_ref(hb.data(), hq.data(), rows, V, t.data(), out.data());
        const auto t1 = std::chrono::steady_clock::now();
        if (i > 0) host.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
      const double host_ms = bench::median(host);
      const double gbs = 2.0 * static_cast<double>(n) * sizeof(float) / (dev_ms * 1e6);
      const double pct = peaks.hbm_gbs > 0 ? 100.0 * gbs / peaks.hbm_gbs : 0.0;
      std::fprintf(stderr, "%6lld | %10.1f %9.0f %7.1f | %10.2f | %9.1f\n", static_cast<long long>(rows), dev_ms * 1e3,
                   gbs, pct, host_ms, host_ms / dev_ms);
      csv << stamp.csv() << ",kl_rows," << rows << "," << V << "," << dev_ms * 1e3 << "," << gbs << "," << pct << ","
          << host_ms << "," << num_threads() << "," << host_ms / dev_ms << "\n";
      // llama.cpp's base-file rows: encode b, score q against b's rows; the host side copies the logits down.
      const int64_t nv = kld_row_width(V);
      Dev<uint16_t> drows(static_cast<size_t>(rows * nv));
      Dev<float> dnll(t.size());
      std::vector<uint16_t> hrows(static_cast<size_t>(rows * nv));
      std::vector<float> hnll(t.size());
      const double enc_ms =
          bench::time_ms([&] { kld_encode_rows_cuda(db.p, rows, V, dt.p, drows.p, dnll.p); }, reps, &flush);
      const double score_ms =
          bench::time_ms([&] { kld_score_rows_cuda(drows.p, dq.p, rows, V, dt.p, dout.p); }, reps, &flush);
      std::vector<double> enc_host, score_host;
      for (int i = 0; i < reps + 1; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        ck(cudaMemcpy(hb.data(), db.p, n * sizeof(float), cudaMemcpyDeviceToHost), "download b");
        kld_encode_rows_ref(hb.data(), rows, V, t.data(), hrows.data(), hnll.data());
        const auto t1 = std::chrono::steady_clock::now();
        ck(cudaMemcpy(hq.data(), dq.p, n * sizeof(float), cudaMemcpyDeviceToHost), "download q");
        kld_score_rows_ref(hrows.data(), hq.data(), rows, V, t.data(), out.data());
        const auto t2 = std::chrono::steady_clock::now();
        if (i == 0) continue;
        enc_host.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        score_host.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
      }
      const struct {
        const char* op;
        double dev_ms, host_ms, bytes;
      } kld_ops[] = {{"kld_encode", enc_ms, bench::median(enc_host), static_cast<double>(n) * 4 + rows * nv * 2.0},
                     {"kld_score", score_ms, bench::median(score_host), static_cast<double>(n) * 4 + rows * nv * 2.0}};
      for (const auto& o : kld_ops) {
        const double g = o.bytes / (o.dev_ms * 1e6), pc = peaks.hbm_gbs > 0 ? 100.0 * g / peaks.hbm_gbs : 0.0;
        std::fprintf(stderr, "%6lld | %10.1f %9.0f %7.1f | %10.2f | %9.1f  (%s)\n", static_cast<long long>(rows),
                     o.dev_ms * 1e3, g, pc, o.host_ms, o.host_ms / o.dev_ms, o.op);
        csv << stamp.csv() << "," << o.op << "," << rows << "," << V << "," << o.dev_ms * 1e3 << "," << g << "," << pc
            << "," << o.host_ms << "," << num_threads() << "," << o.host_ms / o.dev_ms << "\n";
      }
    }
    bench::write_csv(csv_path, csv.str());
  });
}
