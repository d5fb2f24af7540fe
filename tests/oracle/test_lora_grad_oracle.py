"""Oracle: LoRA loss and adapter gradients against PyTorch autograd through transformers + PEFT.

Builds a tiny random Qwen2, a tiny random Qwen3 (QK-norm, head_dim 32 != hidden/heads) and a Qwen2 with YaRN
RoPE scaling (attention factor 1.3, an 8-token original context; fp32, eager attention) with transformers, wraps it with peft.get_peft_model (all seven
Linears, r=4, alpha=8), gives lora_A and lora_B seeded random values (B nonzero, so every gradient flows) and saves
the base model and the adapter (PEFT's own files). Two sequences of different lengths are run one at a time (no
padding); the loss is the mean next-token cross-entropy over all predicted tokens; loss.backward() gives the
adapter gradients. The gtest LoraGradOracle.* loads the same base and adapter with qwenq (our PEFT reader),
computes the loss and gradients with its hand-written backward, and compares (tolerances in the C++ half).
The cases qwen3_moe and qwen2_moe adapt tiny mixtures of experts, every expert's Linears too (PEFT's gate_proj etc.
match each expert's; the gradient reaches the earlier layers through every MoE block's experts, routing weights,
router and shared expert); qwen3_moe_attention adapts the attention alone. The case qwen2_dora does the same with LoraConfig(use_dora=True): magnitudes randomized too (m = ‖W‖·(1 + 0.3·N(0,1)),
so m/n is far from 1), and their gradients compared as well (PEFT detaches the norm n, as we do); qwen2_moe_dora
likewise on a Qwen2-MoE, every expert's Linear a DoRA layer.
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

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_case(name, config, dora=False, targets=None):
    """Builds, randomizes and saves one base + PEFT adapter + expected loss/gradients under out/name."""
    case = os.path.join(out, name)
    base_dir, adapter_dir = os.path.join(case, "base"), os.path.join(case, "adapter")
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
    model.save_pretrained(base_dir, safe_serialization=True)
    targets = targets or ATTENTION + ["gate_proj", "up_proj", "down_proj"]
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM",
                           use_dora=dora)
    pm = peft.get_peft_model(model, lcfg)
    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if "lora_A" in pname:
                p.copy_(torch.randn_like(p) / (p.shape[1] ** 0.5))
            elif "lora_B" in pname:
                p.copy_(0.2 * torch.randn_like(p))
            elif "lora_magnitude_vector" in pname:
                p.mul_(1.0 + 0.3 * torch.randn_like(p))
    pm.save_pretrained(adapter_dir)
    seqs = [torch.randint(0, config.vocab_size, (11,)), torch.randint(0, config.vocab_size, (4,))]
    total = sum(len(s) - 1 for s in seqs)
    loss = 0.0
    for s in seqs:
        logits = pm(input_ids=s[None, :]).logits[0]
        loss = loss + torch.nn.functional.cross_entropy(logits[:-1], s[1:], reduction="sum")
    loss = loss / total
    loss.backward()
    print(name, "loss", loss.item())
    expected = {"input_ids": torch.cat(seqs).to(torch.int32),
                "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.int32),
                "loss": torch.tensor([loss.item()], dtype=torch.float64)}
    for pname, p in pm.named_parameters():
        if p.requires_grad:  # an expert no token was routed to never ran: no grad, i.e. zero
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            expected[pname.replace(".default", "") + ".grad"] = g.detach().clone().contiguous()
    save_file(expected, os.path.join(case, "expected.safetensors"))
    print(f"{name}: {len(expected) - 3} adapter gradients saved")
    return case


common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=320, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
yarn = dict(common, max_position_embeddings=8,
            rope_scaling={"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.3})  # dx = s·Rᵀ·dx'
cases = [make_case("qwen2", transformers.Qwen2Config(**common)),
         make_case("qwen3", transformers.Qwen3Config(head_dim=32, **common)),  # QK-norm; head_dim != hidden/heads
         make_case("qwen2_yarn", transformers.Qwen2Config(**yarn)),
         make_case("qwen2_dora", transformers.Qwen2Config(**common), dora=True),
         # Mixtures of experts, all seven targets: PEFT adapts every expert's (and the shared expert's) gate/up/down;
         # the gradients of the earlier layers flow back through the MoE blocks (experts, routing weights and
         # router, shared expert). Three layers, the last dense in qwen3_moe; and attention adapters alone.
         make_case("qwen3_moe", transformers.Qwen3MoeConfig(
             head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48, norm_topk_prob=True,
             mlp_only_layers=[2], **dict(common, num_hidden_layers=3))),
         make_case("qwen2_moe", transformers.Qwen2MoeConfig(
             num_experts=6, num_experts_per_tok=3, moe_intermediate_size=40, shared_expert_intermediate_size=96,
             norm_topk_prob=False, **dict(common, num_hidden_layers=3))),
         # DoRA on every expert's Linear (and the attention's) of a Qwen2-MoE with its shared expert.
         make_case("qwen2_moe_dora", transformers.Qwen2MoeConfig(
             num_experts=6, num_experts_per_tok=2, moe_intermediate_size=40, shared_expert_intermediate_size=96,
             norm_topk_prob=False, **common), dora=True),
         make_case("qwen3_moe_attention", transformers.Qwen3MoeConfig(
             head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48, norm_topk_prob=True,
             **dict(common, num_hidden_layers=2)), targets=ATTENTION)]

run_gtest(args.build, "LoraGradOracle.*", {"QWENQ_ORACLE_LORA_DIRS": ":".join(cases)})
print("lora grad oracle: OK")
