#!/usr/bin/env bash
# Prepares a GPU check on the device machine (see /work/.library/device/): that machine has nvcc, CMake and ninja
# but not the Debian packages this build uses, and cannot download. This copies the header-only dependencies
# (Eigen 3, nlohmann-json, CLI11) and GoogleTest (headers, static libraries, CMake config) into .gpu-deps/usr with
# /usr's layout, so that find_package finds them there through CMAKE_PREFIX_PATH. .gpu-deps is git-ignored: name it
# in the device call's `carry`. About 16 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
D=.gpu-deps/usr
rm -rf .gpu-deps
mkdir -p "$D/include" "$D/lib/x86_64-linux-gnu/cmake" "$D/share/cmake" "$D/share/eigen3"
cp -r /usr/include/eigen3 /usr/include/nlohmann /usr/include/CLI /usr/include/gtest /usr/include/gmock "$D/include/"
cp -r /usr/share/eigen3/cmake "$D/share/eigen3/"
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$D/share/cmake/"
cp -r /usr/lib/x86_64-linux-gnu/cmake/GTest "$D/lib/x86_64-linux-gnu/cmake/"
cp /usr/lib/x86_64-linux-gnu/libgtest.a /usr/lib/x86_64-linux-gnu/libgtest_main.a \
   /usr/lib/x86_64-linux-gnu/libgmock.a /usr/lib/x86_64-linux-gnu/libgmock_main.a "$D/lib/x86_64-linux-gnu/"
# The real test model, text and calibration data for the GPU end-to-end tests (tests/gpu/test_model_cuda.cpp and
# test_gptq_model_cuda.cpp look here), ~3 MB.
if [ -d ../shared/data/stories260K ]; then
  mkdir -p .gpu-deps/shared/data
  cp -r ../shared/data/stories260K ../shared/data/tinystories ../shared/data/c4 .gpu-deps/shared/data/
fi
# The commit (and whether the tree differs from it) for the results' stamps: the device machine's copy has no .git.
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benchmarks/results' || echo -dirty)" > .gpu-deps/COMMIT
grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >> .git/info/exclude
du -sh .gpu-deps
