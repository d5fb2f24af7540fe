#!/usr/bin/env bash
# `qwen-qlora chat` on the CPU keeps its KV cache from turn to turn (trainer/generate.h, generate_continuing; the
# numbers are checked in tests/test_generate_continuing.cpp): the first turn's rate line has no cached tokens, the
# second's names the tokens it took from the first (as many as the first turn's prompt at least), with either
# --kv-cache; each turn ends its reply with a line. $1 is qwen-quant; qwen-qlora is built beside it.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null 2>&1
for kv in f32 bf16; do
  printf 'hello there\nand how are you today?\n/exit\n' | "$QL" chat --model "$WORK/tiny" --kv-cache "$kv" -n 8 \
    --threads 1 --device cpu > "$WORK/chat_$kv.txt" 2> "$WORK/chat_$kv.err" || fail "chat --kv-cache $kv" "$WORK/chat_$kv.err"
  mapfile -t rates < <(grep -E "^[0-9]+ prompt tokens" "$WORK/chat_$kv.err")
  [ "${#rates[@]}" -eq 2 ] || fail "--kv-cache $kv: expected two rate lines" "$WORK/chat_$kv.err"
  [[ "${rates[0]}" != *cached* ]] || fail "--kv-cache $kv: the first turn claims cached tokens" "$WORK/chat_$kv.err"
  first=$(sed -E 's/^([0-9]+) prompt tokens.*/\1/' <<< "${rates[0]}")
  [[ "${rates[1]}" =~ ^([0-9]+)\ prompt\ tokens\ \(([0-9]+)\ of\ them\ cached\ from\ the\ last\ turn\) ]] \
    || fail "--kv-cache $kv: the second turn reused nothing" "$WORK/chat_$kv.err"
  total=${BASH_REMATCH[1]}; cached=${BASH_REMATCH[2]}
  [ "$cached" -ge "$first" ] && [ "$cached" -lt "$total" ] \
    || fail "--kv-cache $kv: $cached cached of $total (first turn $first)" "$WORK/chat_$kv.err"
  [ "$(wc -l < "$WORK/chat_$kv.txt")" -ge 2 ] || fail "--kv-cache $kv: not a reply line per turn" "$WORK/chat_$kv.txt"
done
echo "chat KV cache across turns CLI: OK (turn 2 cached $cached of $total tokens)"
