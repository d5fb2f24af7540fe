#!/usr/bin/env bash
# The GPU check on the device machine (H100/H200), in phases that fit one device call: takes the programs
# scripts/gpu_prepare.sh prebuilt into .gpu-deps when they are of this tree and start there (else builds them for
# sm_90a with the dependencies gpu_prepare.sh copied into .gpu-deps, ~100 s), then runs the phases named in
# QWENQ_GPU_PHASES, in
# this order, each only when its minimum time is left of QWENQ_GPU_BUDGET_S (default 520 s, for a call with
# timeout_s=540):
#   tests     every GPU test (4 gtest shards: each CUDA kernel against its CPU twin, the GPU model paths against the
#             CPU ones)                                                                          needs 60 s
#   dp        `qwen-qlora train --nproc 2 --device cuda` (data parallelism) with both ranks on this one GPU
#             (QWENQ_DP_SHARE_GPU=1; the gradients through host memory) against one process with --grad-accum 2,
#             on a tiny random model: losses and adapters within tests/cli/compare_runs.py's tolerances       needs 40 s
#   memcheck  compute-sanitizer memcheck over a small selection of each kernel family             needs 60 s
#   bench     bench_qgemm_cuda, bench_attention_cuda, bench_attention_decode_cuda, bench_gptq_cuda,
#             bench_kl_rows_cuda, bench_lora_cuda                                               needs 90 s
#   qlora     a QLoRA training step against transformers + peft (benchmarks/bench_qlora_step.sh;
#             its model is prepared in the background from the start), then our side again under each switch
#             set of QWENQ_GPU_QLORA_VARIANTS (';'-separated; unset: the dense overlap, the LoRA fold,
#             both, and both with 2^26-logit lm_head chunks; empty: none), 10-20 s each (30 s allowed)  needs 160 s
#             after its model is prepared (about 100 s of CPU work from the script's start; waited for first)
#   decode    decode tokens/s against transformers' generate (benchmarks/bench_decode_cuda.sh, the qlora phase's
#             model; the per-head and the grouped decode attention)                             needs 90 s
#   gptq7b    `qwen-quant gptq --device cuda` on random 7B-shaped models of 1 and 2 layers, extrapolated to
#             28 layers, with --calib-dtype bf16 (QWENQ_GPU_GPTQ_DTYPES, default "bf16 fp32": also
#             fp32 while time is left); each run's time by stage in the summary                needs 150 s
#   awq7b     `qwen-quant awq --device cuda` on the same 7B-shaped models (AutoAWQ's 128 x 512 calibration tokens),
#             --calib-dtype bf16 then fp32 (QWENQ_GPU_AWQ_DTYPES), extrapolated to 28 layers     needs 120 s
#   ncu       Nsight Compute on one launch of the tensor-core decode product (72B gate/up, M = 1): speed of light,
#             memory, occupancy, warp stalls, as text (ncu-decode-mma.txt)                      needs 60 s
# Default: tests, dp, memcheck, bench, qlora, gptq7b (decode, awq7b and ncu only when asked). QWENQ_GPU_PREP_7B=1 makes
# the gptq7b/awq7b models in the background of a call without those phases, for the next call on the warm machine. QWENQ_GPU_TEST_FILTER (a gtest filter, default all) narrows the tests phase (its reruns of
# the model tests with other switches keep their own filters, and run only while the later phases' minimums stay free),
# QWENQ_GPU_BENCHES (comma-separated names from the list above, default all) the bench phase, for a focused
# recheck. A session has 15 minutes of device time, the machine's start (a minute or two) included, and a
# machine stays warm 30 s after a call: a first session on a fresh GPU runs "tests,memcheck,bench" (build included)
# in one call, then at once, while the machine is warm and its build-gpu (or build-pre) kept, "qlora" or "gptq7b"
# with the time left (QWENQ_GPU_BUDGET_S a little under that call's timeout_s). Device call (from the repo root, after
# scripts/gpu_prepare.sh here):
#   run(carry=[".gpu-deps"], timeout_s=540, command="QWENQ_GPU_PHASES=tests,memcheck,bench bash scripts/gpu_check.sh")
#   run(carry=[".gpu-deps"], timeout_s=230, command="QWENQ_GPU_BUDGET_S=215 QWENQ_GPU_PHASES=qlora bash scripts/gpu_check.sh")
# What comes back ($OUT returns at most 8 files): summary.txt (written as the phases go: it survives a kill), the
# benchmarks' CSVs, the QLoRA report and logs.tar.gz (every log), packed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
PHASES=",${QWENQ_GPU_PHASES:-tests,dp,memcheck,bench,qlora,gptq7b},"
# ncu profiles a launch of bench_qgemm_cuda: build it for that phase too.
[[ "$PHASES" == *",ncu,"* ]] && [[ "$PHASES" != *",bench,"* ]] && NCU_ONLY_BENCH=1 || NCU_ONLY_BENCH=0
BUDGET=${QWENQ_GPU_BUDGET_S:-520}
LOGS=build-gpu/logs
mkdir -p "$OUT" "$LOGS"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
want() { [[ "$PHASES" == *",$1,"* ]]; }
left() { echo $(( BUDGET - SECONDS )); }
# start PHASE MIN_SECONDS: true when the phase was asked for and enough time is left; logs a skip otherwise.
start() {
  want "$1" || return 1
  if [ "$(left)" -lt "$2" ]; then log "$1 skipped: $(left) s left of the ${BUDGET} s budget, it needs $2"; return 1; fi
  log "$1 (at ${SECONDS} s)"
}
# $OUT returns at most 8 files: past 7 besides logs.tar.gz, the benchmarks' CSVs go into bench-csv.tar.gz.
pack() {
  if [ "$(find "$OUT" -maxdepth 1 -type f ! -name logs.tar.gz | wc -l)" -gt 7 ] && compgen -G "$OUT/*.csv" > /dev/null; then
    (cd "$OUT" && tar czf bench-csv.tar.gz ./*.csv && rm -f ./*.csv)
  fi
  tar czf "$OUT/logs.tar.gz" -C build-gpu logs 2>/dev/null
}
trap pack EXIT

# The benchmarks stamp their CSV rows with QWENQ_COMMIT (benchmarks/cuda_bench.h): the commit gpu_prepare.sh saw here
# first (the device copy's .git can be older than the working tree it carries).
export QWENQ_COMMIT=$(cat .gpu-deps/COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
log "commit $QWENQ_COMMIT, $(date -u +%FT%TZ), $device; phases ${PHASES//,/ }"
export OMP_WAIT_POLICY=PASSIVE
source scripts/gpu_programs.sh
BENCHES=${QWENQ_GPU_BENCHES:-${QWENQ_GPU_BENCH_PROGRAMS// /,}}
for b in ${BENCHES//,/ }; do  # a misspelled name would be a missing build target (the whole build fails) or nothing
  [[ " $QWENQ_GPU_BENCH_PROGRAMS " == *" $b "* ]] || { log "QWENQ_GPU_BENCHES: no benchmark '$b' (of: $QWENQ_GPU_BENCH_PROGRAMS)"; exit 1; }
done
FILTER=${QWENQ_GPU_TEST_FILTER:-*}
# Seconds the phases after the tests need (their minimums above), kept free by the tests' reruns.
reserve=0
nb=$(echo "$BENCHES" | tr ',' '\n' | grep -c .)
want dp && reserve=$((reserve + 40)); want memcheck && reserve=$((reserve + 60)); want bench && reserve=$((reserve + (nb >= 3 ? 90 : 30 * nb)))
want qlora && reserve=$((reserve + 160)); want decode && reserve=$((reserve + 90)); want gptq7b && reserve=$((reserve + 150)); want awq7b && reserve=$((reserve + 120))
want ncu && reserve=$((reserve + 60))
bench_min=$(( nb >= 3 ? 90 : 30 * nb ))
# rerun_time: seconds a rerun of the tests may take (at most 100), or nothing when under 40 are free.
rerun_time() { local t=$(( $(left) - reserve )); [ "$t" -gt 100 ] && t=100; [ "$t" -ge 40 ] && echo "$t"; }

# The programs: scripts/gpu_prepare.sh's prebuilt ones when they are of this tree's sources (scripts/source_stamp.sh)
# and start here (QWENQ_GPU_PREBUILT=0: always build), else built here into build-gpu. The tests find the source
# tree, their scratch folder and the shared data through the environment (tests/support/test_paths.h), which is
# what the prebuilt test binary, configured elsewhere, needs.
BIN=build-gpu
use_prebuilt() {
  [ "${QWENQ_GPU_PREBUILT:-1}" = 1 ] && [ -f .gpu-deps/prebuilt.tar.gz ] || return 1
  local stamp want have
  stamp=$(cat .gpu-deps/prebuilt.stamp 2>/dev/null) have=$(bash scripts/source_stamp.sh)
  want=${stamp%%-*}  # the sources' hash (then the build options')
  [ "$want" = "$have" ] || { log "prebuilt programs are of sources $want, this tree is $have: building"; return 1; }
  # Unpacked once per machine: a later call keeps build-pre (and the benchmarks' prepared models under it).
  if [ "$(cat build-pre/.stamp 2>/dev/null)" != "$stamp" ]; then
    rm -rf build-pre && mkdir -p build-pre && tar xzf .gpu-deps/prebuilt.tar.gz -C build-pre ||
      { log "prebuilt programs do not unpack: building"; return 1; }
    echo "$stamp" > build-pre/.stamp
  fi
  # They open cuBLASLt, cuBLAS and cuSOLVER with dlopen and carry no RUNPATH to this machine's toolkit (the runtime
  # is linked statically; bench_qgemm_cuda's RUNPATH is the build machine's): name the folder that holds them.
  local nvcc_root libdir=""
  nvcc_root=$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")")
  for d in "$nvcc_root/lib64" "$nvcc_root/lib" /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
    if compgen -G "$d/libcublasLt.so.*" > /dev/null; then libdir=$d; break; fi
  done
  [ -n "$libdir" ] && export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # They start, find every library, and run one cuBLASLt product on the GPU (the static runtime against this driver).
  if [ "$(ldd build-pre/* 2>&1 | grep -c 'not found')" != 0 ] ||
     ! build-pre/qwen-quant --help > /dev/null 2> "$LOGS/prebuilt.log" ||
     ! timeout 60 build-pre/qwenq_gpu_tests --gtest_brief=1 --gtest_filter='BlasLt.PlansAreBuiltOncePerShape' \
         >> "$LOGS/prebuilt.log" 2>&1 ||
     grep -qE 'SKIPPED|FAILED' "$LOGS/prebuilt.log"; then
    ldd build-pre/* 2>&1 | grep 'not found' | sort -u >> "$LOGS/prebuilt.log"
    log "prebuilt programs do not run here ($(grep -m3 -E 'not found|rror|FAILED|SKIPPED' "$LOGS/prebuilt.log" | tr '\n' ' ' | head -c 300)): building"
    return 1
  fi
  log "prebuilt programs run here (libraries from ${libdir:-the loader cache})"
}
export QWENQ_TEST_SOURCE_DIR="$PWD" QWENQ_TEST_SHARED_DIR="$PWD/.gpu-deps/shared"
if use_prebuilt; then
  BIN=build-pre
  log "prebuilt programs of sources $(cat .gpu-deps/prebuilt.stamp): no build (${SECONDS} s)"
else
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQWENQ_CUDA=ON -DQWENQ_CUDA_ARCHS=90a \
        -DCMAKE_PREFIX_PATH="$PWD/.gpu-deps/usr" -DQWENQ_SHARED_DIR="$PWD/.gpu-deps/shared" \
        -DQWENQ_BUILD_BENCHMARKS=ON > "$LOGS/configure.log" 2>&1 ||
    { log "configure failed"; tail -30 "$LOGS/configure.log" | tee -a "$OUT/summary.txt"; exit 1; }
  # Only what the asked phases run (the CPU test binary and CPU benchmarks would cost build time on the lease).
  targets="qwen-quant qwen-qlora"
  { want tests || want memcheck; } && targets+=" qwenq_gpu_tests"
  want bench && targets+=" ${BENCHES//,/ }"
  [ "$NCU_ONLY_BENCH" = 1 ] && targets+=" bench_qgemm_cuda"
  cmake --build build-gpu -j "$(nproc)" --target $targets > "$LOGS/build.log" 2>&1 ||
    { log "build failed"; grep -m20 -E "error" "$LOGS/build.log" | tee -a "$OUT/summary.txt"; exit 1; }
  log "configure + build: ${SECONDS} s"
fi
export QWENQ_TEST_BINARY_DIR="$PWD/$BIN"

# The random qwen2.5-7b models of 1 and 2 layers the gptq7b and awq7b phases quantize: about 100 s of CPU work,
# made in the background from the start (with QWENQ_GPU_PREP_7B=1 also in a call without those phases, for the next
# call on the warm machine), kept in $BIN/g7-models while the machine stays warm.
g7=$BIN/g7-models
g7_prep=""
if want gptq7b || want awq7b || [ "${QWENQ_GPU_PREP_7B:-0}" = 1 ]; then
  (
    mkdir -p "$g7"
    for n in 1 2; do
      [ -f "$g7/m$n.done" ] && continue
      rm -rf "$g7/m$n"
      "$BIN"/qwen-quant init-random --preset qwen2.5-7b --layers $n --seed 1 --out "$g7/m$n" > "$LOGS/init7b_$n.log" 2>&1 &&
        touch "$g7/m$n.done"
    done
  ) > "$LOGS/init7b.log" 2>&1 &
  g7_prep=$!
fi

# The QLoRA step benchmark's model and data are CPU work (init-random + rtn, about a minute): made in the
# background while the other phases use the GPU.
qlora_prep=""
if want qlora || want decode; then
  # In its own process group (setsid), so that a kill reaches init-random and rtn, not only this shell.
  BUILD="$BIN" $(command -v setsid) bash benchmarks/bench_qlora_step.sh prepare > "$LOGS/qlora-step-prepare.log" 2>&1 &
  qlora_prep=$!
fi

if start tests 60; then
  # The test binary itself in 4 shards at once (gtest's sharding), not ctest: one CUDA context per shard instead
  # of one per test, and no dependence on the CMake version's test discovery. Line-buffered, so that a crash
  # leaves the log up to the test that crashed.
  shard_t=$(( $(left) - 30 - reserve )); [ "$shard_t" -gt 200 ] && shard_t=200; [ "$shard_t" -lt 40 ] && shard_t=40
  pids="" serial='DeviceAllocatorCuda.*'
  # gtest filters: POSITIVE[-NEGATIVE]; a filter with its own negative part takes the serial group after a ':'.
  if [[ "$FILTER" == *-* ]]; then shard_filter="$FILTER:$serial"; else shard_filter="$FILTER-$serial"; fi
  for i in 0 1 2 3; do
    GTEST_TOTAL_SHARDS=4 GTEST_SHARD_INDEX=$i timeout "$shard_t" stdbuf -oL -eL "$BIN"/qwenq_gpu_tests \
      --gtest_filter="$shard_filter" > "$LOGS/gpu_tests_$i.log" 2>&1 &
    pids+=" $!"
  done
  wait $pids
  # Then, alone on the GPU, the tests that read the device's free memory (the other shards would move it).
  timeout 60 stdbuf -oL -eL "$BIN"/qwenq_gpu_tests --gtest_filter="$serial" > "$LOGS/gpu_tests_4.log" 2>&1
  # (the serial group always runs: a second or two)
  for i in 0 1 2 3 4; do
    l="$LOGS/gpu_tests_$i.log"
    # A shard that did not reach gtest's summary crashed or timed out: name the test it was in.
    grep -q '^\[==========\] .* ran\.' "$l" ||
      log "shard $i did not finish: last test started: $(grep '^\[ RUN      \]' "$l" | tail -1); $(tail -2 "$l" | tr '\n' ' ')"
  done
  cat "$LOGS"/gpu_tests_?.log > "$LOGS/gpu_tests.log"
  names() { grep -E "^\\[  $1 *\\] [A-Za-z]" "$LOGS/gpu_tests.log" | sed -E 's/^\[ +[A-Z]+ +\] //; s/[ ,].*//' | sort -u; }
  log "gpu tests: $(grep -c '^\[       OK \]' "$LOGS/gpu_tests.log") ok (skips included), $(names FAILED | wc -l) failed, $(names SKIPPED | wc -l) skipped, of $("$BIN"/qwenq_gpu_tests --gtest_list_tests --gtest_filter="$FILTER" | grep -c '^  ') tests (filter $FILTER)"
  names SKIPPED | head -8 | sed 's/^/skipped: /' | tee -a "$OUT/summary.txt"
  names FAILED | head -40 | sed 's/^/FAILED: /' | tee -a "$OUT/summary.txt"
  # Where the tests phase's time goes (the slowest ten, for trimming the device time they take).
  grep -hE '^\[ +(OK|FAILED) +\] .* \([0-9]+ ms\)$' "$LOGS/gpu_tests.log" | sed -E 's/^\[[^]]*\] (.*) \(([0-9]+) ms\)$/\2 \1/' |
    sort -rn | head -10 | awk '{printf "slow: %6.1f s %s\n", $1 / 1000, $2}' | tee -a "$OUT/summary.txt"
  # The models once more with the 4-bit switches of kernels/qgemm.h the other way: the FMA decode kernels
  # (QWENQ_DECODE_MMA=0; the default decode forward is on tensor cores) and the dense prefill path for every M > 64
  # (QWENQ_QGEMM_DENSE=1; by default it starts at M = 512, above the model tests' token counts, which therefore
  # run the fused kernels above); and the grouped decode attention and the graph decode steps (QWENQ_DECODE_GROUPED=1,
  # QWENQ_DECODE_GRAPH=1) and the trainer's adapter folded into its dense 4-bit products (QWENQ_LORA_FOLD=1: with
  # QWENQ_QGEMM_DENSE=1 every adapted 4-bit Linear of a batch over 64 tokens), opt-in until they have run.
  if rt=$(rerun_time); then
    QWENQ_DECODE_MMA=0 QWENQ_QGEMM_DENSE=1 QWENQ_DECODE_GROUPED=1 QWENQ_DECODE_GRAPH=1 QWENQ_LORA_FOLD=1 timeout "$rt" \
      stdbuf -oL -eL "$BIN"/qwenq_gpu_tests --gtest_brief=1 \
      --gtest_filter='QgemmTcCudaDispatch.*:QwenModelCuda.*:QwenDecodeCuda.*:LoraModelCuda.*:LoraInferenceCuda.*' \
      > "$LOGS/gpu_tests_switched.log" 2>&1
    log "gpu tests with QWENQ_DECODE_MMA=0 QWENQ_QGEMM_DENSE=1 QWENQ_DECODE_GROUPED=1 QWENQ_DECODE_GRAPH=1 QWENQ_LORA_FOLD=1: exit $? ($(grep -E '^\[  (PASSED|SKIPPED|FAILED)  ?\]' "$LOGS/gpu_tests_switched.log" | tr '\n' ' '))"
    grep -m10 -E "FAILED|Failure" "$LOGS/gpu_tests_switched.log" | tee -a "$OUT/summary.txt"
  fi
  # The models again with the mma.sync kernels (QWENQ_WGMMA=0, kernels/cuda_check.h; the Hopper wgmma kernels are
  # the default on sm_90): the fallback every non-Hopper GPU runs.
  if rt=$(rerun_time); then
    QWENQ_WGMMA=0 timeout "$rt" stdbuf -oL -eL "$BIN"/qwenq_gpu_tests --gtest_brief=1 \
      --gtest_filter='QgemmTcCudaDispatch.*:*FlashAttentionCudaSmall*:QwenModelCuda.*:GptqModelCuda.*:LoraModelCuda.*' \
      > "$LOGS/gpu_tests_mma_sync.log" 2>&1
    log "gpu tests with QWENQ_WGMMA=0: exit $? ($(grep -E '^\[  (PASSED|SKIPPED|FAILED)  ?\]' "$LOGS/gpu_tests_mma_sync.log" | tr '\n' ' '))"
    grep -m10 -E "FAILED|Failure" "$LOGS/gpu_tests_mma_sync.log" | tee -a "$OUT/summary.txt"
  fi
  # The decode models with the exact product on tensor cores (QWENQ_DECODE_MMA_F32=1: fp32 activations in three bf16
  # pieces; opt-in until it has run), the grouped decode attention and graph steps: the fast exact configuration.
  if rt=$(rerun_time); then
    QWENQ_DECODE_MMA_F32=1 QWENQ_DECODE_GROUPED=1 QWENQ_DECODE_GRAPH=1 timeout "$rt" stdbuf -oL -eL \
      "$BIN"/qwenq_gpu_tests --gtest_brief=1 --gtest_filter='QwenDecodeCuda.*:LoraInferenceCuda.*' \
      > "$LOGS/gpu_tests_exact_fast.log" 2>&1
    log "gpu tests with QWENQ_DECODE_MMA_F32=1 QWENQ_DECODE_GROUPED=1 QWENQ_DECODE_GRAPH=1: exit $? ($(grep -E '^\[  (PASSED|SKIPPED|FAILED)  ?\]' "$LOGS/gpu_tests_exact_fast.log" | tr '\n' ' '))"
    grep -m10 -E "FAILED|Failure" "$LOGS/gpu_tests_exact_fast.log" | tee -a "$OUT/summary.txt"
  fi
fi

# Data parallelism on the GPU (never run on several GPUs: none is lent): two ranks sharing this GPU, through host
# memory, against one process with as many micro-batches per step; the same tolerances as the CPU's CLI test, the
# ranks' own agreement checks at every checkpoint. QWENQ_GPU_DP_DEVICE=cpu runs the phase's logic without a GPU.
if start dp 40 && [ -x "$BIN"/qwen-qlora ]; then
  dpw=$(mktemp -d)
  dpd=${QWENQ_GPU_DP_DEVICE:-cuda}
  "$BIN"/qwen-quant init-random --preset tiny --out "$dpw/tiny" --dtype fp32 > "$LOGS/dp.log" 2>&1
  python3 tests/cli/sentences.py "$dpw/data.jsonl" 200 5
  dp_args=(-m "$dpw/tiny" -d "$dpw/data.jsonl" --seq-len 64 --lora-r 4 --lr 0.003 --lora-dropout 0.1 --threads 1 -q
           --device "$dpd" --eval-count 8 --batch-size 2 --max-steps 8 --save-every 4)
  # Each run at most 90 s and never into the later phases' minimums; a stuck rank stops the others after 60 s.
  dp_time() { local t=$(( $(left) - 10 - (reserve - 40) )); [ "$t" -gt 90 ] && t=90; [ "$t" -lt 15 ] && t=15; echo "$t"; }
  QWENQ_DP_TIMEOUT_S=60 QWENQ_DP_SHARE_GPU=1 timeout -k 5 "$(dp_time)" "$BIN"/qwen-qlora train "${dp_args[@]}" --nproc 2 \
    --out "$dpw/dp2" >> "$LOGS/dp.log" 2>&1
  dp_rc=$?
  timeout -k 5 "$(dp_time)" "$BIN"/qwen-qlora train "${dp_args[@]}" --grad-accum 2 --out "$dpw/ga2" >> "$LOGS/dp.log" 2>&1
  ga_rc=$?
  dp_cmp=$(python3 tests/cli/compare_runs.py "$dpw/dp2" "$dpw/ga2" 1e-5 1e-3 2>&1 | tail -1)
  log "dp: --nproc 2 on one GPU ($dpd) exit $dp_rc, --grad-accum 2 exit $ga_rc; compared: $dp_cmp"
  grep -E "error|rank [0-9]: device" "$LOGS/dp.log" | head -6 | tee -a "$OUT/summary.txt"
  rm -rf "$dpw"
fi

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if start memcheck 60 && { [ -n "$sanitizer" ] || { log "memcheck skipped: no compute-sanitizer"; false; }; }; then
  timeout $(( $(left) - 30 )) stdbuf -oL -eL "$sanitizer" --tool memcheck --error-exitcode 9 "$BIN"/qwenq_gpu_tests \
    --gtest_brief=1 --gtest_filter='*Awkward*:*rows17*:QgemmSplitX3Cuda.*:LoraFoldCuda.*:*ClipGradNormCuda*awkward:*FlashAttentionCudaSmall*:*FlashAttentionWgmmaCudaSmall*:*Exact*:*BlockForwardHooksAndWeightSwap*:AttentionDecodeCuda.*:QwenDecodeCuda.TinyF32*:DeviceAllocatorCuda.*:QuantizeStepCuda.*Awkward*:AwqSearchCuda.*Awkward*:LoraForwardCuda.*:AwqModelCuda.ModuleApi*:KlRowsCuda.Ties*:GptqModelCuda.ExpertHookAndWeightSwap:MoeCombineBackwardCuda.Refuses*:DoraCuda.ElementwiseMatchTheTwinBitForBit:AwqMoeCuda.MlpForwardReplacesEveryExpert:GptqCudaDeviceH.*:GptqModelCuda.Bf16Replacements*:HessianCuda.MatchesTheCpuAccumulator:HessianCuda.Bf16InputsMatchTheCpuAccumulator:AwqModelCuda.RunnerBf16*' \
    > "$LOGS/memcheck.log" 2>&1
  log "memcheck exit $? ($(grep -c 'Invalid' "$LOGS/memcheck.log") invalid accesses; $(grep -E '^\[  (PASSED|SKIPPED|FAILED)  ?\]' "$LOGS/memcheck.log" | tr '\n' ' '))"
  grep -m10 -E "Invalid|Error" "$LOGS/memcheck.log" | tee -a "$OUT/summary.txt"
fi

if start bench "$bench_min"; then
  run_bench() {  # name, extra arguments: its table into the summary, its CSV into $OUT
    local b=$1; shift
    [[ ",$BENCHES," == *",$b,"* ]] || return 0
    [ -x "$BIN/$b" ] || { log "$b not built"; return; }
    local t=$(( $(left) - 20 )); [ "$t" -gt 150 ] && t=150
    [ "$t" -lt 20 ] && { log "$b skipped: out of time"; return; }
    timeout "$t" stdbuf -oL -eL "$BIN/$b" --csv "$OUT/$b.csv" "$@" > "$LOGS/$b.log" 2>&1
    log "$b exit $?"; tail -40 "$LOGS/$b.log" >> "$OUT/summary.txt"
  }
  run_bench bench_qgemm_cuda --reps 10
  run_bench bench_attention_cuda
  run_bench bench_attention_decode_cuda
  run_bench bench_gptq_cuda --cpu none --reps 1
  run_bench bench_kl_rows_cuda
  run_bench bench_lora_cuda
fi

# A full QLoRA training step against transformers + peft (issue 5's >= 2x tokens/s at <= 40% memory): at most
# 230 s; the report ($OUT/DATE-qlora-step-cuda.md) is written even when a side is cut by its time limit.
# The model's preparation is waited for first (when the phase could still run), so its minimum counts the time after it.
prep_rc=""
wait_prep() {
  [ -n "$prep_rc" ] && return "$prep_rc"
  wait "$qlora_prep"; prep_rc=$?
  [ "$prep_rc" = 0 ] || { log "bench_qlora_step prepare failed"; tail -5 "$LOGS/qlora-step-prepare.log" | tee -a "$OUT/summary.txt"; }
  return "$prep_rc"
}
if [ -n "$qlora_prep" ] && want qlora && [ "$(left)" -ge 160 ]; then wait_prep; fi
if [ -n "$qlora_prep" ] && start qlora 160; then
  # QWENQ_GPU_QLORA_ENV: variables for our side only, e.g. "QWENQ_QGEMM_DENSE=0" to measure another path.
  qlora_variants=${QWENQ_GPU_QLORA_VARIANTS-QWENQ_QGEMM_OVERLAP=1;QWENQ_LORA_FOLD=1;QWENQ_QGEMM_OVERLAP=1 QWENQ_LORA_FOLD=1;QWENQ_QGEMM_OVERLAP=1 QWENQ_LORA_FOLD=1 QWENQ_LOGITS_CHUNK=67108864}
  nvar=$(echo "$qlora_variants" | tr ';' '\n' | grep -c '=')
  qlora_cap=$((230 + 30 * nvar))
  qlora_budget=$(( $(left) - 25 )); [ "$qlora_budget" -gt "$qlora_cap" ] && qlora_budget=$qlora_cap
  env ${QWENQ_GPU_QLORA_ENV:-} VARIANTS="$qlora_variants" BUILD="$BIN" OUT="$OUT" BUDGET_S=$qlora_budget \
    timeout -k 5 $((qlora_budget + 15)) bash benchmarks/bench_qlora_step.sh > "$LOGS/qlora-step.log" 2>&1
  log "bench_qlora_step exit $? (budget $qlora_budget s; ${QWENQ_GPU_QLORA_ENV:-default paths}; $(tail -1 "$LOGS/qlora-step-prepare.log"))"
  grep -E "^qlora step|^wrote|^bench_qlora_step" "$LOGS/qlora-step.log" | tee -a "$OUT/summary.txt"
  sed -n '/^## [0-9]* layers/,/^## Raw JSON/p' "$OUT"/*-qlora-step-cuda.md 2>/dev/null | grep -v '^## Raw' >> "$OUT/summary.txt"  # variants too
elif [ -n "$qlora_prep" ] && ! want decode; then
  kill -- -"$qlora_prep" 2>/dev/null || kill "$qlora_prep" 2>/dev/null
fi

# Decode tokens/s against transformers' generate on the same model (bench_decode_cuda.sh), at most 200 s.
if [ -n "$qlora_prep" ] && want decode && [ "$(left)" -ge 90 ]; then wait_prep; fi
if [ -n "$qlora_prep" ] && start decode 90; then
  decode_budget=$(( $(left) - 20 )); [ "$decode_budget" -gt 200 ] && decode_budget=200
  BUILD="$BIN" OUT="$OUT" BUDGET_S=$decode_budget timeout -k 5 $((decode_budget + 15)) \
    bash benchmarks/bench_decode_cuda.sh > "$LOGS/decode.log" 2>&1
  log "bench_decode_cuda exit $? (budget $decode_budget s)"
  mkdir -p "$LOGS/decode" && cp "$BIN"/qlora-step-bench/decode/*.log "$LOGS/decode/" 2>/dev/null  # each run's own log
  sed -n '/^| prompt/,/^$/p' "$OUT"/*-decode-cuda.md 2>/dev/null | tee -a "$OUT/summary.txt"
fi

# Whole-model GPTQ on the GPU, 7B-shaped (issue 5's target: under 5 minutes on one GPU): `qwen-quant gptq
# --device cuda` with its defaults (128 windows x 2048 tokens) on random qwen2.5-7b models of 1 and 2 layers;
# per layer = t2 - t1, and the 28-layer time is extrapolated as t1 + 27 * (t2 - t1) (t1 includes the fixed costs:
# loading, calibration, the 2.2 GB of embeddings written). Each --calib-dtype of QWENQ_GPU_GPTQ_DTYPES in turn
# (bf16 first: the fast one), the next only while 60 s are left. QWENQ_GPTQ_TRACE=1 logs the solver's steps per
# Linear (quant/gptq_cuda.cu; the 1-layer runs' lines go to the summary). Models in a temporary directory, not in $OUT.
g7_calib=.gpu-deps/shared/data/tinystories/tinystories_val.txt
[ -f "$g7_calib" ] || g7_calib=README.md
# The 7B-shaped models (made in the background above).
make_7b_models() {
  [ -n "$g7_prep" ] && wait "$g7_prep"
  for n in 1 2; do [ -f "$g7/m$n.done" ] || log "the 7B-shaped model of $n layer(s) was not made: $(tail -2 "$LOGS/init7b_$n.log" | tr '\n' ' ')"; done
}
if start gptq7b 150 && [ -x "$BIN"/qwen-quant ]; then
  make_7b_models
  for dt in ${QWENQ_GPU_GPTQ_DTYPES:-bf16 fp32}; do
    [ "$(left)" -ge 60 ] || { log "gptq 7B-shaped --calib-dtype $dt skipped: $(left) s left"; continue; }
    declare -A g7_t=()
    for n in 1 2; do
      g7_log="$LOGS/gptq7b_${dt}_$n.log"
      g7_s=$(date +%s.%N)
      QWENQ_GPTQ_TRACE=1 timeout $(( $(left) > 40 ? $(left) - 20 : 20 )) "$BIN"/qwen-quant gptq --device cuda -m "$g7/m$n" \
        -o "$g7/q$n" --calib "$g7_calib" --calib-dtype "$dt" > "$g7_log" 2>&1
      g7_rc=$?
      g7_t[$n]=$(awk -v a="$g7_s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
      log "gptq 7B-shaped, $n layer(s), 128 x 2048 calibration tokens, --device cuda --calib-dtype $dt: exit $g7_rc, ${g7_t[$n]} s"
      grep -E "^gptq: time by stage|^wrote " "$g7_log" >> "$OUT/summary.txt"
      [ "$n" = 1 ] && grep "^gptq_cuda N=" "$g7_log" >> "$OUT/summary.txt"  # the solver's steps per Linear
      rm -rf "$g7/q$n"
    done
    log "gptq 7B-shaped --calib-dtype $dt: $(awk -v a="${g7_t[1]}" -v b="${g7_t[2]}" 'BEGIN { printf "%.1f s per layer; 28 layers extrapolated: %.0f s", b - a, a + 27 * (b - a) }') (target < 300 s)"
  done
fi
# Whole-model AWQ on the GPU, 7B-shaped, never timed before: its scale search runs every grid point's module (the
# attention, the MLP, down_proj) over all calibration tokens, fp32 GEMMs by default, bf16 tensor cores with
# --calib-dtype bf16. AutoAWQ's defaults (128 x 512 tokens, grid 20, clip search); per layer and extrapolation as
# gptq7b's; bf16 first, fp32 while 50 s are left.
if start awq7b 120 && [ -x "$BIN"/qwen-quant ]; then
  make_7b_models
  for dt in ${QWENQ_GPU_AWQ_DTYPES:-bf16 fp32}; do
    [ "$(left)" -ge 50 ] || { log "awq 7B-shaped --calib-dtype $dt skipped: $(left) s left"; continue; }
    declare -A a7_t=()
    for n in 1 2; do
      a7_log="$LOGS/awq7b_${dt}_$n.log"
      a7_s=$(date +%s.%N)
      timeout $(( $(left) > 30 ? $(left) - 15 : 15 )) "$BIN"/qwen-quant awq --device cuda -m "$g7/m$n" \
        -o "$g7/a$n" --calib "$g7_calib" --calib-dtype "$dt" > "$a7_log" 2>&1
      a7_rc=$?
      a7_t[$n]=$(awk -v a="$a7_s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
      log "awq 7B-shaped, $n layer(s), 128 x 512 calibration tokens, --device cuda --calib-dtype $dt: exit $a7_rc, ${a7_t[$n]} s"
      grep -E "^wrote " "$a7_log" >> "$OUT/summary.txt"
      rm -rf "$g7/a$n"
    done
    log "awq 7B-shaped --calib-dtype $dt: $(awk -v a="${a7_t[1]}" -v b="${a7_t[2]}" 'BEGIN { printf "%.1f s per layer; 28 layers extrapolated: %.0f s", b - a, a + 27 * (b - a) }')"
  done
fi
# Nsight Compute on the decode product's 72B gate/up launch at M = 1 (bench_qgemm_cuda launches it 8 times per
# shape with --reps 1, bf16 and fp32 activations, after q/o and k/v: the 17th launch of the kernel). ncu flushes the caches before it
# (--cache-control all, its default) and leaves the clocks alone (--clock-control none, METHOD.md).
if start ncu 60 && [ -x "$BIN"/bench_qgemm_cuda ]; then
  ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -z "$ncu_bin" ]; then
    log "ncu skipped: no ncu"
  else
    timeout $(( $(left) - 10 )) "$ncu_bin" --clock-control none --kernel-name regex:qgemm_decode_mma_kernel \
      --launch-skip 16 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats \
      "$BIN"/bench_qgemm_cuda --models 72b --ms 1 --tc-ms "" --reps 1 > "$OUT/ncu-decode-mma.txt" 2>&1
    log "ncu exit $? ($(grep -c . "$OUT/ncu-decode-mma.txt") lines in ncu-decode-mma.txt)"
    grep -E "Memory Throughput|DRAM Throughput|Duration|Achieved Occupancy|Registers Per|No Eligible|Issued Warp" \
      "$OUT/ncu-decode-mma.txt" | head -12 | tee -a "$OUT/summary.txt"
  fi
fi
# The 7B-shaped models made for the next call (QWENQ_GPU_PREP_7B=1): waited for while the budget lasts (a process
# still running when the call ends may be stopped with it; a half-made model is made again next time).
if [ -n "$g7_prep" ]; then
  while kill -0 "$g7_prep" 2>/dev/null && [ "$(left)" -gt 5 ]; do sleep 2; done
  log "7B-shaped models in $g7: $(ls "$g7" 2>/dev/null | grep -c '\.done$') of 2 made"
fi
log "done at ${SECONDS} s"
cat "$OUT/summary.txt"
