#!/usr/bin/env bash
# `qwen-quant gptq --format compressed-tensors` on the real stories260K, read back by the Python stack: GPTQ 4-bit,
# group 64, act-order, on 32 C4 windows of 256 tokens (the MLP zero-padded from 172 to 192 channels), written once as
# GPTQ v1 and once as compressed-tensors; TinyStories perplexity of both in qwenq, and of the compressed-tensors
# directory (and the fp32 model) in transformers 4.51.3 with compressed-tensors 0.9.4 (CompressedLinear) on the same
# windows, as a vLLM or transformers user loads it. Also wall time and size of both outputs.
#   benchmarks/bench_ct_writer_stories.sh [build dir] [work dir]      env: WINDOWS (200)
# Needs ../shared/data and the oracle environment (scripts/oracle_env.sh). Writes
# benchmarks/results/<date>-compressed-tensors-writer-stories260K.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/qwenq-bench-ct-writer}
WINDOWS=${WINDOWS:-200}
source benchmarks/stories_oracle_setup.sh
res=benchmarks/results/${day}-compressed-tensors-writer-stories260K.md
text="$DATA/tinystories/tinystories_val.txt"

declare -A secs ppl
for f in gptq compressed-tensors; do
  t0=$(date +%s.%N)
  "$QQ" gptq --model "$WORK/fp32" --out "$WORK/$f" --format "$f" --desc-act --group-size 64 --pad-intermediate \
    --calib "$DATA/c4/c4_demo.jsonl" --calib-samples 32 --calib-seq-len 256 --seed 1 -q > "$WORK/$f.log" 2>&1
  secs[$f]=$(printf "%.2f" "$(echo "$(date +%s.%N) - $t0" | bc)")
  ppl[$f]=$("$QQ" eval --model "$WORK/$f" --data "$text" --seq-len 256 --max-windows "$WINDOWS" -q --json 2>/dev/null |
            sed -n 's/.*"perplexity":\([0-9.e+-]*\).*/\1/p')
done
base=$("$QQ" eval --model "$WORK/fp32" --data "$text" --seq-len 256 --max-windows "$WINDOWS" -q --json 2>/dev/null |
       sed -n 's/.*"perplexity":\([0-9.e+-]*\).*/\1/p')

# transformers on the same windows: the text tokenized whole (BOS first), cut into WINDOWS windows of 256 tokens,
# 255 next-token predictions each, as `qwen-quant eval` scores them.
hf=$("$PY" - "$WORK" "$text" "$WINDOWS" 2>/dev/null <<'PY'
import math, sys
import torch, transformers, compressed_tensors
work, path, windows = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = transformers.AutoTokenizer.from_pretrained(work + "/fp32")(open(path).read())["input_ids"]
out = []
for d in ("fp32", "compressed-tensors"):
    m, info = transformers.AutoModelForCausalLM.from_pretrained(f"{work}/{d}", torch_dtype=torch.float32,
                                                               output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor([ids[w * 256:(w + 1) * 256]])
            lp = torch.log_softmax(m.eval()(x).logits[0, :-1].double(), -1)
            nll -= lp.gather(1, x[0, 1:, None]).sum().item()
            n += x.shape[1] - 1
    out.append("%.4f" % math.exp(nll / n))
print(" ".join(out), transformers.__version__, compressed_tensors.__version__)
PY
)
read -r hf_base hf_ct tf_ver ct_ver <<< "$hf"
size() { du -b "$WORK/$1/model.safetensors" | cut -f1; }
p4() { printf "%.4f" "$1"; }
commit=$(git rev-parse --short HEAD)
{
  echo "# \`gptq --format compressed-tensors\` on stories260K, read by transformers + compressed-tensors"
  echo
  echo "Date $day, commit $commit, $(nproc)-core $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), no GPU."
  echo "\`benchmarks/bench_ct_writer_stories.sh\`: GPTQ 4-bit group 64 act-order (\`--desc-act\`), 32 C4 windows of 256"
  echo "tokens, seed 1, MLP padded 172 -> 192; TinyStories validation, $WINDOWS windows x 256 tokens."
  echo
  echo "| | fp32 | GPTQ v1 file | compressed-tensors file |"
  echo "|---|---|---|---|"
  echo "| perplexity, qwenq \`eval\` | $(p4 "$base") | ${ppl[gptq]} | ${ppl[compressed-tensors]} |"
  echo "| perplexity, transformers $tf_ver + compressed-tensors $ct_ver | $hf_base | - | $hf_ct |"
  echo "| \`qwen-quant gptq\` wall time | - | ${secs[gptq]} s | ${secs[compressed-tensors]} s |"
  echo "| model.safetensors bytes | - | $(size gptq) | $(size compressed-tensors) |"
  echo
  echo "The two files hold the same codes (the GPTQ v1 one as qweight/qzeros/scales/g_idx, the compressed-tensors one as"
  echo "weight_packed/weight_scale/weight_shape/weight_g_idx with actorder \"group\"), so qwenq's perplexities agree to"
  echo "every digit; transformers loads the compressed-tensors directory with no missing or unexpected tensor."
} > "$res"
cat "$res"
