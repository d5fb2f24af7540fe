#!/usr/bin/env bash
# Quantization wall time and peak RSS of every method on random-weight models in real Qwen2.5 shapes, per
# decoder block so the full model can be extrapolated (time grows linearly with the number of blocks; the fixed
# part is the embedding/lm_head pass-through). Writes benchmarks/results/<date>-quantize-cpu.md.
#   benchmarks/bench_quantize_cpu.sh [build dir] [work dir]
# Environment: LAYERS_05B (default 4), LAYERS_7B (default 1), CALIB_SAMPLES (8), CALIB_SEQ_LEN (256),
# METHODS ("rtn nf4 gptq awq"). Calibration text: ../shared/data/c4 when present, else README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/qwenq-bench-quantize}
QQ="$BUILD/qwen-quant"
LAYERS_05B=${LAYERS_05B:-4}
LAYERS_7B=${LAYERS_7B:-1}
CALIB_SAMPLES=${CALIB_SAMPLES:-8}
CALIB_SEQ_LEN=${CALIB_SEQ_LEN:-256}
METHODS=${METHODS:-"rtn nf4 gptq awq"}
CALIB=../shared/data/c4/c4_demo.jsonl
[ -f "$CALIB" ] || CALIB=README.md
day=$(date -u +%Y-%m-%d)
out=benchmarks/results/${day}-quantize-cpu.md
mkdir -p "$WORK"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')

run_method() {  # model dir, method, layers -> one table row
  local model=$1 method=$2 layers=$3 args=()
  case $method in
    rtn) args=(rtn --group-size 128) ;;
    nf4) args=(nf4) ;;
    gptq) args=(gptq --group-size 128 --calib "$CALIB" --calib-samples "$CALIB_SAMPLES" --calib-seq-len "$CALIB_SEQ_LEN") ;;
    awq) args=(awq --group-size 128 --calib "$CALIB" --calib-samples "$CALIB_SAMPLES" --calib-seq-len "$CALIB_SEQ_LEN") ;;
  esac
  local line
  line=$("$QQ" "${args[@]}" --model "$model" --out "$WORK/out-$method" --overwrite --quiet 2>"$WORK/err.txt" | tail -1) ||
    { echo "| $method | failed: $(tail -1 "$WORK/err.txt") |||"; return; }
  # "wrote DIR: ... , 12.3s, peak RSS 1.2 GiB"
  local secs rss
  secs=$(echo "$line" | grep -oE '[0-9.]+s, peak' | grep -oE '^[0-9.]+')
  rss=$(echo "$line" | sed 's/.*peak RSS //')
  echo "| $method | $secs | $(awk -v s="$secs" -v l="$layers" 'BEGIN{printf "%.1f", s/l}') | $rss |"
  rm -rf "$WORK/out-$method"
}

{
  echo "# Quantization time and memory on CPU, $day"
  echo
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- models: random bf16 weights in Qwen2.5 shapes (\`qwen-quant init-random --layers N\`); group size 128;"
  echo "  calibration for gptq/awq: $CALIB_SAMPLES windows x $CALIB_SEQ_LEN tokens of $(basename "$CALIB") (AutoGPTQ/AutoAWQ"
  echo "  defaults are 128 x 2048 and 128 x 512: the forward passes in the calibration scale linearly with tokens)."
  echo "- per block = total / blocks (includes the embedding pass-through, so it slightly overstates the per-block cost)."
  echo
  for spec in "qwen2.5-0.5b:$LAYERS_05B" "qwen2.5-7b:$LAYERS_7B"; do
    preset=${spec%%:*}; layers=${spec##*:}
    model="$WORK/$preset-$layers"
    [ -f "$model/config.json" ] || "$QQ" init-random --preset "$preset" --layers "$layers" --out "$model" --overwrite >/dev/null
    echo "## $preset shape, $layers block(s)"
    echo
    echo "| method | total s | s per block | peak RSS |"
    echo "|---|---|---|---|"
    for m in $METHODS; do run_method "$model" "$m" "$layers"; done
    echo
  done
} | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
