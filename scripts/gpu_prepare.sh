#!/usr/bin/env bash
# Prepares a GPU check on the device machine (see /work/.library/device/): that machine has nvcc, CMake and ninja
# but not the Debian packages this build uses, and cannot download. This copies the header-only dependencies
# (Eigen 3, nlohmann-json, CLI11) and GoogleTest (headers, static libraries, CMake config) into .gpu-deps/usr with
# /usr's layout, so that find_package finds them there through CMAKE_PREFIX_PATH. .gpu-deps is git-ignored: name it
# in the device call's `carry`. About 16 MB, and the prebuilt programs below (about 15 MB).
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
# Prebuilt GPU programs (QWENQ_GPU_PREBUILT=0: none), to save the lease the device's build (~100 s of a 15-minute
# session): the programs scripts/gpu_check.sh runs, built here for sm_90a with the CUDA runtime linked statically
# (the device's toolkit may keep libcudart elsewhere) and CPU code for x86-64-v3 instead of -march=native (the
# device's processor may lack an extension of this one), packed with the hash of the sources they were built from
# (scripts/source_stamp.sh). gpu_check.sh uses them only when that hash is the device copy's and they start there;
# otherwise it builds as before. Several minutes on 2 cores (ccache helps a rebuild).
if [ "${QWENQ_GPU_PREBUILT:-1}" = 1 ]; then
  P=build-prebuilt
  source scripts/gpu_programs.sh
  progs="qwen-quant qwen-qlora qwenq_gpu_tests $QWENQ_GPU_BENCH_PROGRAMS"
  opts="-DCMAKE_BUILD_TYPE=Release -DQWENQ_CUDA=ON -DQWENQ_CUDA_ARCHS=90a -DQWENQ_NATIVE=OFF \
-DCMAKE_CXX_FLAGS=-march=x86-64-v3 -DQWENQ_CUDART_STATIC=ON -DQWENQ_BUILD_BENCHMARKS=ON"
  stamp=$(bash scripts/source_stamp.sh)
  mkdir -p "$P"
  # shellcheck disable=SC2086
  cmake -S . -B "$P" -G Ninja $opts > "$P/configure.log" 2>&1 ||
    { tail -20 "$P/configure.log"; echo "gpu_prepare: configuring $P failed" >&2; exit 1; }
  # shellcheck disable=SC2086
  cmake --build "$P" -j "$(nproc)" --target $progs > "$P/build.log" 2>&1 ||
    { grep -m20 error "$P/build.log" || true; echo "gpu_prepare: building $P failed (see $P/build.log)" >&2; exit 1; }
  [ "$(bash scripts/source_stamp.sh)" = "$stamp" ] || { echo "gpu_prepare: the sources changed during the build" >&2; exit 1; }
  # shellcheck disable=SC2086
  tar czf .gpu-deps/prebuilt.tar.gz -C "$P" $progs
  # SOURCES-OPTIONS: gpu_check.sh matches the sources' part against its tree; the whole stamp tells a warm machine
  # that a tarball of other options or programs is new.
  echo "$stamp-$(echo "$opts $progs" | sha256sum | cut -c1-8)" > .gpu-deps/prebuilt.stamp
  echo "prebuilt: $(du -h .gpu-deps/prebuilt.tar.gz | cut -f1) for sources $stamp"
fi
# The commit (and whether the tree differs from it) for the results' stamps: the device machine's copy has no .git.
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benchmarks/results' || echo -dirty)" > .gpu-deps/COMMIT
grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >> .git/info/exclude
du -sh .gpu-deps
