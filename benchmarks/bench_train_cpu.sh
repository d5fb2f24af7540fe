#!/usr/bin/env bash
# A LoRA training step on the CPU for a Qwen2.5-0.5B-shaped model with random weights: tokens/s and peak RSS of
# `qwen-qlora train`, on a bf16 base and on a 4-bit (GPTQ-layout RTN) base, against the prediction of
# `qwen-qlora plan` for the same settings. Writes benchmarks/results/<date>-train-cpu.md.
#   benchmarks/bench_train_cpu.sh [build dir] [work dir]     env: STEPS (3), SEQ_LEN (512), RANK (16), LAYERS (24)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/qwenq-bench-train}
QQ="$BUILD/qwen-quant"; QL="$BUILD/qwen-qlora"
STEPS=${STEPS:-3}; SEQ_LEN=${SEQ_LEN:-512}; RANK=${RANK:-16}; LAYERS=${LAYERS:-24}
day=$(date -u +%Y-%m-%d)
out=benchmarks/results/${day}-train-cpu.md
mkdir -p "$WORK"
model="$WORK/qwen2.5-0.5b-$LAYERS"
[ -f "$model/config.json" ] || "$QQ" init-random --preset qwen2.5-0.5b --layers "$LAYERS" --out "$model" --overwrite >/dev/null
[ -f "$model-gptq/config.json" ] || "$QQ" rtn --model "$model" --out "$model-gptq" --group-size 128 --overwrite --quiet >/dev/null
python3 - "$WORK/data.jsonl" <<'PY'
import json, random, sys
random.seed(0)
words = "the a cat dog bird sat ran on in park mat song sang ate food house tree big small red blue".split()
with open(sys.argv[1], "w") as f:
    for _ in range(400):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(400))}) + "\n")
PY
{
  echo "# LoRA training step on CPU, $day"
  echo
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- model: Qwen2.5-0.5B shape ($LAYERS layers), random weights; LoRA r=$RANK on all seven Linears; 1 x $SEQ_LEN tokens"
  echo "  per step (packed text); activation checkpointing on; $STEPS steps; OMP_WAIT_POLICY=PASSIVE."
  echo "- tokens/s: the mean over the steps after the first (metrics.jsonl); peak RSS: VmHWM of the whole process"
  echo "  (includes the memory-mapped base pages it touched, the tokenizer and the data)."
  echo
  echo "| base | tokens/s | s/step | peak RSS measured | plan total (cpu) | measured / plan |"
  echo "|---|---|---|---|---|---|"
  for base in bf16 gptq; do
    dir=$model; [ $base = gptq ] && dir=$model-gptq
    line=$(OMP_WAIT_POLICY=PASSIVE "$QL" train --model "$dir" --data "$WORK/data.jsonl" --out "$WORK/run-$base" --overwrite \
           --max-steps "$STEPS" --seq-len "$SEQ_LEN" --batch-size 1 --lora-r "$RANK" --target all-linear --quiet 2>/dev/null | tail -1)
    rss=$(echo "$line" | sed 's/.*peak RSS \([^;]*\);.*/\1/')
    stats=$(python3 - "$WORK/run-$base/metrics.jsonl" <<'PY'
import json, sys
rows = [j for j in map(json.loads, open(sys.argv[1])) if "loss" in j][1:]
tps = sum(r["tokens"] for r in rows) / max(1e-9, sum(r["tokens"] / r["tokens_per_s"] for r in rows))
print(f"{tps:.0f} {sum(r['tokens'] / r['tokens_per_s'] for r in rows) / max(1, len(rows)):.1f}")
PY
)
    plan=$("$QL" plan --model "$dir" --device cpu --seq-len "$SEQ_LEN" --batch-size 1 --lora-r "$RANK" --target all-linear --json)
    predicted=$(echo "$plan" | python3 -c "import json,sys; print(json.load(sys.stdin)['per_device']['total'])")
    measured_bytes=$(python3 -c "
u={'B':1,'KiB':1024,'MiB':1024**2,'GiB':1024**3}; v,unit='$rss'.split(); print(int(float(v)*u[unit]))")
    ratio=$(python3 -c "print(f'{$measured_bytes / max(1, $predicted):.2f}')")
    pred_h=$(python3 -c "print(f'{$predicted / 1024**2:.0f} MiB')")
    echo "| $base | ${stats%% *} | ${stats##* } | $rss | $pred_h | $ratio |"
  done
} | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
