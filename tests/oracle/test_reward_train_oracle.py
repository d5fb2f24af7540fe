"""Oracle: reward modelling's loss (TRL RewardTrainer's Bradley-Terry loss, with its margin column and
center_rewards_coefficient) and the gradients of a SEQ_CLS LoRA adapter and its score head against PyTorch autograd
through transformers' Qwen2ForSequenceClassification + PEFT; and our saved SEQ_CLS adapter read back by PEFT.

A tiny random Qwen2 (fp32, eager attention) saved as a causal LM at base/, loaded as a sequence classifier (num_labels 1,
a pad_token_id) with a seeded random score head and a PEFT LoRA adapter of task_type SEQ_CLS on all seven Linears (r=4,
alpha=8, random A and nonzero B), saved by PEFT at policy/ (PEFT's own SEQ_CLS layout: base_model.model.score.weight
beside the LoRA tensors); and the same with use_dora (magnitudes randomized too) at policy_dora/. Three pairs of a random prompt with a chosen and a rejected completion (random token ids); two
sequences end in pad tokens, which transformers' pooling skips (the score is read at the last token that is not the pad
id). The loss is written out here as TRL's RewardTrainer.compute_loss writes it:
  -logsigmoid(r_c - r_r - margin).mean() + center_rewards_coefficient * mean((r_c + r_r)^2)
and loss.backward() gives the adapter's and the head's gradients. The gtest RewardTrainOracle.* reads the base and
PEFT's adapter with qwenq, computes the scores, loss and gradients through lora_loss_and_grad's score head
(trainer/reward.h) and compares (tolerances there); it then saves the adapter with qwenq (its head changed), and this
script loads that directory with PeftModel.from_pretrained and checks the scores qwenq printed for it.
"""
import json
import os

from oracle_common import parse_args, randomize_lora, run_gtest, skip, spread_weights, work_dir

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
out = work_dir(args.build, "reward_train_oracle")
PAD = 7
config = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=320, max_position_embeddings=256,
                                  rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
config._attn_implementation = "eager"
causal = transformers.AutoModelForCausalLM.from_config(config).eval()
spread_weights(causal)
causal.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
model = transformers.AutoModelForSequenceClassification.from_pretrained(
    os.path.join(out, "base"), num_labels=1, pad_token_id=PAD, attn_implementation="eager").eval()
with torch.no_grad():
    model.score.weight.copy_(torch.randn_like(model.score.weight) / (config.hidden_size ** 0.5))
head = model.score.weight.detach().clone()
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def seq_cls_peft(dora, name):
    """The classifier (the shared head) with a SEQ_CLS adapter, randomized (DoRA's magnitudes too), saved at out/name."""
    m = transformers.AutoModelForSequenceClassification.from_pretrained(
        os.path.join(out, "base"), num_labels=1, pad_token_id=PAD, attn_implementation="eager").eval()
    with torch.no_grad():
        m.score.weight.copy_(head)
    p = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="SEQ_CLS",
                                                target_modules=TARGETS, use_dora=dora))
    randomize_lora(p)
    with torch.no_grad():
        for pname, v in p.named_parameters():
            if "lora_magnitude_vector" in pname:
                v.mul_(1.0 + 0.3 * torch.randn_like(v))
    p.save_pretrained(os.path.join(out, name))
    return p


models = {"policy": seq_cls_peft(False, "policy"), "policy_dora": seq_cls_peft(True, "policy_dora")}
pm = models["policy"]

seqs = []
for i, (lp, lc, lr) in enumerate([(5, 4, 3), (7, 3, 6), (4, 6, 2)]):
    prompt = torch.randint(8, config.vocab_size, (lp,))  # ids 0..7 never drawn: PAD only where placed
    for k, lcomp in enumerate((lc, lr)):
        s = torch.cat([prompt, torch.randint(8, config.vocab_size, (lcomp,))])
        if (i, k) in ((0, 1), (2, 0)):
            s = torch.cat([s, torch.full((2,), PAD)])  # trailing pads: pooled before them
        seqs.append(s)


def scores(m):
    return [m(input_ids=s[None, :]).logits[0, 0] for s in seqs]


CASES = {"plain": dict(adapter="policy", center=0.0, margins=[]),
         "center_margin": dict(adapter="policy", center=0.05, margins=[0.5, -0.25, 1.5]),
         "dora": dict(adapter="policy_dora", center=0.0, margins=[0.5, -0.25, 1.5])}
expected = {"input_ids": torch.cat(seqs).to(torch.int32),
            "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.int32),
            "masks": torch.zeros(sum(len(s) for s in seqs), dtype=torch.int32)}
for name, c in CASES.items():
    pm = models[c["adapter"]]
    pm.zero_grad()
    r = torch.stack(scores(pm))
    rc, rr = r[0::2], r[1::2]
    margin = torch.tensor(c["margins"]) if c["margins"] else torch.zeros_like(rc)
    loss = -F.logsigmoid(rc - rr - margin).mean()
    if c["center"] > 0:
        loss = loss + c["center"] * torch.mean((rc + rr) ** 2)
    loss.backward()
    print(name, "loss", loss.item(), "scores", [round(float(x), 5) for x in r])
    expected[f"{name}.loss"] = torch.tensor([loss.item()], dtype=torch.float64)
    expected[f"{name}.scores"] = r.detach().to(torch.float64)
    for pname, p in pm.named_parameters():
        if p.requires_grad:
            key = pname.replace(".modules_to_save.default", "").replace(".default", "")
            expected[f"{name}." + key + ".grad"] = p.grad.detach().clone().contiguous()
save_file(expected, os.path.join(out, "expected.safetensors"))
with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump({"pad_token_id": PAD, "cases": CASES}, f)

run_gtest(args.build, "RewardTrainOracle.*", {"QWENQ_ORACLE_REWARD_DIR": out})

# Our saved SEQ_CLS adapter (the head changed by the gtest) loaded by PEFT onto the classifier: the same scores.
fresh = transformers.AutoModelForSequenceClassification.from_pretrained(
    os.path.join(out, "base"), num_labels=1, pad_token_id=PAD, attn_implementation="eager").eval()
ours = peft.PeftModel.from_pretrained(fresh, os.path.join(out, "ours")).eval()
with open(os.path.join(out, "ours_scores.json")) as f:
    want = json.load(f)
with torch.no_grad():
    got = [float(x) for x in scores(ours)]
worst = max(abs(a - b) for a, b in zip(got, want)) / max(abs(b) for b in want)
print("PEFT on our adapter: scores", [round(x, 5) for x in got], "ours", [round(x, 5) for x in want],
      "max rel diff", worst)
if worst > 1e-5:
    raise SystemExit(f"FAIL: PEFT's scores with our saved adapter differ from ours by {worst:.3g} (tolerance 1e-5)")
print("reward train oracle: OK")
