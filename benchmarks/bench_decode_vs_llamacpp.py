"""One-token decode on the CPU: `qwen-quant generate` against llama.cpp on the same GGUF files, in the same run.

Not run by CI: it needs llama-cpp-python (a 5-minute source build), as bench_gguf_vs_llamacpp.py does:
    python3 -m venv /tmp/llamacpp && /tmp/llamacpp/bin/pip install llama-cpp-python==0.3.36 numpy
    /tmp/llamacpp/bin/python benchmarks/bench_decode_vs_llamacpp.py --build build [--layers 2] [--types q4_k_m,q8_0]
The model is `qwen-quant init-random --preset qwen2.5-7b --layers L` (random bf16 weights, real shapes: 28:4 heads,
rows of 3584 and 18944, untied 152064 x 3584 embedding and output), exported by `qwen-quant gguf --type T`. For each
file, alternating, --rounds times:
- ours: `qwen-quant generate --model F --prompt P -n N --threads T` (greedy, f32 KV cache); its last line reports
  the decode rate after the first token; once exact (fp32 activations, the default) and once with
  `--int8-activations` (llama.cpp's scheme, quant/ggml_dot_int8.h);
- llama.cpp: Llama(n_threads=T), the same prompt token ids (our tokenizer's, so both see the same count) evaluated,
  then N greedy tokens one llama_decode at a time; the decode rate over those N (wall clock, argmax included).
Both keep the weights in their blocks; llama.cpp multiplies them against int8-quantized activations (Q8_K / Q8_0
dot products); our exact path dequantizes rows to fp32 (quant/packed_matvec.h), so its products round less and read
more; with --int8-activations ours computes llama.cpp's kind of product.
Writes benchmarks/results/<date>-<--name>.md (default decode-vs-llamacpp).
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import time

import numpy as np
from llama_cpp import Llama

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--build", required=True)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--types", default="q4_k_m,q8_0")
p.add_argument("--tokens", type=int, default=16, help="new tokens per run")
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--work", default="/tmp/qwenq-bench-decode")
p.add_argument("--name", default="decode-vs-llamacpp", help="results file: benchmarks/results/<date>-<name>.md")
p.add_argument("--prompt", default="Once upon a time there was a little robot who wanted to learn how to paint.")
args = p.parse_args()
qq = os.path.join(args.build, "qwen-quant")
os.makedirs(args.work, exist_ok=True)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r


model = os.path.join(args.work, f"qwen2.5-7b-{args.layers}l")
if not os.path.exists(os.path.join(model, "config.json")):
    run([qq, "init-random", "--preset", "qwen2.5-7b", "--layers", str(args.layers), "--out", model, "--overwrite"])
files = {}
for t in args.types.split(","):
    path = f"{model}-{t}.gguf"
    if not os.path.exists(path):
        run([qq, "gguf", "--model", model, "--out", path, "--type", t, "--overwrite", "--quiet"])
    files[t] = path


def ours(path, extra=()):
    r = run([qq, "generate", "--model", path, "--prompt", args.prompt, "-n", str(args.tokens), "--threads",
             str(args.threads), *extra])
    last = r.stderr.strip().splitlines()[-1]
    m = re.search(r"first token after ([0-9.]+)s, then ([0-9.]+) tok/s", last)
    if not m:
        raise SystemExit(f"no decode rate in: {last}")
    return float(m.group(2)), last, float(m.group(1))


def llama(path, ids):
    n_ctx = 256 * ((len(ids) + args.tokens + 255) // 256)
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                verbose=False)
    llm.eval(ids)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t0 = time.perf_counter()
    for _ in range(args.tokens):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    rate = args.tokens / (time.perf_counter() - t0)
    del llm
    return rate


rows = []
for t, path in files.items():
    ids = json.loads(run([qq, "tokenize", "--model", path, "--text", args.prompt]).stdout)["ids"]
    a, a8, b, line, first, first8 = [], [], [], "", [], []
    for _ in range(args.rounds):
        rate, line, secs = ours(path)
        a.append(rate)
        first.append(secs)
        rate, _, secs = ours(path, ["--int8-activations"])
        a8.append(rate)
        first8.append(secs)
        b.append(llama(path, ids))
    size = os.path.getsize(path) / 2**20
    rows.append((t, size, a, a8, b, len(ids), first, first8))
    print(f"{t}: ours {a} tok/s, ours int8 {a8} tok/s, llama.cpp {b} tok/s ({line})", flush=True)

day = datetime.date.today().isoformat()
commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{day}-{args.name}.md")
with open(out, "w") as f:
    f.write(f"# One-token decode on the CPU: qwen-quant generate vs llama.cpp, {day}\n\n")
    f.write(f"- commit {commit}; llama-cpp-python {__import__('llama_cpp').__version__}; {cpu}, {os.cpu_count()} "
            f"cores, {args.threads} threads each; no GPU\n")
    f.write(f"- model: `qwen-quant init-random --preset qwen2.5-7b --layers {args.layers}` exported by "
            f"`qwen-quant gguf`; prompt of {rows[0][5]} tokens, then {args.tokens} greedy tokens; {args.rounds} "
            f"alternating rounds\n")
    f.write("- command: `benchmarks/bench_decode_vs_llamacpp.py` (its docstring says what each side measures)\n\n")
    f.write("| file | size MiB | qwen-quant exact tok/s | qwen-quant --int8-activations tok/s | llama.cpp tok/s | "
            "exact / llama.cpp | int8 / llama.cpp (best of each) |\n")
    f.write("|---|---|---|---|---|---|---|\n")
    for t, size, a, a8, b, *_ in rows:
        f.write(f"| {t} | {size:.0f} | {', '.join('%.2f' % v for v in a)} | {', '.join('%.2f' % v for v in a8)} | "
                f"{', '.join('%.2f' % v for v in b)} | {max(a) / max(b):.2f} | {max(a8) / max(b):.2f} |\n")
    f.write("\nOurs, time to the first token (the prompt's prefill, s; exact, then --int8-activations):\n\n")
    for t, _, _, _, _, _, first, first8 in rows:
        f.write(f"- {t}: {', '.join('%.2f' % v for v in first)}; {', '.join('%.2f' % v for v in first8)}\n")
print("wrote", out)
