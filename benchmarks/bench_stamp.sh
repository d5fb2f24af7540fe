# Sourced by the benchmark scripts that write a Markdown report: bench_stamp SRC sets `dev` (the GPU's name, driver
# and memory from nvidia-smi, or "no nvidia-smi") and `commit` ($QWENQ_COMMIT when set, else SRC's short commit,
# "(with uncommitted changes)" when its tree differs from it).
bench_stamp() {
  if command -v nvidia-smi > /dev/null; then
    dev=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
  else
    dev="no nvidia-smi"
  fi
  # On the device machine gpu_check.sh exports QWENQ_COMMIT (gpu_prepare.sh's record): that copy's .git can be older
  # than the tree it carries.
  if [ -n "${QWENQ_COMMIT:-}" ]; then
    commit=$QWENQ_COMMIT
    return
  fi
  commit="$(git -C "$1" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git -C "$1" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
}
