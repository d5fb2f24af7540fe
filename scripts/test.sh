#!/usr/bin/env bash
# The whole test suite: installs what is missing (Debian packages; the pinned Python oracle stack from
# PyPI), builds, and runs every test with ctest. Tests that need ../shared/data or the oracle environment
# skip with a clear line when those are absent; in CI (CI=true) a missing oracle environment is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if ! scripts/oracle_env.sh; then
  # The install needs about 6 GB on disk (torch's CUDA libraries); say how much there was.
  echo "test: free space where .venv-oracle goes: $(df -h --output=avail . | tail -1 | tr -d ' ')" >&2
  if [ "${CI:-}" = "true" ]; then echo "test: could not create the oracle environment" >&2; exit 1; fi
  echo "test: oracle environment unavailable; oracle tests will be skipped" >&2
fi
scripts/build.sh "$@"
# With nvcc the build above compiled the CUDA backend; a clone without it must compile too.
if grep -q '^CMAKE_CUDA_COMPILER:[A-Z]*=.*nvcc$' build/CMakeCache.txt; then scripts/cpu_only_check.sh; fi
ctest --test-dir build --output-on-failure -j "$(nproc)"
