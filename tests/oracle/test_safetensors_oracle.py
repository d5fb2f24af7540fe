"""Oracle: our safetensors reader and writer against the reference `safetensors` package.

Python writes py.safetensors with safetensors.numpy (F32, F16, F64, I32, U8, I64, a 0-rank scalar, a
zero-size tensor, UTF-8 metadata) and, when torch imports, py_bf16.safetensors with safetensors.torch. The
gtest SafetensorsOracle.* reads them with qwenq, checks every value against the formula both sides share,
then writes cpp.safetensors / cpp_bf16.safetensors with the same formula plus fp32 -> F16/BF16 conversions of
4,096 pseudo-random fp32 bit patterns. This script loads those with safetensors and requires bit-exact
equality: the formula values, numpy's float16 rounding and torch's bfloat16 rounding (NaN only as NaN). Last,
py_order.safetensors (every dtype, in a scrambled order, odd-sized byte tensors) is rewritten by qwenq tensor for
tensor into cpp_order.safetensors, which must be byte-identical: the reference writer's layout (dtype rank, then
name; every tensor aligned).
Exit 0 pass, 1 fail, 77 skip (safetensors or numpy missing).
"""
import os
import struct

from oracle_common import check, finish, parse_args, run_gtest, skip, work_dir

args = parse_args(__doc__)
try:
    import numpy as np
    import safetensors
    from safetensors import safe_open
    from safetensors.numpy import load_file as np_load, save_file as np_save
except ImportError as e:
    skip(f"safetensors/numpy not importable: {e}")
try:
    import torch
    from safetensors.torch import load_file as torch_load, save_file as torch_save
except ImportError:
    torch = None
print("safetensors", safetensors.__version__, "numpy", np.__version__,
      "torch", torch.__version__ if torch else "(absent: BF16 checks skipped)")

NOTE = "h\u00e9llo \u2713"

# The formulas, identical to tests/test_core_safetensors.cpp (oracle_float etc.), over the flat index.
def f_float(n):
    i = np.arange(n, dtype=np.int64)
    return ((i % 251).astype(np.float32) * np.float32(0.25) - np.float32(31.0)).astype(np.float32)


def f_i32(n):
    i = np.arange(n, dtype=np.int64)
    return ((i * 7919) % 100003 - 50000).astype(np.int32)


def f_u8(n):
    return ((np.arange(n, dtype=np.int64) * 31) % 256).astype(np.uint8)


def f_i64(n):
    return np.arange(n, dtype=np.int64) * 1000000007 - 5000000000


def f_bits(n):
    """Pseudo-random fp32 bit patterns; every 4th one is an F16 tie, a BF16 tie, or a value in the F16 range."""
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(12345)) & np.uint64(0xFFFFFFFF)
    out = h.copy()
    out[1::4] = (h[1::4] & np.uint64(0xFFFFE000)) | np.uint64(0x1000)
    out[2::4] = (h[2::4] & np.uint64(0xFFFF0000)) | np.uint64(0x8000)
    out[3::4] = (h[3::4] & np.uint64(0x807FFFFF)) | ((np.uint64(100) + (h[3::4] >> np.uint64(23)) % np.uint64(45)) << np.uint64(23))
    return out.astype(np.uint32)


def same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


d = work_dir(args.build, "safetensors_oracle")
for name in ("py.safetensors", "py_bf16.safetensors", "cpp.safetensors", "cpp_bf16.safetensors",
             "py_order.safetensors", "cpp_order.safetensors"):
    if os.path.exists(os.path.join(d, name)):
        os.remove(os.path.join(d, name))

expected = {
    "f32": f_float(15).reshape(3, 5),
    "f16": f_float(7).astype(np.float16),
    "f64": f_float(2).astype(np.float64),
    "i32": f_i32(12).reshape(2, 2, 3),
    "u8": f_u8(300),
    "i64": f_i64(4),
    "scalar": np.array(f_float(1)[0], dtype=np.float32).reshape(()),
    "empty": np.zeros((0, 3), dtype=np.float32),
}
np_save(expected, os.path.join(d, "py.safetensors"), metadata={"origin": "numpy", "note": NOTE})
if torch is not None:
    torch_save({"bf16": torch.from_numpy(f_float(32).reshape(4, 8)).to(torch.bfloat16),
                "f32": torch.from_numpy(f_float(5))},
               os.path.join(d, "py_bf16.safetensors"), metadata={"origin": "torch"})

# Every dtype qwenq writes, names and sizes chosen so that an unaligned layout would show (odd byte counts),
# given to save_file in a scrambled order: qwenq's rewrite of it (cpp_order.safetensors) must be byte-identical.
order_tensors = {
    "z_u8": f_u8(3), "bf_like_i16": f_i32(3).astype(np.int16), "b_bool": (f_u8(5) % 2).astype(np.bool_),
    "m_f32": f_float(3), "a_i8": f_u8(7).astype(np.int8), "h_f16": f_float(5).astype(np.float16),
    "q_i64": f_i64(3), "c_i32": f_i32(1), "d_f64": f_float(3).astype(np.float64), "a_u8": f_u8(1),
}
np_save(order_tensors, os.path.join(d, "py_order.safetensors"), metadata={"format": "np"})
if torch is not None:  # BF16 only through torch; the same file then, with one BF16 tensor more
    order_t = {k: torch.from_numpy(v) for k, v in order_tensors.items()}
    order_t["g_bf16"] = torch.from_numpy(f_float(3)).to(torch.bfloat16)
    if hasattr(torch, "float8_e4m3fn"):  # F8_E4M3 (FP8 checkpoints): its rank among the byte-sized dtypes
        order_t["e_f8"] = torch.from_numpy(f_float(5)).to(torch.float8_e4m3fn)
    torch_save(order_t, os.path.join(d, "py_order.safetensors"), metadata={"format": "np"})

run_gtest(args.build, "SafetensorsOracle.*", env={"QWENQ_ORACLE_ST_DIR": d})

with open(os.path.join(d, "py_order.safetensors"), "rb") as fh:
    py_order = fh.read()
with open(os.path.join(d, "cpp_order.safetensors"), "rb") as fh:
    cpp_order = fh.read()
check(cpp_order == py_order,
      f"cpp_order.safetensors differs from safetensors' own file ({len(cpp_order)} vs {len(py_order)} bytes; "
      f"headers {cpp_order[8:8 + struct.unpack('<Q', cpp_order[:8])[0]]!r} vs {py_order[8:8 + struct.unpack('<Q', py_order[:8])[0]]!r})")

# cpp.safetensors: every tensor bit-exact, metadata intact, header padded to 8.
cpp_path = os.path.join(d, "cpp.safetensors")
got = np_load(cpp_path)
for name, want in expected.items():
    check(name in got and same_bits(got[name], want), f"cpp.safetensors tensor {name}")
with safe_open(cpp_path, framework="np") as f:
    check(f.metadata() == {"origin": "qwenq", "note": NOTE}, f"cpp.safetensors metadata {f.metadata()}")
with open(cpp_path, "rb") as fh:
    (n,) = struct.unpack("<Q", fh.read(8))
    check(n % 8 == 0, f"cpp.safetensors header length {n} is not a multiple of 8")

src = f_bits(4096).view(np.float32)
check(same_bits(got["round_src"], src), "cpp.safetensors round_src")
with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is the point
    want16 = src.astype(np.float16)
got16 = got["round_f16"]
nan = np.isnan(want16)
check(np.array_equal(np.isnan(got16), nan), "F16 NaN positions")
check(same_bits(got16[~nan].view(np.uint16), want16[~nan].view(np.uint16)),
      f"F16 rounding differs from numpy at {np.count_nonzero(got16[~nan].view(np.uint16) != want16[~nan].view(np.uint16))} values")

if torch is not None:
    gb = torch_load(os.path.join(d, "cpp_bf16.safetensors"))
    check(gb["bf16"].dtype == torch.bfloat16 and torch.equal(
        gb["bf16"].view(torch.int16), torch.from_numpy(f_float(32).reshape(4, 8)).to(torch.bfloat16).view(torch.int16)),
        "cpp_bf16.safetensors tensor bf16")
    tsrc = torch.from_numpy(src.copy())
    wantb = tsrc.to(torch.bfloat16)
    gotb = gb["round_bf16"]
    bnan = torch.isnan(wantb)
    check(torch.equal(torch.isnan(gotb), bnan), "BF16 NaN positions")
    diff = gotb[~bnan].view(torch.int16) != wantb[~bnan].view(torch.int16)
    check(not bool(diff.any()), f"BF16 rounding differs from torch at {int(diff.sum())} values")
else:
    print("torch absent: BF16 files not checked")

finish("PASS: safetensors files agree both ways")
