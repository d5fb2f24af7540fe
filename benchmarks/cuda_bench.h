// What every CUDA benchmark shares: error checks, a device array, CUDA-event timing with the median of the timed
// calls, the stamp each result row carries (date, device, driver, commit), the CSV output and the device's
// roofline peaks.
//
// Timing (time_ms): `warmup` untimed calls, then `reps` calls, each alone between two events on the default
// stream; before each timed call an optional L2 flush writes a buffer larger than L2 (the weights of a decode
// GEMV must come from HBM, not from the previous call's cache). The median is reported: robust to the odd
// preempted call, unlike the mean.
// Roofline peaks (dense, no sparsity, vendor datasheets): H100 SXM 3350 GB/s and 989 bf16 TFLOP/s, H100 PCIe
// 2000 GB/s and 756 TFLOP/s, H200 4800 GB/s and 989 TFLOP/s; other devices: 0 (percentages not printed).
// The commit: QWENQ_GIT_COMMIT (set by CMake at configure time), overridden by the environment variable
// QWENQ_COMMIT when set (scripts/gpu_check.sh sets it: the device machine's copy may lack .git).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/files.h"

#ifndef QWENQ_GIT_COMMIT
#define QWENQ_GIT_COMMIT "unknown"
#endif

namespace qwenq::bench {

inline void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// n elements of T in device memory (cudaMalloc; at least one element so that the pointer is valid).
template <typename T>
struct DeviceArray {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) {
    ck(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(count, 1) * sizeof(T)), "cudaMalloc");
  }
  ~DeviceArray() { cudaFree(p); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A buffer written before every timed call so that the call starts with a cold L2 (256 MiB: 5x H100's 50 MB).
struct L2Flush {
  DeviceArray<uint8_t> buf{size_t(256) << 20};
  int calls = 0;
  void operator()() { ck(cudaMemsetAsync(buf.p, ++calls & 0xFF, buf.n), "L2 flush"); }
};

// Median milliseconds of fn() over `reps` timed calls (see the top of this file).
template <typename F>
double time_ms(F&& fn, int reps, L2Flush* flush = nullptr, int warmup = 3) {
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "cudaEventCreate");
  ck(cudaEventCreate(&b), "cudaEventCreate");
  for (int i = 0; i < warmup; ++i) fn();
  ck(cudaDeviceSynchronize(), "warm-up");
  std::vector<double> t;
  for (int i = 0; i < std::max(reps, 1); ++i) {
    if (flush) (*flush)();
    ck(cudaEventRecord(a), "cudaEventRecord");
    fn();
    ck(cudaEventRecord(b), "cudaEventRecord");
    ck(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return median(t);
}

struct Peaks {
  double hbm_gbs = 0;      // GB/s
  double bf16_tflops = 0;  // dense tensor-core TFLOP/s
};

inline Peaks device_peaks(const std::string& device_name) {
  const bool pcie = device_name.find("PCIe") != std::string::npos;
  if (device_name.find("H200") != std::string::npos) return {4800, 989};
  if (device_name.find("H100") != std::string::npos) return pcie ? Peaks{2000, 756} : Peaks{3350, 989};
  return {};
}

// "2026-11-30", the device description of cuda_device_query, the driver version, the commit.
struct Stamp {
  std::string date, device, driver, commit;
  // "date,\"device\",driver,commit" for the first columns of a CSV row.
  std::string csv() const { return date + ",\"" + device + "\"," + driver + "," + commit; }
};

inline Stamp make_stamp(const std::string& device) {
  Stamp s;
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
  s.date = date;
  s.device = device;
  int v = 0;
  s.driver = cudaDriverGetVersion(&v) == cudaSuccess
                 ? "cuda-driver-" + std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10)
                 : "unknown";
  const char* env = std::getenv("QWENQ_COMMIT");
  s.commit = env && *env ? env : QWENQ_GIT_COMMIT;
  return s;
}

// The CSV text to `path` (written to a temporary name, then renamed: core/files.h), or to stdout when empty.
inline void write_csv(const std::string& path, const std::string& text) {
  if (path.empty()) {
    std::fputs(text.c_str(), stdout);
    return;
  }
  write_file_atomic(path, text);
  std::fprintf(stderr, "wrote %s\n", path.c_str());
}

// "1,4,16" -> {1, 4, 16}; empty items are skipped; a non-number throws naming the list.
inline std::vector<int64_t> parse_list(const std::string& arg) {
  std::vector<int64_t> v;
  std::stringstream ss(arg);
  std::string t;
  while (std::getline(ss, t, ',')) {
    if (t.empty()) continue;
    size_t used = 0;
    int64_t x = 0;
    try {
      x = std::stoll(t, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != t.size()) throw std::runtime_error("'" + arg + "' is not a comma-separated list of integers");
    v.push_back(x);
  }
  return v;
}

}  // namespace qwenq::bench
