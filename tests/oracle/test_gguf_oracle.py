"""Oracle: `qwen-quant gguf` files and our GGUF reading against gguf-py 0.17.1, llama.cpp's own Python package.

1. Tiny random Qwen2 (untied, q/k/v biases, GQA), Qwen3 (q/k norms, head_dim 32 != hidden/heads) and Llama (GQA,
   untied) models are made with transformers and written by `qwen-quant gguf --type T` for T in f32, f16, bf16, q8_0,
   q4_0, q4_1, q5_0, q5_1, q4_k_m, q6_k. gguf-py's GGUFReader parses each file; we check the metadata llama.cpp reads
   against config.json, every tensor's name, shape and type against convert_hf_to_gguf.py's / llama-quantize's rules
   as restated here (expected_type; these 64-wide models send every k-quant to its fallback), Llama's q/k rows
   permuted with convert_hf_to_gguf's own formula, and every tensor's bytes against gguf.quants.quantize of the
   Hugging Face weight: bit for bit (Q4_0/Q5_0: up to 0.1 % of bytes, where gguf-py's float64 rounding differs from
   llama.cpp's fp32, which we follow: tests/test_gguf_kquants.cpp). The tokenizer keys: tokens = the vocabulary,
   merges = merges.txt. `qwen-quant eval` of the F32 file gives the directory's perplexity exactly.
   `--split-max-size` writes gguf-split's layout (checked with gguf-py: key types, metadata in the first file, tensors).
   Tiny Qwen3-MoE (8 experts: llama-quantize's 8-expert rules) and Qwen2-MoE (shared expert) models as qwen3moe /
   qwen2moe files: names in gguf-py's lists for the architecture, expert stacks, keys, types and bytes likewise.
2. A file gguf-py writes (GGUFWriter) with the llama.cpp k-quant, 5-bit and IQ4 types, whose quantizers gguf-py lacks
   (Q4_K, Q5_K, Q6_K, Q5_0, Q5_1, Q2_K, Q3_K, IQ4_NL, IQ4_XS; our quantizers' bytes are llama.cpp's,
   tests/test_gguf_kquants.cpp), and Q8_0, Q4_0, Q4_1 (random blocks reach every code; all with sane fp16 scales),
   is read by `qwen-quant dequantize`: every tensor equals
   gguf.quants.dequantize bit for bit, and `qwen-quant eval` runs on the file itself.
3. Every metadata value type, both ways: gguf-py writes a file with each scalar type at its range's edges, an array
   of each, an array of arrays and general.alignment 64 (tensors then on 64-byte offsets), which our reader must
   give back value for value (GgufOracle.EveryValueTypeBothWays, the C++ half); that test writes every type the
   other way, alignment 64 included, and gguf-py's GGUFReader must read each value and the tensor back.
Exit 0 pass, 1 fail, 77 skip (torch/transformers/gguf not importable).
"""
import json
import os
import shutil

from oracle_common import check, finish, parse_args, run, run_gtest, skip, spread_weights, work_dir

args = parse_args(__doc__)
try:
    import numpy as np
    import torch
    import transformers
    import gguf
    from gguf import GGMLQuantizationType as QT, GGUFReader, GGUFWriter
    from gguf.quants import dequantize, quantize
    from safetensors.numpy import load_file
except Exception as e:  # pragma: no cover
    skip(f"torch/transformers/gguf not usable ({type(e).__name__}: {e}); scripts/oracle_env.sh installs them")

print("transformers", transformers.__version__, "gguf-py", getattr(gguf, "__version__", "0.17.1"))
qq = os.path.join(args.build, "qwen-quant")
out = work_dir(args.build, "gguf_oracle")
torch.manual_seed(4321)

# A byte-level tokenizer for the models (320 ids: 256 bytes, no merges, Qwen's specials).
tok_dir = os.path.join(out, "tok")
run([qq, "init-random", "--preset", "tiny", "--out", tok_dir, "--overwrite"])
TOK_FILES = [f for f in os.listdir(tok_dir) if f != "model.safetensors" and f != "config.json"]


def make_model(name, config_cls, model_cls, **cfg):
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    model = model_cls(config_cls(**cfg)).eval()
    spread_weights(model)
    model.save_pretrained(d, safe_serialization=True)
    for f in TOK_FILES:
        shutil.copy(os.path.join(tok_dir, f), d)
    return d


from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,  # noqa: E402
                          Qwen3Config, Qwen3ForCausalLM)

common = dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-6)
models = {
    "qwen2": make_model("qwen2", Qwen2Config, Qwen2ForCausalLM, intermediate_size=96, num_attention_heads=4,
                        num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=False, **common),
    "qwen3": make_model("qwen3", Qwen3Config, Qwen3ForCausalLM, intermediate_size=172, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=32, rope_theta=1e6, tie_word_embeddings=True, **common),
    "llama": make_model("llama", LlamaConfig, LlamaForCausalLM, intermediate_size=96, num_attention_heads=4,
                        num_key_value_heads=2, rope_theta=5e5, tie_word_embeddings=False, **common),
}

LAYER_NAMES = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight", "self_attn.q_proj.bias": "attn_q.bias",
               "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
               "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_norm.weight": "attn_q_norm.weight",
               "self_attn.k_norm.weight": "attn_k_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
               "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
# File type -> (base ggml type, llama-quantize's rules?, general.file_type).
TYPES = {"f32": (QT.F32, False, 0), "f16": (QT.F16, False, 1), "bf16": (QT.BF16, False, 32),
         "q8_0": (QT.Q8_0, False, 7), "q4_0": (QT.Q4_0, True, 2), "q4_1": (QT.Q4_1, True, 3),
         "q5_0": (QT.Q5_0, True, 8), "q5_1": (QT.Q5_1, True, 9), "q4_k_m": (QT.Q4_K, True, 15),
         "q6_k": (QT.Q6_K, True, 18)}
FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}
# gguf-py computes Q4_0/Q5_0's x/d + offset in float64 (its FIXME: "rounding is cursed and depends on FMA"); llama.cpp's
# x86 build (and we) round it in fp32, so a code can differ where the sum lands within an ulp of an integer.
ROUNDING_DIFFERS = (QT.Q4_0, QT.Q5_0)


def expected_type(tname, g, shape, tied, n_layers, n_expert=0):
    """The type convert_hf_to_gguf.py / llama-quantize (no imatrix) give a tensor, restated from llama.cpp (a MoE
    router always F32; with exactly 8 experts attn_v and attn_k Q8_0 and q4_k_m's attn_output Q5_K)."""
    base, llama_quantize, _ = TYPES[tname]
    if len(shape) == 1 or g.endswith("ffn_gate_inp.weight"):
        return QT.F32
    ne0 = shape[-1]
    t = base
    if llama_quantize:
        layer = int(g.split(".")[1]) if g.startswith("blk.") else 0
        more = layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2
        if g == "output.weight" or (g == "token_embd.weight" and tied):
            t = QT.Q6_K
        elif n_expert == 8 and (g.endswith("attn_v.weight") or g.endswith("attn_k.weight")):
            t = QT.Q8_0
        elif n_expert == 8 and g.endswith("attn_output.weight") and tname == "q4_k_m":
            t = QT.Q5_K
        elif tname == "q4_k_m" and (g.endswith("attn_v.weight") or "ffn_down" in g) and more:
            t = QT.Q6_K
        if ne0 % gguf.GGML_QUANT_SIZES[t][0] != 0:
            t = FALLBACK.get(t, t)
    if ne0 % gguf.GGML_QUANT_SIZES[t][0] != 0:
        t = QT.F16
    return t


def check_bytes(where, g, t, w):
    """Tensor t of our file (of the expected type) against the weight rows w [rows, K]: bit for bit against
    gguf.quants.quantize (Q4_0/Q5_0: up to 0.1 % of bytes), the k-quants (no gguf-py quantizer) by their round trip."""
    want = t.tensor_type
    if want in (QT.Q4_K, QT.Q5_K, QT.Q6_K):
        back = dequantize(np.asarray(t.data), want).reshape(w.shape)
        rel = float(np.sqrt(((back - w) ** 2).sum() / (w ** 2).sum()))
        check(rel < 0.15, f"{where}: {g} ({want.name}) round trip relative error {rel:.3f}")
        return
    a = np.frombuffer(np.asarray(t.data).tobytes(), np.uint8)
    b = np.frombuffer(np.ascontiguousarray(quantize(w, want)).tobytes(), np.uint8)
    differ = int((a != b).sum()) if len(a) == len(b) else len(b)
    allowed = len(b) // 1000 if want in ROUNDING_DIFFERS else 0
    check(differ <= allowed, f"{where}: {g} ({want.name}) bytes differ from gguf.quants.quantize: "
                             f"{differ} of {len(b)} bytes (allowed {allowed})")


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    return f"blk.{parts[2]}." + LAYER_NAMES[".".join(parts[3:])]


def llama_permute(w, n_head):  # convert_hf_to_gguf.py's LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


for arch, d in models.items():
    cfg = json.load(open(os.path.join(d, "config.json")))
    weights = load_file(os.path.join(d, "model.safetensors"))
    vocab = json.load(open(os.path.join(d, "vocab.json")))
    tied = "lm_head.weight" not in weights
    for tname, (qt, _, file_type) in TYPES.items():
        path = os.path.join(out, f"{arch}-{tname}.gguf")
        run([qq, "gguf", "--model", d, "--out", path, "--type", tname, "--overwrite", "--quiet"])
        r = GGUFReader(path)
        where = f"{arch} {tname}"
        check(field(r, "general.architecture") == arch, f"{where}: architecture {field(r, 'general.architecture')}")
        check(field(r, "general.file_type") == file_type, f"{where}: file_type {field(r, 'general.file_type')}")
        for key, want in [("block_count", cfg["num_hidden_layers"]), ("embedding_length", cfg["hidden_size"]),
                          ("feed_forward_length", cfg["intermediate_size"]),
                          ("context_length", cfg["max_position_embeddings"]),
                          ("attention.head_count", cfg["num_attention_heads"]),
                          ("attention.head_count_kv", cfg["num_key_value_heads"])]:
            check(field(r, f"{arch}.{key}") == want, f"{where}: {key} {field(r, f'{arch}.{key}')} != {want}")
        check(field(r, f"{arch}.rope.freq_base") == np.float32(cfg["rope_theta"]), f"{where}: rope.freq_base")
        check(field(r, f"{arch}.attention.layer_norm_rms_epsilon") == np.float32(cfg["rms_norm_eps"]), f"{where}: eps")
        if arch == "qwen3":
            check(field(r, "qwen3.attention.key_length") == 32, f"{where}: key_length")
        tokens = field(r, "tokenizer.ggml.tokens")
        check(len(tokens) == cfg["vocab_size"], f"{where}: {len(tokens)} tokens")
        check(all(tokens[i] == t for t, i in vocab.items()), f"{where}: tokens differ from vocab.json")
        check(field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "qwen2",
              f"{where}: tokenizer model/pre")
        merges = [l for l in open(os.path.join(d, "merges.txt"), encoding="utf-8").read().split("\n")
                  if l and not l.startswith("#version")]
        check(list(field(r, "tokenizer.ggml.merges") or []) == merges, f"{where}: merges")

        tensors = {t.name: t for t in r.tensors}
        expected_names = set()
        for hf, w in weights.items():
            g = gguf_name(hf)
            expected_names.add(g)
            if g not in tensors:
                check(False, f"{where}: {g} ({hf}) missing")
                continue
            t = tensors[g]
            w = w.astype(np.float32)
            if arch == "llama" and hf.endswith("q_proj.weight"):
                w = llama_permute(w, cfg["num_attention_heads"])
            if arch == "llama" and hf.endswith("k_proj.weight"):
                w = llama_permute(w, cfg["num_key_value_heads"])
            want = expected_type(tname, g, w.shape, tied, cfg["num_hidden_layers"])
            check(t.tensor_type == want, f"{where}: {g} is {t.tensor_type.name}, expected {want.name}")
            check(list(t.shape) == list(reversed(w.shape)), f"{where}: {g} shape {list(t.shape)} for {w.shape}")
            if t.tensor_type == want:
                check_bytes(where, g, t, w)
        check(set(tensors) == expected_names, f"{where}: extra tensors {sorted(set(tensors) - expected_names)}")
    # Read back: the F32 file scores exactly as the directory (Qwen3's q/k norms, Llama's q/k rows put back).
    words = os.path.join(out, f"{arch}-words.txt")
    open(words, "w").write(" ".join(f"word{i % 37} and more text" for i in range(300)))
    ppl = []
    for m in (d, os.path.join(out, f"{arch}-f32.gguf")):
        ppl.append(json.loads(run([qq, "eval", "--model", m, "--data", words, "--seq-len", "128", "--json",
                                   "--quiet"]))["perplexity"])
    check(ppl[0] == ppl[1], f"{arch}: perplexity of the F32 GGUF {ppl[1]} != the directory's {ppl[0]}")
    print(f"{arch}: {len(TYPES)} file types checked; perplexity {ppl[0]:.6f} from both", flush=True)

# Mixtures of experts as llama.cpp's qwen3moe / qwen2moe: every tensor name is one of gguf-py's for the architecture,
# the experts of a layer stacked into ffn_{gate,up,down}_exps (ne {K, N, E}: the experts' rows one after another), the
# router and qwen2moe's shared-expert gate F32, the expert keys llama.cpp reads, every tensor's type by the rules above
# and its bytes gguf.quants.quantize's of the stacked weights; the F32 file scores exactly as the directory.
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM  # noqa: E402

moe_models = {
    "qwen3moe": make_model("qwen3moe", Qwen3MoeConfig, Qwen3MoeForCausalLM, intermediate_size=96,
                           moe_intermediate_size=64, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e6,
                           tie_word_embeddings=False, **common),
    "qwen2moe": make_model("qwen2moe", Qwen2MoeConfig, Qwen2MoeForCausalLM, intermediate_size=96,
                           moe_intermediate_size=32, shared_expert_intermediate_size=96, num_experts=4,
                           num_experts_per_tok=2, norm_topk_prob=False, num_attention_heads=4, num_key_value_heads=2,
                           rope_theta=1e6, tie_word_embeddings=True, **common),
}
MOE_NAMES = {"mlp.gate.weight": "ffn_gate_inp.weight", "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
             "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
             "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
             "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight"}
MOE_TYPES = ("f32", "q8_0", "q4_0", "q4_k_m")
for arch, d in moe_models.items():
    cfg = json.load(open(os.path.join(d, "config.json")))
    weights = load_file(os.path.join(d, "model.safetensors"))
    E = cfg["num_experts"]
    # The GGUF tensors the directory calls for: experts stacked [E, N, K], the shared-expert gate a vector.
    want_tensors = {}
    for hf, w in weights.items():
        parts = hf.split(".")
        rest = ".".join(parts[3:]) if hf.startswith("model.layers.") else ""
        if rest.startswith("mlp.experts."):
            if parts[5] != "0":
                continue
            kind = parts[6]  # gate_proj, up_proj, down_proj
            g = f"blk.{parts[2]}.ffn_{kind[:-5]}_exps.weight"
            want_tensors[g] = np.stack([weights[f"model.layers.{parts[2]}.mlp.experts.{e}.{kind}.weight"]
                                        for e in range(E)]).astype(np.float32)
        elif rest in MOE_NAMES:
            g = f"blk.{parts[2]}.{MOE_NAMES[rest]}"
            want_tensors[g] = w.astype(np.float32).reshape(-1) if rest == "mlp.shared_expert_gate.weight" \
                else w.astype(np.float32)
        else:
            want_tensors[gguf_name(hf)] = w.astype(np.float32)
    gguf_arch = {a_name: a for a, a_name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    known = {gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[gguf_arch]
             for b in range(cfg["num_hidden_layers"])}
    check(all(g.rsplit(".", 1)[0] in known for g in want_tensors),
          f"{arch}: names outside gguf-py's {arch} list: {sorted(g for g in want_tensors if g.rsplit('.', 1)[0] not in known)}")
    for tname in MOE_TYPES:
        qt, _, file_type = TYPES[tname]
        path = os.path.join(out, f"{arch}-{tname}.gguf")
        run([qq, "gguf", "--model", d, "--out", path, "--type", tname, "--overwrite", "--quiet"])
        r = GGUFReader(path)
        where = f"{arch} {tname}"
        check(field(r, "general.architecture") == arch, f"{where}: architecture {field(r, 'general.architecture')}")
        keys = [("expert_count", E), ("expert_used_count", cfg["num_experts_per_tok"]),
                ("expert_feed_forward_length", cfg["moe_intermediate_size"]), ("block_count", cfg["num_hidden_layers"]),
                ("feed_forward_length", cfg["intermediate_size"])]
        if arch == "qwen2moe":
            keys.append(("expert_shared_feed_forward_length", cfg["shared_expert_intermediate_size"]))
        else:
            keys.append(("attention.key_length", 32))
        for key, want in keys:
            check(field(r, f"{arch}.{key}") == want, f"{where}: {key} {field(r, f'{arch}.{key}')} != {want}")
        tensors = {t.name: t for t in r.tensors}
        check(set(tensors) == set(want_tensors),
              f"{where}: tensors {sorted(set(tensors) ^ set(want_tensors))} differ from the expected set")
        for g, w in want_tensors.items():
            if g not in tensors:
                continue
            t = tensors[g]
            want = expected_type(tname, g, w.shape, cfg["tie_word_embeddings"], cfg["num_hidden_layers"], E)
            check(t.tensor_type == want, f"{where}: {g} is {t.tensor_type.name}, expected {want.name}")
            check(list(t.shape) == list(reversed(w.shape)), f"{where}: {g} shape {list(t.shape)} for {w.shape}")
            if t.tensor_type == want:
                check_bytes(where, g, t, w.reshape(-1, w.shape[-1]))  # a stack: its experts' rows one after another
    words = os.path.join(out, f"{arch}-words.txt")
    open(words, "w").write(" ".join(f"word{i % 37} and more text" for i in range(300)))
    ppl = [json.loads(run([qq, "eval", "--model", m, "--data", words, "--seq-len", "128", "--json", "--quiet"]))
           ["perplexity"] for m in (d, os.path.join(out, f"{arch}-f32.gguf"))]
    check(ppl[0] == ppl[1], f"{arch}: perplexity of the F32 GGUF {ppl[1]} != the directory's {ppl[0]}")
    print(f"{arch}: {len(MOE_TYPES)} file types checked; perplexity {ppl[0]:.6f} from both", flush=True)

# Split files (--split-max-size, gguf-split's layout): gguf-py reads each; the keys' types are llama.cpp's (u16, u16,
# i32), the metadata only in the first, and the tensors of all files are the single file's, byte for byte.
single = GGUFReader(os.path.join(out, "qwen2-q8_0.gguf"))
prefix = os.path.join(out, "qwen2-q8_0-split")
for f in os.listdir(out):
    if f.startswith("qwen2-q8_0-split-"):
        os.remove(os.path.join(out, f))
run([qq, "gguf", "--model", models["qwen2"], "--out", prefix + ".gguf", "--type", "q8_0", "--split-max-size", "0.00004",
     "--quiet"])
parts = sorted(f for f in os.listdir(out) if f.startswith("qwen2-q8_0-split-"))
n = len(parts)
check(n > 2 and parts[0] == f"qwen2-q8_0-split-00001-of-{n:05d}.gguf", f"split names {parts}")
seen = {}
for i, name in enumerate(parts):
    r = GGUFReader(os.path.join(out, name))
    for key, want_type, want in (("split.no", gguf.GGUFValueType.UINT16, i),
                                 ("split.count", gguf.GGUFValueType.UINT16, n),
                                 ("split.tensors.count", gguf.GGUFValueType.INT32, len(single.tensors))):
        fld = r.fields.get(key)
        check(fld is not None and fld.types[0] == want_type and fld.contents() == want, f"{name}: {key}")
    check(("general.architecture" in r.fields) == (i == 0), f"{name}: metadata only in the first file")
    for t in r.tensors:
        seen[t.name] = np.asarray(t.data).tobytes()
check(seen == {t.name: np.asarray(t.data).tobytes() for t in single.tensors}, "split tensors differ from the single file's")
print(f"split: {n} files, {len(seen)} tensors", flush=True)

# 2. Types we only read, in a file gguf-py writes: the k-quants need rows of 256 values.
d256 = make_model("qwen2_256", Qwen2Config, Qwen2ForCausalLM, intermediate_size=512, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True, vocab_size=320, hidden_size=256,
                  num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-6)
base = os.path.join(out, "qwen2_256-f32.gguf")
run([qq, "gguf", "--model", d256, "--out", base, "--type", "f32", "--overwrite", "--quiet"])
src = GGUFReader(base)
kq = os.path.join(out, "qwen2_256-kquants.gguf")
w = GGUFWriter(kq, "qwen2")
for key, f in src.fields.items():
    if key.startswith("GGUF.") or key == "general.architecture":
        continue
    if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.data) == 0:
        continue  # gguf-py writes no empty arrays (this tokenizer has no merges)
    w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
rng = np.random.default_rng(7)
# Where each type keeps its fp16 scales (d, and dmin / m), so random blocks decode to sane values.
SCALE_BYTES = {QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q2_K: [80, 82],
               QT.Q3_K: [108], QT.IQ4_NL: [0], QT.IQ4_XS: [0], QT.Q8_0: [0], QT.Q4_0: [0], QT.Q4_1: [0, 2]}
# Q8_0, Q4_0 and Q4_1 too: random blocks reach every code, which quantized weights may not.
cycle = [QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q5_0, QT.Q5_1, QT.Q2_K, QT.Q3_K, QT.IQ4_NL, QT.IQ4_XS, QT.Q8_0, QT.Q4_0,
         QT.Q4_1]
written = {}
n_linear = 0
for t in src.tensors:
    data = np.asarray(t.data)
    if len(t.shape) == 1:
        w.add_tensor(t.name, np.array(data, dtype=np.float32))
        written[t.name] = (QT.F32, np.array(data, dtype=np.float32))
        continue
    if t.name == "token_embd.weight":
        qt = QT.Q6_K
    else:
        qt, n_linear = cycle[n_linear % len(cycle)], n_linear + 1
    block, size = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = int(t.shape[1]), int(t.shape[0])
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for at in SCALE_BYTES[qt]:
        raw[..., at:at + 2] = np.float16(0.002 * (1 + at)).reshape(1).view(np.uint8)
    raw = raw.reshape(rows, cols // block * size)
    w.add_tensor(t.name, raw, raw_dtype=qt)
    written[t.name] = (qt, dequantize(raw, qt))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
dense = os.path.join(out, "qwen2_256-dense")
run([qq, "dequantize", "--model", kq, "--out", dense, "--dtype", "fp32", "--overwrite", "--quiet"])
got = load_file(os.path.join(dense, "model.safetensors"))
for hf, val in got.items():
    qt, ref = written[gguf_name(hf)]
    check(val.shape == ref.shape and np.array_equal(val, ref),
          f"k-quant file: {hf} ({qt.name}) differs from gguf.quants.dequantize: max |d| "
          f"{float(np.abs(val - ref).max()) if val.shape == ref.shape else 'shape ' + str(val.shape)}")
print("read types:", sorted({qt.name for qt, _ in written.values()}))
text = os.path.join(out, "words.txt")
open(text, "w").write(" ".join(["the cat sat on the mat"] * 200))
run([qq, "eval", "--model", kq, "--data", text, "--seq-len", "128", "--quiet"])

# 3. Every value type both ways.
from gguf import GGUFValueType as VT  # noqa: E402

types_dir = os.path.join(out, "value-types")
os.makedirs(types_dir, exist_ok=True)
scalars = [  # (key, type, value): the edges of each range
    ("p.u8", VT.UINT8, 255), ("p.i8", VT.INT8, -128), ("p.u16", VT.UINT16, 65535), ("p.i16", VT.INT16, -32768),
    ("p.u32", VT.UINT32, 2**32 - 1), ("p.i32", VT.INT32, -2**31), ("p.u64", VT.UINT64, 2**64 - 1),
    ("p.i64", VT.INT64, -2**63), ("p.f32", VT.FLOAT32, 3.0517578125e-05), ("p.f64", VT.FLOAT64, 0.1),
    ("p.bool", VT.BOOL, True), ("p.str", VT.STRING, "Ġthe 你好 ▁x \"q\"\n"),
]
arrays = [  # (key, element type, values)
    ("p.arr.u8", VT.UINT8, [0, 1, 255]), ("p.arr.i8", VT.INT8, [-128, 0, 127]), ("p.arr.u16", VT.UINT16, [65535, 2]),
    ("p.arr.i16", VT.INT16, [-32768, 32767]), ("p.arr.u32", VT.UINT32, [2**32 - 1, 0]),
    ("p.arr.i32", VT.INT32, [-2**31, 2**31 - 1]), ("p.arr.u64", VT.UINT64, [2**64 - 1, 3]),
    ("p.arr.i64", VT.INT64, [-2**63, 2**63 - 1]), ("p.arr.f32", VT.FLOAT32, [0.5, -2.25, 1e-30]),
    ("p.arr.f64", VT.FLOAT64, [0.1, -1e300]), ("p.arr.bool", VT.BOOL, [True, False]),
    ("p.arr.str", VT.STRING, ["", "a b", "▁x"]),
]
w = GGUFWriter(os.path.join(types_dir, "ggufpy.gguf"), "qwen2")
w.add_custom_alignment(64)
expected = {"kv": {}, "tensors": []}
for key, t, v in scalars:
    w.add_key_value(key, v, t)
    expected["kv"][key] = {"type": int(t), "value": float(np.float32(v)) if t == VT.FLOAT32 else v}
for key, t, vs in arrays:
    w.add_key_value(key, vs, VT.ARRAY, sub_type=t)
    vals = [float(np.float32(x)) for x in vs] if t == VT.FLOAT32 else [int(x) for x in vs] if t == VT.BOOL else vs
    expected["kv"][key] = {"type": int(VT.ARRAY), "elem": int(t), "values": vals}
w.add_key_value("p.nested", [[1, 2], [3]], VT.ARRAY)  # an array of arrays of int32
expected["kv"]["p.nested"] = {"type": int(VT.ARRAY), "elem": int(VT.ARRAY), "nested": True}
expected["kv"]["general.alignment"] = {"type": int(VT.UINT32), "value": 64}
trng = np.random.default_rng(7)
for name, shape in (("a.weight", (3, 5)), ("b.weight", (7,))):  # 60 and 28 bytes: the next one starts padded
    arr = trng.standard_normal(shape).astype(np.float32)
    w.add_tensor(name, arr)
    expected["tensors"].append({"name": name, "ne": list(reversed(shape)), "values": arr.ravel().tolist()})
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
json.dump(expected, open(os.path.join(types_dir, "expected.json"), "w"))
run_gtest(args.build, "GgufOracle.EveryValueTypeBothWays", env={"QWENQ_ORACLE_GGUF_TYPES_DIR": types_dir})
ours = json.load(open(os.path.join(types_dir, "ours.json")))
r = GGUFReader(os.path.join(types_dir, "ours.gguf"))
check(r.alignment == 64, f"ours.gguf: gguf-py reads alignment {r.alignment}, not 64")
for key, e in ours["kv"].items():
    f = r.fields.get(key)
    if not check(f is not None, f"ours.gguf: gguf-py finds no key {key}"):
        continue
    check(int(f.types[0]) == e["type"], f"ours.gguf {key}: gguf-py reads type {f.types[0]!r}, we wrote {e['type']}")
    if e["type"] == int(VT.ARRAY):
        check(int(f.types[-1]) == e["elem"], f"ours.gguf {key}: element type {f.types[-1]!r}, we wrote {e['elem']}")
        got = list(f.contents())
        want = e["values"]
    else:
        got, want = f.contents(), e["value"]
    check(got == want, f"ours.gguf {key}: gguf-py reads {got!r}, we wrote {want!r}")
for t in ours["tensors"]:
    rt = next((x for x in r.tensors if x.name == t["name"]), None)
    if check(rt is not None, f"ours.gguf: gguf-py finds no tensor {t['name']}"):
        check([int(n) for n in rt.shape] == t["ne"] and rt.data_offset % 64 == 0
              and np.array_equal(np.asarray(rt.data, dtype=np.float32).ravel(), np.asarray(t["values"], np.float32)),
              f"ours.gguf: tensor {t['name']} shape {list(rt.shape)}, offset {rt.data_offset} or values differ")
print("value types: both ways,", len(expected["kv"]), "keys from gguf-py,", len(ours["kv"]), "from us")
finish()
