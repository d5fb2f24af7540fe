"""Oracle: LoRA loss and adapter gradients against PyTorch autograd through transformers + PEFT.

Builds a tiny random Qwen2 (fp32, eager attention) with transformers, wraps it with peft.get_peft_model (all seven
Linears, r=4, alpha=8), gives lora_A and lora_B seeded random values (B nonzero, so every gradient flows) and saves
the base model and the adapter (PEFT's own files). Two sequences of different lengths are run one at a time (no
padding); the loss is the mean next-token cross-entropy over all predicted tokens; loss.backward() gives the
adapter gradients. The gtest LoraGradOracle.* loads the same base and adapter with qwenq (our PEFT reader),
computes the loss and gradients with its hand-written backward, and compares (tolerances in the C++ half).
"""
import os

from oracle_common import parse_args, run_gtest, skip, work_dir

args = parse_args(__doc__)
try:
    import torch
    import transformers
    import peft
    from safetensors.torch import save_file
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/peft not importable: {e}")

print("transformers", transformers.__version__, "peft", peft.__version__, "torch", torch.__version__)
torch.manual_seed(4321)
out = work_dir(args.build, "lora_grad_oracle")
base_dir, adapter_dir = os.path.join(out, "base"), os.path.join(out, "adapter")

config = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=320, max_position_embeddings=256,
                                  rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
config._attn_implementation = "eager"
model = transformers.Qwen2ForCausalLM(config).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.3 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.2 * torch.randn_like(p))
        else:
            p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
model.save_pretrained(base_dir, safe_serialization=True)

targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
pm = peft.get_peft_model(model, lcfg)
with torch.no_grad():
    for name, p in pm.named_parameters():
        if "lora_A" in name:
            p.copy_(torch.randn_like(p) / (p.shape[1] ** 0.5))
        elif "lora_B" in name:
            p.copy_(0.2 * torch.randn_like(p))
pm.save_pretrained(adapter_dir)

seqs = [torch.randint(0, 320, (11,)), torch.randint(0, 320, (4,))]
total = sum(len(s) - 1 for s in seqs)
loss = 0.0
for s in seqs:
    logits = pm(input_ids=s[None, :]).logits[0]
    loss = loss + torch.nn.functional.cross_entropy(logits[:-1], s[1:], reduction="sum")
loss = loss / total
loss.backward()
print("loss", loss.item())

expected = {"input_ids": torch.cat(seqs).to(torch.int32), "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.int32),
            "loss": torch.tensor([loss.item()], dtype=torch.float64)}
for name, p in pm.named_parameters():
    if p.requires_grad:
        expected[name.replace(".default", "") + ".grad"] = p.grad.detach().clone().contiguous()
save_file(expected, os.path.join(out, "expected.safetensors"))
print(f"{len(expected) - 3} adapter gradients saved")

run_gtest(args.build, "LoraGradOracle.*", {"QWENQ_ORACLE_LORA_DIR": out})
print("lora grad oracle: OK")
