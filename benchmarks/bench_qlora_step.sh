#!/usr/bin/env bash
# A full QLoRA training step (issue 5): `qwen-qlora train` on a 4-bit Qwen2.5-7B-shaped model with random weights
# against Hugging Face transformers + peft bf16 LoRA with sdpa (benchmarks/bench_qlora_step_peft.py), same machine,
# same run, same tokens per step (1 x 2048), LoRA r=16, alpha=32 on all seven Linears, dropout 0. Target: >= 2x
# the tokens/s at <= 40% of the peak device memory. Random weights: speed does not depend on the values, so RTN
# stands in for GPTQ (the same GPTQ tensors). Both sides recompute each decoder block in the backward pass (ours
# always does; peft gets gradient checkpointing), so the memory regime is the same.
#
# The model keeps only LAYERS of the preset's decoder layers (model creation and load time grow with them), so the
# headline figures are for LAYERS layers, where the bf16 embedding + lm_head (2 x 152064 x 3584 in both) weigh more
# than in the full model. Per-layer figures come from a second pair of runs on the first LAYERS_BASE layers of the
# same files (config.json rewritten, tensors linked): per layer = difference / (LAYERS - LAYERS_BASE), and both
# sides are extrapolated to the preset's full depth. Without that pair (LAYERS_BASE=0, or no time left), per layer
# = whole step / LAYERS.
#
#   benchmarks/bench_qlora_step.sh [prepare|run]      (run: prepares when needed, then measures and reports)
#
# Environment (defaults for DEVICE=cuda / DEVICE=cpu, the CPU dry run with a tiny model):
#   BUILD (build)  DEVICE (cuda)  PRESET (qwen2.5-7b / tiny)  LAYERS (4 / 2)  LAYERS_BASE (1 / 1)  SEQ (2048 / 128)
#   WARMUP (2 / 1)  STEPS (5 / 2)  QUANT (rtn: GPTQ layout, 4 bits, group 128; or nf4)  RANK (16)  ALPHA (32)
#   BUDGET_S (230 / 0 = none): wall seconds for the whole run, each side under `timeout` so the report is written
#   PROFILE (1 / 0): our runs with `--profile` (GPU time per phase, trainer/step_profile.h, in the report; a mark is
#   one CUDA event, well under 1 % of a step)
#   VARIANTS (none): ';'-separated lists of environment assignments, e.g. "QWENQ_LORA_FOLD=1;QWENQ_QGEMM_OVERLAP=1
#   QWENQ_LORA_FOLD=1": after the pairs, our side again at LAYERS layers under each (time allowing), reported against
#   our default run of the same call (tokens/s, an estimated per-layer time, memory, each phase of --profile)
#   CPU_MATMUL (unset): our side's --cpu-matmul (fp32 or bf16: the CPU trainer's base products on bf16 operands), in
#   every run of ours; also usable in VARIANTS ("CPU_MATMUL=fp32" against a CPU_MATMUL=bf16 main pair)
#   THREADS (all cores)  WORK (BUILD/qlora-step-bench, reused when prepared with the same settings)
#   PY (.venv-oracle/bin/python if present, else python3: needs torch, transformers, peft, safetensors)
#   OUT (benchmarks/results): where DATE-qlora-step-DEVICE.md goes
# Prints both sides' JSON lines and a summary line; the Markdown holds the settings, the ratios and the raw lines.
# scripts/gpu_check.sh runs it last (section 4, model prepared in the background). Alone, in one device call (after
# scripts/gpu_prepare.sh; builds only the two tools, no tests):
#   run(carry=[".gpu-deps"], timeout_s=540, command="cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release
#       -DQWENQ_CUDA=ON -DQWENQ_CUDA_ARCHS=90a -DCMAKE_PREFIX_PATH=$PWD/.gpu-deps/usr -DQWENQ_BUILD_TESTS=OFF
#       -DQWENQ_BUILD_BENCHMARKS=OFF > /dev/null && cmake --build build-gpu -j 16 --target qwen-quant qwen-qlora
#       > /dev/null && BUILD=build-gpu BUDGET_S=360 bash benchmarks/bench_qlora_step.sh")
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-run}
[ "$MODE" = prepare ] || [ "$MODE" = run ] || { echo "usage: $0 [prepare|run]" >&2; exit 2; }
BUILD=${BUILD:-$SRC/build}
case "$BUILD" in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then
  d=(tiny 2 1 128 1 2 0)
else
  d=(qwen2.5-7b 4 1 2048 2 5 230)
fi
PRESET=${PRESET:-${d[0]}}; LAYERS=${LAYERS:-${d[1]}}; LAYERS_BASE=${LAYERS_BASE:-${d[2]}}; SEQ=${SEQ:-${d[3]}}
WARMUP=${WARMUP:-${d[4]}}; STEPS=${STEPS:-${d[5]}}; BUDGET_S=${BUDGET_S:-${d[6]}}
QUANT=${QUANT:-rtn}; RANK=${RANK:-16}; ALPHA=${ALPHA:-32}; THREADS=${THREADS:-$(nproc)}
PROFILE=${PROFILE:-$([ "$DEVICE" = cuda ] && echo 1 || echo 0)}
WORK=${WORK:-$BUILD/qlora-step-bench}
case "$PRESET" in  # the preset's own depth (trainer/random_model.cpp), for the full-model extrapolation
  tiny) full=2 ;; qwen2.5-0.5b) full=24 ;; qwen2.5-3b) full=36 ;; qwen2.5-14b) full=48 ;; qwen2.5-32b) full=64 ;;
  qwen2.5-72b) full=80 ;; *) full=28 ;;
esac
FULL_LAYERS=${FULL_LAYERS:-$full}
RESULTS=${OUT:-$SRC/benchmarks/results}
if [ -z "${PY:-}" ]; then
  PY=python3
  [ -x "$SRC/.venv-oracle/bin/python" ] && PY="$SRC/.venv-oracle/bin/python"
fi
QQ="$BUILD/qwen-quant"; QL="$BUILD/qwen-qlora"; HELP="$SRC/benchmarks/bench_qlora_step_report.py"
fail() { echo "bench_qlora_step: $*" >&2; exit 1; }
[ -x "$QQ" ] && [ -x "$QL" ] || fail "no qwen-quant / qwen-qlora in $BUILD (build first, or set BUILD)"
[ "$QUANT" = rtn ] || [ "$QUANT" = nf4 ] || fail "QUANT must be rtn or nf4, not $QUANT"
[ "$LAYERS_BASE" -lt "$LAYERS" ] || fail "LAYERS_BASE ($LAYERS_BASE) must be below LAYERS ($LAYERS)"
variants=()
IFS=';' read -ra listed <<< "${VARIANTS:-}"
for v in ${listed[@]+"${listed[@]}"}; do
  read -ra words <<< "$v"  # split on blanks: trimmed, inner runs of blanks one space
  v="${words[*]-}"
  [ -n "$v" ] || continue
  [[ "$v" =~ ^[A-Za-z_][A-Za-z0-9_]*=[^[:space:]]*( [A-Za-z_][A-Za-z0-9_]*=[^[:space:]]*)*$ ]] ||
    fail "VARIANTS: '$v' is not a list of NAME=value assignments"
  variants+=("$v")
done
t_begin=$(date +%s)

# The model (init-random, then 4-bit), its LAYERS_BASE-layer views, and the training text. CPU work only (--device
# cpu: gpu_check.sh makes it in the background while the GPU tests run).
prepare() {
  local key="$PRESET layers=$LAYERS base=$LAYERS_BASE quant=$QUANT seq=$SEQ steps=$((WARMUP + STEPS))"
  if [ -f "$WORK/prepared.txt" ] && [ "$(head -1 "$WORK/prepared.txt")" = "$key" ]; then
    echo "bench_qlora_step: reusing $WORK ($key)"; return 0
  fi
  rm -rf "$WORK" && mkdir -p "$WORK" || fail "cannot create $WORK"
  local t0=$(date +%s)
  "$QQ" init-random --preset "$PRESET" --layers "$LAYERS" --dtype bf16 --seed 0 --out "$WORK/base" \
    > "$WORK/prepare.log" 2>&1 || { cat "$WORK/prepare.log" >&2; fail "init-random failed"; }
  local t1=$(date +%s)
  if [ "$QUANT" = rtn ]; then
    "$QQ" rtn --model "$WORK/base" --out "$WORK/q4" --bits 4 --group-size 128 -q --threads "$THREADS" --device cpu >> "$WORK/prepare.log" 2>&1
  else
    "$QQ" nf4 --model "$WORK/base" --out "$WORK/q4" -q --threads "$THREADS" --device cpu >> "$WORK/prepare.log" 2>&1
  fi || { cat "$WORK/prepare.log" >&2; fail "$QUANT failed"; }
  local t2=$(date +%s)
  if [ "$LAYERS_BASE" -gt 0 ]; then  # the first LAYERS_BASE layers of the same files: the loaders skip the others
    for m in base q4; do
      mkdir -p "$WORK/$m-l$LAYERS_BASE"
      for f in "$WORK/$m"/*; do [ "$(basename "$f")" = config.json ] || ln -s "$f" "$WORK/$m-l$LAYERS_BASE/"; done
      "$PY" -c 'import json, sys; c = json.load(open(sys.argv[1])); c["num_hidden_layers"] = int(sys.argv[3])
json.dump(c, open(sys.argv[2], "w"), indent=2)' "$WORK/$m/config.json" "$WORK/$m-l$LAYERS_BASE/config.json" \
        "$LAYERS_BASE" || fail "cannot write $WORK/$m-l$LAYERS_BASE/config.json"
    done
  fi
  # Text records of ~SEQ + 256 bytes (the random models' tokenizer is byte-level without merges: a token per
  # byte), cut to SEQ tokens: each packed row is exactly one SEQ-token example.
  awk -v n=$((WARMUP + STEPS + 4)) -v len=$((SEQ + 256)) 'BEGIN {
    srand(7); split("the a cat dog bird sat ran on in park mat song sang ate food house tree big small red blue and \
then was little happy sun day", w, " ");
    for (i = 0; i < n; ++i) { s = "Once"; while (length(s) < len) s = s " " w[1 + int(rand() * 28)]; print "{\"text\": \"" s ".\"}" } }' \
    > "$WORK/data.jsonl" && [ "$(wc -l < "$WORK/data.jsonl")" -eq $((WARMUP + STEPS + 4)) ] || fail "cannot write $WORK/data.jsonl"
  echo "$key" > "$WORK/prepared.txt"
  echo "init-random $((t1 - t0)) s, $QUANT $((t2 - t1)) s" >> "$WORK/prepared.txt"
  echo "bench_qlora_step: prepared $WORK in $(( $(date +%s) - t0 )) s (init-random $((t1 - t0)) s, $QUANT $((t2 - t1)) s)"
}

prepare
[ "$MODE" = prepare ] && exit 0

# Seconds left in the budget (a large number when there is none).
left() { if [ "$BUDGET_S" -gt 0 ]; then echo $(( t_begin + BUDGET_S - $(date +%s) )); else echo 100000; fi; }
# ours TAG MODEL_DIR LAYERS TIMEOUT: qwen-qlora train, then its metrics summarized into TAG.json.
ours() {
  local tag=$1 dir=$2 layers=$3 limit=$4
  [ "$BUDGET_S" -gt 0 ] || limit=0
  "$PY" "$HELP" measure --timeout "$limit" --rss-out "$WORK/$tag.rss" -- \
    "$QL" train --model "$dir" --data "$WORK/data.jsonl" --out "$WORK/$tag" --overwrite --device "$DEVICE" \
    --threads "$THREADS" --max-steps $((WARMUP + STEPS)) --seq-len "$SEQ" --batch-size 1 --lora-r "$RANK" \
    --lora-alpha "$ALPHA" --lora-dropout 0 --target all-linear --scheduler constant --warmup-steps 0 -q \
    $([ "$PROFILE" = 1 ] && echo --profile) $([ -n "${CPU_MATMUL:-}" ] && echo --cpu-matmul "$CPU_MATMUL") \
    > "$WORK/$tag.log" 2>&1
  echo $? > "$WORK/$tag.rc"
  "$PY" "$HELP" ours --metrics "$WORK/$tag/metrics.jsonl" --rss "$WORK/$tag.rss" --rc "$(cat "$WORK/$tag.rc")" \
    --warmup "$WARMUP" --steps "$STEPS" --layers "$layers" --quant "$QUANT" --device "$DEVICE" > "$WORK/$tag.json"
  cat "$WORK/$tag.json"
}
# theirs TAG MODEL_DIR TIMEOUT: transformers + peft on the dense bf16 files.
theirs() {
  local tag=$1 dir=$2 limit=$3
  [ "$BUDGET_S" -gt 0 ] || limit=0
  timeout -k 5 "$limit" "$PY" -u "$SRC/benchmarks/bench_qlora_step_peft.py" --model "$dir" --device "$DEVICE" \
    --seq "$SEQ" --batch 1 --warmup "$WARMUP" --steps "$STEPS" --r "$RANK" --alpha "$ALPHA" --threads "$THREADS" \
    > "$WORK/$tag.out" 2> "$WORK/$tag.log"
  echo $? > "$WORK/$tag.rc"
  grep '^{' "$WORK/$tag.out" | tail -1 > "$WORK/$tag.json"
  cat "$WORK/$tag.json"
}
rm -f "$WORK"/{ours,theirs}*.{json,rc,log,out,rss,env}
# The main pair first (ours, then theirs with at least 90 s kept for it), then the LAYERS_BASE pair if time is left.
[ "$(left)" -ge 130 ] && ours ours "$WORK/q4" "$LAYERS" $(( $(left) - 100 ))
[ "$(left)" -ge 40 ] && theirs theirs "$WORK/base" $(( $(left) - 10 ))
if [ "$LAYERS_BASE" -gt 0 ] && [ "$(left)" -ge 100 ]; then
  ours ours0 "$WORK/q4-l$LAYERS_BASE" "$LAYERS_BASE" $(( $(left) - 60 ))
  [ "$(left)" -ge 40 ] && theirs theirs0 "$WORK/base-l$LAYERS_BASE" $(( $(left) - 10 ))
fi
# Our side under each of VARIANTS' switch sets, in a subshell that exports them (the report reads oursvN.env).
n=0
for v in ${variants[@]+"${variants[@]}"}; do
  n=$((n + 1))
  [ "$(left)" -ge 45 ] || { echo "bench_qlora_step: no time left for variant $n ($v)"; break; }
  echo "$v" > "$WORK/oursv$n.env"
  ( export $v; ours "oursv$n" "$WORK/q4" "$LAYERS" $(( $(left) - 10 )) )
done

# The report.
mkdir -p "$RESULTS" || fail "cannot create $RESULTS"
md="$RESULTS/$(date -u +%Y-%m-%d)-qlora-step-$DEVICE.md"
. "$SRC/benchmarks/bench_stamp.sh" && bench_stamp "$SRC"  # dev, commit
"$PY" "$HELP" report --work "$WORK" --out "$md" --device "$DEVICE" --device-info "$dev" \
  --cpu-info "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores" \
  --commit "$commit" --preset "$PRESET" --full-layers "$FULL_LAYERS" \
  --layers "$LAYERS" --layers-base "$LAYERS_BASE" --quant "$QUANT" --seq "$SEQ" --warmup "$WARMUP" --steps "$STEPS" \
  --rank "$RANK" --alpha "$ALPHA" --threads "$THREADS" --budget "$BUDGET_S" \
  --prepared "$(tail -1 "$WORK/prepared.txt")" --elapsed $(( $(date +%s) - t_begin )) || fail "report failed"
