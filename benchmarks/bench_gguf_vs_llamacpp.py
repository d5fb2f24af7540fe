"""`qwen-quant gguf` against llama.cpp's own quantizer on one Qwen2.5-7B block, in the same run: wall time and whether
the files hold the same tensors (types and bytes), without and with an importance matrix.

Not run by CI: it needs llama-cpp-python (a 5-minute source build) next to gguf-py:
    python3 -m venv /tmp/llamacpp && /tmp/llamacpp/bin/pip install llama-cpp-python==0.3.36 gguf==0.17.1 numpy
    /tmp/llamacpp/bin/python benchmarks/bench_gguf_vs_llamacpp.py --build build --shared ../shared [--types q2_k,...]
The model is `qwen-quant init-random --preset qwen2.5-7b --layers 1` (bf16 weights; rows of 3584 and 18944, 28:4
heads, untied 152064 x 3584 embedding and output, which are most of the work). llama.cpp quantizes our F32 export
(llama_model_quantize, 2 threads, as llama-quantize), we quantize the Hugging Face directory (`qwen-quant gguf`,
2 threads). The importance matrix is `qwen-quant imatrix` of the model over 8 chunks of 512 tokens of the shared C4
text, passed to llama.cpp as llama_model_imatrix_data (E[x^2] per column, as llama-quantize derives it from the file).
Writes benchmarks/results/<date>-gguf-vs-llamacpp.md.
"""
import argparse
import ctypes
import datetime
import os
import subprocess
import time

import numpy as np
import llama_cpp
from gguf import GGUFReader

FTYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13,
          "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30}

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--build", required=True)
p.add_argument("--shared", required=True)
p.add_argument("--work", default="/tmp/qwenq-bench-llamacpp")
p.add_argument("--types", default="q2_k,q3_k_m,q4_k_m,iq4_xs")
p.add_argument("--imatrix-types", default="q2_k,q3_k_m,q4_0,q4_k_m,iq4_xs")
args = p.parse_args()
qq = os.path.join(args.build, "qwen-quant")
os.makedirs(args.work, exist_ok=True)


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(ours, theirs):
    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    same_type = sum(1 for n in a if n in b and a[n].tensor_type == b[n].tensor_type)
    same_bytes = sum(1 for n in a if n in b and a[n].tensor_type == b[n].tensor_type and
                     np.asarray(a[n].data).tobytes() == np.asarray(b[n].data).tobytes())
    types = {}
    for t in a.values():
        if len(t.shape) == 2:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return len(a), same_type, same_bytes, ", ".join(f"{v} {k}" for k, v in sorted(types.items()))


model = os.path.join(args.work, "q7b-1")
run([qq, "init-random", "--preset", "qwen2.5-7b", "--layers", "1", "--out", model, "--overwrite"])
f32 = os.path.join(args.work, "q7b-1-f32.gguf")
run([qq, "gguf", "--model", model, "--out", f32, "--type", "f32", "--overwrite", "--quiet"])
imatrix = os.path.join(args.work, "q7b-1.imatrix.gguf")
run([qq, "imatrix", "--model", model, "--calib", os.path.join(args.shared, "data/c4/c4_demo.jsonl"), "--ctx", "512",
     "--chunks", "8", "--out", imatrix, "--overwrite", "--quiet", "--no-ppl"])
r = GGUFReader(imatrix)
sums = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in r.tensors}
names = sorted(n[:-len(".in_sum2")] for n in sums if n.endswith(".in_sum2"))
values = {n: (sums[n + ".in_sum2"] / sums[n + ".counts"][0]).astype(np.float32) for n in names}
entries = (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
for i, n in enumerate(names):
    entries[i].name = n.encode()
    entries[i].data = values[n].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    entries[i].size = values[n].size
entries[len(names)].name = None

rows = []
jobs = [(t, False) for t in args.types.split(",") if t] + [(t, True) for t in args.imatrix_types.split(",") if t]
for t, use_imatrix in jobs:
    ours, theirs = os.path.join(args.work, "ours.gguf"), os.path.join(args.work, "theirs.gguf")
    cmd = [qq, "gguf", "--model", model, "--out", ours, "--type", t, "--overwrite", "--quiet", "--threads", "2"]
    s_ours = timed(lambda: run(cmd + (["--imatrix", imatrix] if use_imatrix else [])))
    prm = llama_cpp.llama_model_quantize_default_params()
    prm.ftype, prm.nthread = FTYPES[t], 2
    if use_imatrix:
        prm.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    s_theirs = timed(lambda: llama_cpp.llama_model_quantize(f32.encode(), theirs.encode(), ctypes.byref(prm)))
    n, same_type, same_bytes, types = compare(ours, theirs)
    rows.append((t + (" --imatrix" if use_imatrix else ""), types, n, same_type, same_bytes, s_ours, s_theirs))
    print(rows[-1], flush=True)

day = datetime.date.today().isoformat()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
out = os.path.join("benchmarks", "results", f"{day}-gguf-vs-llamacpp.md")
with open(out, "w") as f:
    f.write(f"# `qwen-quant gguf` and llama.cpp's quantizer on one Qwen2.5-7B block, {day}\n\n")
    f.write(f"- commit: {commit}; machine: {cpu}, {os.cpu_count()} cores, no GPU; llama-cpp-python "
            f"{llama_cpp.__version__}\n")
    f.write("- model: `init-random --preset qwen2.5-7b --layers 1` (bf16); the untied 152064 x 3584 embedding and "
            "output are most of the work (a whole model adds 27 more blocks)\n")
    f.write("- ours: `qwen-quant gguf --threads 2` from the directory; llama.cpp: `llama_model_quantize` (nthread 2) "
            "from our F32 export; imatrix: `qwen-quant imatrix` over 8 chunks of 512 C4 tokens, given to both\n")
    f.write("- script: `benchmarks/bench_gguf_vs_llamacpp.py`\n\n")
    f.write("| file type | 2-D tensor types | tensors | same type | same bytes | ours s | llama.cpp s | ours / llama.cpp |\n")
    f.write("|---|---|---|---|---|---|---|---|\n")
    for name, types, n, st, sb, a, b in rows:
        f.write(f"| {name} | {types} | {n} | {st} | {sb} | {a:.1f} | {b:.1f} | {a / b:.2f} |\n")
print("wrote", out)
