#!/usr/bin/env python3
"""Tokenizer speed: Hugging Face `tokenizers` vs `qwen-quant tokenize`, same text, same machine, same run.

Encodes a text file (default: WikiText-2 test, 1.29 MB) with the Qwen2 tokenizer line by line (each line with
its terminator, as the oracle test does) and as one text, and prints MB/s and tokens/s for both and the
ratio. Hugging Face single-threaded (TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1) for a fair comparison,
and its parallel encode_batch against our --threads. Our numbers are the encode time qwen-quant reports
(load and JSON writing excluded) plus the whole process wall time. Best of --repeat runs. The token counts of
both sides must agree (the oracle test checks every token).

  /tmp/oraclevenv/bin/python benchmarks/bench_tokenizer_vs_hf.py --build build [--shared ../shared]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HF_WORKER = r"""
import json, sys, time
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1]).backend_tokenizer
raw = open(sys.argv[2], "rb").read()
text = raw.decode("utf-8")
rows = [r + "\n" for r in text.split("\n")]
last = rows.pop()[:-1]
rows += [last] if last else []
mode, repeat = sys.argv[3], int(sys.argv[4])
best, tokens = 1e30, 0
for _ in range(repeat):
    t0 = time.perf_counter()
    if mode == "lines":
        tokens = sum(len(tok.encode(r).ids) for r in rows)
    elif mode == "whole":
        tokens = len(tok.encode(text).ids)
    else:
        tokens = sum(len(e.ids) for e in tok.encode_batch(rows))
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"seconds": best, "tokens": tokens, "bytes": len(raw)}))
"""


def hf_run(python, tok_dir, path, mode, repeat, threads):
    env = dict(os.environ)
    env["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    env["RAYON_NUM_THREADS"] = str(threads)
    out = subprocess.run([python, "-c", HF_WORKER, tok_dir, path, mode, str(repeat)], env=env, check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ours_run(qq, tok_dir, path, lines, repeat, threads):
    best, wall_best, tokens = 1e30, 1e30, 0
    pattern = re.compile(r"tokenize: .*?, (\d+) tokens, .*? in ([0-9.]+)s")
    for _ in range(repeat):
        cmd = [qq, "tokenize", "--model", tok_dir, "--file", path, "--out", os.devnull, "--threads", str(threads)]
        if lines:
            cmd.append("--lines")
        t0 = time.perf_counter()
        r = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        m = pattern.search(r.stderr)
        if not m:
            raise SystemExit(f"cannot parse qwen-quant output: {r.stderr}")
        tokens = int(m.group(1))
        best = min(best, float(m.group(2)))
        wall_best = min(wall_best, wall)
    return {"seconds": best, "wall": wall_best, "tokens": tokens, "bytes": os.path.getsize(path)}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(here, "..", "build"), help="build directory with qwen-quant")
    p.add_argument("--shared", default=os.path.join(here, "..", "..", "shared"), help="the shared directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: SHARED/data/qwen2-tokenizer)")
    p.add_argument("--file", help="text file (default: SHARED/data/wikitext2/wiki.test.raw)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for the parallel rows")
    a = p.parse_args()
    data = os.path.join(a.shared, "data")
    tok_dir = a.tokenizer or os.path.join(data, "qwen2-tokenizer")
    path = a.file or os.path.join(data, "wikitext2", "wiki.test.raw")
    qq = os.path.join(a.build, "qwen-quant")
    for need in (tok_dir, path, qq):
        if not os.path.exists(need):
            print(f"SKIP: {need} not found")
            return 77
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"SKIP: Hugging Face stack not importable ({e})")
        return 77

    size_mb = os.path.getsize(path) / 1e6
    rows = [
        ("HF tokenizers, per line, 1 thread", hf_run(sys.executable, tok_dir, path, "lines", a.repeat, 1)),
        ("HF tokenizers, whole file, 1 thread", hf_run(sys.executable, tok_dir, path, "whole", a.repeat, 1)),
        ("HF encode_batch, 1 thread", hf_run(sys.executable, tok_dir, path, "batch", a.repeat, 1)),
        (f"HF encode_batch, {a.threads} threads", hf_run(sys.executable, tok_dir, path, "batch", a.repeat, a.threads)),
        ("qwen-quant, per line, 1 thread", ours_run(qq, tok_dir, path, True, a.repeat, 1)),
        ("qwen-quant, whole file, 1 thread", ours_run(qq, tok_dir, path, False, a.repeat, 1)),
        (f"qwen-quant, per line, {a.threads} threads", ours_run(qq, tok_dir, path, True, a.repeat, a.threads)),
    ]
    print(f"file: {path} ({size_mb:.2f} MB); tokenizer: {tok_dir}; best of {a.repeat}; {os.cpu_count()} CPUs")
    print(f"{'':44s} {'MB/s':>9s} {'tokens/s':>12s} {'tokens':>9s}")
    for name, r in rows:
        extra = f"   (process wall incl. load: {r['wall']:.2f}s)" if "wall" in r else ""
        print(f"{name:44s} {size_mb / r['seconds']:9.2f} {r['tokens'] / r['seconds']:12.0f} {r['tokens']:9d}{extra}")
    counts = {r["tokens"] for _, r in rows}
    ok = len(counts) == 1  # Qwen adds no BOS: per-line and whole-file counts agree too
    speed = {name: size_mb / r["seconds"] for name, r in rows}
    print(f"ratio qwen-quant / HF, per line, 1 thread:  "
          f"{speed['qwen-quant, per line, 1 thread'] / speed['HF tokenizers, per line, 1 thread']:.1f}x")
    print(f"ratio qwen-quant / HF, whole file, 1 thread: "
          f"{speed['qwen-quant, whole file, 1 thread'] / speed['HF tokenizers, whole file, 1 thread']:.1f}x")
    print(f"ratio qwen-quant / HF, {a.threads} threads:        "
          f"{speed[f'qwen-quant, per line, {a.threads} threads'] / speed[f'HF encode_batch, {a.threads} threads']:.1f}x")
    if not ok:
        print(f"WARNING: token counts differ between runs: {sorted(counts)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
