#!/usr/bin/env bash
# qwen-qlora plan --preset with an explicit --base and --layers (the question "does a 72B QLoRA fit on 8 GPUs"),
# against arithmetic from the published architecture: Qwen2.5-72B's Linears hold 80 x (2 x 8192^2 + 2 x 1024 x 8192
# + 3 x 29568 x 8192) = 70,212,648,960 weights (plus the 2 x 152064 x 8192 embedding and lm_head: 72.7 B, the model
# card's figure), and r = 16 on all seven adds 80 x 16 x (2 x 16384 + 2 x 9216 + 3 x 37760) = 210,534,400. Each
# format's bytes per weight: bf16 2; GPTQ 4-bit g128 0.5 of codes + 2.5 per 128 (fp16 scale, packed zero) + its
# g_idx; NF4 0.5 + 1 absmax byte per 64 + the double quantization's fp32 per 256 blocks.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

plan() {  # plan NAME ARGS...: the --json plan into NAME.json
  local name="$1"; shift
  "$QL" plan --preset qwen2.5-72b --gpus 8 --json "$@" > "$WORK/$name.json" 2> "$WORK/$name.err" \
    || fail "plan $*" "$WORK/$name.err"
}
plan nf4 --base nf4
plan gptq --base gptq
plan bf16 --base bf16
plan half --base nf4 --layers 40
python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
p = {n: json.load(open(f"{w}/{n}.json")) for n in ("nf4", "gptq", "bf16", "half")}
linear = 80 * (2 * 8192**2 + 2 * 1024 * 8192 + 3 * 29568 * 8192)
assert linear == 70212648960
lora = 80 * 16 * (2 * 16384 + 2 * 9216 + 3 * 37760)
for n in ("nf4", "gptq", "bf16"):
    assert p[n]["linear_params"] == linear, (n, p[n]["linear_params"])
    assert p[n]["lora_params"] == lora, (n, p[n]["lora_params"])
    assert p[n]["base"]["format"] == n, p[n]["base"]
    assert p[n]["config"]["layers"] == 80 and p[n]["gpus"] == 8, p[n]["config"]
assert p["bf16"]["base_linear_bytes"] == 2 * linear, p["bf16"]["base_linear_bytes"]
per = {n: p[n]["base_linear_bytes"] / linear for n in ("nf4", "gptq")}
assert 0.5 + 1 / 64 < per["nf4"] < 0.5 + 1 / 64 + 4 / (64 * 256) + 1e-4, per
assert 0.5 + 2.5 / 128 < per["gptq"] < 0.5 + 2.5 / 128 + 1e-3, per
# What stays 16-bit in every format: the embedding and lm_head, 2 RMSNorms a layer and the final one, the q/k/v biases.
def dense(layers):
    return 2 * (2 * 152064 * 8192 + (2 * layers + 1) * 8192 + layers * (8192 + 2 * 1024))
for n in ("nf4", "gptq", "bf16"):
    assert p[n]["base_dense_bytes"] == dense(80), (n, p[n]["base_dense_bytes"], dense(80))
# bf16 LoRA of the 72B does not fit one 80 GB GPU; the 4-bit bases do, with the same adapter and optimizer.
assert not p["bf16"]["fits"] and p["nf4"]["fits"] and p["gptq"]["fits"], [p[n]["fits"] for n in p]
for n in ("nf4", "gptq"):
    d = p[n]["per_device"]
    # fp32 A and B, their gradients, AdamW's m and v: 4 + 4 + 8 bytes a parameter (plus the caching allocator's
    # rounding of each tensor: 0.11 % here)
    assert d["optimizer"] == 2 * d["adapters"] and d["gradients"] == d["adapters"], d
    assert 4 * lora <= d["adapters"] < 4 * lora * 1.002, (d["adapters"], 4 * lora)
# --layers 40: half the Linears and half the adapter, the same embedding.
assert p["half"]["config"]["layers"] == 40 and p["half"]["linear_params"] * 2 == linear, p["half"]["config"]
assert p["half"]["lora_params"] * 2 == lora and p["half"]["base_dense_bytes"] == dense(40), p["half"]
PY
grep -q "qwen2.5-72b (40 layers)" <("$QL" plan --preset qwen2.5-72b --base nf4 --layers 40 2>&1) \
  || fail "--layers is not in the plan's title"
if "$QL" plan --preset qwen2.5-72b --base int3 > "$WORK/bad.txt" 2>&1; then fail "--base int3 accepted" "$WORK/bad.txt"; fi
grep -q "plan: --base must be auto, bf16, gptq, awq or nf4, got 'int3'" "$WORK/bad.txt" || fail "--base int3" "$WORK/bad.txt"
# --base auto from a model directory: llm-compressor's pack-quantized Linears are planned as the GPTQ v2 Linears they
# load into (the same plan as the same codes written as gptq_v2); an FP8 compressed-tensors model is refused with what
# to plan instead.
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 > /dev/null 2>&1
"$QQ" rtn --model "$WORK/tiny" --out "$WORK/ct" --format compressed-tensors --group-size 32 --quiet > /dev/null 2>&1
"$QQ" rtn --model "$WORK/tiny" --out "$WORK/v2" --format gptq_v2 --group-size 32 --quiet > /dev/null 2>&1
"$QQ" fp8 --model "$WORK/tiny" --out "$WORK/fp8" --quiet > /dev/null 2>&1
for m in ct v2; do
  "$QL" plan --model "$WORK/$m" --device cpu --cpu-mem-gb 8 --json > "$WORK/$m.json" 2> "$WORK/$m.err" || fail "plan $m" "$WORK/$m.err"
done
python3 - "$WORK/ct.json" "$WORK/v2.json" <<'PY'
import json, sys
ct, v2 = (json.load(open(f)) for f in sys.argv[1:3])
assert ct["base"]["format"] == "gptq" and ct["base"]["bits"] == 4 and ct["base"]["group_size"] == 32, ct["base"]
ct.pop("model"), v2.pop("model")
assert ct == v2, "a compressed-tensors model is not planned as the same codes in GPTQ v2"
PY
if "$QL" plan --model "$WORK/fp8" --device cpu > "$WORK/fp8.txt" 2>&1; then fail "plan of an FP8 model accepted" "$WORK/fp8.txt"; fi
grep -q "a compressed-tensors checkpoint with float8 weights; plan the model it becomes" "$WORK/fp8.txt" \
  || fail "plan of an FP8 model" "$WORK/fp8.txt"
# PEFT's finer selection, train's flags: a last-layers adapter planned on the CPU with its own Linears (8 of tiny's
# 2 layers x 7), refused on the GPU with the reason and where to plan it; a regex naming every layer's q and v is
# planned on the GPU as --target q_proj,v_proj.
"$QL" plan --preset tiny --layers-to-transform 1 --rank-pattern '{"down_proj": 4}' --device cpu --cpu-mem-gb 8 --json \
  > "$WORK/fine.json" 2> "$WORK/fine.err" || fail "plan of a fine selection" "$WORK/fine.err"
"$QL" plan --preset tiny --device cpu --cpu-mem-gb 8 --json > "$WORK/all.json" 2> "$WORK/all.err" \
  || fail "plan all-linear" "$WORK/all.err"
python3 - "$WORK/fine.json" "$WORK/all.json" <<'PY'
import json, sys
fine, full = (json.load(open(f)) for f in sys.argv[1:3])
lora = fine["lora"]
assert lora["adapted_linears"] == 7 and full["lora"]["adapted_linears"] == 14, (lora, full["lora"])
assert "layers_to_transform [1]" in lora["selection"] and 'rank_pattern {"down_proj":4}' in lora["selection"], lora
# tiny: C 64, I 128, q 64, kv 32; layer 1's q, k, v, o, gate, up at r 16 and down_proj at r 4
per = 16 * ((64 + 64) + (32 + 64) * 2 + (64 + 64) + (128 + 64) * 2) + 4 * (64 + 128)
assert fine["lora_params"] == per and full["lora_params"] == 2 * 16 * ((64 + 64) * 2 + (32 + 64) * 2 + (128 + 64) * 3), \
    (fine["lora_params"], per, full["lora_params"])
PY
if "$QL" plan --preset tiny --layers-to-transform 1 > "$WORK/fine_gpu.txt" 2>&1; then
  fail "a GPU plan of a layer subset accepted" "$WORK/fine_gpu.txt"
fi
grep -q "other Linears in some layers than in others.*(plan it with --device cpu)" "$WORK/fine_gpu.txt" \
  || fail "GPU plan of a layer subset" "$WORK/fine_gpu.txt"
"$QL" plan --preset tiny --target-regex 'model\.layers\.\d+\.self_attn\.[qv]_proj' --json > "$WORK/regex.json" \
  2> "$WORK/regex.err" || fail "GPU plan of a uniform regex" "$WORK/regex.err"
"$QL" plan --preset tiny --target q_proj,v_proj --json > "$WORK/qv.json" 2> "$WORK/qv.err" || fail "plan q,v" "$WORK/qv.err"
python3 - "$WORK/regex.json" "$WORK/qv.json" <<'PY'
import json, sys
regex, listed = (json.load(open(f)) for f in sys.argv[1:3])
assert regex["device"] == listed["device"] and regex["lora_params"] == listed["lora_params"], (regex, listed)
PY
if "$QL" plan --preset tiny --target q_proj --target-regex 'q_proj' > "$WORK/both.txt" 2>&1; then
  fail "--target with --target-regex accepted" "$WORK/both.txt"
fi
grep -q "give --target or --target-regex, not both" "$WORK/both.txt" || fail "--target with --target-regex" "$WORK/both.txt"
echo "plan CLI: OK"
