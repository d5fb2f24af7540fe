"""Oracle: checkpoints written by the `compressed-tensors` library itself (what llm-compressor saves) load in qwenq
with the weights and logits that library's own decompression gives.

1. transformers builds a tiny random Qwen2 (hidden 128, 4 heads of 32, 2 KV heads, MLP 256, 2 layers), fp32.
2. For each scheme below compressed-tensors 0.9.4 attaches its quantization parameters (apply_quantization_config),
   we fill the scales and zero points with its calculate_qparams from each group's min and max, and its
   ModelCompressor compresses the state dict and writes quantization_config (update_config), as llm-compressor's
   save does. lm_head is ignored, as llm-compressor's recipes do.
     w4_g32_actorder  pack-quantized int4 symmetric, group 32, actorder "group" (a shuffled weight_g_idx), BF16 scales
     w4_g32_asym      pack-quantized int4 asymmetric, group 32 (packed zero points), BF16 scales
     w2_g16           pack-quantized int2 symmetric, group 16, BF16 scales
     w8_channel_pack  pack-quantized int8 symmetric, per channel, BF16 scales
     w8a8_int         int-quantized int8 per channel + dynamic per-token int8 activations (W8A8), BF16 scales
     fp8_dynamic      float-quantized float8 e4m3 per channel + dynamic per-token activations (FP8-dynamic)
     fp8_tensor       float-quantized float8 e4m3 per tensor, weights only
     w4_channel_f32   pack-quantized int4 per channel with F32 scales that fp16 cannot hold (qwenq keeps fp32 ŵ)
3. expected.safetensors in each directory: every quantized Linear's ŵ as compressed-tensors' decompress_weight computes
   it with the scales widened to fp32 (its own unpack_from_int32 + dequantize for the packed zero points, which 0.9.4's
   decompressor refuses), and the fp32 logits of the dense transformers model holding those ŵ. The gtest
   CompressedTensorsOracle.* loads each directory with qwenq and requires ŵ bit for bit and the logits within 1e-5.
4. Where transformers itself runs the checkpoint (weight-only symmetric schemes, through compressed-tensors'
   CompressedLinear), its logits are checked against that reference too: they differ only by the rounding of ŵ to the
   scales' dtype that CompressedLinear applies.
5. The other way: `qwen-quant rtn|gptq|awq --format compressed-tensors` write the same fp32 model (rtn int4 group 32
   symmetric and asymmetric, int8 per channel, int2 group 16; GPTQ with act-order; AWQ). The library must parse each
   quantization_config to the weight arguments asked for and decompress every Linear to ŵ within the grid's error of
   the fp32 weights; those ŵ and their dense logits are the expected values of the same gtest (qwenq reading its own
   file gives the library's ŵ bit for bit), and transformers loads the symmetric ones with no missing or unexpected
   tensor and logits near the reference.
   `qwen-quant fp8` writes float8 weights: per channel as compressed-tensors FP8_DYNAMIC and in Qwen's block-wise
   "fp8"; every code and scale equals torch's own float8 cast of the same weights, and the library decompresses the
   FP8_DYNAMIC file to the ŵ qwenq loads (the gtest, "ours_fp8_dynamic").
6. `qwen-quant rtn` from the library's float8 checkpoints writes the bytes it writes from their dequantized model, and
   `compare` from one describes it as float8.
Exit 0 pass, 1 fail, 77 skip (torch/transformers/compressed-tensors missing).
"""
import json
import os
import random
import shutil

from oracle_common import check, finish, parse_args, run, run_gtest, skip, spread_weights, work_dir

args = parse_args(__doc__)
try:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    import compressed_tensors
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.quantized_compressors.pack_quantized import unpack_from_int32
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.utils import calculate_qparams
except ImportError as e:
    skip(f"torch/transformers/compressed-tensors not importable: {e}")
print("torch", torch.__version__, "transformers", transformers.__version__, "compressed-tensors",
      compressed_tensors.__version__)

root = work_dir(args.build, "compressed_tensors")
cfg = transformers.Qwen2Config(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                               tie_word_embeddings=False, torch_dtype="float32")
torch.manual_seed(11)
base = transformers.Qwen2ForCausalLM(cfg).float().eval()
spread_weights(base)
base_state = {k: v.clone() for k, v in base.state_dict().items()}
ids = torch.tensor([[1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 99, 250, 0, 318]], dtype=torch.int64)


DYN_INT = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
DYN_FP8 = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
CASES = [  # name, format, weight args, input activations, scale dtype
    ("w4_g32_actorder", "pack-quantized",
     QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32, actorder="group"),
     None, torch.bfloat16),
    ("w4_g32_asym", "pack-quantized",
     QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32), None, torch.bfloat16),
    ("w2_g16", "pack-quantized",
     QuantizationArgs(num_bits=2, type="int", symmetric=True, strategy="group", group_size=16), None, torch.bfloat16),
    ("w8_channel_pack", "pack-quantized",
     QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel"), None, torch.bfloat16),
    ("w8a8_int", "int-quantized",
     QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel"), DYN_INT, torch.bfloat16),
    ("fp8_dynamic", "float-quantized",
     QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel"), DYN_FP8, torch.bfloat16),
    ("fp8_tensor", "float-quantized",
     QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="tensor"), None, torch.bfloat16),
    ("w4_channel_f32", "pack-quantized",
     QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="channel"), None, torch.float32),
]


def group_columns(K, a, g_idx):
    """The input columns of each scale column."""
    if a.strategy == "group":
        return [torch.nonzero(g_idx == g).flatten() for g in range(K // a.group_size)]
    return [torch.arange(K)]


def fill_qparams(module, a, scale_dtype, gen):
    w = module.weight.data
    N, K = w.shape
    g_idx = None
    if a.strategy == "group":
        g_idx = torch.arange(K) // a.group_size
        if a.actorder is not None:
            g_idx = g_idx[torch.randperm(K, generator=gen)]
            module.weight_g_idx.data = g_idx.to(module.weight_g_idx.dtype)
    if a.strategy == "tensor":
        mn, mx = w.amin().reshape(1), w.amax().reshape(1)
    else:
        cols = group_columns(K, a, g_idx)
        mn = torch.stack([w[:, c].amin(1) for c in cols], 1)
        mx = torch.stack([w[:, c].amax(1) for c in cols], 1)
    s, zp = calculate_qparams(mn, mx, a)
    s = s.to(scale_dtype).to(torch.float32)  # the stored scale dtype's values, so the codes are made with them
    module.weight_scale.data = s.reshape(module.weight_scale.shape).to(module.weight_scale.dtype)
    module.weight_zero_point.data = zp.reshape(module.weight_zero_point.shape).to(module.weight_zero_point.dtype)


def expected_weight(sd, prefix, a, fmt, comp):
    """ŵ as compressed-tensors decompresses it, scales widened to fp32."""
    scale = sd[prefix + ".weight_scale"].to(torch.float32)
    g_idx = sd.get(prefix + ".weight_g_idx")
    if fmt == "pack-quantized":
        shape = torch.Size(sd[prefix + ".weight_shape"].tolist())
        q = unpack_from_int32(sd[prefix + ".weight_packed"], a.num_bits, shape)
        zp = None
        if not a.symmetric:
            zp = unpack_from_int32(sd[prefix + ".weight_zero_point"], a.num_bits, (shape[0], scale.shape[-1]),
                                   packed_dim=0)
        w = dequantize(x_q=q, scale=scale, zero_point=zp, g_idx=g_idx)
        if a.symmetric:  # the library's own decompressor (0.9.4 refuses packed zero points)
            data = {"weight_packed": sd[prefix + ".weight_packed"], "weight_scale": scale,
                    "weight_shape": sd[prefix + ".weight_shape"]}
            if g_idx is not None:
                data["weight_g_idx"] = g_idx
            check(torch.equal(comp.quantization_compressor.decompress_weight(data, a), w),
                  f"{prefix}: decompress_weight differs from unpack_from_int32 + dequantize")
        return w
    data = {"weight": sd[prefix + ".weight"], "weight_scale": scale}
    return comp.quantization_compressor.decompress_weight(data, a)


def logits_of(state):
    m = transformers.Qwen2ForCausalLM(cfg).float().eval()
    m.load_state_dict(state)
    with torch.no_grad():
        return m(ids).logits[0].contiguous()


for name, fmt, wargs, act, scale_dtype in CASES:
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    model = transformers.Qwen2ForCausalLM(cfg).float().eval()
    model.load_state_dict(base_state)
    qc = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=wargs,
                                                                         input_activations=act)},
                            ignore=["lm_head"], format=fmt)
    apply_quantization_config(model, qc)
    gen = torch.Generator().manual_seed(3)
    linears = []
    for mname, module in model.named_modules():
        if getattr(module, "quantization_scheme", None) is not None:
            fill_qparams(module, wargs, scale_dtype, gen)
            linears.append(mname)
    comp = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    sd = comp.compress(model)
    sd = {k: (v.to(scale_dtype) if k.endswith(".weight_scale") else v).contiguous() for k, v in sd.items()}
    model.save_pretrained(out, state_dict=sd, safe_serialization=True)
    comp.update_config(out)
    qcfg = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    print(name, "format", qcfg["format"], "tensors of q_proj:",
          sorted(k.split("q_proj.")[1] + ":" + str(v.dtype).replace("torch.", "") + str(list(v.shape))
                 for k, v in sd.items() if k.startswith("model.layers.0.self_attn.q_proj.")))

    expected, dense = {}, dict(base_state)
    for prefix in linears:
        w = expected_weight(sd, prefix, wargs, fmt, comp).to(torch.float32).contiguous()
        expected[prefix] = w
        dense[prefix + ".weight"] = w
    ref = logits_of(dense)
    expected["input_ids"] = ids[0].to(torch.int32)
    expected["logits"] = ref
    save_file(expected, os.path.join(out, "expected.safetensors"))

    if act is None and wargs.symmetric:
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            got = hf(ids).logits[0]
        err = (got - ref).abs().max().item()
        print(f"{name}: transformers (CompressedLinear) vs the fp32-scale reference: max |diff| {err:.3g}, "
              f"max |logit| {ref.abs().max().item():.3g}")
        check(err <= 2e-2 * ref.abs().max().item(), f"{name}: transformers' logits are far from the reference")

# 5. Checkpoints qwenq writes (`qwen-quant rtn|gptq|awq --format compressed-tensors`) from the same fp32 model: the
#    library parses their quantization_config, decompresses every Linear (the expected ŵ and logits for the gtest, as
#    above), and transformers loads the symmetric ones with no missing or unexpected tensor.
qq = os.path.join(args.build, "qwen-quant")
src = os.path.join(root, "ours_source")
base.save_pretrained(src, safe_serialization=True)
tk = os.path.join(root, "tokenizer-source")  # the byte-level BPE of `qwen-quant init-random` (vocab 320)
run([qq, "init-random", "--preset", "tiny", "--out", tk, "--overwrite"])
for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
    shutil.copy(os.path.join(tk, f), src)
calib = os.path.join(root, "calib.txt")
rng = random.Random(5)
words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "to", "see", "big", "red", "dog"]
with open(calib, "w") as fh:
    for _ in range(400):
        fh.write(" ".join(rng.choice(words) for _ in range(12)) + ".\n")
CAL = ["--calib", calib, "--calib-samples", "8", "--calib-seq-len", "64"]
OURS = [  # name, qwen-quant arguments, the weight args the file must declare
    ("ours_rtn_w4_g32", ["rtn", "--group-size", "32"],
     dict(num_bits=4, symmetric=True, strategy="group", group_size=32, actorder=None)),
    ("ours_rtn_w4_g32_asym", ["rtn", "--group-size", "32", "--asym"],
     dict(num_bits=4, symmetric=False, strategy="group", group_size=32, actorder=None)),
    ("ours_rtn_w8_channel", ["rtn", "--bits", "8", "--group-size", "-1"],
     dict(num_bits=8, symmetric=True, strategy="channel", group_size=None, actorder=None)),
    ("ours_rtn_w2_g16", ["rtn", "--bits", "2", "--group-size", "16"],
     dict(num_bits=2, symmetric=True, strategy="group", group_size=16, actorder=None)),
    ("ours_gptq_actorder", ["gptq", "--group-size", "32", "--desc-act"] + CAL,
     dict(num_bits=4, symmetric=True, strategy="group", group_size=32, actorder="group")),
    ("ours_awq", ["awq", "--group-size", "32"] + CAL,
     dict(num_bits=4, symmetric=False, strategy="group", group_size=32, actorder=None)),
]
for name, qargs, want in OURS:
    out = os.path.join(root, name)
    run([qq] + qargs + ["--model", src, "--out", out, "--format", "compressed-tensors", "--overwrite", "--quiet"])
    comp = ModelCompressor.from_pretrained(out)
    qcfg = comp.quantization_config
    check(qcfg.format == "pack-quantized" and list(qcfg.config_groups) == ["group_0"] and qcfg.ignore == ["lm_head"],
          f"{name}: format {qcfg.format}, groups {list(qcfg.config_groups)}, ignore {qcfg.ignore}")
    wargs = qcfg.config_groups["group_0"].weights
    got = {k: (getattr(wargs, k).value if hasattr(getattr(wargs, k), "value") else getattr(wargs, k)) for k in want}
    check(got == want and wargs.type == "int", f"{name}: the library reads weights {got}, expected {want}")
    sd = load_file(os.path.join(out, "model.safetensors"))
    linears = sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight_packed")})
    check(len(linears) == 14, f"{name}: {len(linears)} packed Linears, expected 14")
    # The dense model: the file's other tensors (AWQ's scaled norms) and the library's ŵ.
    expected = {}
    dense = {k: v.to(torch.float32) for k, v in sd.items() if ".weight_" not in k}
    rel = []
    for prefix in linears:
        w = expected_weight(sd, prefix, wargs, "pack-quantized", comp).to(torch.float32).contiguous()
        expected[prefix] = w
        dense[prefix + ".weight"] = w
        orig = base_state[prefix + ".weight"]
        rel.append(((w - orig).norm() / orig.norm()).item())
    if name != "ours_awq":  # AWQ's ŵ are of W·diag(s), its norms divided by s
        # The grid's rounding error, not a layout error: a transposed or misplaced code would be O(1).
        print(f"{name}: relative error of the library's ŵ against the fp32 weights: max {max(rel):.3g}")
        check(max(rel) < (0.6 if want["num_bits"] == 2 else 0.2), f"{name}: ŵ far from the weights ({max(rel):.3g})")
    ref = logits_of(dense)
    fp32 = logits_of(base_state)
    gap = ((ref - fp32).norm() / fp32.norm()).item()
    print(f"{name}: logits of the library's model against the fp32 model's: relative RMS difference {gap:.3g}")
    # For AWQ the check that its scaled Linears and norms still compute the model (codes of the wrong outputs give 1.3).
    check(want["num_bits"] == 2 or gap < 0.35, f"{name}: the quantized model is far from the fp32 one")
    expected["input_ids"] = ids[0].to(torch.int32)
    expected["logits"] = ref
    save_file(expected, os.path.join(out, "expected.safetensors"))
    if want["symmetric"]:  # compressed-tensors 0.9.4 cannot load packed zero points (see above)
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32,
                                                                     output_loading_info=True)
        check(not info["missing_keys"] and not info["unexpected_keys"],
              f"{name}: transformers: missing {info['missing_keys'][:4]}, unexpected {info['unexpected_keys'][:4]}")
        with torch.no_grad():
            got_logits = hf.eval()(ids).logits[0]
        err = (got_logits - ref).abs().max().item()
        print(f"{name}: transformers (CompressedLinear) vs the fp32-scale reference: max |diff| {err:.3g}, "
              f"max |logit| {ref.abs().max().item():.3g}")
        check(err <= 2e-2 * ref.abs().max().item(), f"{name}: transformers' logits are far from the reference")

# 5b. `qwen-quant fp8` (compressed-tensors FP8_DYNAMIC per channel, and Qwen's block-wise fp8 in blocks of 32): every
#     code and scale is what torch computes from the same fp32 weights (scale = max(amax / 448, eps), codes
#     (w / scale).clamp(-448, 448).to(float8_e4m3fn)); the FP8_DYNAMIC directory also goes to the gtest like the above.
def torch_fp8(w, bn, bk):
    N, K = w.shape
    scales = torch.empty((N + bn - 1) // bn, (K + bk - 1) // bk)
    codes = torch.empty(N, K, dtype=torch.float8_e4m3fn)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            blk = w[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk]
            s = torch.clamp(blk.abs().max() / 448.0, min=torch.finfo(torch.float32).eps)
            scales[i, j] = s
            codes[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk] = (blk / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return codes, scales


for name, fargs, scale_key in (("ours_fp8_dynamic", [], "weight_scale"),
                               ("ours_fp8_block", ["--format", "fp8", "--block", "32"], "weight_scale_inv")):
    out = os.path.join(root, name)
    run([qq, "fp8", "--model", src, "--out", out, "--overwrite", "--quiet"] + fargs)
    sd = load_file(os.path.join(out, "model.safetensors"))
    linears = sorted({k[:-len(".weight")] for k, v in sd.items() if v.dtype == torch.float8_e4m3fn})
    check(len(linears) == 14, f"{name}: {len(linears)} float8 Linears, expected 14")
    bad = 0
    for prefix in linears:
        w = base_state[prefix + ".weight"]
        bn, bk = (1, w.shape[1]) if scale_key == "weight_scale" else (32, 32)
        codes, scales = torch_fp8(w, bn, bk)
        same = torch.equal(sd[prefix + ".weight"].view(torch.uint8), codes.view(torch.uint8)) and \
            torch.equal(sd[prefix + "." + scale_key], scales)
        bad += not same
    check(bad == 0, f"{name}: {bad} Linears whose codes or scales differ from torch's float8 cast")
    print(f"{name}: {len(linears)} Linears, codes and scales equal to torch's float8 cast: {bad == 0}")
    if name == "ours_fp8_dynamic":
        comp = ModelCompressor.from_pretrained(out)
        wargs = comp.quantization_config.config_groups["group_0"].weights
        iargs = comp.quantization_config.config_groups["group_0"].input_activations
        check(comp.quantization_config.format == "float-quantized" and wargs.type == "float" and
              wargs.strategy == "channel" and iargs.dynamic and iargs.strategy == "token",
              f"{name}: the library reads {comp.quantization_config.format}, {wargs}, {iargs}")
        expected, dense = {}, {k: v.to(torch.float32) for k, v in sd.items()
                               if v.dtype != torch.float8_e4m3fn and not k.endswith(".weight_scale")}
        for prefix in linears:
            w = expected_weight(sd, prefix, wargs, "float-quantized", comp).to(torch.float32).contiguous()
            expected[prefix] = w
            dense[prefix + ".weight"] = w
        expected["input_ids"] = ids[0].to(torch.int32)
        expected["logits"] = logits_of(dense)
        save_file(expected, os.path.join(out, "expected.safetensors"))

# 6. The library's float8 checkpoints are quantizer sources: `qwen-quant rtn` from them writes the same bytes as from
#    their `dequantize`d fp32 model (each Linear read as ŵ, its weight_scale dropped).
for name in ("fp8_dynamic", "fp8_tensor"):
    d = os.path.join(root, name)
    run([qq, "rtn", "--model", d, "--out", d + "-rtn", "--group-size", "32", "--overwrite", "--quiet"])
    run([qq, "dequantize", "--model", d, "--out", d + "-dense", "--dtype", "fp32", "--overwrite", "--quiet"])
    run([qq, "rtn", "--model", d + "-dense", "--out", d + "-dense-rtn", "--group-size", "32", "--overwrite", "--quiet"])
    same = open(os.path.join(d + "-rtn", "model.safetensors"), "rb").read() == \
        open(os.path.join(d + "-dense-rtn", "model.safetensors"), "rb").read()
    check(same, f"{name}: rtn from the float8 checkpoint differs from rtn of its dequantized model")
# `compare` from a float8 model: its row says so, and the methods start from its ŵ.
fp8 = os.path.join(root, "fp8_dynamic")
for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
    shutil.copy(os.path.join(tk, f), fp8)
run([qq, "compare", "--model", fp8, "--methods", "rtn-g32", "--data", calib, "--seq-len", "64", "--out",
     os.path.join(root, "fp8_compare"), "--threads", "1"])
rows = {r["method"]: r for r in json.load(open(os.path.join(root, "fp8_compare", "compare.json")))["rows"]}
check(rows["original"]["format"] == "compressed-tensors float8" and rows["original"]["bits"] == 8,
      f"compare: the float8 original is described as {rows['original']['format']}, {rows['original']['bits']} bits")

run_gtest(args.build, "CompressedTensorsOracle.*", env={"QWENQ_ORACLE_CT_DIR": root})
finish()
