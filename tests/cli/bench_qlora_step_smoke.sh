#!/usr/bin/env bash
# benchmarks/bench_qlora_step.sh end to end in its CPU dry-run mode (DEVICE=cpu: tiny random model, 2 and 1 layers,
# 1 x 128 tokens, 1 warm-up + 2 timed steps): both sides (qwen-qlora train on the 4-bit model, transformers + peft
# on the bf16 one) must report finite positive tokens/s and peak RSS for the same tokens per step, the Markdown must
# hold the ratios, the per-layer table and the raw lines; and the helper's time limit must kill and say so (exit
# 124). The figures are not a benchmark. $1 build dir, $2 source dir, $3 work dir, $4 the oracle Python (torch,
# transformers, peft); skips (exit 77) without it.
set -uo pipefail
BUILD="$1"; SRC="$2"; DIR="$3"; PY="$4"
if [ ! -x "$PY" ]; then
  echo "SKIP: no oracle Python at $PY (the baseline side needs torch, transformers and peft: scripts/oracle_env.sh)"
  exit 77
fi
rm -rf "$DIR" && mkdir -p "$DIR"
fail() { echo "FAIL: $1"; [ -n "${2:-}" ] && cat "$2"; exit 1; }

# Two switch sets (no-ops on the CPU; the report's variant rows and phases are what is checked).
DEVICE=cpu BUILD="$BUILD" WORK="$DIR/work" OUT="$DIR/out" PY="$PY" THREADS=2 \
  VARIANTS=" QWENQ_LORA_FOLD=1; QWENQ_QGEMM_OVERLAP=1  QWENQ_LORA_FOLD=1 ;" \
  bash "$SRC/benchmarks/bench_qlora_step.sh" > "$DIR/run.log" 2>&1 || fail "bench_qlora_step.sh exited $?" "$DIR/run.log"
md=$(ls "$DIR"/out/*-qlora-step-cpu.md 2>/dev/null | head -1)
[ -n "$md" ] || fail "no result Markdown in $DIR/out" "$DIR/run.log"
grep -q "^qlora step (2 layers, cpu): ours [0-9]* tok/s, peft [0-9]* tok/s, tokens/s ratio [0-9.]* (>= 2).*; switches vs default: QWENQ_LORA_FOLD=1: [0-9.]*x, QWENQ_QGEMM_OVERLAP=1 QWENQ_LORA_FOLD=1: [0-9.]*x$" "$DIR/run.log" \
  || fail "summary line" "$DIR/run.log"
"$PY" - "$md" <<'PY' || fail "result check" "$md"
import json, math, re, sys
text = open(sys.argv[1]).read()
raw = text.split("## Raw JSON lines")[1].split("```")[1]
rows = [json.loads(l) for l in raw.strip().splitlines()]
assert [(r["side"], r["layers"], r["run"]) for r in rows] == [
    ("qwenq", 2, "ours"), ("transformers+peft", 2, "theirs"), ("qwenq", 1, "ours0"), ("transformers+peft", 1, "theirs0"),
    ("qwenq", 2, "oursv1"), ("qwenq", 2, "oursv2")], rows
assert re.search(r"\| `QWENQ_LORA_FOLD=1` \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| [-+][0-9.]+ ms \| -?[0-9.]+ ms \|", text), \
    "variant 1's row"
assert "| `QWENQ_QGEMM_OVERLAP=1 QWENQ_LORA_FOLD=1` |" in text, "variant 2's row"
rows = rows[:4]
for r in rows:
    assert "failed" not in r, r
    for k in ("tokens_per_s", "peak_rss_bytes", "loss_first", "loss_last"):
        assert isinstance(r[k], (int, float)) and math.isfinite(r[k]) and r[k] > 0, (k, r)
    assert r["tokens_per_step"] == 128 and r["steps"] == 2, r
    assert len(r["step_s"]) == 2 and all(s > 0 for s in r["step_s"]), r
    # A random model's loss starts near ln(vocab) = ln(320) = 5.77.
    assert abs(r["loss_first"] - math.log(320)) < 0.5, r
# peft adapts all seven Linears: r * (in + out) each; tiny: hidden 64, q 64, k/v 32, MLP 128.
per_layer = 16 * sum(i + o for i, o in ((64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)))
assert rows[1]["trainable_params"] == 2 * per_layer and rows[3]["trainable_params"] == per_layer, rows
for pat in (r"\| tokens/s \| [0-9.]+ \| >= 2 \| (yes|no) \|", r"\| peak memory \(process peak RSS\) \| [0-9.]+ \| <= 0\.40 \| (yes|no) \|",
            r"\| qwenq \(4-bit\) \| -?[0-9.]+ ms \| ",
            # The tiny model's layers may cost less than the timing noise: then the report says so instead.
            r"Full-depth estimate, ours / theirs: tokens/s [0-9.]+|No full-depth estimate: a per-layer time is <= 0",
            r"CPU dry run", r"\*\*2 of its 2 decoder layers\*\*"):
    assert re.search(pat, text), pat
print("ok:", ", ".join(f"{r['side']} {r['layers']}L {r['tokens_per_s']:.0f} tok/s {r['peak_rss_bytes'] / 2**20:.0f} MiB" for r in rows))
PY
# The time limit of the helper that runs our side: killed, exit 124, the peak RSS still written.
"$PY" "$SRC/benchmarks/bench_qlora_step_report.py" measure --timeout 1 --rss-out "$DIR/rss" -- sleep 30 \
  > "$DIR/measure.log" 2>&1
rc=$?
[ "$rc" = 124 ] || fail "measure --timeout 1: exit $rc, not 124" "$DIR/measure.log"
grep -q "killed after 1 s" "$DIR/measure.log" || fail "measure: no kill message" "$DIR/measure.log"
[ -s "$DIR/rss" ] || fail "measure: no RSS file"
# Bad settings: one clear line.
DEVICE=cpu BUILD="$BUILD" WORK="$DIR/bad" QUANT=int3 PY="$PY" bash "$SRC/benchmarks/bench_qlora_step.sh" > "$DIR/bad.log" 2>&1 \
  && fail "QUANT=int3 accepted" "$DIR/bad.log"
grep -q "QUANT must be rtn or nf4, not int3" "$DIR/bad.log" || fail "QUANT message" "$DIR/bad.log"
DEVICE=cpu BUILD="$BUILD" WORK="$DIR/bad" VARIANTS="QWENQ_LORA_FOLD" PY="$PY" bash "$SRC/benchmarks/bench_qlora_step.sh" \
  > "$DIR/bad.log" 2>&1 && fail "VARIANTS=QWENQ_LORA_FOLD accepted" "$DIR/bad.log"
grep -q "VARIANTS: 'QWENQ_LORA_FOLD' is not a list of NAME=value assignments" "$DIR/bad.log" || fail "VARIANTS message" "$DIR/bad.log"
[ ! -e "$DIR/bad/prepared.txt" ] || fail "VARIANTS refused after preparing"
cat "$DIR/run.log" | grep -E "^qlora step|^wrote"
echo "bench_qlora_step smoke: ok"
