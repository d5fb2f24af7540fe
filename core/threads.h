// CPU parallelism: a thin layer over OpenMP so the rest of the code never spells a pragma. Without OpenMP
// everything runs on the calling thread.
#pragma once

#include <cstdint>
#include <functional>

namespace qwenq {

// The thread count of every parallel_for, process-wide: set_num_threads applies to calls from any thread, also
// threads started later (OpenMP's own setting is per thread: a new std::thread would start at its default).
int num_threads();
void set_num_threads(int n);  // n <= 0: all cores

// Calls fn(begin, end) on disjoint chunks covering [0, n); chunks are at least `grain` long.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// The smallest index in [0, n) with a property, or -1 when none has it: first_in(begin, end) returns the first such
// index of its chunk (or -1), chunks as parallel_for's. The answer is the same for any thread count, so an error
// can name "the first bad element" whatever the parallelism (a scan before the work, which then never sees one).
int64_t parallel_find_first(int64_t n, int64_t grain, const std::function<int64_t(int64_t, int64_t)>& first_in);
// The index of the first NaN or ±inf in x[0, n), or -1 (parallel_find_first).
int64_t first_nonfinite(const float* x, int64_t n);

}  // namespace qwenq
