"""Oracle: `qwen-quant eval --kl-base` against the same statistics computed from transformers' logits.

1. stories260K imported (fp32) is the base; `qwen-quant rtn` (4-bit, group 32, GPTQ layout, MLP padded) makes the
   quantized model, and `qwen-quant dequantize --dtype fp32` writes its weights densely for transformers.
2. Ours: `eval --model <rtn> --kl-base <base> --json` on the first WINDOWS windows of SEQ_LEN TinyStories tokens.
3. Reference: Qwen2ForCausalLM (fp32, eager) runs both directories on the same windows (AutoTokenizer on the
   tokenizer.json we wrote); per position, in float64: log_softmax of each model's logits, KL(P_base || Q) =
   sum P (log P - log Q), the true token's probability change Q_t - P_t, argmax agreement, each NLL; summarised with
   numpy (mean, std(ddof=1)/sqrt(n), percentile's default linear method, Pearson correlation).
Requirements (named below): means, percentiles and perplexities to the tolerances of two fp32 forward passes; the
top-1 agreement within TOP1_FLIPS positions (near-ties may flip between the two implementations).
"""
import json
import math
import os

from oracle_common import check, finish, parse_args, require_shared, run, skip, stories260k_and_rtn4, work_dir

SEQ_LEN = 256
WINDOWS = 24
REL_TOL = 2e-4      # means and percentiles (fp32 logits of two implementations; observed at most 2.3e-5)
ABS_TOL = 2e-6      # floor for values near 0 (the small KLD percentiles, Δp)
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
wd = work_dir(args.build, "kld")
base_dir, rtn_dir, deq_dir = stories260k_and_rtn4(args.build, args.shared, wd)

text_path = f"{data}/tinystories/tinystories_val.txt"
ours = json.loads(run([qq, "eval", "--model", rtn_dir, "--kl-base", base_dir, "--data", text_path, "--seq-len",
                       str(SEQ_LEN), "--max-windows", str(WINDOWS), "--batch", "4", "--json", "--quiet"])
                  .strip().splitlines()[-1])
kl = ours["kl_divergence"]

tok = AutoTokenizer.from_pretrained(base_dir)
load = lambda d: Qwen2ForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
base, quant = load(base_dir), load(deq_dir)
with open(text_path, encoding="utf-8") as f:
    ids = tok(f.read(), return_tensors="pt").input_ids
kld, dp, same, nll_b, nll_q = [], [], [], [], []
with torch.no_grad():
    for w in range(WINDOWS):
        x = ids[:, w * SEQ_LEN:(w + 1) * SEQ_LEN]
        lp = torch.log_softmax(base(x).logits[0, :-1].double(), -1)
        lq = torch.log_softmax(quant(x).logits[0, :-1].double(), -1)
        y = x[0, 1:]
        kld.append((lp.exp() * (lp - lq)).sum(-1).numpy())
        pt_b = lp.gather(1, y[:, None])[:, 0]
        pt_q = lq.gather(1, y[:, None])[:, 0]
        dp.append((pt_q.exp() - pt_b.exp()).numpy())
        same.append((lp.argmax(-1) == lq.argmax(-1)).numpy())
        nll_b.append((-pt_b).numpy())
        nll_q.append((-pt_q).numpy())
kld, dp, same, nll_b, nll_q = (np.concatenate(v) for v in (kld, dp, same, nll_b, nll_q))
n = len(kld)
print(f"transformers: {n} positions, mean KLD {kld.mean():.6f}, same top-1 {same.mean():.5f}")
print(f"qwenq:        {kl['positions']} positions, mean KLD {kl['kld']['mean']:.6f}, same top-1 {kl['same_top1']:.5f}")


def close(ours_v, ref, what, rel=REL_TOL, abs_tol=ABS_TOL):
    return check(abs(ours_v - ref) <= rel * abs(ref) + abs_tol, f"{what}: qwenq {ours_v!r} vs reference {ref!r}")


check(kl["positions"] == n == ours["scored_tokens"], f"positions {kl['positions']} vs {n}")
close(ours["perplexity"], math.exp(nll_q.mean()), "perplexity", PPL_REL_TOL, 0)
close(kl["base_perplexity"], math.exp(nll_b.mean()), "base perplexity", PPL_REL_TOL, 0)
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
close(kl["ln_ppl_ratio_stderr"], ratio.std(ddof=1) / math.sqrt(n), "its stderr")
close(kl["nll_correlation"], float(np.corrcoef(nll_q, nll_b)[0, 1]), "NLL correlation", 0, 1e-6)
flips = abs(round(kl["same_top1"] * n) - int(same.sum()))
check(flips <= TOP1_FLIPS, f"top-1 agreement differs at {flips} positions (> {TOP1_FLIPS})")
# Not a vacuous comparison: 4-bit RTN moves the distributions visibly, and not everywhere.
check(0.01 < kld.mean() < 1 and 0.5 < same.mean() < 1, f"unexpected reference: KLD {kld.mean()}, top-1 {same.mean()}")
finish()
