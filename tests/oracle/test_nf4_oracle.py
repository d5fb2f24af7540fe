"""Oracle: our bitsandbytes NF4/FP4 checkpoints against an independent numpy reading of REFERENCE A3, and
against bitsandbytes itself when it imports.

The gtest Nf4Oracle.* quantizes three seeded random [96, 172] weights (16512 = 258 blocks of 64, so the second
nested block of 256 holds 2; block 5 is all zero) as nf4, nf4 + double quantization and fp4, and writes
model.safetensors in the layout transformers saves, expected.safetensors with the source and our dequantized
fp32 weights, and config.json with the quantization_config. This script, written from the published
description and not from our C++:
  * checks every tensor's dtype and shape (A3.4), the code books against the published constants (A3.1), the
    nested map against bnb's create_dynamic_map rebuilt with torch (A3.3), and the quant_state JSON (key order,
    and the bytes equal json.dumps of the parsed object, i.e. Python's formatting);
  * dequantizes with numpy (nibbles high first, dyn[q]·nested_absmax[i // 256] + offset, code·absmax, float32)
    and requires bit-exact equality with our dequantized weights;
  * re-quantizes the source with numpy the way bnb's torch backend does (absmax, x = clamp(w·(1/absmax), -1, 1),
    argmin |x - code|; mean/argmin for the nested scales) and requires the same codes and scales, except for
    values within 1e-6 of a decision boundary (bnb's CUDA kernel and its torch fallback differ there too) and
    the all-zero block, where we store the zero code;
  * with bitsandbytes (CPU support from 0.46): QuantState.from_dict + dequantize_4bit on our NF4 tensors must
    give our weights bit for bit, quantize_4bit on the source must give our codes and scales (same exceptions),
    create_dynamic_map must equal our nested_quant_map, and BitsAndBytesConfig must accept our config.
Exit 0 pass, 1 fail, 77 skip (numpy or safetensors missing).
"""
import json
import os

from oracle_common import check, finish, parse_args, run_gtest, skip, work_dir

args = parse_args(__doc__)
try:
    import numpy as np
    from safetensors.numpy import load_file
except ImportError as e:
    skip(f"numpy/safetensors not importable: {e}")
try:
    import torch
except ImportError:
    torch = None
bnb = None
try:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_f
except Exception as e:  # absent, or broken without a GPU
    print(f"bitsandbytes not usable ({type(e).__name__}: {e}); numpy checks only")
    bnb = None
print("numpy", np.__version__, "torch", torch.__version__ if torch else "(absent)",
      "bitsandbytes", bnb.__version__ if bnb else "(absent)")

F32 = np.float32
N, K = 96, 172
NUMEL = N * K
BLOCK, NESTED = 64, 256
ZERO_BLOCK = 5
LAYERS = [("model.layers.0.mlp.down_proj", "nf4", False),
          ("model.layers.0.self_attn.q_proj", "nf4", True),
          ("model.layers.0.mlp.up_proj", "fp4", False)]

# A3.1: the published NF4 values, and FP4 = raw / 12 (index 8 is +0).
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=F32)
FP4_RAW = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=F32)
FP4 = (FP4_RAW / F32(12)).astype(F32)
CODE = {"nf4": NF4, "fp4": FP4}



def bits_equal(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def dynamic_map_torch():
    """bnb create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) from its definition (A3.3)."""
    data = []
    for e in range(7):
        bounds = torch.linspace(0.1, 1, 2 ** e + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (e - 6)) * means).tolist()
        data += (-(10 ** (e - 6)) * means).tolist()
    data += [0, 1.0]
    data.sort()
    return torch.tensor(data, dtype=torch.float32).numpy()


def unpack(packed, n):
    flat = packed.reshape(-1)
    q = np.empty(flat.size * 2, dtype=np.uint8)
    q[0::2] = flat >> 4
    q[1::2] = flat & 0x0F
    return q[:n]


def per_block(values, block, n):
    return np.repeat(values, block)[:n]


def block_absmax(w, block):
    pad = (-w.size) % block
    return np.abs(np.concatenate([w, np.zeros(pad, dtype=F32)])).reshape(-1, block).max(axis=1).astype(F32)


def nearest(x, code):
    """argmin |x - code| in float32, first index on ties (torch.argmin)."""
    return np.argmin(np.abs(x[:, None] - code[None, :]), axis=1).astype(np.uint8)


def near_boundary(x, code, tol=1e-6):
    """Values whose two nearest code entries are within tol of equidistant."""
    d = np.sort(np.abs(x[:, None].astype(np.float64) - code[None, :].astype(np.float64)), axis=1)
    return d[:, 1] - d[:, 0] < tol


def scaled(w, absmax, block):
    a = per_block(absmax, block, w.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(w * (F32(1) / a), F32(-1), F32(1)).astype(F32)


def compare_codes(name, got, want, x, code, allowed):
    """Codes must agree except where `allowed`, where both name the same value (FP4's +0 and -0), or where x
    sits within 1e-6 of a decision boundary."""
    diff = (got != want) & ~allowed
    same_value = diff & (code[got] == code[want])
    unexplained = diff & ~same_value & ~near_boundary(x, code)
    print(f"{name}: {int(np.count_nonzero(got != want))} codes differ: {int(np.count_nonzero((got != want) & allowed))} "
          f"in the zero block, {int(np.count_nonzero(same_value))} naming the same value, "
          f"{int(np.count_nonzero(diff & ~same_value) - np.count_nonzero(unexplained))} at a decision boundary, "
          f"{int(np.count_nonzero(unexplained))} unexplained")
    check(not unexplained.any(), f"{name}: codes differ at {np.nonzero(unexplained)[0][:10].tolist()}")


d = work_dir(args.build, "nf4_oracle")
for f in ("model.safetensors", "expected.safetensors", "config.json"):
    if os.path.exists(os.path.join(d, f)):
        os.remove(os.path.join(d, f))
run_gtest(args.build, "Nf4Oracle.*", env={"QWENQ_ORACLE_NF4_DIR": d})

model = load_file(os.path.join(d, "model.safetensors"))
expected = load_file(os.path.join(d, "expected.safetensors"))
dyn_ref = dynamic_map_torch() if torch is not None else None
nblocks = -(-NUMEL // BLOCK)
zero_elems = np.zeros(NUMEL, dtype=bool)
zero_elems[ZERO_BLOCK * BLOCK:(ZERO_BLOCK + 1) * BLOCK] = True

for prefix, qtype, dq in LAYERS:
    print(f"--- {prefix} ({qtype}{' + DQ' if dq else ''})", flush=True)
    base = prefix + ".weight"
    qs_key = f"{base}.quant_state.bitsandbytes__{qtype}"
    names = sorted(k for k in model if k.startswith(base))
    want_names = sorted([base, base + ".absmax", base + ".quant_map", qs_key] +
                        ([base + ".nested_absmax", base + ".nested_quant_map"] if dq else []))
    if not check(names == want_names, f"{prefix}: tensors {names}, expected {want_names}"):
        continue

    # A3.4: dtypes and shapes.
    packed, absmax_t, qmap = model[base], model[base + ".absmax"], model[base + ".quant_map"]
    check(packed.dtype == np.uint8 and packed.shape == ((NUMEL + 1) // 2, 1), f"{base}: {packed.dtype} {packed.shape}")
    check(absmax_t.dtype == (np.uint8 if dq else F32) and absmax_t.shape == (nblocks,),
          f"{base}.absmax: {absmax_t.dtype} {absmax_t.shape}")
    check(bits_equal(qmap, CODE[qtype]), f"{base}.quant_map differs from the published {qtype} code book")

    # The quant_state JSON: key order, values, and Python's exact formatting.
    raw = model[qs_key]
    check(raw.dtype == np.uint8 and raw.ndim == 1, f"{qs_key}: {raw.dtype} {raw.shape}")
    text = raw.tobytes().decode("utf-8")
    pairs = json.loads(text, object_pairs_hook=list)
    keys = [k for k, _ in pairs]
    want_keys = ["quant_type", "blocksize", "dtype", "shape"] + (
        ["nested_blocksize", "nested_dtype", "nested_offset"] if dq else [])
    check(keys == want_keys, f"{qs_key}: keys {keys}, expected {want_keys}")
    qs = dict(pairs)
    check(json.dumps(qs) == text, f"{qs_key}: {text!r} is not what json.dumps writes ({json.dumps(qs)!r})")
    check(qs.get("quant_type") == qtype and qs.get("blocksize") == BLOCK and qs.get("dtype") == "bfloat16"
          and qs.get("shape") == [N, K], f"{qs_key}: {qs}")

    source = expected[prefix + ".source"].reshape(-1)
    ours = expected[prefix + ".dequant"].reshape(-1)
    code = qmap
    codes = unpack(packed, NUMEL)
    if NUMEL % 2:
        check((packed.reshape(-1)[-1] & 0x0F) == 0, f"{base}: odd padding nibble is not 0")

    # Independent quantization of the source.
    amax = block_absmax(source, BLOCK)
    x = scaled(source, amax, BLOCK)
    want_codes = nearest(x, code)
    zero_code = int(np.nonzero(code == 0)[0][0])
    check(np.all(codes[zero_elems] == zero_code), f"{base}: the all-zero block does not hold the zero code")
    compare_codes(f"{base} codes vs numpy", codes, want_codes, x, code, zero_elems)

    if dq:
        nested_absmax, nested_map = model[base + ".nested_absmax"], model[base + ".nested_quant_map"]
        check(nested_absmax.dtype == F32 and nested_absmax.shape == (-(-nblocks // NESTED),),
              f"{base}.nested_absmax: {nested_absmax.dtype} {nested_absmax.shape}")
        check(nested_map.dtype == F32 and nested_map.shape == (256,), f"{base}.nested_quant_map: {nested_map.shape}")
        if dyn_ref is not None:
            check(bits_equal(nested_map, dyn_ref), f"{base}.nested_quant_map differs from create_dynamic_map (torch)")
        check(qs.get("nested_blocksize") == NESTED and qs.get("nested_dtype") == "float32"
              and isinstance(qs.get("nested_offset"), float), f"{qs_key}: nested fields {qs}")
        offset = F32(qs["nested_offset"])
        check(offset == F32(np.mean(amax.astype(np.float64))), f"{qs_key}: nested_offset {offset} is not mean(absmax)")
        v = (amax - offset).astype(F32)
        check(bits_equal(nested_absmax, block_absmax(v, NESTED)), f"{base}.nested_absmax differs from max|absmax - offset|")
        x2 = scaled(v, nested_absmax, NESTED)
        compare_codes(f"{base}.absmax (8-bit) vs numpy", absmax_t, nearest(x2, nested_map), x2, nested_map,
                      np.zeros(nblocks, dtype=bool))
        # A3.3: absmax_i = dyn[q_i] * nested_absmax[i // 256] + offset, two float32 roundings.
        scale = ((nested_map[absmax_t] * per_block(nested_absmax, NESTED, nblocks)).astype(F32) + offset).astype(F32)
    else:
        check(bits_equal(absmax_t, amax), f"{base}.absmax differs from max |w| per block")
        scale = absmax_t

    # A3.2 step 6: w_hat = code[nibble] * absmax, float32.
    deq = (code[codes] * per_block(scale, BLOCK, NUMEL)).astype(F32)
    same = check(bits_equal(deq, ours), f"{base}: numpy dequantization differs from ours at "
                                         f"{int(np.count_nonzero(deq.view(np.uint32) != ours.view(np.uint32)))} weights")
    if same:
        print(f"{base}: numpy dequantization equals ours bit for bit; max |w - w_hat| = "
              f"{float(np.max(np.abs(source - ours))):.4g}")

    # bitsandbytes itself (its CPU kernels cover NF4 only).
    if bnb is None or qtype != "nf4":
        continue
    try:
        tensors = {k[len(base) + 1:]: torch.from_numpy(model[k].copy()) for k in names if k != base}
        state = bnb_f.QuantState.from_dict(tensors, device=torch.device("cpu"))
        state.dtype = torch.float32
        got = bnb_f.dequantize_4bit(torch.from_numpy(packed.copy()), state).numpy().reshape(-1)
    except Exception as e:
        check(False, f"{base}: bitsandbytes cannot read our tensors: {type(e).__name__}: {e}")
        continue
    if check(bits_equal(got, ours), f"{base}: bitsandbytes dequantizes our file differently at "
                                    f"{int(np.count_nonzero(got.view(np.uint32) != ours.view(np.uint32)))} weights"):
        print(f"{base}: bitsandbytes {bnb.__version__} dequantize_4bit equals ours bit for bit")
    bq, bstate = bnb_f.quantize_4bit(torch.from_numpy(source.reshape(N, K).copy()), blocksize=BLOCK, quant_type="nf4",
                                     compress_statistics=dq)
    compare_codes(f"{base} codes vs bitsandbytes", codes, unpack(bq.numpy(), NUMEL), x, code, zero_elems)
    if dq:
        boff = F32(bstate.offset.item())
        print(f"{base}: offset ours {offset!r} bitsandbytes {boff!r}")
        check(abs(float(boff) - float(offset)) <= 2 * float(np.spacing(offset)),
              f"{base}: bitsandbytes offset {boff} vs ours {offset}")
        check(bits_equal(bnb_f.create_dynamic_map().numpy(), nested_map),
              f"{base}: bnb create_dynamic_map differs from our nested_quant_map")
        # bnb's CPU quantize_blockwise sets code[0] = -1.0 in its cached map (cpu_ops.cpp quantize_cpu), so
        # files it writes on CPU carry -1.0 there; the CUDA path keeps -0.99296875. Readers use the file's map.
        bmap = bstate.state2.code.numpy()
        check(bits_equal(bmap[1:], nested_map[1:]), f"{base}: bnb's nested map differs from ours beyond index 0")
        print(f"{base}: bnb's nested map [0] = {bmap[0]!r}, ours {nested_map[0]!r}")
        bq2 = bstate.absmax.numpy()
        compare_codes(f"{base}.absmax (8-bit) vs bitsandbytes", absmax_t, bq2, x2, nested_map,
                      np.zeros(nblocks, dtype=bool))
        check(bits_equal(bstate.state2.absmax.numpy(), nested_absmax), f"{base}: bnb nested_absmax differs from ours")
    else:
        check(bits_equal(bstate.absmax.numpy(), absmax_t), f"{base}: bitsandbytes absmax differs from ours")

# config.json: transformers' BitsAndBytesConfig reads our quantization_config back unchanged.
cfg = json.load(open(os.path.join(d, "config.json")))["quantization_config"]
check(cfg.get("quant_method") == "bitsandbytes" and cfg.get("load_in_4bit") is True
      and cfg.get("bnb_4bit_quant_type") == "nf4" and cfg.get("bnb_4bit_use_double_quant") is True
      and cfg.get("bnb_4bit_compute_dtype") == "bfloat16", f"quantization_config {cfg}")
if bnb is not None:
    try:
        from transformers import BitsAndBytesConfig
        back = BitsAndBytesConfig.from_dict(dict(cfg)).to_dict()
        check(back == cfg, f"BitsAndBytesConfig round trip changes the config: {back} vs {cfg}")
    except ImportError:
        print("transformers absent: quantization_config not round-tripped")

finish("PASS: bnb 4-bit layers agree with the numpy reading of REFERENCE A3" +
      (f" and bitsandbytes {bnb.__version__}" if bnb else ""))
