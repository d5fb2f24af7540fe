#!/usr/bin/env bash
# Our AWQ against AutoAWQ's on the real stories260K, through `qwen-quant compare --quantized`: both quantize the same
# model (its MLP zero-padded from 172 to 192 channels, a function-preserving change AutoAWQ's GEMM packing needs) with
# w_bit 4, group 64, zero point, the scale search without the clip search (AutoAWQ's clip search asserts that every
# Linear has a multiple of 64 outputs, and stories260K's v_proj has 32), on the same calibration blocks (AutoAWQ's convention: the first 128 C4 documents of at
# most 512 tokens, concatenated and cut into 512-token blocks; `qwen-quant awq --calib-concat`), and the table scores
# both, with RTN at the same grid as the floor, on TinyStories and WikiText-2 windows.
#   benchmarks/bench_awq_vs_autoawq.sh [build dir] [work dir]      env: WINDOWS (128)
# Needs ../shared/data and the oracle environment (scripts/oracle_env.sh: torch, transformers, AutoAWQ 0.2.9, run on
# the CPU with tests/oracle/autoawq_cpu.py's fixes). Writes benchmarks/results/<date>-awq-vs-autoawq-stories260K.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/qwenq-bench-autoawq}
WINDOWS=${WINDOWS:-128}
source benchmarks/stories_oracle_setup.sh
res=benchmarks/results/${day}-awq-vs-autoawq-stories260K.md

t0=$(date +%s.%N)
PYTHONPATH=tests/oracle "$PY" - "$WORK" "$DATA/c4/c4_demo.jsonl" > "$WORK/autoawq.log" 2>&1 <<'PY'
import json, os, shutil, sys
import torch
from safetensors.torch import load_file, save_file
import autoawq_cpu
import transformers
work, c4 = sys.argv[1], sys.argv[2]
AutoAWQForCausalLM, _ = autoawq_cpu.load()
# The MLP zero-padded from 172 to 192 channels: gate/up rows and down columns of zeros (silu(0) * 0 = 0).
src, padded = os.path.join(work, "fp32"), os.path.join(work, "padded")
os.makedirs(padded, exist_ok=True)
for f in os.listdir(src):
    if f != "model.safetensors":
        shutil.copy(os.path.join(src, f), padded)
t = load_file(os.path.join(src, "model.safetensors"))
for k, v in list(t.items()):
    if k.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
        t[k] = torch.cat([v, v.new_zeros(192 - v.shape[0], v.shape[1])], 0)
    elif k.endswith("mlp.down_proj.weight"):
        t[k] = torch.cat([v, v.new_zeros(v.shape[0], 192 - v.shape[1])], 1)
save_file(t, os.path.join(padded, "model.safetensors"))
cfg = json.load(open(os.path.join(padded, "config.json")))
cfg["intermediate_size"] = 192
json.dump(cfg, open(os.path.join(padded, "config.json"), "w"), indent=2)
texts = [json.loads(line)["text"] for line in open(c4) if line.strip()]
tok = transformers.AutoTokenizer.from_pretrained(padded)
model = AutoAWQForCausalLM.from_pretrained(padded, torch_dtype=torch.float32)
model.quantize(tok, quant_config={"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"},
               calib_data=texts, max_calib_samples=128, max_calib_seq_len=512, apply_clip=False)
model.save_quantized(os.path.join(work, "autoawq"))
for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
    if os.path.exists(os.path.join(padded, f)) and not os.path.exists(os.path.join(work, "autoawq", f)):
        shutil.copy(os.path.join(padded, f), os.path.join(work, "autoawq"))
PY
t1=$(date +%s.%N)
"$QQ" awq --model "$WORK/padded" --out "$WORK/qwenq-awq" --calib "$DATA/c4/c4_demo.jsonl" --calib-concat \
  --calib-samples 128 --calib-seq-len 512 --group-size 64 --no-clip --overwrite --quiet
t2=$(date +%s.%N)
"$QQ" compare --model "$WORK/padded" --data "$DATA/tinystories/tinystories_val.txt" --data "$DATA/wikitext2/wiki.test.raw" \
  --methods rtn-g64-awq --quantized "autoawq=$WORK/autoawq" --quantized "qwenq-awq=$WORK/qwenq-awq" \
  --seq-len 512 --max-windows "$WINDOWS" --out "$WORK/cmp" > "$WORK/compare.log" 2>&1
awq_s=$(echo "$t1 - $t0" | bc); ours_s=$(echo "$t2 - $t1" | bc)
{
  echo "# AWQ: qwenq against AutoAWQ 0.2.9 on stories260K"
  echo
  echo "Date $day, commit $(git rev-parse --short HEAD), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores,"
  echo "no GPU. Made by \`benchmarks/bench_awq_vs_autoawq.sh\` (the settings are in its header): stories260K with its MLP"
  echo "zero-padded to 192, w_bit 4, group 64, zero point, the scale search without the clip search (AutoAWQ's asserts"
  echo "64-multiple output counts; stories260K's v_proj has 32), both on AutoAWQ's calibration blocks (the first 128 C4"
  echo "documents of at most 512 tokens, concatenated, cut into 512-token blocks), AutoAWQ on the CPU in fp32 with"
  echo "\`tests/oracle/autoawq_cpu.py\`'s fixes. Both files are AutoAWQ GEMM checkpoints; \`compare --quantized\` scores them"
  echo "and RTN at the same grid (\`rtn-g64-awq\`) on $WINDOWS windows of 512 tokens of each text."
  echo
  sed -n '/^| method/,/^$/p' "$WORK/cmp/compare.md"
  echo
  echo "Wall time of the quantization alone (the model is tiny: these are mostly start-up and calibration): AutoAWQ"
  echo "$(printf '%.1f' "$awq_s") s (Python, incl. the padding and imports), qwenq $(printf '%.1f' "$ours_s") s."
} > "$res"
cat "$res"
