#!/usr/bin/env bash
# The files the project's text names exist (ctest docs.refs): every benchmarks/results file a tracked file names
# (`2026-12-06-attention-cpu.md`, with or without its folder), and every source path under the project's folders
# (`kernels/attention_decode_cpu.cpp`, `tests/gpu/test_moe_combine_cuda.cpp`) named in the READMEs or in a source
# comment. A renamed or never-committed file then fails here rather than leaving a reader a dead pointer.
# Names outside the repository (llama.cpp's `tools/perplexity/perplexity.cpp`) are listed in EXTERNAL below.
#   tests/docs/check_refs.sh SOURCE_DIR
set -euo pipefail
cd "${1:?usage: check_refs.sh SOURCE_DIR}"
EXTERNAL='^tools/perplexity/perplexity\.cpp$'
files=$( { git ls-files; git ls-files --others --exclude-standard; } 2>/dev/null | grep -vE '^benchmarks/results/|^tests/docs/check_refs\.sh$' \
  | grep -E '\.(md|h|cpp|cu|cuh|sh|py|txt)$|CMakeLists\.txt$' || true)
[ -n "$files" ] || { echo "check_refs: not a git checkout with tracked files: $PWD" >&2; exit 1; }
missing=0
while read -r f; do
  [ -e "benchmarks/results/$f" ] || { echo "missing results file: $f (named in: $(grep -lF -- "$f" $files | head -3 | tr '\n' ' '))"; missing=1; }
done < <(grep -ohE '\b20[0-9]{2}-[0-9]{2}-[0-9]{2}-[A-Za-z0-9_.-]+\.(md|csv|json|svg)\b' $files | sort -u)
while read -r f; do
  [[ $f =~ $EXTERNAL ]] && continue
  [ -e "$f" ] || { echo "missing source file: $f (named in: $(grep -lF -- "$f" $files | head -3 | tr '\n' ' '))"; missing=1; }
done < <(grep -ohE '\b(core|quant|kernels|lora|trainer|tools|tests|benchmarks|scripts)/[A-Za-z0-9_./-]+\.(h|cpp|cu|cuh|py|sh)\b' $files \
  | sort -u)
[ "$missing" = 0 ] && echo "check_refs: every named results and source file exists"
exit "$missing"
