#!/usr/bin/env bash
# --kv-cache on `qwen-quant generate` and `qwen-qlora generate` / `chat` (CPU; the GPU decoder takes the same
# option, tests/gpu/test_decode_cuda.cpp): listed in --help with f32 as the default; f32 named explicitly gives the
# default's greedy text byte for byte; bf16 runs on every command and produces text; any other value is refused by
# name before a model is loaded. $1 is qwen-quant; qwen-qlora is built beside it.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

"$QQ" generate --help > "$WORK/help_qq.txt" || fail "qwen-quant generate --help" "$WORK/help_qq.txt"
grep -q -- "--kv-cache.*f32" "$WORK/help_qq.txt" || fail "qwen-quant generate --help lacks --kv-cache" "$WORK/help_qq.txt"
for sub in generate chat; do
  "$QL" "$sub" --help > "$WORK/help_$sub.txt" || fail "qwen-qlora $sub --help" "$WORK/help_$sub.txt"
  grep -q -- "--kv-cache.*f32" "$WORK/help_$sub.txt" || fail "qwen-qlora $sub --help lacks --kv-cache" "$WORK/help_$sub.txt"
done

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null 2>&1
gen() {  # gen OUT TOOL SUBCOMMAND ARGS...: greedy text on stdout into OUT.txt, stderr into OUT.err
  local out="$1"; shift
  "$@" --model "$WORK/tiny" --prompt "Once upon a time" -n 24 --threads 1 > "$WORK/$out.txt" 2> "$WORK/$out.err" \
    || fail "$out: $*" "$WORK/$out.err"
}
gen qq_default "$QQ" generate
gen qq_f32 "$QQ" generate --kv-cache f32
gen qq_bf16 "$QQ" generate --kv-cache bf16
cmp -s "$WORK/qq_default.txt" "$WORK/qq_f32.txt" || fail "--kv-cache f32 differs from the default"
[ "$(wc -c < "$WORK/qq_bf16.txt")" -gt "$(printf 'Once upon a time\n' | wc -c)" ] \
  || fail "qwen-quant generate --kv-cache bf16 generated nothing" "$WORK/qq_bf16.txt"
gen ql_f32 "$QL" generate --kv-cache f32
gen ql_bf16 "$QL" generate --kv-cache bf16
cmp -s "$WORK/qq_f32.txt" "$WORK/ql_f32.txt" || fail "qwen-qlora and qwen-quant generate differ without an adapter"
cmp -s "$WORK/qq_bf16.txt" "$WORK/ql_bf16.txt" || fail "qwen-qlora and qwen-quant generate --kv-cache bf16 differ"
printf 'hello\n/exit\n' | "$QL" chat --model "$WORK/tiny" --kv-cache bf16 -n 8 --threads 1 > "$WORK/chat.txt" \
  2> "$WORK/chat.err" || fail "chat --kv-cache bf16" "$WORK/chat.err"

for bad in fp16 BF16; do
  for cmd in "$QQ generate --prompt x" "$QL generate --prompt x" "$QL chat"; do
    if $cmd --model "$WORK/nothere" --kv-cache "$bad" < /dev/null > "$WORK/bad.txt" 2>&1; then
      fail "$cmd accepted --kv-cache $bad"
    fi
    grep -q -- "--kv-cache: '$bad' is not a KV cache dtype; use f32 or bf16" "$WORK/bad.txt" \
      || fail "$cmd --kv-cache $bad message" "$WORK/bad.txt"
  done
done
echo "generate --kv-cache CLI: OK"
