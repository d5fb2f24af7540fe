#!/usr/bin/env bash
# Outputs never appear half-written under their final name: a run killed with SIGKILL mid-way leaves no output
# directory (and the next run removes its staging directory), a write that fails because the disk is full
# (simulated with a file-size limit, which makes write() fail with EFBIG) gives one clear error and leaves
# nothing, and an existing output is replaced only with --overwrite.
set -euo pipefail
QQ="$1"; SRC="$2"; WORK="$3"
rm -rf "$WORK" && mkdir -p "$WORK"
fail() { echo "FAIL: $*"; for f in "$WORK"/*.txt; do echo "--- $f"; cat "$f"; done; exit 1; }
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null

# 1. SIGKILL while the AWQ search runs (long enough: 64 windows x 256 tokens, one thread).
"$QQ" awq --model "$WORK/tiny" --out "$WORK/awq" --calib "$SRC/README.md" --calib-samples 64 --calib-seq-len 256 \
  --group-size 32 --threads 1 > "$WORK/awq.txt" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  compgen -G "$WORK/awq.partial.*" > /dev/null && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
compgen -G "$WORK/awq.partial.*" > /dev/null || fail "the run never created its staging directory"
kill -9 "$pid" 2>/dev/null || fail "the run finished before it could be killed"
wait "$pid" 2>/dev/null && fail "a killed run reported success"
[ ! -e "$WORK/awq" ] || fail "a killed run left $WORK/awq"
compgen -G "$WORK/awq.partial.*" > /dev/null || fail "expected the killed run's staging directory"
# The next run to the same place cleans up after the dead one and completes.
"$QQ" rtn --model "$WORK/tiny" --out "$WORK/awq" --group-size 32 --quiet > "$WORK/rerun.txt" 2>&1 || fail "rerun failed"
[ -s "$WORK/awq/model.safetensors" ] && [ -s "$WORK/awq/config.json" ] || fail "rerun output incomplete"
! compgen -G "$WORK/awq.partial.*" > /dev/null || fail "stale staging directory not removed"

# 2. Disk full: writes beyond 64 KiB fail with EFBIG (SIGXFSZ ignored so the error reaches the program).
if ( trap '' XFSZ; ulimit -f 64; exec "$QQ" rtn --model "$WORK/tiny" --out "$WORK/full" --quiet ) > "$WORK/full.txt" 2>&1; then
  fail "a write past the file-size limit succeeded"
fi
grep -q "File too large" "$WORK/full.txt" || fail "no clear error for the failed write"
[ "$(grep -c . "$WORK/full.txt")" -le 2 ] || fail "more than one error line"
[ ! -e "$WORK/full" ] || fail "a failed write left $WORK/full"
! compgen -G "$WORK/full.partial.*" > /dev/null || fail "a failed write left its staging directory"
! compgen -G "$WORK/full*.tmp.*" > /dev/null || fail "a failed write left a temporary file"

# 3. An existing output is refused without --overwrite, replaced with it.
if "$QQ" nf4 --model "$WORK/tiny" --out "$WORK/awq" --quiet > "$WORK/exists.txt" 2>&1; then fail "overwrote without --overwrite"; fi
grep -q "exists (pass --overwrite to replace it)" "$WORK/exists.txt" || fail "unclear refusal"
grep -q '"quant_method": "gptq"' "$WORK/awq/config.json" || fail "the refused run touched the existing output"
"$QQ" nf4 --model "$WORK/tiny" --out "$WORK/awq" --overwrite --quiet > "$WORK/over.txt" 2>&1 || fail "--overwrite failed"
grep -q '"quant_method": "bitsandbytes"' "$WORK/awq/config.json" || fail "--overwrite did not replace the output"
! compgen -G "$WORK/awq.old.*" > /dev/null || fail "the replaced output was left behind"
echo "interrupt CLI: OK"
