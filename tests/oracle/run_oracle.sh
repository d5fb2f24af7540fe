#!/usr/bin/env bash
# Runs one oracle script with the pinned Python environment, or skips (exit 77) with a clear line when that
# environment has not been created (scripts/oracle_env.sh creates it; CI always does).
py="$1"; shift
if [ ! -x "$py" ]; then
  echo "SKIP: no oracle Python at $py (run scripts/oracle_env.sh to install the pinned Hugging Face stack)"
  exit 77
fi
exec "$py" "$@"
