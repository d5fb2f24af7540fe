#!/usr/bin/env bash
# `qwen-qlora train --objective dpo` through the command line: a DPO run on a tiny random model starts at ln 2 with
# zero rewards, learns the preference (reward accuracy 1 on the held-out pairs), logs TRL's reward metrics and leaves
# a PEFT adapter that `qwen-quant eval --adapter` reads; `data --objective dpo` shows and dumps the pairs; `eval
# --objective dpo` repeats the run's last held-out record; 2 data-parallel ranks train what --grad-accum 2 trains; an
# ORPO run writes no reference sums; the preference flags are refused without --objective dpo (and --simpo-gamma
# without simpo, --rpo-alpha with orpo), --batching with it, SFT records for it and preference records for SFT, each
# with one clear line and nothing written.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null
python3 "$(dirname "$0")/kind_pairs.py" "$WORK/pref.jsonl" 60 5
# `data --objective dpo`: each pair's two examples with their scored spans, and a dump line per pair.
"$QL" data --model "$WORK/tiny" --data "$WORK/pref.jsonl" --objective dpo --show 2 --dump "$WORK/pairs.jsonl" \
  > "$WORK/data.txt" 2>&1 || fail "data --objective dpo" "$WORK/data.txt"
grep -qF "[chosen: " "$WORK/data.txt" && grep -qF "⟦ kind." "$WORK/data.txt" && grep -qF "⟦ mean." "$WORK/data.txt" \
  && grep -q "preference, 60 records" "$WORK/data.txt" || fail "data --objective dpo output" "$WORK/data.txt"
python3 - "$WORK/pairs.jsonl" <<'PY' || fail "data --objective dpo dump" "$WORK/pairs.jsonl"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 60 and all(l["kept"] for l in lines), len(lines)
for l in lines:  # the same prompt, then the completions
    c, r = l["chosen"], l["rejected"]
    k = c["loss_mask"].index(1)
    assert c["ids"][:k] == r["ids"][:k] and r["loss_mask"].index(1) == k, l
PY
run=(train --model "$WORK/tiny" --data "$WORK/pref.jsonl" --objective dpo --dpo-beta 0.5 --max-steps 20 --seq-len 64
     --batch-size 2 --lr 0.01 --lora-r 4 --eval-count 8 --threads 1 --quiet --device cpu)
"$QL" "${run[@]}" --out "$WORK/run" > "$WORK/run.txt" 2>&1 || fail "the dpo run failed" "$WORK/run.txt"
grep -q "eval reward accuracy 0.000 -> 1.000" "$WORK/run.txt" || fail "the held-out pairs were not learned" "$WORK/run.txt"
python3 - "$WORK/run/metrics.jsonl" <<'PY' || fail "metrics" "$WORK/run/metrics.jsonl"
import json, math, sys
steps = [j for j in map(json.loads, open(sys.argv[1])) if "loss" in j]
assert len(steps) == 20, len(steps)
assert abs(steps[0]["loss"] - math.log(2)) < 1e-4 and abs(steps[0]["rewards_margin"]) < 1e-4, steps[0]
for key in ("rewards_chosen", "rewards_rejected", "rewards_accuracy", "logps_chosen", "logps_rejected", "pairs"):
    assert key in steps[0], key
assert steps[-1]["loss"] < 0.2 and steps[-1]["rewards_margin"] > 2, steps[-1]
evals = [j for j in map(json.loads, open(sys.argv[1])) if "eval_loss" in j]
assert evals[0]["eval_pairs"] == 8 and evals[-1]["eval_rewards_accuracy"] == 1.0, evals
PY
[ -f "$WORK/run/dpo_reference.json" ] && [ -f "$WORK/run/adapter_model.safetensors" ] || fail "run directory files"
for i in $(seq 1 40); do echo "Ann is kind. Bob is kind. Cid is kind."; done > "$WORK/text.txt"
"$QQ" eval --model "$WORK/tiny" --adapter "$WORK/run" --data "$WORK/text.txt" --seq-len 32 --max-windows 2 \
  --device cpu > "$WORK/eval.txt" 2>&1 || fail "the adapter does not load" "$WORK/eval.txt"
grep -q "^perplexity [0-9]" "$WORK/eval.txt" || fail "no perplexity with the adapter" "$WORK/eval.txt"
# `qwen-qlora eval --objective dpo` with the run's split and batches gives its final held-out record to the bit; the
# base alone is its own reference (loss ln 2, no reward accuracy), and prefers the chosen completion less often.
"$QL" eval --model "$WORK/tiny" --adapter "$WORK/run" --data "$WORK/pref.jsonl" --objective dpo --dpo-beta 0.5 \
  --eval-count 8 --seq-len 64 --batch-size 2 --threads 1 --device cpu --json > "$WORK/peval.json" 2> "$WORK/peval.txt" \
  || fail "eval --objective dpo" "$WORK/peval.txt"
"$QL" eval --model "$WORK/tiny" --data "$WORK/pref.jsonl" --objective dpo --dpo-beta 0.5 --eval-count 8 --seq-len 64 \
  --batch-size 2 --threads 1 --device cpu --json > "$WORK/pbase.json" 2> "$WORK/pbase.txt" || fail "eval of the base" "$WORK/pbase.txt"
python3 - "$WORK/run/metrics.jsonl" "$WORK/peval.json" "$WORK/pbase.json" <<'PY' || fail "eval --objective dpo numbers" "$WORK/peval.json"
import json, math, sys
last = [j for j in map(json.loads, open(sys.argv[1])) if "eval_loss" in j][-1]
ev, base = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
assert ev["pairs"] == last["eval_pairs"] == 8, (ev, last)
assert ev["loss"] == last["eval_loss"] and ev["rewards_margin"] == last["eval_rewards_margin"], (ev, last)
assert ev["rewards_accuracy"] == last["eval_rewards_accuracy"] == 1.0, (ev, last)
assert abs(base["loss"] - math.log(2)) < 1e-12 and base["rewards_accuracy"] == 0.0, base
assert ev["prefers_chosen_sum"] == 1.0 and base["prefers_chosen_sum"] < 1.0, (ev, base)
PY
# Data parallelism: 2 ranks of one micro-batch against one process with --grad-accum 2 (the reference sums shared
# between the ranks, the step's pair statistics summed): the same reference file, losses, rewards and adapter.
dp=(-m "$WORK/tiny" -d "$WORK/pref.jsonl" --objective dpo --dpo-beta 0.5 --rpo-alpha 0.2 --seq-len 64 --lora-r 4
    --lr 0.01 --lora-dropout 0.1 --threads 1 -q --device cpu --eval-count 8 --batch-size 2 --max-steps 6)
"$QL" train "${dp[@]}" --out "$WORK/dp2" --nproc 2 > "$WORK/dp2.txt" 2>&1 || fail "dpo --nproc 2" "$WORK/dp2.txt"
"$QL" train "${dp[@]}" --out "$WORK/ga2" --grad-accum 2 > "$WORK/ga2.txt" 2>&1 || fail "dpo --grad-accum 2" "$WORK/ga2.txt"
cmp -s "$WORK/dp2/dpo_reference.json" "$WORK/ga2/dpo_reference.json" || fail "the ranks' reference sums differ"
python3 "$(dirname "$0")/compare_runs.py" "$WORK/dp2" "$WORK/ga2" 1e-5 1e-3 > "$WORK/cmpdp.txt" 2>&1 ||
  fail "dpo --nproc 2 differs from --grad-accum 2" "$WORK/cmpdp.txt"
python3 - "$WORK/dp2/metrics.jsonl" "$WORK/ga2/metrics.jsonl" <<'PY' || fail "dpo --nproc 2 rewards"
import json, sys
a, b = ([j for j in map(json.loads, open(p)) if "loss" in j] for p in sys.argv[1:3])
assert len(a) == len(b) == 6
for x, y in zip(a, b):
    assert x["pairs"] == y["pairs"] == 4, (x, y)
    for k in ("rewards_margin", "rewards_accuracy", "logps_chosen"):
        assert abs(x[k] - y[k]) <= 1e-5 * max(1.0, abs(y[k])), (k, x[k], y[k])
PY
# ORPO (reference-free: no reference sums written) through the same flags.
"$QL" "${run[@]}" --dpo-loss orpo --out "$WORK/orpo" > "$WORK/orpo.txt" 2>&1 || fail "the orpo run failed" "$WORK/orpo.txt"
[ ! -e "$WORK/orpo/dpo_reference.json" ] && [ -f "$WORK/orpo/adapter_model.safetensors" ] || fail "orpo run directory"
# Refusals: one line each, nothing written.
expect_error() {  # EXPECTED-SUBSTRING ARGS...
  local want="$1"; shift
  if "$QL" "$@" > "$WORK/err.txt" 2>&1; then fail "accepted: $*" "$WORK/err.txt"; fi
  grep -qF -- "$want" "$WORK/err.txt" || fail "expected \"$want\" for: $*" "$WORK/err.txt"
}
expect_error "--dpo-beta applies to --objective dpo" train --model "$WORK/tiny" --data "$WORK/pref.jsonl" \
  --out "$WORK/x1" --dpo-beta 0.2 --max-steps 1 --device cpu
expect_error "leave --batching out" "${run[@]}" --out "$WORK/x2" --batching padding
expect_error "--dpo-beta must be positive" "${run[@]/0.5/0}" --out "$WORK/x3"
expect_error "train on it with --objective dpo" train --model "$WORK/tiny" --data "$WORK/pref.jsonl" --out "$WORK/x4" \
  --max-steps 1 --device cpu
echo '{"text": "Ann is kind."}' > "$WORK/sft.jsonl"
expect_error 'sft.jsonl:1: expected "chosen" and "rejected" fields' "${run[@]/$WORK\/pref.jsonl/$WORK/sft.jsonl}" \
  --out "$WORK/x5"
expect_error "--simpo-gamma applies to --dpo-loss simpo" "${run[@]}" --out "$WORK/x6" --simpo-gamma 1
expect_error "--rpo-alpha does not apply to --dpo-loss orpo" "${run[@]}" --out "$WORK/x7" --dpo-loss orpo --rpo-alpha 1
if "$QL" eval --model "$WORK/tiny" --data "$WORK/pref.jsonl" --ref-adapter "$WORK/run" > "$WORK/err.txt" 2>&1; then
  fail "--ref-adapter without --objective dpo accepted"; fi
grep -q -- "--ref-adapter applies to --objective dpo" "$WORK/err.txt" || fail "--ref-adapter refusal" "$WORK/err.txt"
for d in x1 x2 x3 x4 x5 x6 x7; do [ ! -e "$WORK/$d" ] || fail "a refused run left $WORK/$d"; done
echo "PASS"
