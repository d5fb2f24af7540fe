#!/usr/bin/env bash
# The GPU check, in one command on the device machine (H100/H200): builds for sm_90a with the dependencies that
# scripts/gpu_prepare.sh copied into .gpu-deps, runs every GPU test (ctest -L gpu: each CUDA kernel against its CPU
# twin), one compute-sanitizer pass over a small selection, and the CUDA benchmarks; logs and CSVs go to $OUT (or
# ./gpu-out). Device call (from the repo root):
#   run(carry=[".gpu-deps"], timeout_s=540, command="bash scripts/gpu_check.sh")
# Set QWENQ_GPU_QUICK=1 to skip the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
# The benchmarks stamp their CSV rows with QWENQ_COMMIT (benchmarks/cuda_bench.h).
export QWENQ_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || cat .gpu-deps/COMMIT 2>/dev/null || echo unknown)
log "commit $QWENQ_COMMIT, $(date -u +%FT%TZ), $(cat "$OUT/device.txt")"
export OMP_WAIT_POLICY=PASSIVE
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQWENQ_CUDA=ON -DQWENQ_CUDA_ARCHS=90a \
      -DCMAKE_PREFIX_PATH="$PWD/.gpu-deps/usr" -DQWENQ_BUILD_BENCHMARKS=ON > "$OUT/configure.log" 2>&1 ||
  { log "configure failed"; tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" > "$OUT/build.log" 2>&1 || { log "build failed"; grep -m20 -E "error" "$OUT/build.log"; exit 1; }
log "configure + build: $(( $(date +%s) - t0 )) s"
# 1. GPU tests (kernel vs CPU twin).
(cd build-gpu && ctest -L gpu -j 4 --timeout 300 --output-on-failure) > "$OUT/gpu_tests.log" 2>&1
log "gpu tests: $(grep -E 'tests passed|tests failed' "$OUT/gpu_tests.log" | tail -1)"
grep -E "\(Failed\)|\*\*\*Failed|Exception|Timeout" "$OUT/gpu_tests.log" | head -30 | tee -a "$OUT/summary.txt"
# 2. compute-sanitizer memcheck on a few small cases of each kernel family.
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/qwenq_gpu_tests --gtest_brief=1 \
    --gtest_filter='*Awkward*:*rows17*:*ClipGradNormCuda*awkward:*FlashAttentionCudaSmall*:*Exact*:AttentionDecodeCuda.*:QwenDecodeCuda.TinyF32*' \
    > "$OUT/memcheck.log" 2>&1
  log "memcheck exit $? ($(grep -c 'Invalid' "$OUT/memcheck.log") invalid accesses)"
fi
[ "${QWENQ_GPU_QUICK:-0}" = 1 ] && exit 0
# 3. Benchmarks (each prints its table; CSVs into $OUT).
run_bench() {  # name, extra arguments
  local b=$1; shift
  [ -x "build-gpu/$b" ] || { log "$b not built"; return; }
  timeout 150 "build-gpu/$b" --csv "$OUT/$b.csv" "$@" > "$OUT/$b.log" 2>&1
  log "$b exit $?"; tail -15 "$OUT/$b.log" >> "$OUT/summary.txt"
}
run_bench bench_qgemm_cuda --reps 10
run_bench bench_attention_cuda
run_bench bench_attention_decode_cuda
run_bench bench_gptq_cuda --cpu none --reps 1
cat "$OUT/summary.txt"
