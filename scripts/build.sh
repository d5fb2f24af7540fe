#!/usr/bin/env bash
# Configures and builds into ./build (Release; CUDA is compiled when nvcc is found: QWENQ_CUDA=AUTO).
# Extra arguments go to cmake's configure step, e.g. scripts/build.sh -DQWENQ_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
gen=""
command -v ninja >/dev/null 2>&1 && gen="-G Ninja"
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build $gen -DCMAKE_BUILD_TYPE=Release "$@"
elif [ $# -gt 0 ]; then
  cmake -S . -B build "$@"
fi
cmake --build build -j "$(nproc)"
