#!/usr/bin/env bash
# The GPU check, in one command on the device machine (H100/H200): builds for sm_90a with the dependencies that
# scripts/gpu_prepare.sh copied into .gpu-deps, runs every GPU test (ctest -L gpu: each CUDA kernel against its CPU
# twin), one compute-sanitizer pass over a small selection, the CUDA benchmarks, and a QLoRA training step against
# transformers + peft in what is left of the call (benchmarks/bench_qlora_step.sh); logs and CSVs go to $OUT (or
# ./gpu-out). Device call (from the repo root):
#   run(carry=[".gpu-deps"], timeout_s=540, command="bash scripts/gpu_check.sh")
# Set QWENQ_GPU_QUICK=1 to skip the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
log "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%FT%TZ), $(cat "$OUT/device.txt")"
export OMP_WAIT_POLICY=PASSIVE
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQWENQ_CUDA=ON -DQWENQ_CUDA_ARCHS=90a \
      -DCMAKE_PREFIX_PATH="$PWD/.gpu-deps/usr" -DQWENQ_BUILD_BENCHMARKS=ON > "$OUT/configure.log" 2>&1 ||
  { log "configure failed"; tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" > "$OUT/build.log" 2>&1 || { log "build failed"; grep -m20 -E "error" "$OUT/build.log"; exit 1; }
log "configure + build: $(( $(date +%s) - t0 )) s"
# The model and data of the QLoRA step benchmark (section 4) are CPU work (init-random + rtn, ~1 min on one core):
# made in the background while sections 1-3 use the GPU.
qlora_prep=""
if [ "${QWENQ_GPU_QUICK:-0}" != 1 ]; then
  BUILD=build-gpu bash benchmarks/bench_qlora_step.sh prepare > build-gpu/qlora-step-prepare.log 2>&1 &
  qlora_prep=$!
fi
# 1. GPU tests (kernel vs CPU twin).
(cd build-gpu && ctest -L gpu -j 4 --timeout 300 --output-on-failure) > "$OUT/gpu_tests.log" 2>&1
log "gpu tests: $(grep -E 'tests passed|tests failed' "$OUT/gpu_tests.log" | tail -1)"
grep -E "\(Failed\)|\*\*\*Failed|Exception|Timeout" "$OUT/gpu_tests.log" | head -30 | tee -a "$OUT/summary.txt"
# 2. compute-sanitizer memcheck on a few small cases of each kernel family.
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/qwenq_gpu_tests --gtest_brief=1 \
    --gtest_filter='*Awkward*:*rows17*:*ClipGradNormCuda*awkward:*FlashAttentionCudaSmall*:*Exact*' \
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
run_bench bench_gptq_cuda --cpu none --reps 1
# 4. A full QLoRA training step against transformers + peft (benchmarks/bench_qlora_step.sh, issue 5): what is left
# of the 540 s device call less 25 s, at most 230 s, else skipped; the report ($OUT/DATE-qlora-step-cuda.md) is
# written even when a side is cut by its time limit.
if [ -n "$qlora_prep" ]; then
  wait "$qlora_prep" || { log "bench_qlora_step prepare failed"; tail -5 build-gpu/qlora-step-prepare.log | tee -a "$OUT/summary.txt"; }
  qlora_budget=$(( 540 - 25 - SECONDS )); [ "$qlora_budget" -gt 230 ] && qlora_budget=230
  if [ "$qlora_budget" -ge 150 ]; then
    BUILD=build-gpu OUT="$OUT" BUDGET_S=$qlora_budget timeout -k 5 $((qlora_budget + 15)) \
      bash benchmarks/bench_qlora_step.sh > build-gpu/qlora-step.log 2>&1
    log "bench_qlora_step exit $? (budget $qlora_budget s; $(tail -1 build-gpu/qlora-step-prepare.log))"
    grep -E "^qlora step|^wrote|^bench_qlora_step" build-gpu/qlora-step.log | tee -a "$OUT/summary.txt"
    # The result tables into the summary too ($OUT returns at most 8 files).
    sed -n '/^## [0-9]* layers/,/^## Raw JSON/p' "$OUT"/*-qlora-step-cuda.md 2>/dev/null | grep -v '^## Raw' >> "$OUT/summary.txt"
  else
    log "bench_qlora_step skipped: $qlora_budget s left of the device call (run it alone: see its header)"
  fi
fi
cat "$OUT/summary.txt"
