#!/usr/bin/env bash
# Creates .venv-oracle: the pinned Hugging Face stack the oracle tests check our numbers against
# (transformers, tokenizers, safetensors, torch, bitsandbytes, peft with its dependency accelerate, gguf-py (llama.cpp's
# GGUF package), compressed-tensors (llm-compressor's checkpoint format, with its pydantic) and AutoAWQ's quantizer,
# all on the CPU). Idempotent: does nothing when the pinned versions are already there. Needs PyPI access the first time
# (about 1-2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-oracle
PINS="torch==2.5.1 transformers==4.51.3 tokenizers==0.21.1 safetensors==0.5.3 numpy==2.2.6 bitsandbytes==0.46.1 peft==0.15.2 accelerate==1.15.0 gguf==0.17.1 compressed-tensors==0.9.4 pydantic==2.11.7"
# AutoAWQ without its dependencies, in its own directory (.venv-oracle/autoawq, put on sys.path only by
# tests/oracle/test_autoawq_oracle.py): only its pure-torch quantizer and packing are used, its requirements would
# move the pins above, and peft imports it whenever it is importable (and then needs `datasets`).
NODEPS="autoawq==0.2.9"
stamp="$VENV/.pins-v2"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PINS $NODEPS" ]; then
  echo "oracle env: $VENV up to date ($PINS $NODEPS)"
  exit 0
fi
echo "oracle env: installing $PINS into $VENV"
"$PY" -m venv "$VENV"
# --no-cache-dir: torch's wheels with their CUDA libraries are about 3 GB; a cached copy of them beside the installed
# one doubled what the install needed on disk (a CI run ran out of space here).
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir $PINS
"$VENV/bin/pip" uninstall --quiet --yes autoawq 2>/dev/null || true
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir --no-deps --upgrade --target "$VENV/autoawq" $NODEPS
"$VENV/bin/python" -c "import torch, transformers, tokenizers, safetensors, peft; print('oracle env: torch', torch.__version__, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, 'peft', peft.__version__)"
echo "$PINS $NODEPS" > "$stamp"
