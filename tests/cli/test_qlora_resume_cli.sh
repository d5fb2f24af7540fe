#!/usr/bin/env bash
# Kill and resume through the command line: `qwen-qlora train` killed with SIGKILL after its first checkpoint and
# continued with --resume logs the same losses, bit for bit, as an uninterrupted run, and leaves the same adapter.
# Also: a JSON --config gives the same run as the same options on the command line (a false boolean is the flag
# turned off); --no-eval-on-start; --cpu-matmul bf16; --eval-every / --save-every as fractions and per epoch.
set -euo pipefail
QQ="$1"; SRC="$2"; WORK="$3"
QL="$(dirname "$QQ")/qwen-qlora"
rm -rf "$WORK" && mkdir -p "$WORK"
fail() { echo "FAIL: $*"; for f in "$WORK"/*.txt; do echo "--- $f"; cat "$f"; done; exit 1; }
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null
python3 "$(dirname "$0")/sentences.py" "$WORK/data.jsonl" 300 3
cat > "$WORK/run.json" <<JSON
{"model": "$WORK/tiny", "data": "$WORK/data.jsonl", "max-steps": 24, "seq-len": 128, "batch-size": 2,
 "grad-accum": 2, "lr": 0.003, "lora-r": 4, "lora-dropout": 0.1, "save-every": 4, "eval-count": 8, "threads": 1,
 "quiet": true}
JSON
"$QL" train --config "$WORK/run.json" --out "$WORK/full" > "$WORK/full.txt" 2>&1 || fail "uninterrupted run failed"

"$QL" train --config "$WORK/run.json" --out "$WORK/part" > "$WORK/part.txt" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do
  [ -f "$WORK/part/checkpoint-8/trainer_state.json" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.02
done
kill -9 "$pid" 2>/dev/null || fail "the run finished before it could be killed"
wait "$pid" 2>/dev/null && fail "a killed run reported success"
[ ! -f "$WORK/part/adapter_model.safetensors" ] || fail "a killed run left a final adapter"
"$QL" train --config "$WORK/run.json" --out "$WORK/part" --resume > "$WORK/resume.txt" 2>&1 || fail "resume failed"
grep -q "from step [1-9]" "$WORK/resume.txt" || fail "the resumed run did not start from a checkpoint"
python3 - "$WORK/full/metrics.jsonl" "$WORK/part/metrics.jsonl" <<'PY' || fail "losses differ"
import json, sys
def losses(p):
    return [(j["step"], j["loss"]) for j in map(json.loads, open(p)) if "loss" in j]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == 24 and a == b, f"uninterrupted {a[-3:]} vs resumed {b[-3:]} ({len(a)} vs {len(b)} steps)"
PY
cmp "$WORK/full/adapter_model.safetensors" "$WORK/part/adapter_model.safetensors" || fail "final adapters differ"
# A malformed config is refused with its name.
echo '{"model": ' > "$WORK/bad.json"
if "$QL" train --config "$WORK/bad.json" --out "$WORK/bad" > "$WORK/badcfg.txt" 2>&1; then fail "bad config accepted"; fi
grep -q "bad.json: not valid JSON" "$WORK/badcfg.txt" || fail "unclear error for a bad config"
# A list in the config is the option's comma-separated value: "target": ["v_proj", "q_proj"] trains what
# --target q_proj,v_proj trains, bit for bit; a list of objects or an object is refused by name.
sed "s/\"max-steps\": 24, /\"target\": [\"v_proj\", \"q_proj\"], \"max-steps\": 3, /" "$WORK/run.json" > "$WORK/list.json"
grep -q '"target": \["v_proj", "q_proj"\]' "$WORK/list.json" || fail "the list config was not written"
"$QL" train --config "$WORK/list.json" --out "$WORK/list" > "$WORK/list.txt" 2>&1 || fail "config with a list"
"$QL" train --config "$WORK/run.json" --max-steps 3 --target q_proj,v_proj --out "$WORK/flags" > "$WORK/flags.txt" 2>&1 \
  || fail "the same run from flags"
cmp "$WORK/list/adapter_model.safetensors" "$WORK/flags/adapter_model.safetensors" || fail "list config != flags"
grep -q '"target_modules": \[' "$WORK/list/adapter_config.json" && grep -q '"q_proj"' "$WORK/list/adapter_config.json" \
  && ! grep -q '"k_proj"' "$WORK/list/adapter_config.json" || fail "the list did not set the targets"
for bad in '{"target": [{"a": 1}]}|a list holds strings or numbers' '{"target": {"a": 1}}|must be a string, number, boolean or a list'; do
  echo "${bad%%|*}" > "$WORK/bad2.json"
  if "$QL" train --config "$WORK/bad2.json" --model "$WORK/tiny" --data "$WORK/data.jsonl" --out "$WORK/bad2" \
    > "$WORK/bad2.txt" 2>&1; then fail "config ${bad%%|*} accepted"; fi
  grep -q "bad2.json: option \"target\".*${bad#*|}" "$WORK/bad2.txt" || fail "config ${bad%%|*}"
done
# "no-eval-on-start": true (transformers' eval_on_start=False) skips the step-0 evaluation, as --no-eval-on-start does;
# the run is otherwise the same (the same final adapter, bit for bit). A false boolean is the flag turned off.
sed 's/"quiet": true}/"quiet": true, "no-eval-on-start": true, "rslora": false}/' "$WORK/run.json" > "$WORK/noeval.json"
"$QL" train --config "$WORK/noeval.json" --max-steps 4 --eval-every 2 --out "$WORK/noeval" > "$WORK/noeval.txt" 2>&1   || fail "config with false booleans"
"$QL" train --config "$WORK/run.json" --max-steps 4 --eval-every 2 --no-eval-on-start --out "$WORK/noeval2"   > "$WORK/noeval2.txt" 2>&1 || fail "--no-eval-on-start"
"$QL" train --config "$WORK/run.json" --max-steps 4 --eval-every 2 --out "$WORK/witheval" > "$WORK/witheval.txt" 2>&1   || fail "4 steps with evaluations"
for d in noeval noeval2 witheval; do
  python3 -c "import json,sys; print([j['step'] for j in map(json.loads, open(sys.argv[1])) if 'eval_loss' in j])"     "$WORK/$d/metrics.jsonl" > "$WORK/$d.evals.txt"
done
[ "$(cat "$WORK/noeval.evals.txt")" = "[2, 4]" ] || fail "no-eval-on-start in the config: evaluations $(cat "$WORK/noeval.evals.txt")"
[ "$(cat "$WORK/noeval2.evals.txt")" = "[2, 4]" ] || fail "--no-eval-on-start: evaluations $(cat "$WORK/noeval2.evals.txt")"
[ "$(cat "$WORK/witheval.evals.txt")" = "[0, 2, 4]" ] || fail "evaluations $(cat "$WORK/witheval.evals.txt")"
sed 's/"quiet": true}/"quiet": true, "no-eval-on-start": false}/' "$WORK/run.json" > "$WORK/falseflag.json"
"$QL" train --config "$WORK/falseflag.json" --max-steps 4 --eval-every 2 --out "$WORK/falseflag" > "$WORK/falseflag.txt" \
  2>&1 || fail "config with a false flag"
python3 -c "import json,sys; print([j['step'] for j in map(json.loads, open(sys.argv[1])) if 'eval_loss' in j])" \
  "$WORK/falseflag/metrics.jsonl" > "$WORK/falseflag.evals.txt"
[ "$(cat "$WORK/falseflag.evals.txt")" = "[0, 2, 4]" ] || fail "\"no-eval-on-start\": false: $(cat "$WORK/falseflag.evals.txt")"
cmp "$WORK/noeval/adapter_model.safetensors" "$WORK/witheval/adapter_model.safetensors" \
  || fail "skipping the step-0 evaluation changed the training"
grep -q "eval loss [0-9.]*;" "$WORK/noeval.txt" || fail "the report without a step-0 evaluation" "$WORK/noeval.txt"
# --cpu-matmul bf16 (kernels/gemm_bf16.h): the same run with the base and lm_head products on bf16 operands moves the
# losses by the operands' rounding only (not the same bits); resuming it with fp32 products is refused by name, and an
# unknown value by the option.
"$QL" train --config "$WORK/run.json" --max-steps 4 --cpu-matmul bf16 --out "$WORK/bf16" > "$WORK/bf16.txt" 2>&1 \
  || fail "--cpu-matmul bf16"
"$QL" train --config "$WORK/run.json" --max-steps 4 --out "$WORK/fp32" > "$WORK/fp32.txt" 2>&1 || fail "fp32 4 steps"
python3 - "$WORK/fp32/metrics.jsonl" "$WORK/bf16/metrics.jsonl" <<'PY' || fail "bf16 products: losses"
import json, sys
def losses(p):
    return [j["loss"] for j in map(json.loads, open(p)) if "loss" in j]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == len(b) == 4, (a, b)
assert a != b, "bf16 operands gave the fp32 run's bits: the option did nothing"
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
assert worst < 2e-2, f"bf16 products moved a loss by {worst:.3g} relative: {a} vs {b}"
print(f"bf16 products: losses within {worst:.2g} relative of fp32")
PY
if "$QL" train --config "$WORK/run.json" --max-steps 8 --out "$WORK/part" --resume --cpu-matmul bf16 \
  > "$WORK/bf16resume.txt" 2>&1; then fail "resumed an fp32 run with --cpu-matmul bf16"; fi
grep -q '"cpu_matmul" (--cpu-matmul)' "$WORK/bf16resume.txt" || fail "unclear refusal of a changed --cpu-matmul"
if "$QL" train --config "$WORK/run.json" --cpu-matmul fp16 --out "$WORK/fp16" > "$WORK/fp16.txt" 2>&1; then
  fail "--cpu-matmul fp16 accepted"
fi
grep -q -- "--cpu-matmul" "$WORK/fp16.txt" || fail "unclear refusal of --cpu-matmul fp16"
# LoRA+ and NEFTune change the update, so a run resumed with either is refused by name; a ratio of 0 is refused, and
# NEFTune outside SFT.
for opt in "loraplus_lr_ratio 16" "neftune_noise_alpha 5"; do
  key=${opt% *} value=${opt#* }
  flag="--${key//_/-}"
  if "$QL" train --config "$WORK/run.json" --out "$WORK/part" --resume "$flag" "$value" > "$WORK/$key.txt" 2>&1; then
    fail "resumed a plain run with $flag $value"
  fi
  grep -q "\"$key\" ($flag): saved (none), now $value" "$WORK/$key.txt" || fail "unclear refusal of a changed $flag"
done
if "$QL" train --config "$WORK/run.json" --loraplus-lr-ratio 0 --out "$WORK/lp0" > "$WORK/lp0.txt" 2>&1; then
  fail "--loraplus-lr-ratio 0 accepted"
fi
grep -q -- "--loraplus-lr-ratio" "$WORK/lp0.txt" || fail "unclear refusal of --loraplus-lr-ratio 0"
if "$QL" train --config "$WORK/run.json" --objective kto --neftune-noise-alpha 5 --out "$WORK/nefkto" \
  > "$WORK/nefkto.txt" 2>&1; then fail "--neftune-noise-alpha accepted for kto"; fi
grep -q -- "--neftune-noise-alpha applies to --objective sft" "$WORK/nefkto.txt" || fail "unclear refusal of NEFTune for kto"
# The schedule's minimum and keyword arguments change the rates, and best-model tracking the checkpoints: a run
# resumed with any of them is refused by name. A config's "scheduler-kwargs" object is the flag's JSON text (the same
# adapter, bit for bit).
for opt in "min_lr_ratio|--min-lr-ratio|0.1|0.1" "scheduler_kwargs|--scheduler-kwargs|{\"num_cycles\": 1.5}|{\"num_cycles\":1.5}"; do
  IFS='|' read -r key flag value shown <<< "$opt"
  if "$QL" train --config "$WORK/run.json" --out "$WORK/part" --resume "$flag" "$value" > "$WORK/$key.txt" 2>&1; then
    fail "resumed a plain run with $flag $value"
  fi
  grep -qF "\"$key\" ($flag): saved (none), now $shown" "$WORK/$key.txt" || fail "unclear refusal of a changed $flag"
done
if "$QL" train --config "$WORK/run.json" --out "$WORK/part" --resume --load-best-model-at-end --eval-every 4 \
  > "$WORK/best.txt" 2>&1; then fail "resumed a plain run with --load-best-model-at-end"; fi
grep -qF '"best_model" (--load-best-model-at-end/' "$WORK/best.txt" || fail "unclear refusal of --load-best-model-at-end"
sed 's/"max-steps": 24, /"max-steps": 3, "scheduler": "cosine_with_restarts", "scheduler-kwargs": {"num_cycles": 2}, /' \
  "$WORK/run.json" > "$WORK/sched.json"
grep -q '"scheduler-kwargs": {"num_cycles": 2}' "$WORK/sched.json" || fail "the scheduler config was not written"
"$QL" train --config "$WORK/sched.json" --out "$WORK/sched" > "$WORK/sched.txt" 2>&1 || fail "config with scheduler-kwargs"
"$QL" train --config "$WORK/run.json" --max-steps 3 --scheduler cosine_with_restarts --scheduler-kwargs '{"num_cycles": 2}' \
  --out "$WORK/schedflags" > "$WORK/schedflags.txt" 2>&1 || fail "the same schedule from flags"
cmp "$WORK/sched/adapter_model.safetensors" "$WORK/schedflags/adapter_model.safetensors" || fail "scheduler config != flags"
# --eval-every / --save-every below 1: fractions of the run's steps (transformers' eval_steps / save_steps < 1).
"$QL" train --config "$WORK/run.json" --max-steps 8 --eval-every 0.25 --save-every 0.5 --save-total-limit 0 \
  --out "$WORK/frac" > "$WORK/frac.txt" 2>&1 || fail "fractional --eval-every / --save-every"
python3 - "$WORK/frac/metrics.jsonl" <<'PY' || fail "evaluations at the fractions' steps"
import json, sys
steps = [r["step"] for r in map(json.loads, open(sys.argv[1])) if "eval_loss" in r]
assert steps == [0, 2, 4, 6, 8], steps
PY
[ "$(ls -d "$WORK"/frac/checkpoint-* | xargs -n1 basename | tr '\n' ' ')" = "checkpoint-4 checkpoint-8 " ] \
  || fail "checkpoints at the fractions' steps: $(ls "$WORK/frac")"
# --eval-every epoch / --save-every epoch (transformers' eval_strategy / save_strategy "epoch"): an evaluation and a
# checkpoint after each step that ends an epoch (one micro-batch per step here: the last step whose record names the
# epoch), the last at the end of the run; the same with --max-steps cutting the third epoch short; a word other than
# "epoch" refused.
"$QL" train --config "$WORK/run.json" --max-steps 0 --epochs 3 --grad-accum 1 --batch-size 8 --lora-dropout 0 \
  --eval-every epoch --save-every epoch --save-total-limit 0 --out "$WORK/ep" > "$WORK/ep.txt" 2>&1 \
  || fail "--eval-every epoch --save-every epoch"
"$QL" train --config "$WORK/run.json" --max-steps 0 --epochs 3 --grad-accum 1 --batch-size 8 --lora-dropout 0 \
  --eval-every epoch --save-every epoch --save-total-limit 0 --out "$WORK/ep2" > /dev/null 2>&1 \
  || fail "the per-epoch run again"
python3 - "$WORK/ep" <<'PY' || fail "evaluations and checkpoints at the epochs' ends"
import json, os, sys
d = sys.argv[1]
recs = [json.loads(l) for l in open(d + "/metrics.jsonl")]
steps = [r for r in recs if "loss" in r and "step" in r and "epoch" in r]
ends = [s["step"] for s, n in zip(steps, steps[1:]) if n["epoch"] != s["epoch"]] + [steps[-1]["step"]]
assert len(ends) == 3 and len(set(s["epoch"] for s in steps)) == 3, (ends, [(s["step"], s["epoch"]) for s in steps])
evals = [r["step"] for r in recs if "eval_loss" in r]
assert evals == [0] + ends, (evals, ends)
ckpts = sorted(int(n.split("-")[1]) for n in os.listdir(d) if n.startswith("checkpoint-"))
assert ckpts == ends, (ckpts, ends)
PY
cmp "$WORK/ep/adapter_model.safetensors" "$WORK/ep2/adapter_model.safetensors" || fail "the per-epoch run is not reproducible"
# With --max-steps two steps past the first epoch's end: an evaluation there, and at the end.
first_end=$(ls -d "$WORK"/ep/checkpoint-* | sed 's/.*checkpoint-//' | sort -n | head -1)
"$QL" train --config "$WORK/run.json" --max-steps $((first_end + 2)) --grad-accum 1 --batch-size 8 --lora-dropout 0 \
  --eval-every epoch --out "$WORK/epmax" > "$WORK/epmax.txt" 2>&1 || fail "--eval-every epoch with --max-steps"
python3 - "$WORK/epmax/metrics.jsonl" "$first_end" <<'PY' || fail "per-epoch evaluations with --max-steps"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
e = int(sys.argv[2])
assert [r["step"] for r in recs if "eval_loss" in r] == [0, e, e + 2], recs
PY
if "$QL" train --config "$WORK/run.json" --eval-every epochs --out "$WORK/epbad" > "$WORK/epbad.txt" 2>&1; then
  fail "--eval-every epochs accepted"
fi
grep -q "must be a number of steps (>= 0), a fraction of the run's steps, or 'epoch', not 'epochs'" "$WORK/epbad.txt" \
  || fail "the --eval-every refusal"
[ ! -e "$WORK/epbad" ] || fail "a refused run wrote its directory"
echo "qlora resume CLI: OK"
