// The GPU trainer's LoRA products on their own, at Qwen2.5-7B Linear shapes and a 2048-token step (r = 16): the six
// skinny matmuls trainer/lora_model_cuda.cpp runs per adapted Linear, each timed alone, as it runs them (fp32
// cuBLASLt, CUBLAS_COMPUTE_32F, no TF32) and with bf16 inputs (fp32 output) for comparison, against the Linear's
// base products (cuBLASLt bf16, fp32 output: y = x·Ŵᵀ and the input gradient dx = dy·Ŵ) and each with r more
// reduction columns or rows, the price of QWENQ_LORA_FOLD=1's [x | s·u]·[Ŵ | B]ᵀ and [dy | g]·[Ŵ ; A], which remove
// y+ and dx+ below:
//
//   u    u [T, r]   = x Aᵀ               lora_project_cuda                 bytes 4TK (x) + 4Tr
//   y+   y [T, N]  += s · u Bᵀ           lora_forward_cuda's second matmul 8TN (y read and written) + 4Tr
//   g    g [T, r]   = s · dy B           adapter_grads                     4TN (dy) + 4Tr
//   dB   dB [N, r] += s · dyᵀ u          adapter_grads                     4TN + 4Tr + 8Nr
//   dA   dA [r, K] += gᵀ x               linear_backward_weight_cuda       4TK + 4Tr + 8rK
//   dx+  dx [T, K] += g A                adapter_input_grad                8TK (dx read and written) + 4Tr
//
// (the adapter's own A, B reads are counted too; bf16 rows count 2 bytes per input value). GB/s = bytes / time, "%
// HBM" against the device's peak (benchmarks/cuda_bench.h). A layer-step runs u and y+ for 13 Linears (the forward,
// and the recomputation except the down projection's y+, whose output no backward reads), and g, dB, dA, dx+ for 7:
// the last table sums that per layer, the time the `--profile` phase "lora" should show per layer (plus dropout,
// when on), and what the fold would save (y+ and dx+ gone, the longer base GEMMs paid). Timing: 3 warm-ups, then
// the median of `reps` calls each after an L2 flush (256 MiB write).
//
//   bench_lora_cuda [--csv out.csv] [--reps 20] [--tokens 2048] [--rank 16]
//
// Without a CUDA device it prints one line and exits 0.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "benchmarks/bench_main.h"
#include "benchmarks/cuda_bench.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "kernels/blas_lt.h"

namespace {

using namespace qwenq;
using bench::ck;
template <typename T>
using Dev = bench::DeviceArray<T>;

struct Layer {
  const char* name;
  int64_t K, N;
  int count;  // Linears of this shape in a layer
  bool down;  // the down projection: no y+ and no base product in the recomputation
};

// Uniform values in [-amp, amp) uploaded to `d` (fp32, or bf16 bits).
void fill(Dev<float>& d, uint64_t seed, float amp) {
  Rng rng(seed);
  std::vector<float> h(d.n);
  for (float& v : h) v = rng.uniform(-amp, amp);
  ck(cudaMemcpy(d.p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
}
void fill(Dev<uint16_t>& d, uint64_t seed, float amp) {
  Rng rng(seed);
  std::vector<uint16_t> h(d.n);
  for (uint16_t& v : h) v = f32_to_bf16(rng.uniform(-amp, amp));
  ck(cudaMemcpy(d.p, h.data(), h.size() * sizeof(uint16_t), cudaMemcpyHostToDevice), "upload");
}

// The six products of one Linear in one dtype (F32: as the trainer runs them; BF16: the same column-major shapes
// with bf16 inputs and fp32 outputs).
struct LoraOps {
  int64_t T, K, N, r;
  DType in;  // F32 or BF16 inputs
  float s = 2.0f;

  // uᵀ[r, T] = op_T(A as K×r) · xᵀ(K×T)
  LtGemm u() const { return gemm(r, T, K, true, false, K, K, r, false); }
  // yᵀ[N, T] += s · op_T(B as r×N) · uᵀ(r×T)
  LtGemm y_add() const { return gemm(N, T, r, true, false, r, r, N, true); }
  // gᵀ[r, T] = s · (B as r×N) · dyᵀ(N×T)
  LtGemm g() const { return gemm(r, T, N, false, false, r, N, r, false); }
  // dBᵀ[r, N] += s · uᵀ(r×T) · op_T(dyᵀ as N×T)
  LtGemm dB() const { return gemm(r, N, T, false, true, r, N, r, true); }
  // dAᵀ[K, r] += xᵀ(K×T) · op_T(gᵀ as r×T)
  LtGemm dA() const { return gemm(K, r, T, false, true, K, r, K, true); }
  // dxᵀ[K, T] += (A as K×r) · gᵀ(r×T)
  LtGemm dx_add() const { return gemm(K, T, r, false, false, K, r, K, true); }

  LtGemm gemm(int64_t m, int64_t n, int64_t k, bool ta, bool tb, int64_t lda, int64_t ldb, int64_t ldd,
              bool acc) const {
    LtGemm c;
    c.m = m, c.n = n, c.k = k;
    c.trans_a = ta, c.trans_b = tb;
    c.a_type = c.b_type = in;
    c.d_type = DType::F32;
    c.lda = lda, c.ldb = ldb, c.ldd = ldd;
    c.accumulate = acc;
    return c;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path;
  int reps = 20;
  int64_t T = 2048, r = 16;
  bench::Args args;
  args.add("--csv", &csv_path, "out.csv");
  args.add("--reps", &reps);
  args.add("--tokens", &T);
  args.add("--rank", &r);
  if (const int rc = args.parse(argc, argv); rc >= 0) return rc;
  return bench::run_on_device(argv[0], [&](const bench::Stamp& stamp) {
    const bench::Peaks peaks = bench::device_peaks(stamp.device);
    const std::vector<Layer> layers = {{"q_proj/o_proj", 3584, 3584, 2, false},
                                       {"k_proj/v_proj", 3584, 512, 2, false},
                                       {"gate/up_proj", 3584, 18944, 2, false},
                                       {"down_proj", 18944, 3584, 1, true}};
    const char* op_names[6] = {"u", "y+", "g", "dB", "dA", "dx+"};
    std::ostringstream csv;
    csv << "date,device,driver,commit,layer,K,N,T,r,op,dtype,us,GBps,pct_hbm\n";
    std::fprintf(stderr, "device: %s; %s; HBM peak %.0f GB/s; commit %s; T %lld, r %lld\n", stamp.device.c_str(),
                 stamp.driver.c_str(), peaks.hbm_gbs, stamp.commit.c_str(), static_cast<long long>(T),
                 static_cast<long long>(r));
    std::fprintf(stderr, "%-14s %-4s | %9s %7s %6s | %9s %7s %6s\n", "layer", "op", "fp32 us", "GB/s", "%HBM",
                 "bf16 us", "GB/s", "%HBM");
    bench::L2Flush flush;
    BlasLt& lt = BlasLt::current();
    double layer_fp32_us = 0, layer_bf16_us = 0, layer_base_us = 0, layer_fold_us = 0, layer_saved_us = 0;
    uint64_t seed = 1;
    for (const Layer& L : layers) {
      const int64_t K = L.K, N = L.N;
      // Operands of both dtypes; the base product's W and x in bf16, with r spare columns for the folded variant.
      Dev<float> x(T * K), dy(T * N), y(T * N), dx(T * K), u(T * r), g(T * r), A(r * K), B(N * r), dA(r * K),
          dB(N * r);
      Dev<uint16_t> x16(T * (K + r)), dy16(T * (N + r)), u16(T * r), g16(T * r), A16(r * K), B16(N * r),
          W16(std::max(N * (K + r), (N + r) * K));
      for (Dev<float>* d : {&x, &dy, &y, &dx, &u, &g, &A, &B, &dA, &dB}) fill(*d, ++seed, 0.5f);
      for (Dev<uint16_t>* d : {&x16, &dy16, &u16, &g16, &A16, &B16, &W16}) fill(*d, ++seed, 0.5f);
      // Operand pointers (A-operand, B-operand, D) and bytes of each op, per dtype.
      const double e32 = 4, t = static_cast<double>(T), kk = static_cast<double>(K), nn = static_cast<double>(N),
                   rr = static_cast<double>(r);
      double us[2][6] = {}, bytes[2][6] = {};
      for (int di = 0; di < 2; ++di) {
        const bool b16 = di == 1;
        const double e = b16 ? 2 : 4;  // bytes per input value
        const LoraOps ops{T, K, N, r, b16 ? DType::BF16 : DType::F32};
        const void* X = b16 ? static_cast<const void*>(x16.p) : x.p;
        const void* DY = b16 ? static_cast<const void*>(dy16.p) : dy.p;
        const void* U = b16 ? static_cast<const void*>(u16.p) : u.p;
        const void* G = b16 ? static_cast<const void*>(g16.p) : g.p;
        const void* AA = b16 ? static_cast<const void*>(A16.p) : A.p;
        const void* BB = b16 ? static_cast<const void*>(B16.p) : B.p;
        const int64_t ldx = b16 ? K + r : K;  // the bf16 x has the folded variant's spare columns
        LtGemm cu = ops.u(), cd = ops.dA();
        cu.ldb = ldx;
        cd.lda = ldx;
        const struct {
          LtGemm c;
          const void *a, *b;
          float* d;
          float alpha;
          double bytes;
        } run[6] = {
            {cu, AA, X, u.p, 1.f, e * t * kk + e * rr * kk + e32 * t * rr},
            {ops.y_add(), BB, U, y.p, ops.s, 2 * e32 * t * nn + e * nn * rr + e * t * rr},
            {ops.g(), BB, DY, g.p, ops.s, e * t * nn + e * nn * rr + e32 * t * rr},
            {ops.dB(), U, DY, dB.p, ops.s, e * t * nn + e * t * rr + 2 * e32 * nn * rr},
            {cd, X, G, dA.p, 1.f, e * t * kk + e * t * rr + 2 * e32 * rr * kk},
            {ops.dx_add(), AA, G, dx.p, 1.f, 2 * e32 * t * kk + e * rr * kk + e * t * rr},
        };
        for (int o = 0; o < 6; ++o) {
          const auto call = [&] { lt.matmul(run[o].c, run[o].a, run[o].b, run[o].d, nullptr, run[o].alpha, nullptr); };
          us[di][o] = 1000.0 * bench::time_ms(call, reps, &flush);
          bytes[di][o] = run[o].bytes;
          const double gbs = run[o].bytes / (us[di][o] * 1e3);
          csv << stamp.csv() << "," << L.name << "," << K << "," << N << "," << T << "," << r << "," << op_names[o]
              << "," << (b16 ? "bf16" : "fp32") << "," << us[di][o] << "," << gbs << ","
              << (peaks.hbm_gbs > 0 ? 100.0 * gbs / peaks.hbm_gbs : 0.0) << "\n";
        }
      }
      for (int o = 0; o < 6; ++o) {
        const auto gbs = [&](int di) { return bytes[di][o] / (us[di][o] * 1e3); };
        const auto pct = [&](double v) { return peaks.hbm_gbs > 0 ? 100.0 * v / peaks.hbm_gbs : 0.0; };
        std::fprintf(stderr, "%-14s %-4s | %9.1f %7.0f %5.1f%% | %9.1f %7.0f %5.1f%%\n", L.name, op_names[o],
                     us[0][o], gbs(0), pct(gbs(0)), us[1][o], gbs(1), pct(gbs(1)));
      }
      // Per layer-step: u and y+ in the forward and the recomputation (no y+ for down_proj's), the backward's four.
      const auto step = [&](int di) {
        const double fwd = us[di][0] + us[di][1], rec = us[di][0] + (L.down ? 0 : us[di][1]);
        return fwd + rec + us[di][2] + us[di][3] + us[di][4] + us[di][5];
      };
      layer_fp32_us += L.count * step(0);
      layer_bf16_us += L.count * step(1);
      // The base product (bf16 x·Ŵᵀ, fp32 y) and the same with r more reduction columns.
      LtGemm base;
      base.m = N, base.n = T, base.k = K;
      base.trans_a = true;
      base.a_type = base.b_type = DType::BF16;
      base.d_type = DType::F32;
      base.lda = base.ldb = K + r;
      base.ldd = N;
      // Times g, then g over r more reduction steps on the same operands (the fold's longer GEMM; both with the
      // folded form's leading dimensions, K + r or N + r, where the trainer's unfolded product has K or N); prints
      // both and writes them as rows `name` and `name`_folded.
      const auto with_fold = [&](const char* label, const char* name, const char* more, const LtGemm& g,
                                 const void* a, const void* b, float* d) {
        LtGemm f = g;
        f.k = g.k + r;
        const double t0 = 1000.0 * bench::time_ms([&] { lt.matmul(g, a, b, d, nullptr, 1.f, nullptr); }, reps, &flush);
        const double t1 = 1000.0 * bench::time_ms([&] { lt.matmul(f, a, b, d, nullptr, 1.f, nullptr); }, reps, &flush);
        std::fprintf(stderr, "%-14s %-4s | %9.1f us bf16 GEMM (k = %lld); with %lld more %-7s %9.1f us (+%.1f%%)\n",
                     L.name, label, t0, static_cast<long long>(g.k), static_cast<long long>(r), more, t1,
                     100.0 * (t1 / t0 - 1));
        const std::string row = stamp.csv() + "," + L.name + "," + std::to_string(K) + "," + std::to_string(N) + "," +
                                std::to_string(T) + "," + std::to_string(r) + "," + name;
        csv << row << ",bf16," << t0 << ",,\n" << row << "_folded,bf16," << t1 << ",,\n";
        return std::pair<double, double>{t0, t1};
      };
      const auto [t_base, t_fold] = with_fold("base", "base", "columns", base, W16.p, x16.p, y.p);
      // The input gradient dx = dy·Ŵ (column-major dxᵀ [K, T] = (Ŵ as K x N) · dyᵀ), with r more rows of Ŵ.
      LtGemm bt;
      bt.m = K, bt.n = T, bt.k = N;
      bt.a_type = bt.b_type = DType::BF16;
      bt.d_type = DType::F32;
      bt.lda = K, bt.ldb = N + r, bt.ldd = K;
      const auto [t_bt, t_fold_t] = with_fold("dx", "base_t", "rows", bt, W16.p, dy16.p, dx.p);
      // The forward product runs in the forward and the recomputation (not down_proj's), the input gradient once.
      const int fwd_runs = L.down ? 1 : 2;
      layer_base_us += L.count * (fwd_runs * t_base + t_bt);
      layer_fold_us += L.count * (fwd_runs * (t_fold - t_base) + (t_fold_t - t_bt));
      // The fold removes y+ from the forward and the recomputation (down_proj's forward only) and dx+ (fp32 as run);
      // not counted: the scratch write and add of the accumulating Linears (k, v, up), which it removes too.
      layer_saved_us += L.count * (fwd_runs * us[0][1] + us[0][5]);
    }
    std::fprintf(stderr,
                 "\nper layer-step: LoRA products %.2f ms in fp32 (the trainer's), %.2f ms with bf16 inputs; base "
                 "products about %.2f ms; QWENQ_LORA_FOLD=1 removes %.2f ms of them (y+, dx+) and adds %.2f ms to the "
                 "base GEMMs\n",
                 layer_fp32_us / 1000, layer_bf16_us / 1000, layer_base_us / 1000, layer_saved_us / 1000,
                 layer_fold_us / 1000);
    csv << stamp.csv() << ",layer,,," << T << "," << r << ",fold_saves_per_layer_step,fp32," << layer_saved_us
        << ",,\n";
    csv << stamp.csv() << ",layer,,," << T << "," << r << ",fold_adds_per_layer_step,bf16," << layer_fold_us
        << ",,\n";
    csv << stamp.csv() << ",layer,,," << T << "," << r << ",lora_per_layer_step,fp32," << layer_fp32_us << ",,\n";
    csv << stamp.csv() << ",layer,,," << T << "," << r << ",lora_per_layer_step,bf16," << layer_bf16_us << ",,\n";
    bench::write_csv(csv_path, csv.str());
  });
}
