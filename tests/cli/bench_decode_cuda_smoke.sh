#!/usr/bin/env bash
# benchmarks/bench_decode_cuda.sh end to end in its CPU dry-run mode (DEVICE=cpu: bench_qlora_step.sh's tiny random
# model, 2 and 1 layers, prompts of 32 and 200 tokens, 16 new tokens): every run of ours (`qwen-quant generate` on the
# 4-bit model, with the defaults, the grouped decode attention, that with --bf16-activations, that with
# QWENQ_DECODE_MMA_F32=1, and --cpu-matmul bf16, which only the CPU run makes) and of transformers (bench_decode_hf.py on the bf16 model) must report a finite positive rate for the asked prompt and token counts, and the Markdown must hold
# a row per prompt and side with the ratio. The figures are not a benchmark. $1 build dir, $2 source dir, $3 work
# dir, $4 the oracle Python (torch, transformers); skips (exit 77) without it.
set -uo pipefail
BUILD="$1"; SRC="$2"; DIR="$3"; PY="$4"
if [ ! -x "$PY" ]; then
  echo "SKIP: no oracle Python at $PY (the baseline side needs torch and transformers: scripts/oracle_env.sh)"
  exit 77
fi
rm -rf "$DIR" && mkdir -p "$DIR"
fail() { echo "FAIL: $1"; [ -n "${2:-}" ] && cat "$2"; exit 1; }

DEVICE=cpu BUILD="$BUILD" WORK="$DIR/work" OUT="$DIR/out" PY="$PY" THREADS=2 \
  bash "$SRC/benchmarks/bench_decode_cuda.sh" > "$DIR/run.log" 2>&1 || fail "bench_decode_cuda.sh exited $?" "$DIR/run.log"
md=$(ls "$DIR"/out/*-decode-cpu.md 2>/dev/null | head -1)
[ -n "$md" ] || fail "no result Markdown in $DIR/out" "$DIR/run.log"
"$PY" - "$md" <<'PY' || fail "result check" "$md"
import json, math, re, sys
text = open(sys.argv[1]).read()
raw = text.split("## Raw JSON lines")[1].split("```")[1]
rows = [json.loads(l) for l in raw.strip().splitlines()]
tags = sorted(r["tag"] + ":" + str(r.get("prompt_tokens")) for r in rows)
want = sorted([f"ours{g}-{s}-p{p}:{p}" for g in ("", "-grouped", "-fast", "-exact", "-bf16mm") for s in ("main", "base") for p in (32, 200)] +
              [f"theirs-{s}:{p}" for s in ("main", "base") for p in (32, 200)])
assert tags == want, (tags, want)
for r in rows:
    assert isinstance(r.get("tokens_per_s"), (int, float)) and math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0, r
    assert r["layers"] == (2 if "-main" in r["tag"] else 1), r
    if r["side"] == "qwenq":
        assert r["rc"] == 0 and r["new_tokens"] == 16, r
        grouped = r["tag"].startswith(("ours-grouped", "ours-fast", "ours-exact"))
        assert ("QWENQ_DECODE_GROUPED=1" in r["device_line"]) == grouped, r
        assert ("QWENQ_DECODE_MMA_F32=1" in r["device_line"]) == r["tag"].startswith("ours-exact"), r
        assert ("--bf16-activations" in r["env"]) == r["tag"].startswith("ours-fast"), r
        assert ("--cpu-matmul bf16" in r["env"]) == r["tag"].startswith("ours-bf16mm"), r
    else:
        assert r["new_tokens"] == 16, r
table = [l for l in text.splitlines() if re.match(r"^\| (32|200) \| ", l)]
assert len(table) == 12, table
for l in table:
    cells = [c.strip() for c in l.strip("|").split("|")]
    assert len(cells) == 7 and re.fullmatch(r"[0-9]+\.[0-9]{3}", cells[2]), l  # the time to the first token
    if "qwenq" in l:
        assert re.search(r"\| [0-9.]+x \|$", l), l
PY
echo "PASS: $(grep -c '^{' "$md") runs, $md"
