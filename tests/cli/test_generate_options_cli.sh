#!/usr/bin/env bash
# The CPU options of `qwen-quant generate` and `qwen-qlora generate` / `chat` (the GPU decoder takes --kv-cache too,
# tests/gpu/test_decode_cuda.cpp; the numbers are checked in tests/test_kv_cache_bf16.cpp and
# tests/test_cpu_bf16_products.cpp):
#   --kv-cache f32|bf16 and --cpu-matmul fp32|bf16 (the prompt's products on bf16 operands from 8 rows on, the decode
#   steps' in fp32: trainer/qwen_weights.h, kCpuBf16MinRows): each listed in --help with its default; the default
#   named explicitly gives the default's greedy text byte for byte; the other value produces text on every command,
#   the same text on both tools; any other value is refused by name before a model is loaded.
# $1 is qwen-quant; qwen-qlora is built beside it.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

"$QQ" generate --help > "$WORK/help_qq.txt" || fail "qwen-quant generate --help" "$WORK/help_qq.txt"
for sub in generate chat; do
  "$QL" "$sub" --help > "$WORK/help_$sub.txt" || fail "qwen-qlora $sub --help" "$WORK/help_$sub.txt"
done
for opt in "--kv-cache.*f32" "--cpu-matmul.*fp32"; do
  for h in qq generate chat; do
    grep -q -- "$opt" "$WORK/help_$h.txt" || fail "$h --help lacks $opt" "$WORK/help_$h.txt"
  done
done

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null 2>&1
PROMPT="Once upon a time there was a little girl who liked to read"
gen() {  # gen OUT TOOL SUBCOMMAND ARGS...: greedy text on stdout into OUT.txt, stderr into OUT.err
  local out="$1"; shift
  "$@" --model "$WORK/tiny" --prompt "$PROMPT" -n 24 --threads 1 --device cpu > "$WORK/$out.txt" 2> "$WORK/$out.err" \
    || fail "$out: $*" "$WORK/$out.err"
}
gen qq_default "$QQ" generate
for pair in "kv-cache f32 bf16" "cpu-matmul fp32 bf16"; do
  read -r opt default other <<< "$pair"
  gen "qq_$opt-$default" "$QQ" generate "--$opt" "$default"
  cmp -s "$WORK/qq_default.txt" "$WORK/qq_$opt-$default.txt" || fail "--$opt $default differs from the default"
  gen "qq_$opt-$other" "$QQ" generate "--$opt" "$other"
  [ "$(wc -c < "$WORK/qq_$opt-$other.txt")" -gt "$(printf '%s\n' "$PROMPT" | wc -c)" ] \
    || fail "qwen-quant generate --$opt $other generated nothing" "$WORK/qq_$opt-$other.txt"
  gen "ql_$opt-$other" "$QL" generate "--$opt" "$other"
  cmp -s "$WORK/qq_$opt-$other.txt" "$WORK/ql_$opt-$other.txt" \
    || fail "qwen-qlora and qwen-quant generate --$opt $other differ"
  printf 'hello there, how are you today?\n/exit\n' | "$QL" chat --model "$WORK/tiny" "--$opt" "$other" -n 8 --threads 1 \
    --device cpu > "$WORK/chat.txt" 2> "$WORK/chat.err" || fail "chat --$opt $other" "$WORK/chat.err"
  for bad in fp16 BF16; do
    for cmd in "$QQ generate --prompt x" "$QL generate --prompt x" "$QL chat"; do
      if $cmd --model "$WORK/nothere" "--$opt" "$bad" < /dev/null > "$WORK/bad.txt" 2>&1; then
        fail "$cmd accepted --$opt $bad"
      fi
      grep -qE -- "--$opt: ('$bad' is not a KV cache dtype; use f32 or bf16|$bad not in \{fp32,bf16\})" "$WORK/bad.txt" \
        || fail "$cmd --$opt $bad message" "$WORK/bad.txt"
    done
  done
done
echo "generate options CLI: OK"
