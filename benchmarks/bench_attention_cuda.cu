// Flash attention (kernels/flash_attention.cu), forward and backward, in the FlashAttention-2/3 papers' setting
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
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "kernels/flash_attention.h"

#ifndef QWENQ_GIT_COMMIT
#define QWENQ_GIT_COMMIT "unknown"
#endif

namespace {

using namespace qwenq;

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// n bf16 values, roughly N(0, 1)-sized, from a hash of the index (the speed does not depend on the values as long
// as they are finite and the softmax is not degenerate).
__global__ void fill_bf16(uint16_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float v = (static_cast<float>(h & 0xFFFF) / 65536.0f - 0.5f) * 3.4f;
    p[i] = static_cast<uint16_t>(__float_as_uint(v) >> 16);
  }
}

template <typename T>
struct Dev {
  T* p = nullptr;
  explicit Dev(size_t n) { ck(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc"); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
};

// Median time in milliseconds of fn().
template <typename F>
double time_ms(F&& fn, int reps) {
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "event");
  ck(cudaEventCreate(&b), "event");
  for (int i = 0; i < 3; ++i) fn();
  ck(cudaDeviceSynchronize(), "warm-up");
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    ck(cudaEventRecord(a), "record");
    fn();
    ck(cudaEventRecord(b), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> r;
  std::stringstream ss(s);
  std::string t;
  while (std::getline(ss, t, ',')) r.push_back(std::stoll(t));
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path, seqs_arg = "2048,4096,8192,16384";
  int reps = 10;
  int64_t tokens = 16384, H = 32, Hkv = 8, D = 128;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--csv") csv_path = next();
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--seqs") seqs_arg = next();
    else if (a == "--tokens") tokens = std::stoll(next());
    else if (a == "--heads") H = std::stoll(next());
    else if (a == "--kv-heads") Hkv = std::stoll(next());
    else if (a == "--dim") D = std::stoll(next());
    else {
      std::fprintf(stderr,
                   "usage: %s [--csv out.csv] [--reps 10] [--seqs 2048,4096,8192,16384] [--tokens 16384] [--heads 32] "
                   "[--kv-heads 8] [--dim 128]\n",
                   argv[0]);
      return 2;
    }
  }
  std::string device;
  if (!cuda_device_query(&device)) {
    std::printf("bench_attention_cuda: no CUDA device (%s); nothing to measure\n", device.c_str());
    return 0;
  }
  try {
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
    std::ostringstream csv;
    csv << "date,device,commit,seqlen,batch,H,Hkv,D,causal,fwd_ms,bwd_ms,fwd_TFLOPs,bwd_TFLOPs,fwdbwd_TFLOPs\n";
    std::fprintf(stderr, "device: %s; commit %s; H=%lld Hkv=%lld D=%lld causal, %lld tokens per call\n",
                 device.c_str(), QWENQ_GIT_COMMIT, static_cast<long long>(H), static_cast<long long>(Hkv),
                 static_cast<long long>(D), static_cast<long long>(tokens));
    std::fprintf(stderr, "%7s %5s | %9s %9s | %9s %9s %9s\n", "seqlen", "batch", "fwd ms", "bwd ms", "fwd TF/s",
                 "bwd TF/s", "f+b TF/s");
    for (int64_t L : parse_list(seqs_arg)) {
      const int64_t batch = std::max<int64_t>(1, tokens / L), T = batch * L;
      std::vector<int32_t> cu(static_cast<size_t>(batch + 1));
      for (int64_t s = 0; s <= batch; ++s) cu[s] = static_cast<int32_t>(s * L);
      const size_t nq = static_cast<size_t>(T * H * D), nkv = static_cast<size_t>(T * Hkv * D);
      Dev<uint16_t> q(nq), k(nkv), v(nkv), out(nq), dout(nq);
      Dev<float> lse(static_cast<size_t>(T * H)), dq(nq), dk(nkv), dv(nkv);
      fill_bf16<<<1024, 256>>>(q.p, static_cast<int64_t>(nq), 1);
      fill_bf16<<<1024, 256>>>(k.p, static_cast<int64_t>(nkv), 2);
      fill_bf16<<<1024, 256>>>(v.p, static_cast<int64_t>(nkv), 3);
      fill_bf16<<<1024, 256>>>(dout.p, static_cast<int64_t>(nq), 4);
      ck(cudaGetLastError(), "fill");
      ck(cudaDeviceSynchronize(), "fill");
      const double t_fwd = time_ms(
          [&] { attention_forward_cuda(q.p, k.p, v.p, cu.data(), batch, H, Hkv, D, out.p, lse.p, DType::BF16); }, reps);
      const double t_bwd = time_ms(
          [&] {
            attention_backward_cuda(dout.p, q.p, k.p, v.p, out.p, lse.p, cu.data(), batch, H, Hkv, D, dq.p, dk.p, dv.p,
                                    DType::BF16);
          },
          reps);
      const double fwd_flops = 4.0 * static_cast<double>(L) * L * D * H * batch / 2.0;  // causal
      const double bwd_flops = 2.5 * fwd_flops;
      const double fwd_tf = fwd_flops / (t_fwd * 1e9), bwd_tf = bwd_flops / (t_bwd * 1e9);
      const double all_tf = (fwd_flops + bwd_flops) / ((t_fwd + t_bwd) * 1e9);
      std::fprintf(stderr, "%7lld %5lld | %9.3f %9.3f | %9.1f %9.1f %9.1f\n", static_cast<long long>(L),
                   static_cast<long long>(batch), t_fwd, t_bwd, fwd_tf, bwd_tf, all_tf);
      csv << date << ",\"" << device << "\"," << QWENQ_GIT_COMMIT << "," << L << "," << batch << "," << H << "," << Hkv
          << "," << D << ",1," << t_fwd << "," << t_bwd << "," << fwd_tf << "," << bwd_tf << "," << all_tf << "\n";
    }
    if (csv_path.empty()) {
      std::cout << csv.str();
    } else {
      std::ofstream f(csv_path);
      f << csv.str();
      std::fprintf(stderr, "wrote %s\n", csv_path.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
