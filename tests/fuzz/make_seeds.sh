#!/usr/bin/env bash
# Fills OUT with the fixtures and seed inputs of the fuzz targets (tests/fuzz/fuzz_targets.h):
#   OUT/models/{dense,gptq,awq,nf4}   a random tiny Qwen2 model (1 layer, bf16) and its 4-bit copies (qwen-quant rtn
#                                     GPTQ and AWQ layouts, groups of 32; nf4)
#   OUT/models/ct                     the GPTQ copy rewritten in compressed-tensors' pack-quantized layout
#   OUT/models/fp8                    the dense model with block-wise FP8 Linears (seeded bytes, F32 block scales)
#   OUT/tokenizer                     the real Qwen2 tokenizer from SHARED/data when present, else the tiny model's
#   OUT/chat/{qwen2.5,qwen3}          that tokenizer with Qwen2.5's and Qwen3's chat templates (tests/data/chat_templates)
#   OUT/tokenizer_features/*          tests/oracle/test_tokenizer_features_oracle.py's hand-written tokenizer.json files:
#                                     byte-level with lstrip/rstrip/single_word/special added tokens, and Metaspace
#                                     pipelines without byte fallback (<unk>)
#   OUT/adapter                       a PEFT adapter for the dense model (qwen-qlora train, 1 step)
#   OUT/seeds/gguf                    the dense model as GGUF files (qwen-quant gguf: q4_0, q8_0, f16)
#   OUT/seeds/imatrix                 the dense model's importance matrix (qwen-quant imatrix), GGUF and legacy .dat
#   OUT/seeds/kld                     the dense model's KL-divergence base file (qwen-quant eval --save-kld), 2 chunks
#   OUT/llama2c/{tiny.bin,tok.bin}    a tiny llama2.c checkpoint written here and stories260K's tok512.bin (SHARED only)
#   OUT/seeds/<target>                the seed inputs of each target (':' in a target's name becomes '-')
#   tests/fuzz/make_seeds.sh BUILD OUT [SHARED]      (BUILD holds qwen-quant and qwen-qlora; python3 writes binaries)
set -euo pipefail
BUILD=$1 OUT=$2 SHARED=${3:-}
QQ="$BUILD/qwen-quant" QL="$BUILD/qwen-qlora"
rm -rf "$OUT" && mkdir -p "$OUT/models" "$OUT/seeds" "$OUT/llama2c"
log="$OUT/make_seeds.log"
"$QQ" init-random --preset tiny --layers 1 --seed 3 --out "$OUT/models/dense" >> "$log" 2>&1
"$QQ" rtn --model "$OUT/models/dense" --out "$OUT/models/gptq" --group-size 32 --format gptq -q >> "$log" 2>&1
"$QQ" rtn --model "$OUT/models/dense" --out "$OUT/models/awq" --group-size 32 --format awq -q >> "$log" 2>&1
"$QQ" nf4 --model "$OUT/models/dense" --out "$OUT/models/nf4" -q >> "$log" 2>&1
mkdir -p "$OUT/seeds/gguf"
for t in q4_0 q8_0 f16; do
  "$QQ" gguf --model "$OUT/models/dense" --out "$OUT/seeds/gguf/dense-$t.gguf" --type $t -q >> "$log" 2>&1
done
mkdir -p "$OUT/seeds/imatrix"
for i in $(seq 1 30); do echo "the cat sat on the mat number $i and looked around at the garden."; done > "$OUT/imatrix.txt"
for f in gguf dat; do
  "$QQ" imatrix --model "$OUT/models/dense" --calib "$OUT/imatrix.txt" --ctx 64 --out "$OUT/seeds/imatrix/dense.$f" \
    --output-format $f -q >> "$log" 2>&1
done
mkdir -p "$OUT/seeds/kld"
"$QQ" eval --model "$OUT/models/dense" --data "$OUT/imatrix.txt" --seq-len 16 --max-windows 2 \
  --save-kld "$OUT/seeds/kld/dense.kld" -q >> "$log" 2>&1
if [ -n "$SHARED" ] && [ -d "$SHARED/data/qwen2-tokenizer" ]; then
  cp -r "$SHARED/data/qwen2-tokenizer" "$OUT/tokenizer"
else
  mkdir -p "$OUT/tokenizer" && cp "$OUT"/models/dense/{vocab.json,merges.txt,tokenizer_config.json} "$OUT/tokenizer/"
fi

for t in qwen2.5 qwen3; do
  mkdir -p "$OUT/chat/$t" && cp "$OUT"/tokenizer/{vocab.json,merges.txt} "$OUT/chat/$t/"
  python3 - "$OUT/tokenizer/tokenizer_config.json" "$(dirname "$0")/../data/chat_templates/$t.jinja" \
    "$OUT/chat/$t/tokenizer_config.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["chat_template"] = open(sys.argv[2]).read()
json.dump(d, open(sys.argv[3], "w"))
PY
done

seed() { mkdir -p "$OUT/seeds/$1" && printf '%s' "$3" > "$OUT/seeds/$1/$2"; }
seed classify single.jsonl '{"text": "a cat", "label": "cat"}
{"text": "a dog", "label": "dog"}'
seed classify named.jsonl '{"text": "a cat", "label": "a"}
{"text": "a dog", "label": 1}'
seed classify multi.jsonl '{"text": "a cat and a dog", "label": ["a", "b"]}
{"text": "the sun", "label": []}'
seed classify regression.jsonl '{"text": "short", "label": 0.25}
{"text": "longer text", "label": -3}'
seed classify regression2.jsonl '{"text": "two values", "label": [1, -2.5]}
{"text": "and two more", "label": [0.5, 4]}'
seed classify labels.json '{"id2label": {"0": "neg", "1": "pos"}, "problem_type": "multi_label_classification"}'
seed sft alpaca.json '[{"instruction": "Name a color.", "input": "", "output": "Blue."}, {"instruction": "Add", "input": "1 2", "output": "3"}]'
seed sft chat.jsonl '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
{"instruction": "x", "output": "y"}'
seed sft tools.jsonl '{"tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": 1.5}}}], "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": null, "reasoning_content": "r", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": [1, "y"]}}}, {"name": "g", "arguments": "raw"}]}, {"role": "tool", "content": "out"}, {"role": "user", "content": "<tool_response>\nz\n</tool_response>"}, {"role": "assistant", "content": "<think>\nt\n</think>\n\nfinal"}]}'
seed sft pc.jsonl '{"prompt": "Q: 1+1\nA:", "completion": " 2"}
{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}'
seed sft text.jsonl '{"text": "Once upon a time there was a cat."}
{"text": "The end."}'
seed text a.txt ' = Title =
 Some text , with @-@ tokens and numbers 1 @,@ 000 .'
seed text b.jsonl '{"text": "calibration document one"}
{"text": "two", "meta": {"x": 1}}
{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>a"}]}'
seed tokenizer a.txt 'Hello world! 123 4567 — naïve café 🦙 <|im_start|>user
  tabs	and   spaces'
seed generation_config qwen2.json '{"bos_token_id": 151643, "do_sample": true, "eos_token_id": [151645, 151643], "pad_token_id": 151643, "repetition_penalty": 1.1, "temperature": 0.5, "top_k": 40, "top_p": 0.7}'
seed generation_config greedy.json '{"bos_token_id": 1, "eos_token_id": 2, "do_sample": false, "repetition_penalty": 1.3}'
seed generation_config minp.json '{"do_sample": true, "temperature": 1.2, "top_k": 0, "top_p": 1.0, "min_p": 0.05, "eos_token_id": null}'
seed tokenizer b.txt '<|endoftext|><|im_end|>ÅÉÎ  日本語のテキスト'
python3 - "$OUT/tokenizer_features" "$(dirname "$0")/../oracle" <<'PY'
import json, os, sys
sys.path.insert(0, sys.argv[2])
import test_tokenizer_features_oracle as f  # only its tokenizer.json builders are used (no Hugging Face import)
for name, tj in (("byte", f.byte_level_tokenizer_json()),
                 ("sp-first", f.sentencepiece_tokenizer_json("first", True, True, eos=False)),
                 ("sp-always", f.sentencepiece_tokenizer_json("always", False, False, eos=True))):
    os.makedirs(os.path.join(sys.argv[1], name), exist_ok=True)
    with open(os.path.join(sys.argv[1], name, "tokenizer.json"), "w", encoding="utf-8") as out:
        json.dump(tj, out, ensure_ascii=False)
PY
seed tokenizer_features a.txt 'a <L> b  x<R>   y <LR> cat catalog concat <|sw|>a<|sw|> <|sp|><|s dog  dog <s>hi</s>'
seed tokenizer_features b.txt '  the cat  in   the dog.  Über <L><L>  ▁x  日本'

mkdir -p "$OUT/seeds/text" "$OUT/seeds/sft"
{ cat "$OUT/seeds/sft/text.jsonl"; echo; } > "$OUT/data.jsonl"
for i in $(seq 1 40); do echo "{\"text\": \"the cat sat on the mat number $i and looked around.\"}"; done >> "$OUT/data.jsonl"
"$QL" train --model "$OUT/models/dense" --data "$OUT/data.jsonl" --out "$OUT/adapter" --max-steps 1 --seq-len 64 \
  --lora-r 4 --target all-linear -q >> "$log" 2>&1

python3 - "$OUT" "${SHARED:-}" <<'PY'
import os, shutil, struct, sys
out, shared = sys.argv[1], sys.argv[2]
def header(path):
    b = open(path, "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    return b[8:8 + n]
def put(target, name, data):
    d = os.path.join(out, "seeds", target.replace(":", "-"))
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(data)
# models/ct: the GPTQ copy rewritten as compressed-tensors pack-quantized (int4 symmetric, group 32): each Linear's
# int32 words and fp16 scales transposed (compressed-tensors packs along each row), zeros and g_idx dropped.
import array, json
def read_st(path):
    b = open(path, "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8:8 + n]), b[8 + n:]
def transposed(data, rows, cols, code):
    a = array.array(code, data)
    return array.array(code, (a[r * cols + c] for c in range(cols) for r in range(rows))).tobytes()
def write_st(directory, tensors):
    width = {"I64": 8, "I32": 4, "F32": 4, "F16": 2, "BF16": 2}
    order = sorted(tensors, key=lambda n: (-width.get(tensors[n][0], 1), n))  # every tensor aligned to its element
    entries, offset = {}, 0
    for n in order:
        entries[n] = {"dtype": tensors[n][0], "shape": tensors[n][1],
                      "data_offsets": [offset, offset + len(tensors[n][2])]}
        offset += len(tensors[n][2])
    hb = json.dumps(entries).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + b"".join(tensors[n][2] for n in order))
def copy_side_files(src, dst):
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f != "model.safetensors":
            shutil.copy(os.path.join(src, f), dst)
meta, payload = read_st(os.path.join(out, "models", "gptq", "model.safetensors"))
tensors = {}
for name, t in meta.items():
    if name == "__metadata__":
        continue
    data = payload[t["data_offsets"][0]:t["data_offsets"][1]]
    prefix, leaf = name.rsplit(".", 1)
    rows, cols = (t["shape"] + [1])[:2]
    if leaf == "qweight":
        tensors[prefix + ".weight_packed"] = ("I32", [cols, rows], transposed(data, rows, cols, "i"))
        tensors[prefix + ".weight_shape"] = ("I64", [2], struct.pack("<2q", cols, rows * 8))
    elif leaf == "scales":
        tensors[prefix + ".weight_scale"] = ("F16", [cols, rows], transposed(data, rows, cols, "H"))
    elif leaf not in ("qzeros", "g_idx"):
        tensors[name] = (t["dtype"], t["shape"], data)
ct = os.path.join(out, "models", "ct")
copy_side_files(os.path.join(out, "models", "gptq"), ct)
write_st(ct, tensors)
cfg = json.load(open(os.path.join(ct, "config.json")))
cfg["quantization_config"] = {
    "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
    "ignore": ["lm_head", "re:.*mlp[.]gate$"], "kv_cache_scheme": None,
    "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "output_activations": None,
                                  "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                                              "group_size": 32, "dynamic": False, "actorder": None}}}}
json.dump(cfg, open(os.path.join(ct, "config.json"), "w"), indent=2)
# models/fp8: the dense model's Linears as block-wise FP8 (quant_method fp8, blocks of 32 x 48: partial blocks both
# ways): seeded finite float8 bytes (not a rounding of the weights; the readers' checks are what is fuzzed) and F32
# scales.
meta, payload = read_st(os.path.join(out, "models", "dense", "model.safetensors"))
tensors, state = {}, 12345
for name, t in meta.items():
    if name == "__metadata__":
        continue
    data = payload[t["data_offsets"][0]:t["data_offsets"][1]]
    if name.startswith("model.layers.") and name.endswith("_proj.weight"):
        n, k = t["shape"]
        codes = bytearray(n * k)
        for i in range(n * k):
            state = (state * 1103515245 + 12345) % 2**31
            codes[i] = (state >> 16) & 0xFF
            if codes[i] & 0x7F == 0x7F:
                codes[i] &= 0xFE  # not NaN
        tensors[name] = ("F8_E4M3", [n, k], bytes(codes))
        sn, sk = -(-n // 32), -(-k // 48)
        tensors[name + "_scale_inv"] = ("F32", [sn, sk], struct.pack("<%df" % (sn * sk), *[1e-3] * (sn * sk)))
    else:
        tensors[name] = (t["dtype"], t["shape"], data)
fp8 = os.path.join(out, "models", "fp8")
copy_side_files(os.path.join(out, "models", "dense"), fp8)
write_st(fp8, tensors)
cfg = json.load(open(os.path.join(fp8, "config.json")))
cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                              "weight_block_size": [32, 48]}
json.dump(cfg, open(os.path.join(fp8, "config.json"), "w"), indent=2)
for m in ("dense", "gptq", "awq", "nf4", "ct", "fp8"):
    put("model_config:" + m, "config.json", open(os.path.join(out, "models", m, "config.json"), "rb").read())
    put("model_header:" + m, "header.json", header(os.path.join(out, "models", m, "model.safetensors")))
    put("safetensors", m + ".safetensors", open(os.path.join(out, "models", m, "model.safetensors"), "rb").read())
# config.json with each rope_scaling type the loader accepts (kernels/rope_table.h), as more seeds of the dense model.
dense_cfg = json.load(open(os.path.join(out, "models", "dense", "config.json")))
for name, rs in (("yarn", {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}),
                 ("yarn_attn", {"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.3, "beta_fast": 16}),
                 ("linear", {"rope_type": "linear", "factor": 2.0}),
                 ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64})):
    put("model_config:dense", "config_rope_" + name + ".json", json.dumps(dict(dense_cfg, rope_scaling=rs)).encode())
put("adapter_config", "adapter_config.json", open(os.path.join(out, "adapter", "adapter_config.json"), "rb").read())
# The same adapter selected by PEFT's finer fields (lora/lora_select.h), each choosing the Linears and ranks the file
# holds (a seed must load): every layer listed, a rank pattern of its own rank, an alpha pattern, an exclusion of a
# module it lacks, a regex target.
acfg = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
layers = json.load(open(os.path.join(out, "models", "dense", "config.json")))["num_hidden_layers"]
for name, extra in (("layers", {"layers_to_transform": list(range(layers)), "layers_pattern": "layers"}),
                    ("patterns", {"rank_pattern": {"q_proj": acfg["r"]}, "alpha_pattern": {"v_proj": 4},
                                  "exclude_modules": ["lm_head"]}),
                    ("regex", {"target_modules": r".*\.(q|k|v|o|gate|up|down)_proj", "exclude_modules": r"lm_.*"})):
    put("adapter_config", "adapter_config_" + name + ".json", json.dumps(dict(acfg, **extra)).encode())
put("adapter_header", "header.json", header(os.path.join(out, "adapter", "adapter_model.safetensors")))
put("safetensors", "adapter.safetensors", open(os.path.join(out, "adapter", "adapter_model.safetensors"), "rb").read())
# A llama2.c checkpoint: dim 8, hidden 16, 1 layer, 2 heads, 1 kv head, vocab 512 (tok512's), seq_len 4.
dim, hidden, L, H, Hkv, V, seq = 8, 16, 1, 2, 1, 512, 4
D = dim // H
sizes = [V * dim, L * dim, L * dim * dim, L * Hkv * D * dim, L * Hkv * D * dim, L * dim * dim, L * dim,
         L * hidden * dim, L * dim * hidden, L * hidden * dim, dim, seq * D // 2, seq * D // 2]
vals = [((i * 2654435761) % 1000) / 500.0 - 1.0 for i in range(sum(sizes))]
tiny = struct.pack("<7i", dim, hidden, L, H, Hkv, V, seq) + struct.pack("<%df" % len(vals), *vals)
open(os.path.join(out, "llama2c", "tiny.bin"), "wb").write(tiny)
put("llama2c", "tiny.bin", tiny)
tok = os.path.join(shared, "data", "stories260K", "tok512.bin") if shared else ""
if tok and os.path.exists(tok):
    shutil.copy(tok, os.path.join(out, "llama2c", "tok.bin"))
    put("llama2c_tokenizer", "tok512.bin", open(tok, "rb").read())
PY
echo "fuzz fixtures and seeds in $OUT"
