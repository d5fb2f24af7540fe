#!/usr/bin/env bash
# GGUF export and import on the CPU: `qwen-quant gguf` (f16, q8_0, q4_0, q4_k_m) and `qwen-quant dequantize` of a GGUF back
# to a bf16 Hugging Face directory, on random-weight models in real Qwen2.5 shapes with LAYERS decoder blocks. Wall
# time and peak RSS (GNU time); the embedding and lm_head are a fixed part, each block adds the same work, so a whole
# model is fixed + blocks x per-block (two runs with different block counts separate them). Writes
# benchmarks/results/<date>-gguf-cpu.md.
#   benchmarks/bench_gguf_cpu.sh [build dir] [work dir]        PRESET (qwen2.5-7b), LAYERS ("1 3")
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/qwenq-bench-gguf}
QQ="$BUILD/qwen-quant"
PRESET=${PRESET:-qwen2.5-7b}
LAYERS=${LAYERS:-"1 3"}
day=$(date -u +%Y-%m-%d)
out=benchmarks/results/${day}-gguf-cpu.md
mkdir -p "$WORK"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')

timed() {  # command... -> "seconds rss_gib"
  /usr/bin/time -f '%e %M' -o "$WORK/time.txt" "$@" > "$WORK/out.txt" 2> "$WORK/err.txt" ||
    { echo "failed: $(tail -1 "$WORK/err.txt")" >&2; exit 1; }
  awk '{printf "%s %.2f", $1, $2 / 1048576}' "$WORK/time.txt"
}

{
  echo "# GGUF export / import on the CPU, $day"
  echo
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'); machine: $cpu, $(nproc) cores, no GPU"
  echo "- model: \`qwen-quant init-random --preset $PRESET\` (bf16 weights) with the given number of decoder blocks"
  echo "- command: \`benchmarks/bench_gguf_cpu.sh\` (PRESET=$PRESET LAYERS=\"$LAYERS\")"
  echo
  echo "| blocks | step | wall s | peak RSS GiB | output |"
  echo "|---|---|---|---|---|"
  for L in $LAYERS; do
    model="$WORK/model-$L"
    "$QQ" init-random --preset "$PRESET" --layers "$L" --out "$model" --overwrite > /dev/null 2>&1
    for t in f16 q8_0 q4_0 q4_k_m; do
      read -r s r <<< "$(timed "$QQ" gguf --model "$model" --out "$WORK/m.gguf" --type "$t" --overwrite --quiet)"
      echo "| $L | gguf --type $t | $s | $r | $(du -h "$WORK/m.gguf" | cut -f1) |"
    done
    read -r s r <<< "$(timed "$QQ" dequantize --model "$WORK/m.gguf" --out "$WORK/back" --overwrite --quiet)"
    echo "| $L | dequantize (q4_0 GGUF -> bf16) | $s | $r | $(du -sh "$WORK/back" | cut -f1) |"
  done
} | tee "$out"
echo "wrote $out"
