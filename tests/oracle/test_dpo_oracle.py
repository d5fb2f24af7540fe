"""Oracle: the preference losses (DPO sigmoid with label smoothing and RPO, IPO, hinge; the reference-free SimPO with
label smoothing and CPO's NLL term, and ORPO) and their adapter gradients against PyTorch autograd through
transformers + PEFT.

A tiny random Qwen2 (fp32, eager attention) with two PEFT adapters (all seven Linears, r=4, alpha=8, seeded random A
and nonzero B): "reference" and "policy". Three pairs of a random prompt with a chosen and a rejected completion
(random token ids; the completions' tokens are the scored ones). Each completion's log-probability is the sum of its
tokens' log-softmax, under the reference adapter (no gradient) and the policy. The loss is written out here from the
formulas TRL's DPOTrainer.dpo_loss uses (sigmoid -(1-e)·logsigmoid(b·h) - e·logsigmoid(-b·h),
hinge relu(1 - b·h), ipo (h - 1/(2b))² on length-normalised log-probabilities), averaged over the pairs, plus
rpo_alpha times the chosen tokens' mean NLL; TRL's CPOTrainer.cpo_loss for simpo (mean log-probabilities a, logits
a_c - a_r - gamma/b, the sigmoid loss of b·logits with label smoothing) and ORPOTrainer.odds_ratio_loss for orpo
(log odds (a_c - a_r) - (log1p(-exp(a_c)) - log1p(-exp(a_r))), the chosen tokens' mean NLL minus b·logsigmoid of
it); loss.backward() gives the policy adapter's gradients. The gtest
DpoOracle.* reads the same base and both adapters with qwenq, computes the reference sums, then the loss and
gradients through lora_loss_and_grad's sequence objective (trainer/dpo.h), and compares (tolerances there).
"""
import json
import os

from oracle_common import parse_args, randomize_lora, run_gtest, skip, tiny_qwen2_with_lora, work_dir

args = parse_args(__doc__)
try:
    import torch
    import torch.nn.functional as F
    import transformers
    import peft
    from safetensors.torch import save_file
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/peft not importable: {e}")

print("transformers", transformers.__version__, "peft", peft.__version__, "torch", torch.__version__)
torch.manual_seed(1357)
out = work_dir(args.build, "dpo_oracle")
config, pm = tiny_qwen2_with_lora(out)


def randomize_and_save(name):
    randomize_lora(pm)
    pm.save_pretrained(os.path.join(out, name))


# Pairs: prompt ++ completion; mask[t] = 1 where token t belongs to the completion (a scored target).
seqs, masks = [], []
for lp, lc, lr in [(5, 4, 3), (7, 3, 6), (4, 6, 2)]:
    prompt = torch.randint(0, config.vocab_size, (lp,))
    for lcomp in (lc, lr):
        seqs.append(torch.cat([prompt, torch.randint(0, config.vocab_size, (lcomp,))]))
        masks.append([0] * lp + [1] * lcomp)


def completion_nll(m):
    """Σ −log p(token) over each sequence's completion tokens, and their counts."""
    sums, counts = [], []
    for s, mk in zip(seqs, masks):
        logits = m(input_ids=s[None, :]).logits[0]
        lp = F.log_softmax(logits[:-1].float(), dim=-1).gather(1, s[1:, None])[:, 0]
        keep = torch.tensor(mk[1:], dtype=torch.bool)
        sums.append(-lp[keep].sum())
        counts.append(int(keep.sum()))
    return sums, counts


randomize_and_save("reference")
with torch.no_grad():
    ref, counts = completion_nll(pm)
randomize_and_save("policy")

# The hinge case's beta puts the pair of the largest margin h outside the hinge (zero loss and gradient) and the
# others inside, so both branches are compared.
with torch.no_grad():
    pol0, _ = completion_nll(pm)
h = sorted(float((ref[2 * i] - pol0[2 * i]) - (ref[2 * i + 1] - pol0[2 * i + 1])) for i in range(len(seqs) // 2))
if h[-1] <= 0 or h[-1] <= h[-2]:
    skip(f"the seeded pairs give margins {h}: no hinge beta separates them (change the seed)")
hinge_beta = 2 / (h[-1] + max(h[-2], 0.0))
print("margins h", h, "hinge beta", hinge_beta)
CASES = {"sigmoid": dict(loss="sigmoid", beta=0.1, label_smoothing=0.1, rpo_alpha=0.5),
         "ipo": dict(loss="ipo", beta=0.5, label_smoothing=0.0, rpo_alpha=0.0),
         "hinge": dict(loss="hinge", beta=hinge_beta, label_smoothing=0.0, rpo_alpha=0.0),
         "simpo": dict(loss="simpo", beta=2.0, label_smoothing=0.1, rpo_alpha=0.3, simpo_gamma=0.7),
         "orpo": dict(loss="orpo", beta=0.5, label_smoothing=0.0, rpo_alpha=0.0)}
expected = {"input_ids": torch.cat(seqs).to(torch.int32),
            "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.int32),
            "masks": torch.tensor(sum(masks, []), dtype=torch.int32)}
for name, c in CASES.items():
    pm.zero_grad()
    pol, _ = completion_nll(pm)
    losses, active = [], 0
    for i in range(len(seqs) // 2):
        S_c, S_r, R_c, R_r = pol[2 * i], pol[2 * i + 1], ref[2 * i], ref[2 * i + 1]
        a_c, a_r = -S_c / counts[2 * i], -S_r / counts[2 * i + 1]  # mean token log-probabilities
        if c["loss"] == "simpo":
            z = c["beta"] * (a_c - a_r - c["simpo_gamma"] / c["beta"])
            e = c["label_smoothing"]
            losses.append(-F.logsigmoid(z) * (1 - e) - F.logsigmoid(-z) * e)
            continue
        if c["loss"] == "orpo":
            log_odds = (a_c - a_r) - (torch.log1p(-torch.exp(a_c)) - torch.log1p(-torch.exp(a_r)))
            losses.append(-c["beta"] * F.logsigmoid(log_odds))
            continue
        if c["loss"] == "ipo":
            h = (R_c - S_c) / counts[2 * i] - (R_r - S_r) / counts[2 * i + 1]
        else:
            h = (R_c - S_c) - (R_r - S_r)
        b, e = c["beta"], c["label_smoothing"]
        if c["loss"] == "sigmoid":
            losses.append(-(1 - e) * F.logsigmoid(b * h) - e * F.logsigmoid(-b * h))
        elif c["loss"] == "hinge":
            losses.append(torch.relu(1 - b * h))
            active += float(b * h) < 1
        else:
            losses.append((h - 1 / (2 * b)) ** 2)
    loss = torch.stack(losses).mean()
    nll_weight = 1.0 if c["loss"] == "orpo" else c["rpo_alpha"]  # ORPO's policy_nll_loss, RPO's / CPO's alpha
    if nll_weight > 0:
        chosen_tokens = sum(counts[0::2])
        loss = loss + nll_weight * torch.stack(pol[0::2]).sum() / chosen_tokens
    loss.backward()
    if c["loss"] == "hinge":
        assert active == len(seqs) // 2 - 1, f"hinge: {active} pairs inside the margin"
    print(name, "loss", loss.item())
    expected[f"{name}.loss"] = torch.tensor([loss.item()], dtype=torch.float64)
    for pname, p in pm.named_parameters():
        if p.requires_grad:
            expected[f"{name}." + pname.replace(".default", "") + ".grad"] = p.grad.detach().clone().contiguous()
save_file(expected, os.path.join(out, "expected.safetensors"))
with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(CASES, f)
print("reference sums", [float(x) for x in ref])

run_gtest(args.build, "DpoOracle.*", {"QWENQ_ORACLE_DPO_DIR": out})
print("dpo oracle: OK")
