"""Oracle: llama-perplexity's KL-divergence base file (`qwen-quant eval --save-kld`, then `eval --kl-base FILE`) against
the format and formulas of llama.cpp's tools/perplexity/perplexity.cpp, computed here with numpy from transformers'
logits.

1. stories260K imported (fp32) is the base, `qwen-quant rtn` 4-bit (group 32) the quantized model, dequantized to fp32
   for transformers.
2. Ours: `eval --model <base> --save-kld base.kld` on CHUNKS chunks of N_CTX TinyStories tokens, then
   `eval --model <rtn> --kl-base base.kld --json`.
3. Reference, from the format's definition: the file parsed with numpy ("_logits_", int32 n_ctx/n_vocab/n_chunk,
   int32 tokens, per chunk n_ctx - 1 - n_ctx/2 rows of float32 scale, float32 min_log_prob, uint16 codes padded to
   an even count); every chunk run through Qwen2ForCausalLM (fp32, eager) with BOS in its first position as llama.cpp
   does when the tokenizer adds BOS; each row of logits z at positions n_ctx/2 .. n_ctx - 2 encoded in float32
   (m = max z, lo = max(min z, m - 16), scale = (m - lo)/65535, min_log_prob = lo - m - log sum exp(z - m),
   q = rint((z - lo)/scale) where z > lo else 0). The quantized model's statistics from the file's own rows:
   log P = scale*q + min_log_prob, KLD = sum over log P > -16 of P (log P - log Q), Δp = Q_t - P_t, top-1 of the base
   the first largest code; summarised with numpy (mean, std(ddof=1)/sqrt(n), default percentiles, Pearson).
Requirements (named below): the header and the tokens exact; scale and min_log_prob to float32 tolerance of two
forward passes; codes within CODE_TOL; statistics within REL_TOL.
"""
import json
import math
import os

from oracle_common import check, finish, parse_args, require_shared, run, skip, stories260k_and_rtn4, work_dir

N_CTX = 256
CHUNKS = 12
CODE_TOL = 2         # codes of logits from two fp32 implementations (one code = 16/65535 nats at most)
FLOAT_REL_TOL = 1e-5  # scale, min_log_prob
REL_TOL = 2e-4       # means and percentiles of the statistics
ABS_TOL = 2e-6
PPL_REL_TOL = 1e-4
TOP1_FLIPS = 2

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM
except ImportError as e:
    skip(f"transformers/torch not importable: {e}")

data = os.path.join(args.shared, "data")
qq = os.path.join(args.build, "qwen-quant")
wd = work_dir(args.build, "kld_file")
base_dir, rtn_dir, deq_dir = stories260k_and_rtn4(args.build, args.shared, wd)
kld_path = os.path.join(wd, "base.kld")

text_path = f"{data}/tinystories/tinystories_val.txt"
saved = json.loads(run([qq, "eval", "--model", base_dir, "--data", text_path, "--seq-len", str(N_CTX), "--max-windows",
                        str(CHUNKS), "--batch", "3", "--save-kld", kld_path, "--json", "--quiet"])
                   .strip().splitlines()[-1])
ours = json.loads(run([qq, "eval", "--model", rtn_dir, "--kl-base", kld_path, "--batch", "5", "--json", "--quiet"])
                  .strip().splitlines()[-1])
kl = ours["kl_divergence"]

# --- the file, parsed from the format's definition ---
raw = open(kld_path, "rb").read()
check(raw[:8] == b"_logits_", f"magic {raw[:8]!r}")
n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(raw, "<i4", 3, 8))
tokens = np.frombuffer(raw, "<i4", n_chunk * n_ctx, 20).reshape(n_chunk, n_ctx)
first, n_rows, nv = n_ctx // 2, n_ctx - 1 - n_ctx // 2, 2 * ((n_vocab + 1) // 2) + 4
body = raw[20 + 4 * n_chunk * n_ctx:]
check(len(body) == n_chunk * n_rows * nv * 2, f"rows take {len(body)} bytes, expected {n_chunk * n_rows * nv * 2}")
rows_u16 = np.frombuffer(body, "<u2").reshape(n_chunk, n_rows, nv)
rows_f32 = np.frombuffer(body, "<f4").reshape(n_chunk, n_rows, nv // 2)
scale, min_lp, codes = rows_f32[:, :, 0], rows_f32[:, :, 1], rows_u16[:, :, 4:4 + n_vocab]
if n_vocab % 2:
    check(not rows_u16[:, :, 4 + n_vocab].any(), "the padding value is not 0")

tok = AutoTokenizer.from_pretrained(base_dir)
with open(text_path, encoding="utf-8") as f:
    ids = tok(f.read(), return_tensors="np").input_ids[0]
check((n_ctx, n_chunk) == (N_CTX, CHUNKS), f"header n_ctx {n_ctx}, n_chunk {n_chunk}")
check(np.array_equal(tokens.reshape(-1), ids[:n_chunk * n_ctx]), "the file's tokens are not the text's first chunks")
adds_bos = tok.bos_token_id is not None and ids[0] == tok.bos_token_id
print(f"file: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}, {n_rows} rows a chunk; BOS per chunk: {adds_bos}")

load = lambda d: Qwen2ForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
base, quant = load(base_dir), load(deq_dir)
check(n_vocab == base.config.vocab_size, f"n_vocab {n_vocab} vs the model's {base.config.vocab_size}")


def chunk_logits(model, c):
    x = torch.tensor(tokens[c].astype(np.int64))[None]
    if adds_bos:
        x[0, 0] = tok.bos_token_id
    with torch.no_grad():
        return model(x).logits[0, first:n_ctx - 1].numpy().astype(np.float32)


def encode(z):
    """llama.cpp's log_softmax(n_vocab, logits, uint16_t*, tok), row by row, in float32."""
    m = z.max(-1, keepdims=True)
    lo = np.maximum(z.min(-1, keepdims=True), m - np.float32(16))
    lse = np.log(np.exp(z - m).astype(np.float64).sum(-1, keepdims=True)).astype(np.float32)
    sc = (m - lo) / np.float32(65535)
    q = np.where(z > lo, np.rint((np.float32(1) / sc) * (z - lo)), 0).astype(np.int64)
    return sc[:, 0], (lo - m - lse)[:, 0], q


worst_code, differing, nll_sum, n_pos = 0, 0, 0.0, 0
kld, dp, same, nll_b, nll_q = [], [], [], [], []
for c in range(n_chunk):
    zb = chunk_logits(base, c)
    sc, mn, q = encode(zb)
    check(np.allclose(scale[c], sc, rtol=FLOAT_REL_TOL, atol=0), f"chunk {c}: scale differs")
    check(np.allclose(min_lp[c], mn, rtol=FLOAT_REL_TOL, atol=1e-6), f"chunk {c}: min_log_prob differs")
    d = np.abs(codes[c].astype(np.int64) - q)
    worst_code, differing = max(worst_code, int(d.max())), differing + int((d > 0).sum())
    y = tokens[c, first + 1:n_ctx]
    lsm_b = torch.log_softmax(torch.tensor(zb).double(), -1).numpy()
    nll_sum += -lsm_b[np.arange(n_rows), y].sum()
    n_pos += n_rows
    # The quantized model against the file's own rows, llama.cpp's KL formulas.
    lq = torch.log_softmax(torch.tensor(chunk_logits(quant, c)).double(), -1).numpy()
    lp = (scale[c][:, None] * codes[c].astype(np.float32) + min_lp[c][:, None]).astype(np.float32).astype(np.float64)
    kld.append(np.where(lp > -16, np.exp(lp) * (lp - lq), 0).sum(-1))
    pb, pq = lp[np.arange(n_rows), y], lq[np.arange(n_rows), y]
    dp.append(np.exp(pq) - np.exp(pb))
    same.append(codes[c].argmax(-1) == lq.argmax(-1))
    nll_b.append(-pb)
    nll_q.append(-pq)
print(f"codes: {differing} of {codes.size} differ from the reference encoding, by at most {worst_code}")
check(worst_code <= CODE_TOL, f"a code differs by {worst_code} (> {CODE_TOL})")
close_rel = lambda a, b, rel, abs_tol=0.0: abs(a - b) <= rel * abs(b) + abs_tol
check(close_rel(saved["perplexity"], math.exp(nll_sum / n_pos), PPL_REL_TOL),
      f"--save-kld perplexity {saved['perplexity']} vs {math.exp(nll_sum / n_pos)}")
check(saved["scored_tokens"] == n_pos and saved["save_kld_bytes"] == len(raw), "save-kld's counts")

kld, dp, same, nll_b, nll_q = (np.concatenate(v) for v in (kld, dp, same, nll_b, nll_q))
n = len(kld)
print(f"reference: {n} positions, mean KLD {kld.mean():.6f}, same top-1 {same.mean():.5f}")
print(f"qwenq:     {kl['positions']} positions, mean KLD {kl['kld']['mean']:.6f}, same top-1 {kl['same_top1']:.5f}")


worst_rel = [0.0, ""]


def close(ours_v, ref, what, rel=REL_TOL, abs_tol=ABS_TOL):
    if ref != 0 and abs(ours_v - ref) / abs(ref) > worst_rel[0]:
        worst_rel[:] = [abs(ours_v - ref) / abs(ref), what]
    return check(close_rel(ours_v, ref, rel, abs_tol), f"{what}: qwenq {ours_v!r} vs reference {ref!r}")


check(kl["positions"] == n == ours["scored_tokens"], f"positions {kl['positions']} vs {n}")
close(ours["perplexity"], math.exp(nll_q.mean()), "perplexity", PPL_REL_TOL, 0)
close(kl["base_perplexity"], math.exp(nll_b.mean()), "base perplexity (from the file)", PPL_REL_TOL, 0)
for name, ours_s, ref in (("kld", kl["kld"], kld), ("delta_p", kl["delta_p"], dp)):
    close(ours_s["mean"], ref.mean(), f"{name} mean")
    close(ours_s["stderr"], ref.std(ddof=1) / math.sqrt(n), f"{name} stderr")
    close(ours_s["rms"], math.sqrt((ref * ref).mean()), f"{name} rms")
    close(ours_s["max"], ref.max(), f"{name} max")
    close(ours_s["min"], ref.min(), f"{name} min")
    for p in (99.9, 99, 95, 90, 50, 10, 5, 1, 0.1):
        close(ours_s[f"p{p:g}"], float(np.percentile(ref, p)), f"{name} p{p:g}")
ratio = nll_q - nll_b
close(kl["ln_ppl_ratio"], ratio.mean(), "ln(PPL(Q)/PPL(base))", REL_TOL, 1e-6)
close(kl["nll_correlation"], float(np.corrcoef(nll_q, nll_b)[0, 1]), "NLL correlation", 0, 1e-6)
flips = abs(round(kl["same_top1"] * n) - int(same.sum()))
check(flips <= TOP1_FLIPS, f"top-1 agreement differs at {flips} positions (> {TOP1_FLIPS})")
print(f"largest relative difference: {worst_rel[0]:.2e} ({worst_rel[1]})")
check(0.01 < kld.mean() < 1 and 0.5 < same.mean() < 1, f"unexpected reference: KLD {kld.mean()}, top-1 {same.mean()}")
finish()
