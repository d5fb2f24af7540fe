#!/usr/bin/env bash
# Runs the CPU benchmarks and writes benchmarks/results/<date>-cpu-<host>.md with date, machine and commit.
#   benchmarks/run_cpu.sh [build dir]     (needs .venv-oracle for the Hugging Face comparison)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PY=.venv-oracle/bin/python
day=$(date -u +%Y-%m-%d)
out=benchmarks/results/${day}-cpu.md
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
  echo "# CPU benchmarks, $day"
  echo
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "## Forward pass, Qwen2.5-0.5B shape, random bf16 weights (bench_forward_cpu)"
  echo '```'
  "$BUILD/bench_forward_cpu" 2>&1 | grep -E '^(BM_|model|Load)'
  echo '```'
  echo
  echo "## Linear layer at Qwen2.5-0.5B shapes (bench_gemm_cpu; eigen_f32_baseline = Eigen on an fp32 copy, same run)"
  echo '```'
  "$BUILD/bench_gemm_cpu" 2>&1 | grep -E '^(linear|eigen)'
  echo '```'
  echo
  echo "## Decode attention (bench_attention_cpu; ref = attention_decode_ref's plain loops, same run)"
  echo '```'
  "$BUILD/bench_attention_cpu" 2>&1 | grep -E '^BM_'
  echo '```'
  echo
  echo "## Tokenizer (bench_tokenizer_vs_hf.py: Hugging Face tokenizers and qwen-quant tokenize, same run)"
  echo '```'
  if [ -x "$PY" ]; then "$PY" benchmarks/bench_tokenizer_vs_hf.py --build "$BUILD" 2>&1 | tail -20; else echo "no $PY: skipped"; fi
  echo '```'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
