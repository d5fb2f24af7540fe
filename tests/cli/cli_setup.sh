# Sourced by the command-line tests that drive both tools (ctest passes qwen-quant, the source tree and a work
# directory): sets QQ, SRC, WORK and QL (qwen-qlora, built beside qwen-quant), empties WORK, and defines
# fail MESSAGE [FILE] (prints both, exits 1).
QQ="$1"; SRC="$2"; WORK="$3"
QL="$(dirname "$1")/qwen-qlora"
[ -x "$QL" ] || { echo "qwen-qlora not found next to $QQ"; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK"
fail() { echo "FAIL: $1"; [ -n "${2:-}" ] && cat "$2"; exit 1; }
