"""Oracle: GRPO's loss (its policy term at num_iterations = 1 and, off-policy, PPO's clipped ratio per token and GSPO's
per sequence; the KL term to the base, the sampling temperature in the log-probabilities, the dapo and grpo
normalisations) and the adapter gradients against PyTorch autograd through transformers + PEFT.

A tiny random Qwen2 (fp32, eager attention) with one PEFT adapter (all seven Linears, r=4, alpha=8, seeded random A and
nonzero B). Two prompts, each with a group of three random completions of different lengths, and a reward per
completion; the advantages are written out here as TRL's GRPOTrainer computes them (the group mean subtracted, divided
by the group's unbiased std + 1e-4). Each completion token's log-probability is log_softmax(logits / T) of its token;
the reference's is the same with the adapter disabled (PEFT's disable_adapter, TRL's reference for a PEFT model). The
per-token loss is TRL's: -(exp(lp - lp.detach()) * A) + beta * (exp(ref - lp) - (ref - lp) - 1); dapo takes the mean
over every completion token, grpo each completion's token mean and then their mean; loss.backward() gives the
gradients. The off-policy cases (TRL with num_iterations > 1) take the old log-probabilities from a second adapter
("old": the policy with its B moved, as an adapter a few optimizer steps back) and TRL's
-min(coef * A, clamp(coef, 1 - epsilon, 1 + epsilon_high) * A), coef = exp(lp - old) per token, or per sequence
exp(sum(lp - old) / len) (importance_sampling_level "sequence", GSPO), the per-token case with TRL's delta (two-sided
clipping: coef capped at delta in the first branch); epsilon small enough that some tokens clip. The gtest GrpoOracle.* reads the base and the adapter with qwenq, computes the reference's token NLLs with a
zero adapter, the normalisations (grpo_normalizers) and the token objective (grpo_token_weights) through
lora_loss_and_grad with logit_scale = 1/T, and compares the loss and the gradients (tolerances there).
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
out = work_dir(args.build, "grpo_oracle")
config, pm = tiny_qwen2_with_lora(out)
policy_params = randomize_lora(pm)
pm.save_pretrained(os.path.join(out, "policy"))
with torch.no_grad():  # the old policy: B moved by 0.1·N(0, 1), saved, then the policy's values back
    for pname, p in pm.named_parameters():
        if "lora_B" in pname:
            p.add_(0.1 * torch.randn_like(p))
pm.save_pretrained(os.path.join(out, "old"))

G = 3
prompts = [torch.randint(0, config.vocab_size, (n,)) for n in (5, 3)]
comp_lens = [4, 2, 6, 3, 5, 1]
rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, 0.0], dtype=torch.float64)
seqs, masks = [], []
for k, n in enumerate(comp_lens):
    p = prompts[k // G]
    seqs.append(torch.cat([p, torch.randint(0, config.vocab_size, (n,))]))
    masks.append([0] * len(p) + [1] * n)
grouped = rewards.view(-1, G)
adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)


def token_logps(m, temperature):
    """Per sequence, the log-probabilities of its completion tokens at the temperature."""
    out = []
    for s, mk in zip(seqs, masks):
        logits = m(input_ids=s[None, :]).logits[0]
        lp = F.log_softmax(logits[:-1].float() / temperature, dim=-1).gather(1, s[1:, None])[:, 0]
        out.append(lp[torch.tensor(mk[1:], dtype=torch.bool)])
    return out


CASES = {"dapo": dict(loss="dapo", beta=0.04, temperature=0.7),
         "grpo": dict(loss="grpo", beta=0.0, temperature=1.0),
         "grpo_kl": dict(loss="grpo", beta=0.2, temperature=1.3),
         "clip_token": dict(loss="dapo", beta=0.04, temperature=0.9, old=True, epsilon=0.05, epsilon_high=0.08,
                            level="token", delta=1.1),
         "gspo": dict(loss="grpo", beta=0.0, temperature=1.0, old=True, epsilon=0.02, epsilon_high=0.03,
                      level="sequence")}
with torch.no_grad():
    olds = {T: token_logps(pm, T) for T in {c["temperature"] for c in CASES.values() if c.get("old")}}
    for pname, p in pm.named_parameters():
        if pname in policy_params:
            p.copy_(policy_params[pname])
expected = {"input_ids": torch.cat(seqs).to(torch.int32),
            "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.int32),
            "masks": torch.tensor(sum(masks, []), dtype=torch.int32),
            "advantages": adv.clone()}
for name, c in CASES.items():
    pm.zero_grad()
    with torch.no_grad(), pm.disable_adapter():
        ref = token_logps(pm, c["temperature"])
    lps = token_logps(pm, c["temperature"])
    per_seq = []
    for j, lp in enumerate(lps):
        x = ref[j] - lp
        a = adv[j].float()
        if c.get("old"):
            log_w = lp - olds[c["temperature"]][j]
            if c["level"] == "sequence":
                log_w = (log_w.sum() / max(len(lp), 1)).expand_as(lp)
            coef = torch.exp(log_w)
            clipped = torch.clamp(coef, 1 - c["epsilon"], 1 + c["epsilon_high"])
            if c.get("delta"):  # two-sided clipping: TRL's delta caps the unclipped ratio
                coef = torch.clamp(coef, max=c["delta"])
            policy = -torch.min(coef * a, clipped * a)
        else:
            policy = -(torch.exp(lp - lp.detach()) * a)
        per_seq.append(policy + c["beta"] * (torch.exp(x) - x - 1))
    if c["loss"] == "dapo":
        loss = torch.cat(per_seq).sum() / sum(comp_lens)
    else:
        loss = torch.stack([t.mean() for t in per_seq]).mean()
    loss.backward()
    print(name, "loss", loss.item())
    expected[f"{name}.loss"] = torch.tensor([loss.item()], dtype=torch.float64)
    for pname, p in pm.named_parameters():
        if p.requires_grad:
            expected[f"{name}." + pname.replace(".default", "") + ".grad"] = p.grad.detach().clone().contiguous()
save_file(expected, os.path.join(out, "expected.safetensors"))
with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(CASES, f)

run_gtest(args.build, "GrpoOracle.*", {"QWENQ_ORACLE_GRPO_DIR": out})
print("grpo oracle: OK")
