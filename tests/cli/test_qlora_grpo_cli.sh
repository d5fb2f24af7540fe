#!/usr/bin/env bash
# `qwen-qlora train --objective grpo` through the command line: a run on a tiny random model with two reward functions
# (a built-in one and an external scorer in Python, weighted) logs TRL's GRPO statistics and the KL to the base, leaves
# a PEFT adapter and a reward curve; `eval --objective grpo` repeats its last held-out record to the bit; 2
# data-parallel ranks sample and score what --grad-accum 2 does (the first step's rewards equal, the losses within
# fp32 sums); the GRPO flags are refused without --objective grpo, --device cuda, --batching, a reward the records
# cannot feed, each with one clear line and nothing written; a --config file's list of rewards; DoRA, and a mixture of
# experts' experts, as the adapter the rollouts sample with; --num-iterations 2 with GSPO's sequence-level ratio.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null
python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
names = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal"]
with open(f"{w}/p.jsonl", "w") as f:
    for i in range(24):
        f.write(json.dumps({"prompt": f"{names[i % 8]} has {i} apples and", "answer": str(i)}) + "\n")
with open(f"{w}/score.py", "w") as f:  # the share of vowels in the completion, null without letters
    f.write("import json, sys\n"
            "for line in sys.stdin:\n"
            "    c = json.loads(line)['completion']\n"
            "    letters = [ch for ch in c.lower() if ch.isalpha()]\n"
            "    print(sum(ch in 'aeiou' for ch in letters) / len(letters) if letters else 'null', flush=True)\n")
PY
run=(-m "$WORK/tiny" -d "$WORK/p.jsonl" --objective grpo --reward contains=a --reward "cmd=python3 $WORK/score.py"
     --reward-weights 1,2 --num-generations 4 --max-completion-len 12 --seq-len 48 --batch-size 2 --lora-r 4
     --lr 0.01 --threads 1 -q --device cpu --eval-count 4 --grpo-beta 0.05 --temperature 0.9)
"$QL" train "${run[@]}" --max-steps 5 --out "$WORK/run" > "$WORK/run.txt" 2>&1 || fail "the grpo run failed" "$WORK/run.txt"
grep -qE "eval reward [0-9.]+ -> [0-9.]+" "$WORK/run.txt" || fail "no eval reward line" "$WORK/run.txt"
python3 - "$WORK/run/metrics.jsonl" <<'PY' || fail "metrics" "$WORK/run/metrics.jsonl"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in recs if "loss" in r]
assert len(steps) == 5, len(steps)
for k in ("reward", "reward_std", "rewards_contains_mean", "rewards_cmd_mean", "rewards_cmd_std", "frac_reward_zero_std",
          "completions_mean_length", "completions_clipped_ratio", "kl", "grad_norm"):
    assert k in steps[0], k
assert steps[0]["kl"] == 0.0, steps[0]  # the policy starts as the base, through the same forward
s = steps[0]
assert 0 <= s["rewards_contains_mean"] <= 1 and 0 <= s["reward"] <= 3, s  # contains: 0/1, weight 1; vowels: 0..1, weight 2
assert s["tokens"] > s["targets"] > 0 and s["completions_max_length"] <= 12
evals = [r for r in recs if "eval_reward" in r]
assert [r["step"] for r in evals] == [0, 5] and evals[0]["eval_prompts"] == 4, evals
PY
[ -f "$WORK/run/adapter_model.safetensors" ] && grep -q "reward: train" "$WORK/run/loss_curve.svg" || fail "run directory files"
# eval --objective grpo: the run's held-out prompts (--eval-count 4, train's --seed) and its adapter: the last record.
"$QL" eval -m "$WORK/tiny" -d "$WORK/p.jsonl" --objective grpo --reward contains=a --reward "cmd=python3 $WORK/score.py" \
  --reward-weights 1,2 --num-generations 4 --max-completion-len 12 --seq-len 48 --batch-size 2 --threads 1 \
  --device cpu --eval-count 4 --temperature 0.9 --adapter "$WORK/run" --json > "$WORK/eval.json" 2> "$WORK/eval.txt" ||
  fail "eval --objective grpo" "$WORK/eval.txt"
python3 - "$WORK/run/metrics.jsonl" "$WORK/eval.json" <<'PY' || fail "eval --objective grpo numbers" "$WORK/eval.json"
import json, sys
last = [json.loads(l) for l in open(sys.argv[1]) if "eval_reward" in l][-1]
ev = json.loads(open(sys.argv[2]).read())
assert ev["prompts"] == 4 and ev["split"] == "eval", ev
for k in ("reward", "reward_std", "rewards_cmd_mean", "completions_mean_length"):
    assert ev[k] == last["eval_" + k], (k, ev[k], last["eval_" + k])
PY
# --nproc 2 against --grad-accum 2: the same prompts sampled with the same seeds and scored the same (step 1 exactly:
# both start from the same adapter), the losses and gradient norms within fp32 summation orders.
"$QL" train "${run[@]}" --max-steps 3 --out "$WORK/dp2" --nproc 2 > "$WORK/dp2.txt" 2>&1 || fail "grpo --nproc 2" "$WORK/dp2.txt"
"$QL" train "${run[@]}" --max-steps 3 --out "$WORK/ga2" --grad-accum 2 > "$WORK/ga2.txt" 2>&1 || fail "grpo --grad-accum 2" "$WORK/ga2.txt"
python3 - "$WORK/dp2/metrics.jsonl" "$WORK/ga2/metrics.jsonl" <<'PY' || fail "grpo --nproc 2 differs from --grad-accum 2"
import json, sys
a, b = ([j for j in map(json.loads, open(p)) if "loss" in j] for p in sys.argv[1:3])
assert len(a) == len(b) == 3
for k in ("reward", "rewards_cmd_mean", "completions_mean_length", "tokens", "targets"):
    assert a[0][k] == b[0][k], (k, a[0][k], b[0][k])
for k in ("loss", "grad_norm", "kl"):
    assert abs(a[0][k] - b[0][k]) <= 1e-5 * max(1.0, abs(b[0][k])), (k, a[0][k], b[0][k])
PY
# DoRA, and LoRA on a mixture of experts' experts: the rollouts sample with them attached unmerged as well, and the
# first step's policy is still the base (DoRA's gains are exactly 1 while B is zero): kl 0.
"$QQ" init-random --preset tiny-moe --out "$WORK/moe" --dtype fp32 >/dev/null
"$QL" train "${run[@]}" --max-steps 2 --use-dora --out "$WORK/dora" > "$WORK/dora.txt" 2>&1 \
  || fail "a grpo run with --use-dora" "$WORK/dora.txt"
"$QL" train "${run[@]/$WORK\/tiny/$WORK/moe}" --max-steps 2 --target all-linear --out "$WORK/moe_run" \
  > "$WORK/moe_run.txt" 2>&1 || fail "a grpo run on a MoE's experts" "$WORK/moe_run.txt"
python3 - "$WORK/dora/metrics.jsonl" "$WORK/moe_run/metrics.jsonl" <<'PY' || fail "grpo with DoRA / on experts"
import json, sys
for path in sys.argv[1:]:
    steps = [j for j in map(json.loads, open(path)) if "loss" in j]
    assert len(steps) == 2 and steps[0]["kl"] == 0.0 and max(s["grad_norm"] for s in steps) > 0, (path, steps)
PY
# --num-iterations 2 with GSPO's sequence-level ratio: steps 1 and 2 train on one generation (the same rewards, step 2
# samples nothing), the clip ratios logged.
"$QL" train "${run[@]}" --max-steps 2 --num-iterations 2 --importance-sampling-level sequence --epsilon 3e-4 \
  --epsilon-high 4e-4 --out "$WORK/gspo" > "$WORK/gspo.txt" 2>&1 || fail "a grpo run with --num-iterations 2" "$WORK/gspo.txt"
python3 - "$WORK/gspo/metrics.jsonl" <<'PY' || fail "grpo --num-iterations 2 metrics" "$WORK/gspo/metrics.jsonl"
import json, sys
a, b = [j for j in map(json.loads, open(sys.argv[1])) if "loss" in j]
assert a["reward"] == b["reward"] and a["tokens"] == b["tokens"] and a["rollout_s"] > 0 and b["rollout_s"] == 0, (a, b)
assert a["clip_ratio_region_mean"] == 0 and 0 <= b["clip_ratio_region_mean"] <= 1, (a, b)
PY
# --log-completions 3: each generation's first three completions in completions.jsonl, with the rewards the metrics
# averaged (contains=a: 1 exactly when the text has an "a"; weighted sum; advantages of a group sum to 0). With
# --num-iterations 2 only the sampling steps (1 and 3) log; a resumed run keeps the lines up to its checkpoint.
"$QL" train "${run[@]}" --max-steps 4 --num-iterations 2 --log-completions 3 --save-every 2 --out "$WORK/logc" \
  > "$WORK/logc.txt" 2>&1 || fail "grpo --log-completions" "$WORK/logc.txt"
python3 - "$WORK/logc" <<'PY' || fail "completions.jsonl" "$WORK/logc/completions.jsonl"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1] + "/completions.jsonl")]
assert [r["step"] for r in recs] == [1, 1, 1, 3, 3, 3], [r["step"] for r in recs]
for r in recs:
    assert list(r) == ["step", "prompt", "completion", "rewards", "reward", "advantage", "length", "truncated"], list(r)
    assert r["rewards"]["contains"] == (1.0 if "a" in r["completion"] else 0.0), r
    cmd = r["rewards"]["cmd"]
    assert abs(r["reward"] - (r["rewards"]["contains"] + 2 * (cmd or 0.0))) < 1e-12, r
    assert r["prompt"].endswith("apples and") and 1 <= r["length"] <= 12, r
PY
"$QL" train "${run[@]}" --max-steps 4 --num-iterations 2 --log-completions 3 --save-every 2 --out "$WORK/logr" \
  --stop-after 3 > "$WORK/logr.txt" 2>&1 || fail "grpo --log-completions --stop-after 3" "$WORK/logr.txt"
"$QL" train "${run[@]}" --max-steps 4 --num-iterations 2 --log-completions 3 --save-every 2 --out "$WORK/logr" \
  --resume > "$WORK/logr2.txt" 2>&1 || fail "grpo --log-completions --resume" "$WORK/logr2.txt"
cmp -s "$WORK/logc/completions.jsonl" "$WORK/logr/completions.jsonl" \
  || fail "a resumed run's completions.jsonl differs" "$WORK/logr/completions.jsonl"
# A --config file's "reward" list: one --reward per item, commas inside an item kept (a regex's {1,3}).
printf '%s\n' '{"objective": "grpo", "reward": ["contains=a", "regex=[a-z]{1,3}"], "reward-weights": [1, 0.5],' \
  '"num-generations": 2, "max-completion-len": 8, "seq-len": 48, "max-steps": 1, "threads": 1, "quiet": true}' \
  > "$WORK/cfg.json"
"$QL" train -m "$WORK/tiny" -d "$WORK/p.jsonl" --config "$WORK/cfg.json" --device cpu --out "$WORK/cfg" \
  > "$WORK/cfg.txt" 2>&1 || fail "a grpo --config run" "$WORK/cfg.txt"
grep -q '"rewards_regex_mean"' "$WORK/cfg/metrics.jsonl" || fail "the config's regex reward did not run" "$WORK/cfg/metrics.jsonl"
# Refusals: one line each, nothing written.
expect_error() {  # EXPECTED-SUBSTRING ARGS...
  local want="$1"; shift
  if "$QL" "$@" > "$WORK/err.txt" 2>&1; then fail "accepted: $*" "$WORK/err.txt"; fi
  grep -qF -- "$want" "$WORK/err.txt" || fail "expected \"$want\" for: $*" "$WORK/err.txt"
}
expect_error "--reward applies to --objective grpo" train -m "$WORK/tiny" -d "$WORK/p.jsonl" --out "$WORK/x1" \
  --reward contains=a --max-steps 1 --device cpu
expect_error "trains on the CPU for now" train -m "$WORK/tiny" -d "$WORK/p.jsonl" --objective grpo --reward contains=a \
  --max-steps 1 --out "$WORK/x2" --device cuda
expect_error "leave --batching out" train "${run[@]}" --max-steps 1 --out "$WORK/x3" --batching padding
expect_error "--dpo-beta applies to --objective dpo" train "${run[@]}" --max-steps 1 --out "$WORK/x4" --dpo-beta 0.2
echo '{"prompt": "no answer here"}' > "$WORK/noans.jsonl"
expect_error "the accuracy reward needs a reference answer" train -m "$WORK/tiny" -d "$WORK/noans.jsonl" --out "$WORK/x5" \
  --objective grpo --reward accuracy --max-steps 1 --device cpu --seq-len 300
expect_error "unknown reward" train -m "$WORK/tiny" -d "$WORK/p.jsonl" --objective grpo --reward bleu --max-steps 1 \
  --device cpu --out "$WORK/x6"
expect_error "--reward-weights gives 2 weights for 3 rewards" train "${run[@]}" --max-steps 1 --out "$WORK/x7" \
  --reward regex=x
expect_error "--reward model=$WORK/tiny: $WORK/tiny: has no score.weight, so it is a causal language model" train \
  -m "$WORK/tiny" -d "$WORK/p.jsonl" --objective grpo --reward "model=$WORK/tiny" --max-steps 1 --device cpu \
  --out "$WORK/x8"
expect_error "--num-iterations applies to --objective grpo" train -m "$WORK/tiny" -d "$WORK/p.jsonl" --out "$WORK/x9" \
  --num-iterations 2 --max-steps 1 --device cpu
expect_error "--importance-sampling-level: 'tokens' is not a level" train "${run[@]}" --max-steps 1 --out "$WORK/x10" \
  --importance-sampling-level tokens
expect_error "--delta must be > 1" train "${run[@]}" --max-steps 1 --out "$WORK/x11" --num-iterations 2 --delta 0.9
for d in x1 x2 x3 x4 x5 x6 x7 x8 x9 x10 x11; do [ ! -e "$WORK/$d" ] || fail "a refused run left $d behind"; done
echo "grpo cli: OK"
