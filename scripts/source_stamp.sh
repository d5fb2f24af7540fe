#!/usr/bin/env bash
# One hash of the sources a build compiles (C++/CUDA files and CMakeLists.txt under the project's folders), the
# same on any machine holding the same files: scripts/gpu_prepare.sh stamps its prebuilt GPU binaries with it and
# scripts/gpu_check.sh uses them only when the device's copy of the tree hashes the same (no .git there).
set -euo pipefail
cd "$(dirname "$0")/.."
find CMakeLists.txt core quant kernels lora trainer tools tests benchmarks -type f \
     \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name 'CMakeLists.txt' \) -print0 |
  LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
