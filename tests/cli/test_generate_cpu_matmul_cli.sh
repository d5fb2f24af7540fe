#!/usr/bin/env bash
# --cpu-matmul on `qwen-quant generate` and `qwen-qlora generate` / `chat` (the prompt's products on bf16 operands
# from 8 rows on, the decode steps' in fp32: trainer/qwen_weights.h, kCpuBf16MinRows; the numbers are checked in
# tests/test_cpu_bf16_products.cpp): listed in --help with fp32 as the default; fp32 named explicitly gives the
# default's greedy text byte for byte; bf16 produces text, the same on both tools and on chat's command; any other
# value is refused by name before a model is loaded. $1 is qwen-quant; qwen-qlora is built beside it.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

"$QQ" generate --help > "$WORK/help_qq.txt" || fail "qwen-quant generate --help" "$WORK/help_qq.txt"
grep -q -- "--cpu-matmul.*fp32" "$WORK/help_qq.txt" || fail "qwen-quant generate --help lacks --cpu-matmul" "$WORK/help_qq.txt"
for sub in generate chat; do
  "$QL" "$sub" --help > "$WORK/help_$sub.txt" || fail "qwen-qlora $sub --help" "$WORK/help_$sub.txt"
  grep -q -- "--cpu-matmul.*fp32" "$WORK/help_$sub.txt" || fail "qwen-qlora $sub --help lacks --cpu-matmul" "$WORK/help_$sub.txt"
done

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null 2>&1
PROMPT="Once upon a time there was a little girl who liked to read"
gen() {  # gen OUT TOOL SUBCOMMAND ARGS...: greedy text on stdout into OUT.txt, stderr into OUT.err
  local out="$1"; shift
  "$@" --model "$WORK/tiny" --prompt "$PROMPT" -n 24 --threads 1 --device cpu > "$WORK/$out.txt" 2> "$WORK/$out.err" \
    || fail "$out: $*" "$WORK/$out.err"
}
gen qq_default "$QQ" generate
gen qq_fp32 "$QQ" generate --cpu-matmul fp32
gen qq_bf16 "$QQ" generate --cpu-matmul bf16
gen ql_bf16 "$QL" generate --cpu-matmul bf16
cmp -s "$WORK/qq_default.txt" "$WORK/qq_fp32.txt" || fail "--cpu-matmul fp32 differs from the default"
[ "$(wc -c < "$WORK/qq_bf16.txt")" -gt "$(printf '%s\n' "$PROMPT" | wc -c)" ] \
  || fail "qwen-quant generate --cpu-matmul bf16 generated nothing" "$WORK/qq_bf16.txt"
cmp -s "$WORK/qq_bf16.txt" "$WORK/ql_bf16.txt" || fail "qwen-qlora and qwen-quant generate --cpu-matmul bf16 differ"
printf 'hello there, how are you today?\n/exit\n' | "$QL" chat --model "$WORK/tiny" --cpu-matmul bf16 -n 8 --threads 1 \
  --device cpu > "$WORK/chat.txt" 2> "$WORK/chat.err" || fail "chat --cpu-matmul bf16" "$WORK/chat.err"

for bad in fp16 BF16; do
  for cmd in "$QQ generate --prompt x" "$QL generate --prompt x" "$QL chat"; do
    if $cmd --model "$WORK/nothere" --cpu-matmul "$bad" < /dev/null > "$WORK/bad.txt" 2>&1; then
      fail "$cmd accepted --cpu-matmul $bad"
    fi
    grep -q -- "--cpu-matmul: $bad not in {fp32,bf16}" "$WORK/bad.txt" || fail "$cmd --cpu-matmul $bad message" "$WORK/bad.txt"
  done
done
echo "generate --cpu-matmul CLI: OK"
