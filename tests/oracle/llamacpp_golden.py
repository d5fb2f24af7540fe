"""Golden numbers from llama.cpp itself for our GGUF exports (kept in tests/test_gguf_model.cpp; not run by CI).

llama.cpp's Python binding builds llama.cpp from source (about 5 minutes on 2 cores), too slow for every CI run, so
this script is run by hand when the export changes:
    python3 -m venv /tmp/llamacpp && /tmp/llamacpp/bin/pip install llama-cpp-python==0.3.36 numpy
    /tmp/llamacpp/bin/python tests/oracle/llamacpp_golden.py --build build --shared ../shared
For stories260K (imported by qwen-quant, SentencePiece-style tokenizer) exported as F32, Q8_0 and Q4_0, it prints
llama.cpp's tokenization of the first 20,000 characters of tinystories_val.txt next to ours, and llama.cpp's mean
next-token NLL on our first 512 tokens. With --qwen-dir DIR (a model directory holding the real Qwen2 tokenizer,
e.g. `qwen-quant init-random --preset qwen2.5-0.5b --layers 2` with ../shared's vocab.json, merges.txt and
tokenizer_config.json copied in) it also compares the tokenization of WikiText-2 (byte-level BPE, qwen2 pre-tokenizer)
and the NLL of a Q8_0 export on 256 tokens.
Then llama.cpp's own quantizer (llama_model_quantize, no importance matrix) turns our F32 export of
`qwen-quant init-random --preset tiny256 --dtype fp32` into each llama-quantize file type; the script prints each file's
fingerprint (tests/test_gguf_kquants.cpp's kLlamaQuantize) and whether `qwen-quant gguf --type` wrote the same
tensors (types and bytes). Needs gguf-py (pip install gguf==0.17.1) next to llama-cpp-python.
"""
import argparse
import ctypes
import json
import math
import os
import subprocess

import numpy as np
import llama_cpp
from llama_cpp import Llama

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--build", required=True)
p.add_argument("--shared", required=True)
p.add_argument("--qwen-dir", default="")
args = p.parse_args()
qq = os.path.join(args.build, "qwen-quant")
work = os.path.join(args.build, "oracle_tmp", "llamacpp_golden")
os.makedirs(work, exist_ok=True)


def ours_tokens(model, text):
    r = subprocess.run([qq, "tokenize", "--model", model, "--text", text], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)["ids"]


def llama_nll(path, ids, n_ctx):
    llm = Llama(model_path=path, n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float64)
    m = logits.max(1, keepdims=True)
    lse = (np.log(np.exp(logits - m).sum(1, keepdims=True)) + m)[:, 0]
    return float(-(logits[np.arange(len(ids) - 1), ids[1:]] - lse[:-1]).mean()), llm


def compare(model_dir, text, types, n):
    for t in types:
        path = os.path.join(work, f"{os.path.basename(model_dir)}-{t}.gguf")
        subprocess.run([qq, "gguf", "--model", model_dir, "--out", path, "--type", t, "--overwrite", "--quiet"],
                       check=True)
        ours = ours_tokens(path, text)
        nll, llm = llama_nll(path, ours[:n], n)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true",
                              special=False)
        first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        print(f"{os.path.basename(model_dir)} {t}: tokens ours {len(ours)} llama.cpp {len(theirs)} (first difference at "
              f"{first_diff}); llama.cpp mean NLL on our first {n} tokens {nll:.6f} (ppl {math.exp(nll):.4f})")


stories = os.path.join(work, "stories260K")
subprocess.run([qq, "import-llama2c", "--checkpoint", os.path.join(args.shared, "data/stories260K/stories260K.bin"),
                "--tokenizer", os.path.join(args.shared, "data/stories260K/tok512.bin"), "--out", stories,
                "--overwrite"], check=True)
text = open(os.path.join(args.shared, "data/tinystories/tinystories_val.txt"), encoding="utf-8").read()[:20000]
compare(stories, text, ["f32", "q8_0", "q4_0"], 512)
if args.qwen_dir:
    wiki = open(os.path.join(args.shared, "data/wikitext2/wiki.test.raw"), encoding="utf-8").read()[:100000]
    compare(args.qwen_dir, wiki, ["q8_0"], 256)


# llama-quantize's file types against ours, byte for byte, and the fingerprints the C++ test keeps: without and with an
# importance matrix, on tiny256 (8 layers, rows of 256 and 512: every k-quant block fits) and tiny896 (Qwen2.5-0.5B's
# width 896 and 7:1 heads: llama-quantize's fallbacks, IQ4_NL for Q2_K/Q3_K, and its n_gqa >= 4 rules).
from gguf import GGUFReader, GGUFWriter  # noqa: E402

FTYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13,
          "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30}


def fingerprint(path):
    """FNV-1a 64 over the tensors sorted by name: name bytes, ggml type as u32 little-endian, data bytes."""
    h = 0xCBF29CE484222325
    for t in sorted(GGUFReader(path).tensors, key=lambda t: t.name):
        for b in (t.name.encode(), int(t.tensor_type).to_bytes(4, "little"), np.asarray(t.data).tobytes()):
            a = np.frombuffer(b, np.uint8)
            for x in a.tolist():
                h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def synthetic_importance(name, k):
    """tests/test_gguf_kquants.cpp's synthetic_importance: 1 + ((j*2654435761 + 40503*len(name)) % 1024)/64, x16 where
    37 divides j (exact in fp32)."""
    j = np.arange(k, dtype=np.uint64)
    v = 1.0 + ((j * 2654435761 + 40503 * len(name)) % 1024).astype(np.float64) / 64.0
    v[(j % 37) == 0] *= 16.0
    return v.astype(np.float32)


def same_tensors(a_path, b_path):
    a = {t.name: t for t in GGUFReader(a_path).tensors}
    return sum(1 for t in GGUFReader(b_path).tensors
               if t.tensor_type == a[t.name].tensor_type
               and np.asarray(t.data).tobytes() == np.asarray(a[t.name].data).tobytes()), len(a)


for preset in ("tiny256", "tiny896"):
    model = os.path.join(work, preset)
    subprocess.run([qq, "init-random", "--preset", preset, "--dtype", "fp32", "--out", model, "--overwrite"], check=True)
    f32 = os.path.join(work, f"{preset}-f32.gguf")
    subprocess.run([qq, "gguf", "--model", model, "--out", f32, "--type", "f32", "--overwrite", "--quiet"], check=True)
    # The importance matrix: an entry for every 2-D tensor but the embedding (llama-imatrix --process-output), as a
    # GGUF imatrix file for us and as llama_model_imatrix_data for llama_model_quantize.
    src = {t.name: t for t in GGUFReader(f32).tensors}
    matrices = sorted(n for n, t in src.items() if len(t.shape) == 2 and n != "token_embd.weight")
    imatrix = os.path.join(work, f"{preset}-imatrix.gguf")
    w = GGUFWriter(imatrix, arch="")  # gguf-py adds general.architecture; readers ignore it
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["synthetic"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 512)
    values = {}
    for n in matrices:
        k = int(src[n].shape[0])
        values[n] = synthetic_importance(n, k)
        w.add_tensor(n + ".in_sum2", (values[n] * 512).reshape(1, k))
        w.add_tensor(n + ".counts", np.array([[512.0]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    entries = (llama_cpp.llama_model_imatrix_data * (len(matrices) + 1))()
    for i, n in enumerate(matrices):
        entries[i].name = n.encode()
        entries[i].data = values[n].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values[n].size
    entries[len(matrices)].name = None  # the end of the list
    for use_imatrix in (False, True):
        tag = "-imatrix" if use_imatrix else ""
        for name, ftype in FTYPES.items():
            theirs = os.path.join(work, f"{preset}-{name}{tag}.llama.gguf")
            ours = os.path.join(work, f"{preset}-{name}{tag}.gguf")
            p = llama_cpp.llama_model_quantize_default_params()
            p.ftype, p.nthread = ftype, 2
            if use_imatrix:
                p.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
            assert llama_cpp.llama_model_quantize(f32.encode(), theirs.encode(), ctypes.byref(p)) == 0
            cmd = [qq, "gguf", "--model", model, "--out", ours, "--type", name, "--overwrite", "--quiet"]
            subprocess.run(cmd + (["--imatrix", imatrix] if use_imatrix else []), check=True)
            same, total = same_tensors(ours, theirs)
            print(f"{preset} {name}{' --imatrix' if use_imatrix else ''}: llama.cpp fingerprint "
                  f"0x{fingerprint(theirs):016x}; ours 0x{fingerprint(ours):016x}; {same} of {total} tensors identical")
