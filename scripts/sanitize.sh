#!/usr/bin/env bash
# The whole CPU test suite under AddressSanitizer (with LeakSanitizer) and UndefinedBehaviorSanitizer: builds
# build-asan/ (CPU only, -O1, GCC; the CUDA code cannot run here and has compute-sanitizer on the device instead:
# scripts/gpu_check.sh's memcheck phase), then runs ctest there. Every test runs, oracle tests included, except the
# ones that compare a process's RSS with the memory plan (ASan's shadow memory and quarantine are in the RSS).
# Not part of CI: the build takes ~25 min and the tests ~18 min on 2 cores (2026-12-05). Extra arguments go to ctest,
# e.g. scripts/sanitize.sh -R 'ProcessGroup'.
set -euo pipefail
cd "$(dirname "$0")/.."
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
gen=()
command -v ninja > /dev/null && gen=(-G Ninja)
if [ ! -f build-asan/CMakeCache.txt ]; then
  cmake -S . -B build-asan "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DQWENQ_CUDA=OFF -DQWENQ_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_FLAGS="$san" -DCMAKE_C_FLAGS="$san" \
    -DCMAKE_EXE_LINKER_FLAGS="$san" > /dev/null
fi
cmake --build build-asan -j "$(nproc)"
# allocator_may_return_null: the tests that ask for more memory than there is expect bad_alloc, not ASan's abort.
export ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
ctest --test-dir build-asan --output-on-failure -j "$(nproc)" --timeout 1800 -E '^MemoryPlanMeasured\.' "$@"
