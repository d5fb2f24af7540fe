#!/usr/bin/env bash
# Set-up and the main job: installs what is missing, builds, then measures a model's perplexity.
#   scripts/setup.sh                       # default model, no network needed (see below)
#   scripts/setup.sh MODEL_DIR_OR_REPO_ID [TEXT_FILE]
# Default: the real pretrained stories260K from ../shared/data, converted to a Hugging Face Qwen2
# directory, evaluated on TinyStories; without ../shared, a small random Qwen2 model evaluated on this
# README (the numbers then only show that the pipeline runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
QQ=build/qwen-quant
SHARED=../shared/data
if [ $# -ge 1 ]; then
  MODEL="$1"
  TEXT="${2:-${SHARED}/wikitext2/wiki.test.raw}"
  [ -f "$TEXT" ] || { echo "setup: give a text file as the second argument" >&2; exit 2; }
  echo "== evaluating $MODEL on $TEXT"
  "$QQ" eval --model "$MODEL" --data "$TEXT"
  exit 0
fi
if [ -f "$SHARED/stories260K/stories260K.bin" ]; then
  MODEL=build/models/stories260K-hf
  echo "== no model given: using the real pretrained stories260K from $SHARED (offline)"
  "$QQ" import-llama2c --checkpoint "$SHARED/stories260K/stories260K.bin" \
    --tokenizer "$SHARED/stories260K/tok512.bin" --out "$MODEL" --overwrite
  "$QQ" eval --model "$MODEL" --data "$SHARED/tinystories/tinystories_val.txt" --seq-len 512
  "$QQ" generate --model "$MODEL" --prompt "Once upon a time" -n 80
else
  MODEL=build/models/random-tiny-qwen2
  echo "== no model given and no ../shared data: using a random tiny Qwen2 model made offline"
  echo "   (its perplexity is meaningless; it only shows the pipeline runs)"
  "$QQ" init-random --preset tiny --out "$MODEL" --overwrite
  "$QQ" eval --model "$MODEL" --data README.md --seq-len 256
fi
echo
echo "To evaluate a real model: scripts/setup.sh /path/to/Qwen2.5-0.5B [text file]"
echo "  (a directory with config.json + *.safetensors, or a repo id already in ~/.cache/huggingface)"
