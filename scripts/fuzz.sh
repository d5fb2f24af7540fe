#!/usr/bin/env bash
# Fuzzes every reader of a user file (tests/fuzz/fuzz_targets.h) with clang's libFuzzer under AddressSanitizer and
# UndefinedBehaviorSanitizer: builds build-fuzz/ (CPU only, -DQWENQ_FUZZ=ON), makes the fixtures and seeds
# (tests/fuzz/make_seeds.sh), then runs each target for FUZZ_SECONDS (default 60) with its corpus kept in
# build-fuzz/fuzz/corpus/<target>. A crash, a sanitizer report or an exception other than qwenq::Error is written to
# build-fuzz/fuzz/findings/<target>/ and named at the end (exit 1); replay one with
#   QWENQ_FUZZ_DIR=build-fuzz/fuzz/fixtures build-fuzz/qwenq_fuzz_replay TARGET FILE
# Copy a fixed finding into tests/fuzz/regressions/<target>/ (':' as '-') so that ctest's fuzz.replay keeps it fixed.
#   scripts/fuzz.sh [TARGET...]        (default: every target; FUZZ_SECONDS, JOBS (1) from the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
command -v clang++ >/dev/null || { echo "fuzz: clang++ is needed (apt-get install clang)" >&2; exit 1; }
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
if [ ! -f build-fuzz/CMakeCache.txt ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQWENQ_CUDA=OFF \
    -DQWENQ_NATIVE=OFF -DQWENQ_BUILD_BENCHMARKS=OFF -DQWENQ_FUZZ=ON \
    -DCMAKE_CXX_FLAGS="$san -fsanitize=fuzzer-no-link -O1" -DCMAKE_C_FLAGS="$san" > /dev/null
fi
cmake --build build-fuzz -j "$(nproc)" --target qwenq_fuzz qwenq_fuzz_replay qwen-quant qwen-qlora
W=build-fuzz/fuzz
bash tests/fuzz/make_seeds.sh build-fuzz "$W/fixtures" "$(cd .. && pwd)/shared"
export QWENQ_FUZZ_DIR="$PWD/$W/fixtures" QWENQ_FUZZ_SCRATCH="${TMPDIR:-/tmp}" OMP_NUM_THREADS=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for d in "$W"/fixtures/seeds/*/; do n=$(basename "$d"); targets+=("${n/-/:}"); done
fi
failed=()
for t in "${targets[@]}"; do
  n=${t/:/-}
  mkdir -p "$W/corpus/$n" "$W/findings/$n"
  echo "fuzz: $t for ${SECONDS_EACH}s"
  jobs=()  # -jobs=N writes fuzz-<i>.log into the current directory: only when asked for, and then into $W
  [ "${JOBS:-1}" -gt 1 ] && jobs=(-jobs="$JOBS" -workers="$JOBS")
  if ! (cd "$W" && QWENQ_FUZZ_TARGET=$t ../qwenq_fuzz -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 "${jobs[@]}" \
        -artifact_prefix="findings/$n/" "corpus/$n" "fixtures/seeds/$n") > "$W/$n.log" 2>&1; then
    failed+=("$t")
    grep -m3 -E "ERROR|runtime error|SUMMARY|what\(\)" "$W/$n.log" | sed "s/^/  $t: /" || true
  fi
  grep -E "^Done [0-9]+ runs" "$W/$n.log" | sed "s/^/  $t: /" || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings for ${failed[*]} in $W/findings (logs: $W/<target>.log)" >&2
  exit 1
fi
echo "fuzz: no findings (${#targets[@]} targets x ${SECONDS_EACH}s)"
