// CPU parallelism: a thin layer over OpenMP so the rest of the code never spells a pragma. Without OpenMP
// everything runs on the calling thread.
#pragma once

#include <cstdint>
#include <functional>

namespace qwenq {

int num_threads();
void set_num_threads(int n);  // n <= 0: all cores

// Calls fn(begin, end) on disjoint chunks covering [0, n); chunks are at least `grain` long.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace qwenq
