#!/usr/bin/env bash
# LoftQ on the real stories260K: how much of the 4-bit (and 2-bit) base's loss a LoftQ adapter gives back before any
# training, and where LoRA training from it ends, against PEFT's default start (B = 0) on the same base.
#   benchmarks/bench_loftq_stories.sh [build dir] [work dir]     env: STEPS (300), WINDOWS (200)
# Bases: NF4 with double quantization (`qwen-quant nf4`) and 2-bit RTN g64 asym (`qwen-quant rtn --bits 2 --format gptq_v2`, MLP padded
# to 192). Adapters: r 8, lora_alpha 16 (scaling 2) on all seven Linears; LoftQ one-shot (`train --loftq-model`,
# identical to --loftq-iter 1) and 5 iterations (`--loftq-iter 5`, which also changes the stored base).
# Writes benchmarks/results/<date>-loftq-stories260K.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/qwenq-bench-loftq}
QQ="$BUILD/qwen-quant"; QL="$BUILD/qwen-qlora"
STEPS=${STEPS:-300}
WINDOWS=${WINDOWS:-200}
DATA=../shared/data
[ -d "$DATA/stories260K" ] || { echo "needs ../shared/data"; exit 1; }
export OMP_WAIT_POLICY=PASSIVE
day=$(date -u +%Y-%m-%d)
res=benchmarks/results/${day}-loftq-stories260K.md
mkdir -p "$WORK"
"$QQ" import-llama2c --checkpoint "$DATA/stories260K/stories260K.bin" --tokenizer "$DATA/stories260K/tok512.bin" \
  --out "$WORK/fp32" --overwrite >/dev/null
LQ=(--loftq-rank 8 --loftq-alpha 16 --overwrite --quiet)
"$QQ" nf4 --model "$WORK/fp32" --out "$WORK/nf4" --overwrite --quiet >/dev/null
"$QQ" nf4 --model "$WORK/fp32" --out "$WORK/nf4-lq1" "${LQ[@]}" >/dev/null
"$QQ" nf4 --model "$WORK/fp32" --out "$WORK/nf4-lq5" --loftq-iter 5 "${LQ[@]}" >/dev/null
R2=(--bits 2 --group-size 64 --asym --format gptq_v2 --pad-intermediate)
"$QQ" rtn --model "$WORK/fp32" --out "$WORK/rtn2" "${R2[@]}" --overwrite --quiet >/dev/null
"$QQ" rtn --model "$WORK/fp32" --out "$WORK/rtn2-lq1" "${R2[@]}" "${LQ[@]}" >/dev/null
"$QQ" rtn --model "$WORK/fp32" --out "$WORK/rtn2-lq5" "${R2[@]}" --loftq-iter 5 "${LQ[@]}" >/dev/null

ppl() {  # model [adapter]
  local extra=()
  [ -n "${2:-}" ] && extra=(--adapter "$2")
  "$QQ" eval --model "$1" "${extra[@]}" --data "$DATA/tinystories/tinystories_val.txt" --seq-len 512 \
    --max-windows "$WINDOWS" 2>/dev/null | sed -n 's/^perplexity \([0-9.]*\).*/\1/p'
}
train() {  # name model [extra train flags...]
  local name=$1 model=$2; shift 2
  "$QL" train --model "$model" --data "$DATA/alpaca/alpaca_en_demo.json" --out "$WORK/run-$name" --overwrite \
    --max-steps "$STEPS" --seq-len 256 --batch-size 4 --lr 2e-3 --warmup-steps 10 --lora-r 8 --lora-alpha 16 \
    --target all-linear --eval-count 50 --eval-every 100 --quiet "$@" 2>/dev/null | tail -1 >/dev/null
  python3 - "$WORK/run-$name/metrics.jsonl" <<'PY'
import json, sys
ev = [r for r in map(json.loads, open(sys.argv[1])) if "eval_loss" in r]
print(f"{ev[0]['eval_loss']:.4f} | {ev[-1]['eval_loss']:.4f}")
PY
}
{
  echo "# LoftQ on stories260K, $day"
  echo
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'); $(nproc) cores, no GPU"
  echo "- perplexity: \`qwen-quant eval --seq-len 512 --max-windows $WINDOWS\` on TinyStories validation text (the model's own"
  echo "  domain), base alone and base + the LoftQ adapter before any training (\`eval --adapter <base>/loftq_init\`)"
  echo "- training: \`qwen-qlora train --data alpaca_en_demo.json --max-steps $STEPS --seq-len 256 --batch-size 4 --lr 2e-3"
  echo "  --warmup-steps 10 --lora-r 8 --lora-alpha 16 --target all-linear --eval-count 50\`; default start (B = 0) vs"
  echo "  \`--loftq-model fp32\` (one-shot) vs \`--init-adapter <base>/loftq_init\` (5 iterations); held-out Alpaca loss"
  echo
  echo "fp32 original: perplexity $(ppl "$WORK/fp32")"
  echo
  echo "| base | LoftQ | perplexity, base alone | with the LoftQ adapter | Alpaca eval loss at step 0 | at step $STEPS |"
  echo "|---|---|---|---|---|---|"
  for b in nf4 rtn2; do
    echo "| $b | none (B = 0) | $(ppl "$WORK/$b") | - | $(train "$b" "$WORK/$b") |"
    echo "| $b | one-shot | $(ppl "$WORK/$b-lq1") | $(ppl "$WORK/$b-lq1" "$WORK/$b-lq1/loftq_init") | $(train "$b-lq1" "$WORK/$b" --loftq-model "$WORK/fp32") |"
    echo "| $b-lq5 | 5 iterations | $(ppl "$WORK/$b-lq5") | $(ppl "$WORK/$b-lq5" "$WORK/$b-lq5/loftq_init") | $(train "$b-lq5" "$WORK/$b-lq5" --init-adapter "$WORK/$b-lq5/loftq_init") |"
  done
} | tee "$res.tmp"
mv "$res.tmp" "$res"
echo "wrote $res"
