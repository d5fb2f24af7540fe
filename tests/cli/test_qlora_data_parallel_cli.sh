#!/usr/bin/env bash
# `qwen-qlora train --nproc R` (data parallelism, trainer/train_loop.h) against its oracle, one process with
# --grad-accum R·G: the same micro-batches in the same order, so the same losses and adapter up to the order of the
# fp32 gradient sums (LOSS_RTOL per step, ADAPTER_RTOL per tensor against its largest value; a rank's gradient lost
# or counted twice moves them by percents). Through shared memory (large gradients), 3 ranks match --grad-accum 3
# bit for bit. Also: 3 ranks over an epoch whose last step has fewer micro-batches than
# ranks; the ranks' shared evaluations give a single process's eval_loss to the bit; rank 0 alone writes the run
# directory and reports; a run of 2 ranks stopped and resumed gives the uninterrupted run's losses bit for bit, and
# resuming it with another --nproc is refused naming the flag; a rank killed mid-run, or stopped (SIGSTOP) past
# QWENQ_DP_TIMEOUT_S, stops the whole run with an error naming it and leaves no process and no final adapter. A text
# classifier (--objective classify) over 2 ranks matches one process too.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"
LOSS_RTOL=1e-5
ADAPTER_RTOL=1e-3
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null
python3 "$(dirname "$0")/sentences.py" "$WORK/data.jsonl" 200 5
# The CPU on every machine (a GPU machine with fewer GPUs than ranks would refuse, and these tolerances are the CPU's).
COMMON=(-m "$WORK/tiny" -d "$WORK/data.jsonl" --seq-len 64 --lora-r 4 --lr 0.003 --lora-dropout 0.1 --threads 1 -q
        --device cpu)
compare() {  # compare RUN ORACLE: losses, eval losses and adapters within the tolerances
  python3 "$(dirname "$0")/compare_runs.py" "$1" "$2" "$LOSS_RTOL" "$ADAPTER_RTOL"
}

# 2 ranks x 1 micro-batch against 1 process x 2, with checkpoints (the resume below continues this run).
"$QL" train "${COMMON[@]}" --eval-count 8 --batch-size 2 --max-steps 8 --save-every 2 --out "$WORK/dp2" --nproc 2 > "$WORK/dp2.txt" 2>&1 ||
  fail "--nproc 2 failed" "$WORK/dp2.txt"
"$QL" train "${COMMON[@]}" --eval-count 8 --batch-size 2 --max-steps 8 --out "$WORK/ga2" --grad-accum 2 > "$WORK/ga2.txt" 2>&1 ||
  fail "--grad-accum 2 failed" "$WORK/ga2.txt"
compare "$WORK/dp2" "$WORK/ga2" > "$WORK/cmp2.txt" 2>&1 || fail "--nproc 2 differs from --grad-accum 2" "$WORK/cmp2.txt"
[ "$(grep -c '^trained ' "$WORK/dp2.txt")" = 1 ] || fail "--nproc 2 did not report once" "$WORK/dp2.txt"
(cd "$WORK/dp2" && ls | grep -v '^checkpoint-') > "$WORK/files_dp2.txt"
(cd "$WORK/ga2" && ls) > "$WORK/files_ga2.txt"
cmp -s "$WORK/files_dp2.txt" "$WORK/files_ga2.txt" || fail "the run directories differ" "$WORK/files_dp2.txt"
[ "$(grep -c '"loss"' "$WORK/dp2/metrics.jsonl")" = 8 ] || fail "metrics.jsonl is not one record per step" "$WORK/dp2/metrics.jsonl"

# 3 ranks over one epoch (the last step may hold fewer micro-batches than ranks) against 1 process x 3.
"$QL" train "${COMMON[@]}" --eval-count 60 --epochs 1 --batch-size 4 --out "$WORK/dp3" --nproc 3 > "$WORK/dp3.txt" 2>&1 ||
  fail "--nproc 3 failed" "$WORK/dp3.txt"
"$QL" train "${COMMON[@]}" --eval-count 60 --epochs 1 --batch-size 4 --out "$WORK/ga3" --grad-accum 3 > "$WORK/ga3.txt" 2>&1 ||
  fail "--grad-accum 3 failed" "$WORK/ga3.txt"
compare "$WORK/dp3" "$WORK/ga3" > "$WORK/cmp3.txt" 2>&1 || fail "--nproc 3 differs from --grad-accum 3" "$WORK/cmp3.txt"
"$QL" train "${COMMON[@]}" --eval-count 60 --epochs 1 --batch-size 4 --out "$WORK/ga1" > "$WORK/ga1.txt" 2>&1 ||
  fail "--grad-accum 1 failed" "$WORK/ga1.txt"
micro=$(grep -c '"loss"' "$WORK/ga1/metrics.jsonl")
[ $((micro % 3)) != 0 ] || fail "the epoch's $micro micro-batches fill every step of 3: the short last step is not tested"
# Gradients of 256 KiB and more (r 32 here: 65536 values) are summed through shared memory, in rank order: 3 ranks of
# one micro-batch add them as one process with --grad-accum 3 does, and give its losses and adapter bit for bit (the
# ring, QWENQ_DP_SHM=0, adds in another order: 2.4e-5 apart).
# (r 32 is the tiny model's largest: exactly kSharedSumMinBytes. 3 ranks need 4 x 32 MiB of /dev/shm, which a
# container's default 64 MB lacks: then the block is skipped, saying so.)
R32=(-m "$WORK/tiny" -d "$WORK/data.jsonl" --seq-len 64 --lora-r 32 --lr 0.003 --lora-dropout 0.1 --threads 1 -q --device cpu)
if [ "$(df -k --output=avail /dev/shm 2>/dev/null | tail -1 | tr -d ' ')" -lt 200000 ] 2>/dev/null; then
  echo "skipped: /dev/shm has less than 200 MB free, the 3 ranks' shared sums would take the ring"
else
"$QL" train "${R32[@]}" --eval-count 8 --batch-size 2 --max-steps 6 --out "$WORK/shm3" --nproc 3 \
  > "$WORK/shm3.txt" 2>&1 || fail "--nproc 3 --lora-r 32 failed" "$WORK/shm3.txt"
"$QL" train "${R32[@]}" --eval-count 8 --batch-size 2 --max-steps 6 --out "$WORK/shmga3" --grad-accum 3 \
  > "$WORK/shmga3.txt" 2>&1 || fail "--grad-accum 3 --lora-r 32 failed" "$WORK/shmga3.txt"
python3 "$(dirname "$0")/compare_runs.py" "$WORK/shm3" "$WORK/shmga3" 0 0 > "$WORK/cmpshm.txt" 2>&1 ||
  fail "--nproc 3 through shared memory is not --grad-accum 3 to the bit" "$WORK/cmpshm.txt"
cmp -s "$WORK/shm3/adapter_model.safetensors" "$WORK/shmga3/adapter_model.safetensors" || fail "the shared-memory adapter differs"
fi
# The ranks share the evaluations (60 examples: 8 batches, uneven over 3 ranks) and gather them exactly: a single process's
# `eval` of the same split gives the run's first (the base) and last (its adapter) eval_loss to the bit.
EVAL=(-m "$WORK/tiny" --data "$WORK/data.jsonl" --seq-len 64 --batch-size 4 --eval-count 60 --threads 1 --json)
"$QL" eval "${EVAL[@]}" --adapter "$WORK/dp3" > "$WORK/eval_dp3.json" 2> "$WORK/eval.err" || fail "eval --adapter" "$WORK/eval.err"
"$QL" eval "${EVAL[@]}" > "$WORK/eval_base.json" 2> "$WORK/eval.err" || fail "eval of the base" "$WORK/eval.err"
python3 - "$WORK/dp3/metrics.jsonl" "$WORK/eval_dp3.json" "$WORK/eval_base.json" <<'PY' || fail "eval vs the run's eval_loss"
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if "eval_loss" in r]
adapter, base = (json.load(open(p)) for p in sys.argv[2:4])
assert adapter["loss"] == evals[-1]["eval_loss"] and adapter["loss_tokens"] == evals[-1]["eval_tokens"], (adapter, evals)
assert base["loss"] == evals[0]["eval_loss"], (base, evals)
PY

# Stopped after 5 steps (checkpoint-4) and resumed: the uninterrupted run's losses, bit for bit.
"$QL" train "${COMMON[@]}" --eval-count 8 --batch-size 2 --max-steps 8 --save-every 2 --out "$WORK/part" --nproc 2 --stop-after 5 \
  > "$WORK/part.txt" 2>&1 || fail "the stopped run failed" "$WORK/part.txt"
if "$QL" train "${COMMON[@]}" --eval-count 8 --batch-size 2 --max-steps 8 --save-every 2 --out "$WORK/part" --resume > "$WORK/other.txt" 2>&1; then
  fail "resumed with another --nproc" "$WORK/other.txt"
fi
grep -q '"nproc" (--nproc): saved 2, now (none)' "$WORK/other.txt" || fail "unclear refusal of another --nproc" "$WORK/other.txt"
"$QL" train "${COMMON[@]}" --eval-count 8 --batch-size 2 --max-steps 8 --save-every 2 --out "$WORK/part" --nproc 2 --resume > "$WORK/resume.txt" 2>&1 ||
  fail "the resumed run failed" "$WORK/resume.txt"
python3 - "$WORK/dp2/metrics.jsonl" "$WORK/part/metrics.jsonl" <<'PY' || fail "the resumed losses differ"
import json, sys
def losses(p):
    return [(j["step"], j["loss"]) for j in map(json.loads, open(p)) if "loss" in j]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == 8 and a == b, f"{a} vs {b}"
PY
cmp -s "$WORK/dp2/adapter_model.safetensors" "$WORK/part/adapter_model.safetensors" || fail "the resumed adapter differs"

# An endless 3-rank run NAME (its run directory and log under $WORK), signal SIG sent to rank 2 (found by its
# environment) once training has begun; then the run must fail with the line GREP, leave no rank running and no final
# adapter. Extra arguments go before the command (environment settings).
stop_rank_2() {
  local name=$1 sig=$2 want=$3 lead ranks victim="" p
  shift 3
  env "$@" "$QL" train "${COMMON[@]}" --eval-count 8 --batch-size 2 --max-steps 1000000 --out "$WORK/$name" --nproc 3 \
    > "$WORK/$name.txt" 2>&1 &
  lead=$!
  for _ in $(seq 1 500); do
    [ -s "$WORK/$name/metrics.jsonl" ] && break
    sleep 0.02
  done
  ranks=$(pgrep -P "$lead" || true)
  for p in $ranks; do tr '\0' '\n' < "/proc/$p/environ" | grep -qx QWENQ_DP_RANK=2 && victim=$p; done
  [ -n "$victim" ] || fail "$name: rank 2 not found among $lead's children ($ranks)" "$WORK/$name.txt"
  kill "-$sig" "$victim"
  if wait "$lead"; then fail "$name: a run whose rank 2 got SIG$sig reported success" "$WORK/$name.txt"; fi
  grep -q "$want" "$WORK/$name.txt" || fail "$name: rank 2 is not named" "$WORK/$name.txt"
  for p in $ranks; do ! kill -0 "$p" 2>/dev/null || fail "$name: rank process $p left running" "$WORK/$name.txt"; done
  [ ! -f "$WORK/$name/adapter_model.safetensors" ] || fail "$name: a failed run left a final adapter"
}
# A rank killed mid-run: the others name it.
stop_rank_2 killed KILL "data-parallel rank [01]: rank 2 has stopped"
# A rank alive but stuck (SIGSTOP, as a hung GPU would leave it): after QWENQ_DP_TIMEOUT_S seconds without data rank 0
# names it, and the stopped rank is killed.
stop_rank_2 hung STOP "data-parallel rank 0: nothing came from rank 2 for 5 s" QWENQ_DP_TIMEOUT_S=5

# --objective classify (a score head instead of the lm_head): 2 ranks x 2 micro-batches against 1 process x 4, the
# texts' statistics summed over the ranks and the held-out logits gathered.
python3 - "$WORK/data.jsonl" "$WORK/labelled.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        t = json.loads(line)["text"]
        f.write(json.dumps({"text": t, "label": "long" if len(t.split()) > 5 else "short"}) + "\n")
PY
CLS=(--objective classify -m "$WORK/tiny" -d "$WORK/labelled.jsonl" --seq-len 64 --lora-r 4 --lr 0.003 --threads 1 -q
     --device cpu --eval-count 16 --eval-every 3 --batch-size 4 --max-steps 6)
"$QL" train "${CLS[@]}" --grad-accum 2 --nproc 2 --out "$WORK/cls_dp" > "$WORK/cls_dp.txt" 2>&1 ||
  fail "classify --nproc 2 failed" "$WORK/cls_dp.txt"
"$QL" train "${CLS[@]}" --grad-accum 4 --out "$WORK/cls_ga" > "$WORK/cls_ga.txt" 2>&1 ||
  fail "classify --grad-accum 4 failed" "$WORK/cls_ga.txt"
compare "$WORK/cls_dp" "$WORK/cls_ga" > "$WORK/cmp_cls.txt" 2>&1 ||
  fail "classify --nproc 2 differs from --grad-accum 4" "$WORK/cmp_cls.txt"
cmp -s "$WORK/cls_dp/labels.json" "$WORK/cls_ga/labels.json" || fail "classify: labels.json differs" "$WORK/cls_dp/labels.json"
# ... and a regression head (its Pearson sums over the ranks too).
python3 - "$WORK/data.jsonl" "$WORK/scored.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        t = json.loads(line)["text"]
        f.write(json.dumps({"text": t, "label": len(t.split()) / 10}) + "\n")
PY
REG=("${CLS[@]}" --problem-type regression)
REG[5]="$WORK/scored.jsonl"
REG[11]=0.0005  # --lr: at 0.003 the squared error oscillates, and rounding's 1e-9 grows past the tolerance in 3 steps
"$QL" train "${REG[@]}" --grad-accum 2 --nproc 2 --out "$WORK/reg_dp" > "$WORK/reg_dp.txt" 2>&1 ||
  fail "regression --nproc 2 failed" "$WORK/reg_dp.txt"
"$QL" train "${REG[@]}" --grad-accum 4 --out "$WORK/reg_ga" > "$WORK/reg_ga.txt" 2>&1 ||
  fail "regression --grad-accum 4 failed" "$WORK/reg_ga.txt"
compare "$WORK/reg_dp" "$WORK/reg_ga" > "$WORK/cmp_reg.txt" 2>&1 ||
  fail "regression --nproc 2 differs from --grad-accum 4" "$WORK/cmp_reg.txt"
grep -q '"eval_pearson"' "$WORK/reg_dp/metrics.jsonl" || fail "regression: no eval_pearson" "$WORK/reg_dp/metrics.jsonl"

# Inputs every rank must read: a pipe is refused before any rank starts.
if "$QL" train -m "$WORK/tiny" -d <(cat "$WORK/data.jsonl") --device cpu --threads 1 --max-steps 1 --out "$WORK/pipe" \
    --nproc 2 > "$WORK/pipe.txt" 2>&1; then
  fail "--nproc 2 with a piped --data accepted" "$WORK/pipe.txt"
fi
grep -q -- "is not a regular file, and every process reads it" "$WORK/pipe.txt" || fail "unclear refusal of a pipe" "$WORK/pipe.txt"
[ ! -e "$WORK/pipe" ] || fail "a refused run made its directory"

# More ranks than GPUs (none here, or fewer than 64 on a GPU machine) is refused before any rank starts.
if "$QL" train -m "$WORK/tiny" -d "$WORK/data.jsonl" --threads 1 --max-steps 1 --out "$WORK/gpus" --nproc 64 \
    --device cuda > "$WORK/gpus.txt" 2>&1; then
  fail "--nproc 64 --device cuda accepted" "$WORK/gpus.txt"
fi
grep -q -- "--nproc 64" "$WORK/gpus.txt" || fail "unclear refusal of --nproc 64 --device cuda" "$WORK/gpus.txt"
[ ! -e "$WORK/gpus" ] || fail "a refused run made its directory"
echo "qlora data parallel CLI: OK"
