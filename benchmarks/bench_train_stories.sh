#!/usr/bin/env bash
# LoRA on the real stories260K with the shared Alpaca data, on three bases: the original (fp32), a 4-bit GPTQ
# base made by `qwen-quant gptq` and an NF4 base made by `qwen-quant nf4`. Records the held-out loss before and
# after, and copies each run's metrics.jsonl and loss_curve.svg into benchmarks/results/.
#   benchmarks/bench_train_stories.sh [build dir] [work dir]     env: STEPS (300)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/qwenq-bench-stories}
QQ="$BUILD/qwen-quant"; QL="$BUILD/qwen-qlora"
STEPS=${STEPS:-300}
DATA=../shared/data
[ -d "$DATA/stories260K" ] || { echo "needs ../shared/data"; exit 1; }
day=$(date -u +%Y-%m-%d)
res=benchmarks/results/${day}-train-stories260K
mkdir -p "$WORK"
"$QQ" import-llama2c --checkpoint "$DATA/stories260K/stories260K.bin" --tokenizer "$DATA/stories260K/tok512.bin" \
  --out "$WORK/fp32" --overwrite >/dev/null
"$QQ" gptq --model "$WORK/fp32" --out "$WORK/gptq" --calib "$DATA/c4/c4_demo.jsonl" --calib-samples 64 \
  --calib-seq-len 512 --group-size 64 --asym --pad-intermediate --overwrite --quiet >/dev/null
"$QQ" nf4 --model "$WORK/fp32" --out "$WORK/nf4" --overwrite --quiet >/dev/null
{
  echo "# LoRA on stories260K with the Alpaca demo set, $day"
  echo
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'); $(nproc) cores, no GPU"
  echo "- \`qwen-qlora train --data alpaca_en_demo.json --max-steps $STEPS --seq-len 256 --batch-size 4 --lr 2e-3"
  echo "  --warmup-steps 10 --lora-r 8 --lora-alpha 16 --target all-linear --eval-count 50 --eval-every 50\`"
  echo "  (cosine schedule, packing, 50 held-out examples, seed 42); bases: the imported fp32 model, 4-bit GPTQ g64 asym"
  echo "  (\`qwen-quant gptq\`, C4 calibration, MLP padded to 192), NF4 with double quantization (\`qwen-quant nf4\`)."
  echo "- curves: \`${day}-train-stories260K-<base>.svg\` (train solid, eval dashed); per-step metrics in the \`.jsonl\` files."
  echo
  echo "| base | held-out loss at step 0 | at step $STEPS | last train loss | tokens/s | wall |"
  echo "|---|---|---|---|---|---|"
  for base in fp32 gptq nf4; do
    line=$(OMP_WAIT_POLICY=PASSIVE "$QL" train --model "$WORK/$base" --data "$DATA/alpaca/alpaca_en_demo.json" \
      --out "$WORK/run-$base" --overwrite --max-steps "$STEPS" --seq-len 256 --batch-size 4 --lr 2e-3 --warmup-steps 10 \
      --lora-r 8 --lora-alpha 16 --target all-linear --eval-count 50 --eval-every 50 --quiet 2>/dev/null | tail -1)
    cp "$WORK/run-$base/metrics.jsonl" "$res-$base.jsonl"
    cp "$WORK/run-$base/loss_curve.svg" "$res-$base.svg"
    python3 - "$WORK/run-$base/metrics.jsonl" "$base" "$line" <<'PY'
import json, re, sys
rows = list(map(json.loads, open(sys.argv[1])))
ev = [r for r in rows if "eval_loss" in r]
tr = [r for r in rows if "loss" in r]
tps = re.search(r"([0-9.]+) tokens/s", sys.argv[3]).group(1)
wall = re.search(r"tokens/s, ([0-9.]+s)", sys.argv[3]).group(1)
print(f"| {sys.argv[2]} | {ev[0]['eval_loss']:.4f} | {ev[-1]['eval_loss']:.4f} | {tr[-1]['loss']:.4f} | {tps} | {wall} |")
PY
  done
} | tee "$res.md.tmp"
mv "$res.md.tmp" "$res.md"
echo "wrote $res.md"
