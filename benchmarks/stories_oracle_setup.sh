# Sourced by the benchmarks that run the real stories260K against the Python stack (bench_awq_vs_autoawq.sh,
# bench_ct_writer_stories.sh) from the repository root, after they set BUILD and WORK: checks ../shared/data and the
# oracle environment (scripts/oracle_env.sh), sets QQ, PY, DATA and day, empties WORK and imports stories260K into
# $WORK/fp32.
QQ="$BUILD/qwen-quant"
PY=.venv-oracle/bin/python
DATA=../shared/data
[ -d "$DATA/stories260K" ] || { echo "needs ../shared/data"; exit 1; }
[ -x "$PY" ] || { echo "needs the oracle environment: bash scripts/oracle_env.sh"; exit 1; }
export OMP_WAIT_POLICY=PASSIVE
day=$(date -u +%Y-%m-%d)
rm -rf "$WORK" && mkdir -p "$WORK"
"$QQ" import-llama2c --checkpoint "$DATA/stories260K/stories260K.bin" --tokenizer "$DATA/stories260K/tok512.bin" \
  --out "$WORK/fp32" --overwrite >/dev/null
