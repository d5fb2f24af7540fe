"""Oracle: the unpaired preference losses (KTO with its KL reference point, and the unpaired APO-zero) and their
adapter gradients against PyTorch autograd through transformers + PEFT.

A tiny random Qwen2 (fp32, eager attention) with two PEFT adapters (all seven Linears, r=4, alpha=8, seeded random A
and nonzero B): "reference" and "policy" (of the two random adapters, the one whose log-probabilities of the KL
sequences are the larger is the policy, so that KTO's reference point z is positive, not clamped at 0). Four examples
of a random prompt with a random completion, labelled desirable, undesirable, desirable, undesirable; the KL sequence
of example i is its prompt with the completion of example i - 1 (the first takes the last), TRL's _get_kl_dataset
within one batch. Each completion's log-probability is the sum of its tokens' log-softmax. The loss is written out
here as TRL's KTOTrainer computes it: z = (policy KL log-probs - reference KL log-probs).mean().clamp(min=0), without
gradient; kto: desirable 1 - sigmoid(beta (r - z)), undesirable 1 - sigmoid(beta (z - r)) with r the policy's
log-ratio over the reference; apo_zero_unpaired: 1 - sigmoid(beta r) and sigmoid(beta r); each times
desirable_weight / undesirable_weight, then the mean; loss.backward() gives the policy adapter's gradients. The gtest
KtoOracle.* reads the same base and both adapters with qwenq, computes the reference sums, then z, the loss and the
gradients through kto_step_objective and lora_loss_and_grad's sequence objective (trainer/kto.h), and compares
(tolerances there).
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
torch.manual_seed(2468)
out = work_dir(args.build, "kto_oracle")
config, pm = tiny_qwen2_with_lora(out)

# Examples and their KL sequences, interleaved as qwenq's units: [example 0, KL 0, example 1, KL 1, ...];
# mask[t] = 1 where token t belongs to the completion (a scored target).
labels = [True, False, True, False]
prompts = [torch.randint(0, config.vocab_size, (n,)) for n in (5, 7, 4, 6)]
completions = [torch.randint(0, config.vocab_size, (n,)) for n in (4, 3, 6, 2)]
seqs, masks = [], []
for i in range(4):
    j = (i - 1) % 4
    for comp in (completions[i], completions[j]):
        seqs.append(torch.cat([prompts[i], comp]))
        masks.append([0] * len(prompts[i]) + [1] * len(comp))


def completion_nll(m):
    """Σ −log p(token) over each sequence's completion tokens."""
    sums = []
    for s, mk in zip(seqs, masks):
        logits = m(input_ids=s[None, :]).logits[0]
        lp = F.log_softmax(logits[:-1].float(), dim=-1).gather(1, s[1:, None])[:, 0]
        sums.append(-lp[torch.tensor(mk[1:], dtype=torch.bool)].sum())
    return sums


def load(state):
    with torch.no_grad():
        for k, v in pm.named_parameters():
            if k in state:
                v.copy_(state[k])


adapters = []
for _ in range(2):
    state = randomize_lora(pm)
    with torch.no_grad():
        sums = completion_nll(pm)
    adapters.append((state, sums))
# The policy: the adapter of the smaller KL-sequence NLL (larger log-probabilities), so z > 0.
kl_nll = [float(sum(s[1::2])) for _, s in adapters]
policy_i = 0 if kl_nll[0] < kl_nll[1] else 1
(ref_state, ref), (pol_state, _) = adapters[1 - policy_i], adapters[policy_i]
load(ref_state)
pm.save_pretrained(os.path.join(out, "reference"))
load(pol_state)
pm.save_pretrained(os.path.join(out, "policy"))

CASES = {"kto": dict(loss="kto", beta=0.5, desirable_weight=1.0, undesirable_weight=1.33),
         "apo": dict(loss="apo_zero_unpaired", beta=0.3, desirable_weight=0.8, undesirable_weight=1.0)}
expected = {"input_ids": torch.cat(seqs).to(torch.int32),
            "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.int32),
            "masks": torch.tensor(sum(masks, []), dtype=torch.int32),
            "labels": torch.tensor(labels, dtype=torch.int32)}
for name, c in CASES.items():
    pm.zero_grad()
    pol = completion_nll(pm)
    b = c["beta"]
    if c["loss"] == "kto":  # TRL: KL_logps under no_grad, then the mean log-ratio clamped at 0
        kl_pol = torch.stack([-x.detach() for x in pol[1::2]])
        kl_ref = torch.stack([-x for x in ref[1::2]])
        z = (kl_pol - kl_ref).mean().clamp(min=0)
        assert float(z) > 0, f"z = {float(z)}: the policy was chosen for a positive reference point"
    else:
        z = torch.zeros(())
    losses = []
    for i, good in enumerate(labels):
        r = (-pol[2 * i]) - (-ref[2 * i])  # policy log-prob minus reference log-prob of the example's completion
        if c["loss"] == "kto":
            ell = 1 - torch.sigmoid(b * (r - z)) if good else 1 - torch.sigmoid(b * (z - r))
        else:
            ell = 1 - torch.sigmoid(b * r) if good else torch.sigmoid(b * r)
        losses.append((c["desirable_weight"] if good else c["undesirable_weight"]) * ell)
    loss = torch.stack(losses).mean()
    loss.backward()
    print(name, "loss", loss.item(), "z", float(z))
    expected[f"{name}.loss"] = torch.tensor([loss.item()], dtype=torch.float64)
    expected[f"{name}.z"] = torch.tensor([float(z)], dtype=torch.float64)
    for pname, p in pm.named_parameters():
        if p.requires_grad:
            expected[f"{name}." + pname.replace(".default", "") + ".grad"] = p.grad.detach().clone().contiguous()
save_file(expected, os.path.join(out, "expected.safetensors"))
with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(CASES, f)
print("reference sums", [float(x) for x in ref])

run_gtest(args.build, "KtoOracle.*", {"QWENQ_ORACLE_KTO_DIR": out})
print("kto oracle: OK")
