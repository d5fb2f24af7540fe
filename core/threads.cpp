// parallel_for over OpenMP: static chunks of at least `grain` iterations, one parallel region per call, no
// nesting (a call from inside a parallel region runs serially on the calling thread). An exception thrown by
// `fn` on any thread is carried out of the region and rethrown on the caller (OpenMP would otherwise abort).
// parallel_find_first: every chunk reports its own first hit and the minimum over the chunks is kept (a mutex per
// hit, and hits are the rare case: error scans), so the result is the sequential scan's.
#include "core/threads.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace qwenq {

namespace {
std::atomic<int> g_threads{0};  // set_num_threads' count; 0: never set, OpenMP's default (OMP_NUM_THREADS, cores)
}  // namespace

int num_threads() {
#ifdef _OPENMP
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
#ifdef _OPENMP
  const int threads = n > 0 ? n : omp_get_num_procs();
  g_threads.store(threads, std::memory_order_relaxed);
  omp_set_num_threads(threads);  // for the calling thread's own OpenMP regions (Eigen's)
#else
  (void)n;
#endif
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel()) threads = num_threads();
#endif
  const int64_t chunk = std::max(grain, (n + threads - 1) / threads);
  const int64_t chunks = (n + chunk - 1) / chunk;
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
#ifdef _OPENMP
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(chunks))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * chunk, end = std::min(n, begin + chunk);
    try {
      fn(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
#else
  fn(0, n);
#endif
}

int64_t parallel_find_first(int64_t n, int64_t grain, const std::function<int64_t(int64_t, int64_t)>& first_in) {
  int64_t first = -1;
  std::mutex first_mutex;
  parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    const int64_t i = first_in(begin, end);
    if (i < 0) return;
    std::lock_guard<std::mutex> lock(first_mutex);
    if (first < 0 || i < first) first = i;
  });
  return first;
}

int64_t first_nonfinite(const float* x, int64_t n) {
  return parallel_find_first(n, int64_t{1} << 16, [x](int64_t begin, int64_t end) -> int64_t {
    for (int64_t i = begin; i < end; ++i)
      if (!std::isfinite(x[i])) return i;
    return -1;
  });
}

}  // namespace qwenq
