#!/usr/bin/env bash
# What ptxas gives each CUDA kernel of a configured build: registers per thread, spill bytes, stack frame and static
# shared memory, one markdown row per kernel (names demangled, sorted by registers). No GPU needed: every .cu of the
# build is compiled once more, exactly as the build compiles it, with -Xptxas -v (a few minutes on 2 cores).
#
#   scripts/cuda_resources.sh [BUILD_DIR]     (default build; prints the table on stdout)
#
# Read it against the launches: a kernel's registers x its block's threads must fit the SM's 64 Ki registers
# (__launch_bounds__ makes ptxas enforce that), static + dynamic shared memory per block must fit 227 KiB (the
# dynamic part needs cudaFuncAttributeMaxDynamicSharedMemorySize above 48 KiB), and spills go to local memory.
set -euo pipefail
build=${1:-build}
cd "$build"
command -v ninja > /dev/null || { echo "cuda_resources.sh: needs ninja" >&2; exit 1; }
objects=$(ninja -t targets all | sed -n 's/^\(.*\.cu\.o\): .*/\1/p' | sort -u)
[ -n "$objects" ] || { echo "cuda_resources.sh: $build has no CUDA objects (configured without CUDA?)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for o in $objects; do
  cmd=$(ninja -t commands "$o" | tail -1 | sed 's|^[^ ]*ccache ||; s| -MD -MT [^ ]* -MF [^ ]*||; s| -o [^ ]*$||')
  eval "$cmd -Xptxas -v -o $tmp/x.o" >> "$tmp/ptxas.log" 2>&1 || { cat "$tmp/ptxas.log" >&2; exit 1; }
done
echo "| kernel | registers | spill stores / loads (bytes) | stack frame (bytes) | static smem (bytes) |"
echo "|---|---|---|---|---|"
awk '
  /Compiling entry function/ { match($0, /'"'"'[^'"'"']*'"'"'/); name = substr($0, RSTART + 1, RLENGTH - 2) }
  /bytes stack frame/ { n = split($0, f, /[ ,]+/); for (i = 1; i + 3 <= n; ++i) {
      if (f[i + 1] == "bytes" && f[i + 2] == "stack") stack = f[i];
      if (f[i + 1] == "bytes" && f[i + 2] == "spill" && f[i + 3] == "stores") st = f[i];
      if (f[i + 1] == "bytes" && f[i + 2] == "spill" && f[i + 3] == "loads") ld = f[i] } }
  /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
      print regs "\t" name "\t" st " / " ld "\t" stack "\t" smem }
' "$tmp/ptxas.log" | sort -u | sort -t$'\t' -k1,1nr | while IFS=$'\t' read -r regs name spill stack smem; do
  printf '| `%s` | %s | %s | %s | %s |\n' "$(echo "$name" | c++filt | sed 's/(anonymous namespace):://g')" "$regs" "$spill" "$stack" "$smem"
done
