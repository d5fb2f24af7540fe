"""Oracle: GPTQ v1/v2 and AutoAWQ GEMM tensors written by qwenq, dequantized by an independent numpy reader
written from the published layouts (REFERENCE A1.2-A1.4, A2.2), must equal our fake-quant weights bit for bit.

GPTQ: qweight int32 [K*b/32, N], codes packed along K, LSB first; qzeros int32 [G, N*b/32] packed along N;
v1 stores zero-1 (readers add 1 after masking); w[n,k] = scales[g_idx[k], n] * (q[k,n] - zero[g_idx[k], n]).
AWQ GEMM: qweight int32 [K, N/8], nibble i of a word holds logical column 8c + [0,2,4,6,1,3,5,7][i]; qzeros the
same way, stored as is; g = k // group_size.
"""
import os

from oracle_common import parse_args, run_gtest, skip, work_dir

args = parse_args(__doc__)
try:
    import numpy as np
    from safetensors.numpy import load_file
    from safetensors import safe_open
except ImportError as e:
    skip(f"numpy/safetensors not importable: {e}")

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def unpack_along_rows(words, bits):
    """[R, C] int32 -> [R * 32/bits, C]: element j of word (r, c) is row r*per + j."""
    per = 32 // bits
    u = words.astype(np.uint32)
    parts = [(u >> np.uint32(bits * j)) & np.uint32((1 << bits) - 1) for j in range(per)]
    return np.stack(parts, axis=1).reshape(words.shape[0] * per, words.shape[1])


def unpack_along_cols(words, bits):
    """[R, C] int32 -> [R, C * 32/bits]: element j of word (r, c) is column c*per + j."""
    per = 32 // bits
    u = words.astype(np.uint32)
    parts = [(u >> np.uint32(bits * j)) & np.uint32((1 << bits) - 1) for j in range(per)]
    return np.stack(parts, axis=2).reshape(words.shape[0], words.shape[1] * per)


def awq_unpack(words):
    u = words.astype(np.uint32)
    out = np.zeros((words.shape[0], words.shape[1] * 8), dtype=np.uint32)
    for i in range(8):
        out[:, AWQ_ORDER[i]::8] = (u >> np.uint32(4 * i)) & np.uint32(15)
    return out


def dequantize(t, layout, bits, group):
    p = "model.layers.0.mlp.up_proj"
    scales = t[p + ".scales"].astype(np.float32)
    if layout.startswith("gptq"):
        q = unpack_along_rows(t[p + ".qweight"], bits).astype(np.float32)
        z = unpack_along_cols(t[p + ".qzeros"], bits).astype(np.float32)
        if layout == "gptq":
            z = z + 1
        g = t[p + ".g_idx"].astype(np.int64)
    else:
        q = awq_unpack(t[p + ".qweight"]).astype(np.float32)
        z = awq_unpack(t[p + ".qzeros"]).astype(np.float32)
        K = q.shape[0]
        g = np.arange(K) // (group if group > 0 else K)
    w_kn = scales[g] * (q - z[g])  # [K, N], fp32 product of fp32 values, as our C++ computes
    return w_kn.T.astype(np.float32)


out = work_dir(args.build, "int_checkpoint_oracle")
run_gtest(args.build, "IntCheckpointOracle.*", {"QWENQ_ORACLE_INT_DIR": out})
cases = sorted(os.listdir(out))
if len(cases) < 5:
    raise SystemExit(f"FAIL: expected 5 cases in {out}, found {cases}")
failures = []
for name in cases:
    path = os.path.join(out, name, "model.safetensors")
    with safe_open(path, "np") as f:
        meta = f.metadata()
    t = load_file(path)
    got = dequantize(t, meta["layout"], int(meta["bits"]), int(meta["group_size"]))
    want = t["expected_dequantized"]
    same = got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    print(f"{name}: layout {meta['layout']}, {meta['bits']}-bit, group {meta['group_size']}, shape {want.shape}: "
          f"{'bit-exact' if same else 'MISMATCH'}")
    if not same:
        failures.append(name)
if failures:
    raise SystemExit("FAIL: " + ", ".join(failures))
print("PASS")
