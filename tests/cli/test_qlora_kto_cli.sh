#!/usr/bin/env bash
# `qwen-qlora train --objective kto` through the command line: a KTO run on a tiny random model starts at 1/2 with zero
# rewards and KL, learns the labels (the held-out rewards' margin grows), logs TRL's KTO metrics and leaves a PEFT
# adapter that `qwen-quant eval --adapter` reads, `eval --objective kto` repeats its last held-out record; `data
# --objective kto` shows and dumps the labelled examples (a preference pair as its two); 2 data-parallel ranks train
# what --grad-accum 2 trains; the unpaired APO-zero loss runs
# with one example a batch; the KTO flags are refused without --objective kto (and the DPO ones with it), --batching
# with it, --batch-size 1 for its KL estimate, labelled records for SFT and DPO, each with one clear line and nothing
# written; --max-prompt-len cuts the prompts (and is refused for SFT).
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null
python3 - "$WORK/kto.jsonl" <<'PY'
import json, random, sys
random.seed(7)
names = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
with open(sys.argv[1], "w") as f:
    for i in range(80):
        n, good = random.choice(names), i % 2 == 0
        if i % 5 == 4:  # a preference pair: two examples
            f.write(json.dumps({"prompt": f"{n} is", "chosen": " kind.", "rejected": " mean."}) + "\n")
        else:
            f.write(json.dumps({"prompt": f"{n} is", "completion": " kind." if good else " mean.", "label": good}) + "\n")
PY
# `data --objective kto`: the labelled examples with their scored spans, a dump line per example.
"$QL" data --model "$WORK/tiny" --data "$WORK/kto.jsonl" --objective kto --show 2 --dump "$WORK/ex.jsonl" \
  > "$WORK/data.txt" 2>&1 || fail "data --objective kto" "$WORK/data.txt"
grep -qF "[desirable: " "$WORK/data.txt" && grep -qF "⟦ kind." "$WORK/data.txt" && grep -qF "[undesirable: " "$WORK/data.txt" \
  && grep -q "preference, 96 records" "$WORK/data.txt" && grep -q "^48 desirable, 48 undesirable" "$WORK/data.txt" \
  || fail "data --objective kto output" "$WORK/data.txt"
python3 - "$WORK/ex.jsonl" <<'PY' || fail "data --objective kto dump" "$WORK/ex.jsonl"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 96 and all(l["kept"] for l in lines), len(lines)
for l in lines:
    assert (" kind." in l["text"]) == l["label"], l
PY
# --max-prompt-len: every prompt here is longer than 3 tokens, so each keeps its last 3.
"$QL" data --model "$WORK/tiny" --data "$WORK/kto.jsonl" --objective kto --max-prompt-len 3 --show 1 \
  > "$WORK/datap.txt" 2>&1 || fail "data --max-prompt-len" "$WORK/datap.txt"
grep -q "96 prompts cut to their end by" "$WORK/datap.txt" || fail "data --max-prompt-len output" "$WORK/datap.txt"
run=(train --model "$WORK/tiny" --data "$WORK/kto.jsonl" --objective kto --pref-beta 0.5 --max-steps 24 --seq-len 64
     --batch-size 4 --lr 0.01 --lora-r 4 --eval-count 16 --threads 1 --quiet --device cpu)
"$QL" "${run[@]}" --kto-undesirable-weight 1.33 --out "$WORK/run" > "$WORK/run.txt" 2>&1 \
  || fail "the kto run failed" "$WORK/run.txt"
grep -qE "eval loss 0\.5[0-9]+ -> 0\.[01]" "$WORK/run.txt" || fail "the held-out labels were not learned" "$WORK/run.txt"
python3 - "$WORK/run/metrics.jsonl" <<'PY' || fail "metrics" "$WORK/run/metrics.jsonl"
import json, sys
recs = list(map(json.loads, open(sys.argv[1])))
steps = [j for j in recs if "loss" in j]
assert len(steps) == 24, len(steps)
s0 = steps[0]
want = 0.5 * (s0["desirable"] * 1.0 + s0["undesirable"] * 1.33) / 4
assert abs(s0["loss"] - want) < 1e-5 and abs(s0["rewards_margin"]) < 1e-5 and s0["kl"] < 1e-5, s0
for key in ("kl", "rewards_margin", "desirable", "undesirable"):
    assert all(key in s for s in steps), key
assert steps[-1]["rewards_margin"] > 2, steps[-1]
evals = [j for j in recs if "eval_loss" in j]
e0 = evals[0]  # the weighted mean of 1/2 at the reference
assert abs(e0["eval_loss"] - 0.5 * (e0["eval_desirable"] + 1.33 * e0["eval_undesirable"]) / 16) < 1e-5, e0
assert e0["eval_examples"] == 16 and evals[-1]["eval_rewards_margin"] > 2, evals
assert evals[-1]["eval_rewards_chosen"] > 0 > evals[-1]["eval_rewards_rejected"], evals[-1]
PY
[ -f "$WORK/run/dpo_reference.json" ] && [ -f "$WORK/run/adapter_model.safetensors" ] || fail "run directory files"
for i in $(seq 1 40); do echo "Ann is kind. Bob is kind. Cid is kind."; done > "$WORK/text.txt"
"$QQ" eval --model "$WORK/tiny" --adapter "$WORK/run" --data "$WORK/text.txt" --seq-len 32 --max-windows 2 \
  --device cpu > "$WORK/eval.txt" 2>&1 || fail "the adapter does not load" "$WORK/eval.txt"
grep -q "^perplexity [0-9]" "$WORK/eval.txt" || fail "no perplexity with the adapter" "$WORK/eval.txt"
# `qwen-qlora eval --objective kto` with the run's split and batches gives its final held-out record to the bit; the
# base alone is its own reference (the weighted mean of 1/2, no margin).
ev=(eval --model "$WORK/tiny" --data "$WORK/kto.jsonl" --objective kto --pref-beta 0.5 --kto-undesirable-weight 1.33
    --eval-count 16 --seq-len 64 --batch-size 4 --threads 1 --device cpu --json)
"$QL" "${ev[@]}" --adapter "$WORK/run" > "$WORK/keval.json" 2> "$WORK/keval.txt" || fail "eval --objective kto" "$WORK/keval.txt"
"$QL" "${ev[@]}" > "$WORK/kbase.json" 2> "$WORK/kbase.txt" || fail "eval --objective kto of the base" "$WORK/kbase.txt"
python3 - "$WORK/run/metrics.jsonl" "$WORK/keval.json" "$WORK/kbase.json" <<'PY' || fail "eval --objective kto numbers" "$WORK/keval.json"
import json, sys
last = [j for j in map(json.loads, open(sys.argv[1])) if "eval_loss" in j][-1]
ev, base = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
assert ev["examples"] == last["eval_examples"] == 16, (ev, last)
for k in ("loss", "kl", "rewards_margin", "rewards_chosen", "logps_rejected", "desirable"):
    assert ev[k] == last["eval_" + k], (k, ev, last)
assert abs(base["loss"] - 0.5 * (base["desirable"] + 1.33 * base["undesirable"]) / 16) < 1e-12, base
assert base["rewards_margin"] == 0 and base["kl"] == 0, base
PY
# Data parallelism: 2 ranks of one micro-batch against one process with --grad-accum 2 (each micro-batch its own KL
# point, the step's statistics summed): the same reference file, losses, rewards and adapter.
dp=(-m "$WORK/tiny" -d "$WORK/kto.jsonl" --objective kto --dpo-beta 0.5 --seq-len 64 --lora-r 4 --lr 0.01
    --lora-dropout 0.1 --threads 1 -q --device cpu --eval-count 8 --batch-size 4 --max-steps 6)
"$QL" train "${dp[@]}" --out "$WORK/dp2" --nproc 2 > "$WORK/dp2.txt" 2>&1 || fail "kto --nproc 2" "$WORK/dp2.txt"
"$QL" train "${dp[@]}" --out "$WORK/ga2" --grad-accum 2 > "$WORK/ga2.txt" 2>&1 || fail "kto --grad-accum 2" "$WORK/ga2.txt"
cmp -s "$WORK/dp2/dpo_reference.json" "$WORK/ga2/dpo_reference.json" || fail "the ranks' reference sums differ"
python3 "$(dirname "$0")/compare_runs.py" "$WORK/dp2" "$WORK/ga2" 1e-5 1e-3 > "$WORK/cmpdp.txt" 2>&1 ||
  fail "kto --nproc 2 differs from --grad-accum 2" "$WORK/cmpdp.txt"
python3 - "$WORK/dp2/metrics.jsonl" "$WORK/ga2/metrics.jsonl" <<'PY' || fail "kto --nproc 2 statistics"
import json, sys
a, b = ([j for j in map(json.loads, open(p)) if "loss" in j] for p in sys.argv[1:3])
assert len(a) == len(b) == 6
for x, y in zip(a, b):
    assert x["desirable"] + x["undesirable"] == 8 and x["desirable"] == y["desirable"], (x, y)
    for k in ("kl", "rewards_margin"):
        assert abs(x[k] - y[k]) <= 1e-5 * max(1.0, abs(y[k])), (k, x[k], y[k])
PY
# APO-zero (no KL reference point): one example a batch is allowed.
"$QL" train --model "$WORK/tiny" --data "$WORK/kto.jsonl" --objective kto --kto-loss apo_zero_unpaired --max-steps 4 \
  --seq-len 64 --batch-size 1 --lora-r 4 --eval-count 4 --threads 1 --quiet --device cpu --out "$WORK/apo" \
  > "$WORK/apo.txt" 2>&1 || fail "the apo_zero_unpaired run failed" "$WORK/apo.txt"
[ -f "$WORK/apo/adapter_model.safetensors" ] || fail "apo run directory"
# Refusals: one line each, nothing written.
expect_error() {  # EXPECTED-SUBSTRING ARGS...
  local want="$1"; shift
  if "$QL" "$@" > "$WORK/err.txt" 2>&1; then fail "accepted: $*" "$WORK/err.txt"; fi
  grep -qF -- "$want" "$WORK/err.txt" || fail "expected \"$want\" for: $*" "$WORK/err.txt"
}
expect_error "--kto-undesirable-weight applies to --objective kto" train --model "$WORK/tiny" --data "$WORK/kto.jsonl" \
  --out "$WORK/x1" --kto-undesirable-weight 2 --max-steps 1 --device cpu
expect_error "leave --batching out" "${run[@]}" --out "$WORK/x2" --batching padding
expect_error "give --batch-size >= 2" train --model "$WORK/tiny" --data "$WORK/kto.jsonl" --objective kto \
  --batch-size 1 --max-steps 1 --device cpu --out "$WORK/x3"
expect_error "train on it with --objective kto" train --model "$WORK/tiny" --data "$WORK/kto.jsonl" --out "$WORK/x4" \
  --max-steps 1 --device cpu
expect_error "train on it with --objective kto" train --model "$WORK/tiny" --data "$WORK/kto.jsonl" --out "$WORK/x5" \
  --objective dpo --max-steps 1 --device cpu
expect_error "--dpo-loss applies to --objective dpo" "${run[@]}" --out "$WORK/x6" --dpo-loss ipo
expect_error "--kto-desirable-weight must be positive" "${run[@]}" --out "$WORK/x7" --kto-desirable-weight 0
echo '{"prompt": "a", "completion": " b", "label": 1}' > "$WORK/bad.jsonl"
expect_error 'bad.jsonl:1: "label" must be true or false' train --model "$WORK/tiny" --out "$WORK/x8" --objective kto \
  --batch-size 2 --max-steps 1 --device cpu --data "$WORK/bad.jsonl"
expect_error "--max-prompt-len applies to --objective dpo, kto, grpo and reward" train --model "$WORK/tiny" --data "$WORK/text.txt" \
  --out "$WORK/x9" --max-prompt-len 8 --max-steps 1 --device cpu
for d in x1 x2 x3 x4 x5 x6 x7 x8 x9; do [ ! -e "$WORK/$d" ] || fail "a refused run left $WORK/$d"; done
echo "PASS"
