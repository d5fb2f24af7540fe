#!/usr/bin/env bash
# llama.cpp itself against `eval --save-kld` and `eval --kl-base FILE` (trainer/kld_file.h). Not a ctest: it needs a
# llama-perplexity binary (llama-cpp-python's sdist carries llama.cpp's source: pip download llama-cpp-python==0.3.36
# --no-deps --no-binary :all:, then cmake -B build -DLLAMA_CURL=OFF and ninja -C build llama-perplexity, about 10
# minutes on 2 cores). Run it by hand when the file format or the scoring changes:
#   [PYTHON=python-with-numpy] tests/oracle/llamacpp_kld_check.sh LLAMA_PERPLEXITY BUILD SHARED WORK
# stories260K (imported, exported as F32 and Q4_0 GGUF by qwen-quant) on the first 40,000 characters of TinyStories:
#   1. llama-perplexity and qwen-quant each write a base file from the F32 GGUF (256-token chunks, 12 of them); the
#      script compares them: header and tokens, every row's scale and offset, every code. llama.cpp runs with fp32
#      attention (-fa off -ctk f32 -ctv f32): its defaults (flash attention over an f16 KV cache) move its own rows
#      by their f16 rounding, which the script also shows (llama_default.kld);
#   2. each tool scores the Q4_0 GGUF against both files (qwen-quant with --int8-activations: llama.cpp's Q4_0 x Q8_0
#      product); the script prints the four results side by side.
set -euo pipefail
LP=$(realpath "$1") BUILD=$(realpath "$2") SHARED=$(realpath "$3") W=$4
QQ="$BUILD/qwen-quant"
N_CTX=256 CHUNKS=12
mkdir -p "$W" && cd "$W"
S="$SHARED/data/stories260K"
"$QQ" import-llama2c --checkpoint "$S/stories260K.bin" --tokenizer "$S/tok512.bin" --out base --overwrite > /dev/null 2>&1
"$QQ" gguf --model base --out base-f32.gguf --type f32 --overwrite -q 2>/dev/null
"$QQ" gguf --model base --out q4_0.gguf --type q4_0 --overwrite -q 2>/dev/null
head -c 40000 "$SHARED/data/tinystories/tinystories_val.txt" > text.txt
lp() { "$LP" -t 2 -c $N_CTX -b $N_CTX -fa off -ctk f32 -ctv f32 "$@"; }

lp -m base-f32.gguf -f text.txt --chunks $CHUNKS --kl-divergence-base llama.kld > llama_save.txt 2>&1
"$LP" -t 2 -c $N_CTX -b $N_CTX -m base-f32.gguf -f text.txt --chunks $CHUNKS --kl-divergence-base llama_default.kld \
  > llama_default.txt 2>&1
"$QQ" eval --model base-f32.gguf --data text.txt --seq-len $N_CTX --max-windows $CHUNKS --save-kld qq.kld --json -q \
  > qq_save.json 2>/dev/null
for f in llama qq; do
  lp -m q4_0.gguf --kl-divergence-base $f.kld --kl-divergence > llama_on_$f.txt 2>&1
  "$QQ" eval --model q4_0.gguf --kl-base $f.kld --int8-activations --json -q > qq_on_$f.json 2>/dev/null
done

${PYTHON:-python3} - <<'PY'
import json, re, struct
import numpy as np

def read(path):
    raw = open(path, "rb").read()
    assert raw[:8] == b"_logits_", path
    n_ctx, n_vocab, n_chunk = struct.unpack("<3i", raw[8:20])
    tok = np.frombuffer(raw, "<i4", n_ctx * n_chunk, 20)
    nv, rows = 2 * ((n_vocab + 1) // 2) + 4, n_ctx - 1 - n_ctx // 2
    body = raw[20 + 4 * n_ctx * n_chunk:]
    assert len(body) == 2 * n_chunk * rows * nv, (path, len(body))
    u16 = np.frombuffer(body, "<u2").reshape(-1, nv)
    f32 = np.frombuffer(body, "<f4").reshape(-1, nv // 2)
    return (n_ctx, n_vocab, n_chunk), tok, f32[:, 0], f32[:, 1], u16[:, 4:4 + n_vocab].astype(np.int64)

hq, tq, sq, mq, qq = read("qq.kld")
for name in ("llama.kld", "llama_default.kld"):
    hl, tl, sl, ml, ql = read(name)
    d = np.abs(ql - qq)
    print(f"{name} vs qq.kld: headers (n_ctx, n_vocab, n_chunk) {hl} / {hq}, tokens equal: {np.array_equal(tl, tq)}; "
          f"scale at most {np.max(np.abs(sl - sq) / sq):.2e} relative apart, min_log_prob {np.max(np.abs(ml - mq)):.2e}; "
          f"{int((d > 0).sum())} of {d.size} codes differ, by at most {int(d.max())}")

def llama_stats(path):
    t = open(path).read()
    num = lambda pat: float(re.search(pat, t).group(1))
    return {"ppl_q": num(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)"), "ppl_base": num(r"Mean PPL\(base\)\s*:\s*([0-9.]+)"),
            "kld": num(r"Mean\s+KLD:\s*([0-9.]+)"), "kld_max": num(r"Maximum KLD:\s*([0-9.]+)"),
            "kld_median": num(r"Median\s+KLD:\s*([0-9.]+)"), "top1": num(r"Same top p:\s*([0-9.]+)") / 100}

def qq_stats(path):
    j = json.load(open(path))
    k = j["kl_divergence"]
    return {"ppl_q": j["perplexity"], "ppl_base": k["base_perplexity"], "kld": k["kld"]["mean"],
            "kld_max": k["kld"]["max"], "kld_median": k["kld"]["p50"], "top1": k["same_top1"]}

rows = [("llama.cpp on llama.kld", llama_stats("llama_on_llama.txt")), ("qwen-quant on llama.kld", qq_stats("qq_on_llama.json")),
        ("llama.cpp on qq.kld", llama_stats("llama_on_qq.txt")), ("qwen-quant on qq.kld", qq_stats("qq_on_qq.json"))]
print(f"\n{'Q4_0 scored':26} {'PPL(Q)':>9} {'PPL(base)':>9} {'mean KLD':>9} {'median':>9} {'max':>9} {'top-1':>8}")
for name, s in rows:
    print(f"{name:26} {s['ppl_q']:9.4f} {s['ppl_base']:9.4f} {s['kld']:9.6f} {s['kld_median']:9.6f} "
          f"{s['kld_max']:9.6f} {100 * s['top1']:7.3f}%")
saved = json.load(open("qq_save.json"))
ppl = re.search(r"Final estimate: PPL = ([0-9.]+)", open("llama_save.txt").read())
print(f"\nbase perplexity while saving: llama.cpp {ppl.group(1) if ppl else '?'}, qwen-quant {saved['perplexity']:.4f}")
PY
