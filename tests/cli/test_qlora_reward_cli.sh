#!/usr/bin/env bash
# `qwen-qlora train --objective reward` through the command line: a reward model trained on preference pairs of a tiny
# random model learns them (held-out reward accuracy 1), logs the reward metrics and leaves a SEQ_CLS PEFT adapter
# (task_type SEQ_CLS, the score head as base_model.model.score.weight); `eval --objective reward` repeats the run's last
# held-out record to the bit; `merge` makes a reward model directory (Qwen2ForSequenceClassification, score.weight, no
# lm_head, the pad id) that `eval --objective reward` scores alone as the adapter does and that GRPO takes as
# `--reward model=DIR`; a stopped and resumed run ends with the same adapter bits; 2 data-parallel ranks train what
# --grad-accum 2 trains; a DoRA reward model learns the pairs and merges; refusals (the GPU, the reward flags without it, the adapter where a language model's is
# wanted and the reverse) each with one clear line and nothing written.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null
python3 "$(dirname "$0")/kind_pairs.py" "$WORK/pref.jsonl" 60 7
for n in Ann Bob Cid Dee Eve Fay; do echo "{\"prompt\": \"$n is\"}"; done > "$WORK/p.jsonl"
run=(train --model "$WORK/tiny" --data "$WORK/pref.jsonl" --objective reward --max-steps 20 --seq-len 64
     --batch-size 2 --lr 0.01 --lora-r 4 --eval-count 8 --threads 1 --quiet --device cpu)
"$QL" "${run[@]}" --out "$WORK/run" > "$WORK/run.txt" 2>&1 || fail "the reward run failed" "$WORK/run.txt"
grep -q "eval reward accuracy [0-9.]* -> 1.000" "$WORK/run.txt" || fail "the held-out pairs were not learned" "$WORK/run.txt"
python3 - "$WORK/run" <<'PY' || fail "metrics and adapter files" "$WORK/run/metrics.jsonl"
import json, math, struct, sys
d = sys.argv[1]
steps = [j for j in map(json.loads, open(d + "/metrics.jsonl")) if "loss" in j]
assert len(steps) == 20, len(steps)
# The head starts as transformers starts one (std 0.02): scores near 0, the loss near ln 2.
assert abs(steps[0]["loss"] - math.log(2)) < 0.05, steps[0]
for key in ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy", "pairs"):
    assert key in steps[0], key
assert steps[0]["pairs"] == 2 and steps[-1]["loss"] < 0.1 and steps[-1]["rewards_margin"] > 2, steps[-1]
evals = [j for j in map(json.loads, open(d + "/metrics.jsonl")) if "eval_loss" in j]
assert evals[0]["eval_pairs"] == 8 and evals[-1]["eval_rewards_accuracy"] == 1.0, evals
cfg = json.load(open(d + "/adapter_config.json"))
assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["classifier", "score"], cfg
raw = open(d + "/adapter_model.safetensors", "rb").read()
header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
hidden = json.load(open(d + "/../tiny/config.json"))["hidden_size"]
assert header["base_model.model.score.weight"]["shape"] == [1, hidden], header["base_model.model.score.weight"]
PY
# `data --objective reward` shows the pairs as train reads them.
"$QL" data --model "$WORK/tiny" --data "$WORK/pref.jsonl" --objective reward --show 1 > "$WORK/data.txt" 2>&1 \
  || fail "data --objective reward" "$WORK/data.txt"
grep -qF "[chosen: " "$WORK/data.txt" || fail "data --objective reward output" "$WORK/data.txt"
# `eval --objective reward` with the run's split and batches: its final held-out record to the bit.
ev=(eval --model "$WORK/tiny" --data "$WORK/pref.jsonl" --objective reward --eval-count 8 --seq-len 64 --batch-size 2
    --threads 1 --device cpu --json)
"$QL" "${ev[@]}" --adapter "$WORK/run" > "$WORK/reval.json" 2> "$WORK/reval.txt" || fail "eval --objective reward" "$WORK/reval.txt"
# merge: a reward model directory (fp32, so its scores are the adapter's up to summation order), scored alone.
"$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/rm" --dtype fp32 > "$WORK/merge.txt" 2>&1 \
  || fail "merge of a reward adapter" "$WORK/merge.txt"
ev_rm=("${ev[@]/$WORK\/tiny/$WORK/rm}")
"$QL" "${ev_rm[@]}" > "$WORK/rmeval.json" 2> "$WORK/rmeval.txt" || fail "eval of the merged reward model" "$WORK/rmeval.txt"
python3 - "$WORK/run/metrics.jsonl" "$WORK/reval.json" "$WORK/rmeval.json" "$WORK/rm" <<'PY' || fail "eval --objective reward numbers" "$WORK/reval.json"
import json, os, sys
last = [j for j in map(json.loads, open(sys.argv[1])) if "eval_loss" in j][-1]
ev, rm, d = json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), sys.argv[4]
assert ev["pairs"] == last["eval_pairs"] == 8, (ev, last)
assert ev["loss"] == last["eval_loss"] and ev["rewards_margin"] == last["eval_rewards_margin"], (ev, last)
assert ev["rewards_accuracy"] == last["eval_rewards_accuracy"] == 1.0, (ev, last)
for k in ("rewards_chosen", "rewards_rejected", "rewards_margin"):
    assert abs(rm[k] - ev[k]) <= 1e-4 * max(1.0, abs(ev[k])), (k, rm[k], ev[k])
assert rm["rewards_accuracy"] == 1.0, rm
cfg = json.load(open(d + "/config.json"))
assert cfg["architectures"] == ["Qwen2ForSequenceClassification"] and cfg["id2label"] == {"0": "LABEL_0"}, cfg
assert isinstance(cfg.get("pad_token_id"), int), cfg
idx = d + "/model.safetensors"
import struct
raw = open(idx, "rb").read(8)
header = json.loads(open(idx, "rb").read(8 + struct.unpack("<Q", raw)[0])[8:])
assert "score.weight" in header and "lm_head.weight" not in header, sorted(header)[:5]
PY
# A reward model directory trained further: its own head and decoder at step 0 (the run's first held-out record is
# `eval` of the directory alone, to the bit), then merged again (one score.weight: the adapter's).
"$QL" train --model "$WORK/rm" --data "$WORK/pref.jsonl" --objective reward --max-steps 2 --seq-len 64 --batch-size 2 \
  --lr 0.01 --lora-r 4 --eval-count 8 --threads 1 --quiet --device cpu --out "$WORK/more" > "$WORK/more.txt" 2>&1 \
  || fail "training a reward model directory further" "$WORK/more.txt"
python3 - "$WORK/more/metrics.jsonl" "$WORK/rmeval.json" <<'PY' || fail "the continued run does not start at the reward model" "$WORK/more/metrics.jsonl"
import json, sys
first = [j for j in map(json.loads, open(sys.argv[1])) if "eval_loss" in j][0]
rm = json.load(open(sys.argv[2]))
assert first["step"] == 0 and first["eval_loss"] == rm["loss"] and first["eval_rewards_margin"] == rm["rewards_margin"], (first, rm)
PY
"$QL" merge --model "$WORK/rm" --adapter "$WORK/more" --out "$WORK/rm2" --dtype fp32 > "$WORK/merge2.txt" 2>&1 \
  || fail "merge onto a reward model directory" "$WORK/merge2.txt"
"$QL" "${ev[@]/$WORK\/tiny/$WORK/rm2}" > /dev/null 2> "$WORK/rm2.txt" || fail "eval of the twice-merged reward model" "$WORK/rm2.txt"
# TRL's "margin" column: −log σ(r_c − r_r − μ), so a positive margin on every pair raises the loss of the same scores.
python3 - "$WORK/pref.jsonl" "$WORK/margin.jsonl" "$WORK/badmargin.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2], "w") as f:
    for r in recs:
        f.write(json.dumps(dict(r, margin=1.0)) + "\n")
with open(sys.argv[3], "w") as f:
    for i, r in enumerate(recs):
        f.write(json.dumps(dict(r, margin="big") if i == 3 else r) + "\n")
PY
"$QL" "${ev[@]/$WORK\/pref.jsonl/$WORK/margin.jsonl}" --adapter "$WORK/run" > "$WORK/meval.json" 2> "$WORK/meval.txt" \
  || fail "eval with margins" "$WORK/meval.txt"
python3 - "$WORK/reval.json" "$WORK/meval.json" <<'PY' || fail "the margins did not reach the loss" "$WORK/meval.json"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert a["rewards_margin"] == b["rewards_margin"] and b["loss"] > a["loss"], (a, b)
PY
"$QL" "${run[@]/$WORK\/pref.jsonl/$WORK/margin.jsonl}" --out "$WORK/mrun" > "$WORK/mrun.txt" 2>&1 \
  || fail "training with margins" "$WORK/mrun.txt"
python3 - "$WORK/run/metrics.jsonl" "$WORK/mrun/metrics.jsonl" <<'PY' || fail "the margins did not reach training" "$WORK/mrun/metrics.jsonl"
import json, math, sys
a, b = ([j for j in map(json.loads, open(p)) if "loss" in j][0] for p in sys.argv[1:3])
# step 1 scores the same pairs with the same weights: only the margin of 1 differs
assert a["rewards_margin"] == b["rewards_margin"], (a, b)
want = a["loss"] + (math.log1p(math.exp(1 - a["rewards_margin"])) - math.log1p(math.exp(-a["rewards_margin"])))
assert b["loss"] > a["loss"] and abs(b["loss"] - want) < 0.05, (a["loss"], b["loss"], want)
PY
# The merged reward model rewards GRPO's completions.
"$QL" train -m "$WORK/tiny" -d "$WORK/p.jsonl" --objective grpo --reward "model=$WORK/rm" --num-generations 2 \
  --max-completion-len 4 --batch-size 2 --max-steps 1 --lora-r 4 --threads 1 --quiet --device cpu --out "$WORK/grpo" \
  > "$WORK/grpo.txt" 2>&1 || fail "GRPO with the merged reward model" "$WORK/grpo.txt"
grep -q '"rewards_model_mean":' "$WORK/grpo/metrics.jsonl" || fail "GRPO metrics" "$WORK/grpo/metrics.jsonl"
# ... and so does the run directory itself (the SEQ_CLS adapter on the base its adapter_config.json names, unmerged):
# the same completions (same seed and policy), rewards equal up to the merge's fp32 rounding.
"$QL" train -m "$WORK/tiny" -d "$WORK/p.jsonl" --objective grpo --reward "model=$WORK/run" --num-generations 2 \
  --max-completion-len 4 --batch-size 2 --max-steps 1 --lora-r 4 --threads 1 --quiet --device cpu --out "$WORK/grpo_ad" \
  > "$WORK/grpo_ad.txt" 2>&1 || fail "GRPO with the reward adapter directory" "$WORK/grpo_ad.txt"
python3 - "$WORK/grpo/metrics.jsonl" "$WORK/grpo_ad/metrics.jsonl" <<'PY' || fail "the adapter directory rewards otherwise"
import json, sys
a, b = ([j for j in map(json.loads, open(p)) if "rewards_model_mean" in j][0] for p in sys.argv[1:3])
x, y = a["rewards_model_mean"], b["rewards_model_mean"]
assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (x, y)
PY
# A run stopped at step 10 and resumed ends with the adapter of the run that never stopped (score head included).
"$QL" "${run[@]}" --out "$WORK/stop" --save-every 10 --stop-after 10 > "$WORK/stop.txt" 2>&1 || fail "stopped run" "$WORK/stop.txt"
"$QL" "${run[@]}" --out "$WORK/stop" --save-every 10 --resume > "$WORK/resume.txt" 2>&1 || fail "resumed run" "$WORK/resume.txt"
cmp -s "$WORK/stop/adapter_model.safetensors" "$WORK/run/adapter_model.safetensors" \
  || fail "the resumed reward run differs from the uninterrupted one"
# DoRA: magnitudes beside the head; the merged directory scores as the adapter does.
"$QL" "${run[@]}" --use-dora --out "$WORK/dora" > "$WORK/dora.txt" 2>&1 || fail "a DoRA reward run" "$WORK/dora.txt"
grep -q "eval reward accuracy [0-9.]* -> 1.000" "$WORK/dora.txt" || fail "the DoRA reward model did not learn" "$WORK/dora.txt"
"$QL" merge --model "$WORK/tiny" --adapter "$WORK/dora" --out "$WORK/rmdora" --dtype fp32 > "$WORK/mdora.txt" 2>&1 \
  || fail "merge of a DoRA reward adapter" "$WORK/mdora.txt"
"$QL" "${ev[@]}" --adapter "$WORK/dora" > "$WORK/dora_ad.json" 2>/dev/null || fail "eval of the DoRA reward adapter"
"$QL" "${ev[@]/$WORK\/tiny/$WORK/rmdora}" > "$WORK/dora_rm.json" 2>/dev/null || fail "eval of the merged DoRA reward model"
python3 - "$WORK/dora_ad.json" "$WORK/dora_rm.json" <<'PY' || fail "the merged DoRA reward model scores otherwise" "$WORK/dora_rm.json"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
for k in ("rewards_chosen", "rewards_rejected"):
    assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])), (k, a[k], b[k])
PY
# Data parallelism: 2 ranks of one micro-batch against one process with --grad-accum 2.
dp=(-m "$WORK/tiny" -d "$WORK/pref.jsonl" --objective reward --center-rewards-coefficient 0.01 --seq-len 64 --lora-r 4
    --lr 0.01 --lora-dropout 0.1 --threads 1 -q --device cpu --eval-count 8 --batch-size 2 --max-steps 6)
"$QL" train "${dp[@]}" --out "$WORK/dp2" --nproc 2 > "$WORK/dp2.txt" 2>&1 || fail "reward --nproc 2" "$WORK/dp2.txt"
"$QL" train "${dp[@]}" --out "$WORK/ga2" --grad-accum 2 > "$WORK/ga2.txt" 2>&1 || fail "reward --grad-accum 2" "$WORK/ga2.txt"
python3 "$(dirname "$0")/compare_runs.py" "$WORK/dp2" "$WORK/ga2" 1e-5 1e-3 > "$WORK/cmpdp.txt" 2>&1 ||
  fail "reward --nproc 2 differs from --grad-accum 2" "$WORK/cmpdp.txt"
# Refusals: one line each, nothing written.
expect_error() {  # EXPECTED-SUBSTRING ARGS...
  local want="$1"; shift
  if "$QL" "$@" > "$WORK/err.txt" 2>&1; then fail "accepted: $*" "$WORK/err.txt"; fi
  grep -qF -- "$want" "$WORK/err.txt" || fail "expected \"$want\" for: $*" "$WORK/err.txt"
}
expect_error "--objective reward trains on the CPU for now" "${run[@]/cpu/cuda}" --out "$WORK/x1"
expect_error "--center-rewards-coefficient applies to --objective reward" train --model "$WORK/tiny" \
  --data "$WORK/pref.jsonl" --objective dpo --center-rewards-coefficient 0.1 --max-steps 1 --device cpu --out "$WORK/x3"
expect_error "--center-rewards-coefficient must be >= 0" "${run[@]}" --center-rewards-coefficient -1 --out "$WORK/x4"
expect_error "it is a reward model's adapter (task_type SEQ_CLS" generate --model "$WORK/tiny" --adapter "$WORK/run" \
  --prompt "Ann is" --max-new-tokens 2 --device cpu
"$QL" train --model "$WORK/tiny" --data "$WORK/pref.jsonl" --objective dpo --max-steps 2 --seq-len 64 --lora-r 4 \
  --threads 1 --quiet --device cpu --out "$WORK/dpo" > "$WORK/dpo.txt" 2>&1 || fail "the dpo run" "$WORK/dpo.txt"
expect_error "cannot score with the LoRA adapter $WORK/dpo" "${ev[@]}" --adapter "$WORK/dpo"
expect_error "has no score.weight, so it is a causal language model" "${ev[@]}"
expect_error 'badmargin.jsonl:4: "margin" must be a finite number, got "big"' "${run[@]/$WORK\/pref.jsonl/$WORK/badmargin.jsonl}" \
  --out "$WORK/x6"
expect_error "is a sequence classifier's adapter (task_type SEQ_CLS: a reward model's or a text classifier's): it merges into a sequence classifier" merge \
  --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/x5.gguf" --gguf q8_0
for d in x1 x2 x3 x4 x5.gguf x5.gguf.merged x6; do [ ! -e "$WORK/$d" ] || fail "a refused run left $WORK/$d"; done
echo "PASS"
