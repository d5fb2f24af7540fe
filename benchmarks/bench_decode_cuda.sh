#!/usr/bin/env bash
# Decode speed, one token at a time: `qwen-quant generate` on the 4-bit Qwen2.5-7B-shaped model of
# bench_qlora_step.sh (random weights, RTN in the GPTQ layout, bf16 KV cache) against Hugging Face transformers'
# generate on the same bf16 weights (benchmarks/bench_decode_hf.py: bf16, sdpa, greedy), same machine, same run.
# Prompts of PROMPTS tokens, NEW new tokens; ours four ways: the defaults (fp32 activations: the exact GEMV; the
# per-head decode attention), the grouped decode attention (QWENQ_DECODE_GROUPED=1), that with each step replayed as
# one CUDA graph (QWENQ_DECODE_GRAPH=1) and --bf16-activations (the tensor-core decode product, activations rounded to
# bf16 as transformers' are), and the same exact instead (QWENQ_DECODE_MMA_F32=1: the tensor-core product on fp32
# activations split into three bf16 pieces). Rates
# exclude the prompt and the first token (ours: generate's "then X tok/s").
#
# The model keeps LAYERS of the preset's layers; a second set of runs on the first LAYERS_BASE layers of the same
# files gives the time per layer and token = difference / (LAYERS - LAYERS_BASE), and the full-depth estimate
# tokens/s = 1 / (fixed + FULL_LAYERS x per layer), fixed = the LAYERS run's time per token minus its layers' shares
# (embedding, lm_head over 152064 tokens, sampling, host). Without time for the second set: LAYERS figures only.
#
#   benchmarks/bench_decode_cuda.sh            (prepares the model with bench_qlora_step.sh when needed)
#
# DEVICE=cpu adds a fifth run of ours, --cpu-matmul bf16 (the prompt's products on bf16 operands; the GPU's four
# variants are the same CPU run there), ours and transformers on THREADS threads; the table gives each side's time to
# the first token (the prompt's forward) too. E.g. the 0.5B shape's prefill on a 2-core VM:
#   DEVICE=cpu PRESET=qwen2.5-0.5b LAYERS=4 LAYERS_BASE=1 PROMPTS=128,2400 THREADS=2 bash benchmarks/bench_decode_cuda.sh
#
# Environment: BUILD (build), DEVICE (cuda; cpu: a dry run on the tiny preset), PROMPTS (128,4096 / 32,200),
#   NEW (64 / 16), REPS (3 / 1), BUDGET_S (200 / 0 = none), PY (.venv-oracle/bin/python if present, else python3),
#   OUT (benchmarks/results), and bench_qlora_step.sh's PRESET, LAYERS, LAYERS_BASE, QUANT, THREADS, WORK.
# scripts/gpu_check.sh runs it as its `decode` phase, after the qlora phase has prepared the model.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$SRC/build}
case "$BUILD" in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac
export BUILD
DEVICE=${DEVICE:-cuda}
export DEVICE
if [ "$DEVICE" = cpu ]; then d=("32,200" 16 1 0); else d=("128,4096" 64 3 200); fi
PROMPTS=${PROMPTS:-${d[0]}}; NEW=${NEW:-${d[1]}}; REPS=${REPS:-${d[2]}}; BUDGET_S=${BUDGET_S:-${d[3]}}
RESULTS=${OUT:-$SRC/benchmarks/results}
if [ -z "${PY:-}" ]; then
  PY=python3
  [ -x "$SRC/.venv-oracle/bin/python" ] && PY="$SRC/.venv-oracle/bin/python"
fi
export PY
fail() { echo "bench_decode_cuda: $*" >&2; exit 1; }
t_begin=$(date +%s)
left() { if [ "$BUDGET_S" -gt 0 ]; then echo $(( t_begin + BUDGET_S - $(date +%s) )); else echo 100000; fi; }

# The model: bench_qlora_step.sh's (the same defaults, so gpu_check.sh's qlora phase has made it already).
bash "$SRC/benchmarks/bench_qlora_step.sh" prepare > /dev/null || fail "bench_qlora_step.sh prepare failed"
WORK=${WORK:-$BUILD/qlora-step-bench}
key=$(head -1 "$WORK/prepared.txt")
layers=$(sed -E 's/.* layers=([0-9]+).*/\1/' <<< "$key")
base=$(sed -E 's/.* base=([0-9]+).*/\1/' <<< "$key")
preset=$(cut -d' ' -f1 <<< "$key")
case "$preset" in
  tiny) full=2 ;; qwen2.5-0.5b) full=24 ;; qwen2.5-3b) full=36 ;; qwen2.5-14b) full=48 ;; qwen2.5-32b) full=64 ;;
  qwen2.5-72b) full=80 ;; *) full=28 ;;
esac
FULL_LAYERS=${FULL_LAYERS:-$full}
QQ="$BUILD/qwen-quant"
LOG="$WORK/decode"
mkdir -p "$LOG"
rm -f "$LOG"/*.json

# A prompt of n tokens: the random models' tokenizer is byte-level without merges, a token per byte.
prompt_of() { head -c "$1" < /dev/zero | tr '\0' 'a'; }

# ours TAG MODEL_DIR LAYERS PROMPT_LEN ENV ARGS: one generate (environment ENV, extra flags ARGS), its rate line as JSON.
ours() {
  local tag=$1 dir=$2 nl=$3 p=$4 envs=$5 args=$6
  local out="$LOG/$tag.log"
  local threads=()
  [ "$DEVICE" = cpu ] && [ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
  env $envs timeout 120 "$QQ" generate --model "$dir" --prompt "$(prompt_of "$p")" -n "$NEW" --greedy \
    --kv-cache bf16 --device "$DEVICE" "${threads[@]}" $args > "$out" 2>&1
  local rc=$?
  "$PY" - "$out" "$tag" "$nl" "$p" "$rc" "$envs $args" > "$LOG/$tag.json" <<'EOF'
import json, re, sys
path, tag, layers, p, rc, env = sys.argv[1:7]
text = open(path, errors="replace").read()
m = re.search(r"(\d+) prompt tokens, (\d+) new tokens in ([0-9.]+)s \(([0-9.]+) tok/s; first token after ([0-9.]+)s, "
              r"then ([0-9.]+) tok/s\)", text)
line = {"side": "qwenq", "tag": tag, "layers": int(layers), "prompt_len": int(p), "rc": int(rc), "env": env}
if m:
    line.update(prompt_tokens=int(m.group(1)), new_tokens=int(m.group(2)), first_token_s=float(m.group(5)),
                tokens_per_s=float(m.group(6)))
if "could not be captured as a CUDA graph" in text:
    line["graph_fallback"] = True  # QWENQ_DECODE_GRAPH=1 asked, the steps ran launched one by one
dev = re.search(r"^device: .*$", text, re.M)
if dev:
    line["device_line"] = dev.group(0)
print(json.dumps(line))
EOF
  cat "$LOG/$tag.json"
}

# theirs TAG MODEL_DIR LAYERS: transformers on the bf16 files, every prompt length in one process.
theirs() {
  local tag=$1 dir=$2 nl=$3
  timeout -k 5 $(( $(left) > 30 ? $(left) - 10 : 20 )) "$PY" -u "$SRC/benchmarks/bench_decode_hf.py" --model "$dir" \
    --device "$DEVICE" --prompt-len "$PROMPTS" --new "$NEW" --reps "$REPS" --threads "${THREADS:-0}" \
    > "$LOG/$tag.out" 2> "$LOG/$tag.log"
  grep '^{' "$LOG/$tag.out" | "$PY" -c 'import json, sys
for l in sys.stdin:
    d = json.loads(l); d["tag"] = sys.argv[1]; d["layers"] = int(sys.argv[2]); print(json.dumps(d))' "$tag" "$nl" \
    > "$LOG/$tag.json"
  cat "$LOG/$tag.json"
}

for set in main base; do
  if [ "$set" = main ]; then q="$WORK/q4"; b="$WORK/base"; nl=$layers; else
    [ "$base" -gt 0 ] && [ "$(left)" -ge 60 ] || break
    q="$WORK/q4-l$base"; b="$WORK/base-l$base"; nl=$base
  fi
  for p in ${PROMPTS//,/ }; do
    [ "$(left)" -ge 30 ] || break
    ours "ours-$set-p$p" "$q" "$nl" "$p" "" ""
    [ "$DEVICE" = cpu ] && ours "ours-bf16mm-$set-p$p" "$q" "$nl" "$p" "" "--cpu-matmul bf16"
    ours "ours-grouped-$set-p$p" "$q" "$nl" "$p" QWENQ_DECODE_GROUPED=1 ""
    ours "ours-fast-$set-p$p" "$q" "$nl" "$p" "QWENQ_DECODE_GROUPED=1 QWENQ_DECODE_GRAPH=1" --bf16-activations
    ours "ours-exact-$set-p$p" "$q" "$nl" "$p" "QWENQ_DECODE_GROUPED=1 QWENQ_DECODE_GRAPH=1 QWENQ_DECODE_MMA_F32=1" ""
  done
  [ "$(left)" -ge 30 ] && theirs "theirs-$set" "$b" "$nl"
done

# The report.
mkdir -p "$RESULTS" || fail "cannot create $RESULTS"
md="$RESULTS/$(date -u +%Y-%m-%d)-decode-$DEVICE.md"
. "$SRC/benchmarks/bench_stamp.sh" && bench_stamp "$SRC"  # dev, commit
cat "$LOG"/*.json > "$LOG/all.jsonl"
"$PY" - "$LOG/all.jsonl" "$md" "$dev" "$commit" "$preset" "$layers" "$base" "$FULL_LAYERS" "$PROMPTS" "$NEW" \
  "$DEVICE" <<'EOF' || fail "report failed"
import datetime, json, sys
src, md, dev, commit, preset, layers, base, full, prompts, new, device = sys.argv[1:12]
layers, base, full = int(layers), int(base), int(full)
rows = [json.loads(l) for l in open(src) if l.strip()]
def rate(kind, which, p, field="tokens_per_s"):  # which: "main" (the LAYERS runs) or "base"
    for r in rows:
        if r.get(field) is None:
            continue
        if kind == "theirs" and r.get("tag") == "theirs-" + which and r.get("prompt_tokens") == p:
            return r[field]
        if kind != "theirs" and r.get("tag") == f"{kind}-{which}-p{p}":
            return r[field]
    return None
kinds = [("ours", "qwenq 4-bit, fp32 activations, per-head attention"),
         ("ours-grouped", "qwenq 4-bit, fp32 activations, grouped attention"),
         ("ours-fast", "qwenq 4-bit, --bf16-activations, grouped attention, graph steps"),
         ("ours-exact", "qwenq 4-bit, fp32 activations on tensor cores (3 bf16 pieces), grouped attention, graph steps")]
if device == "cpu":  # the GPU's variants change nothing there (the script's dry run); --cpu-matmul does
    kinds.append(("ours-bf16mm", "qwenq 4-bit, --cpu-matmul bf16 (the prompt's products)"))
kinds.append(("theirs", "transformers bf16 (sdpa)"))
out = [f"# Decode speed vs transformers, {device}, {datetime.date.today()}", "",
       f"- device: {dev}; commit {commit}",
       f"- model: {preset} shape with random weights, {layers} of its layers (and the first {base} for the per-layer "
       f"figures); ours: 4-bit RTN in the GPTQ layout (group 128), bf16 KV cache, greedy; theirs: the same weights "
       f"in bf16, sdpa, bf16 KV cache, greedy, random prompt ids",
       f"- {new} new tokens per run; tokens/s after the first token (ours: generate's rate line; theirs: "
       f"generate(n + 1) - generate(1), best of the runs)", "",
       "| prompt | side | first token s, %d layers | tokens/s, %d layers | ms/token per layer | full %d layers: tokens/s | vs transformers |" % (layers, layers, full),
       "|---|---|---|---|---|---|---|"]
for p in [int(x) for x in prompts.split(",") if x]:
    fig = {}
    for kind, _ in kinds:
        r1, r0 = rate(kind, "main", p), (rate(kind, "base", p) if base > 0 else None)
        per = est = None
        if r1 and r0 and layers > base:
            per = (1 / r1 - 1 / r0) / (layers - base)
            est = 1 / (1 / r1 - layers * per + full * per)
        fig[kind] = (r1, per, est)
    for kind, name in kinds:
        r1, per, est = fig[kind]
        first = rate(kind, "main", p, "first_token_s")
        cells = [f"{first:.3f}" if first is not None else "n/a", f"{r1:.1f}" if r1 else "n/a",
                 f"{per * 1e3:.3f}" if per else "n/a", f"{est:.1f}" if est else "n/a"]
        ratio = ""
        if kind != "theirs":
            th1, _, th_est = fig["theirs"]
            if est and th_est:
                ratio = f"{est / th_est:.2f}x"
            elif r1 and th1:
                ratio = f"{r1 / th1:.2f}x at {layers} layers"
        out.append(f"| {p} | {name} | " + " | ".join(cells) + f" | {ratio} |")
out += ["", "## Raw JSON lines", "", "```"] + [json.dumps(r) for r in rows] + ["```", ""]
open(md, "w").write("\n".join(out))
print("\n".join(out[:8 + len(kinds) * len(prompts.split(","))]))
EOF
echo "bench_decode_cuda: wrote $md ($(( $(date +%s) - t_begin )) s)"
