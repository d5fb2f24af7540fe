#!/usr/bin/env bash
# ctest fuzz.replay: every fuzz target (tests/fuzz/fuzz_targets.h) over its seed inputs, which must all be accepted
# (the targets reach the code past the checks), and over the inputs kept in tests/fuzz/regressions/<target>/ when
# there are any, through qwenq_fuzz_replay (no libFuzzer needed): each must end in a result or one qwenq::Error. The llama2.c targets need ../shared (stories260K's tokenizer) and are skipped
# without it, said in one line.
#   tests/fuzz/replay.sh REPLAY_BIN BUILD WORK [SHARED]
set -euo pipefail
REPLAY=$1 BUILD=$2 WORK=$3 SHARED=${4:-}
SRC=$(cd "$(dirname "$0")" && pwd)
bash "$SRC/make_seeds.sh" "$BUILD" "$WORK/fixtures" "$SHARED"
export QWENQ_FUZZ_DIR="$WORK/fixtures" QWENQ_FUZZ_SCRATCH="$WORK/scratch" OMP_NUM_THREADS=1
mkdir -p "$QWENQ_FUZZ_SCRATCH"
for dir in "$QWENQ_FUZZ_DIR"/seeds/*/; do
  name=$(basename "$dir")
  target=${name/-/:}
  "$REPLAY" --valid "$target" "$dir"
  if [ -d "$SRC/regressions/$name" ]; then "$REPLAY" "$target" "$SRC/regressions/$name"; fi
done
[ -d "$QWENQ_FUZZ_DIR/seeds/llama2c_tokenizer" ] || echo "llama2c_tokenizer: skipped (no ../shared/data/stories260K)"
