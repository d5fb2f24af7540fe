"""Oracle: our CPU forward pass against Hugging Face transformers on tiny random Qwen2, Qwen3, Qwen2-MoE and
Qwen3-MoE models.

Builds the models with transformers itself (random weights, seeded), saves them as Hugging Face
directories (fp32, and bf16 for the stored-dtype path), runs transformers in fp32 with eager attention on a
right-padded batch of sequences of several lengths, and stores inputs and the logits of every real token.
The gtest ModelOracle.* then loads each directory with qwenq and requires max |logit error| <= 1e-4.
"""
import os

from oracle_common import parse_args, run_gtest, skip, spread_weights, work_dir

args = parse_args(__doc__)
try:
    import torch
    import transformers
    from safetensors.torch import save_file
except ImportError as e:  # pragma: no cover
    skip(f"transformers/torch not importable: {e}")

print("transformers", transformers.__version__, "torch", torch.__version__)
torch.manual_seed(1234)
LENGTHS = [1, 7, 33, 64]


def make_case(name, config_cls, model_cls, dtype, **cfg):
    out = work_dir(args.build, os.path.join("model_oracle", name))
    config = config_cls(**cfg)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    spread_weights(model)
    model.save_pretrained(out, safe_serialization=True)
    if dtype == torch.bfloat16:  # store bf16, compute in fp32 from the rounded weights (what we do)
        model = model.to(torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)
        model = model_cls.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager").eval()
    V = cfg["vocab_size"]
    T = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    mask = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        ids[b, :n] = torch.randint(0, V, (n,))
        mask[b, :n] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    flat_ids, flat_logits = [], []
    for b, n in enumerate(LENGTHS):
        flat_ids.append(ids[b, :n])
        flat_logits.append(logits[b, :n])
    save_file({"input_ids": torch.cat(flat_ids).to(torch.int32).contiguous(),
               "lengths": torch.tensor(LENGTHS, dtype=torch.int32),
               "logits": torch.cat(flat_logits).contiguous()},
              os.path.join(out, "oracle_expected.safetensors"))
    print(f"{name}: wrote {out}")
    return out


from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

dirs = []
common = dict(vocab_size=320, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
              max_position_embeddings=256, rms_norm_eps=1e-6)
dirs.append(make_case("qwen2_gqa_fp32", Qwen2Config, Qwen2ForCausalLM, torch.float32,
                      num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=False,
                      **common))
dirs.append(make_case("qwen2_mha_tied_bf16", Qwen2Config, Qwen2ForCausalLM, torch.bfloat16,
                      num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=True,
                      **common))
try:
    from transformers import Qwen3Config, Qwen3ForCausalLM
except ImportError:
    raise SystemExit("FAIL: this transformers has no Qwen3 (pin transformers>=4.51)")
dirs.append(make_case("qwen3_headdim_fp32", Qwen3Config, Qwen3ForCausalLM, torch.float32,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e6,
                      tie_word_embeddings=True, **common))

# Mixtures of experts: Qwen3-MoE (q/k norm, renormalized top-k, one dense layer via mlp_only_layers) and Qwen2-MoE
# (q/k/v bias, a sigmoid-gated shared expert, top-k weights not renormalized, every second layer sparse).
try:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
except ImportError:
    raise SystemExit("FAIL: this transformers has no Qwen2-MoE/Qwen3-MoE (pin transformers>=4.51)")
moe = dict(common, num_hidden_layers=3)
dirs.append(make_case("qwen3_moe_fp32", Qwen3MoeConfig, Qwen3MoeForCausalLM, torch.float32,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
                      tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48,
                      norm_topk_prob=True, mlp_only_layers=[1], **moe))
dirs.append(make_case("qwen2_moe_bf16", Qwen2MoeConfig, Qwen2MoeForCausalLM, torch.bfloat16,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True,
                      num_experts=6, num_experts_per_tok=3, moe_intermediate_size=40,
                      shared_expert_intermediate_size=96, norm_topk_prob=False, decoder_sparse_step=2, **moe))

run_gtest(args.build, "ModelOracle.*", {"QWENQ_ORACLE_MODEL_DIRS": ":".join(dirs)})
print("PASS")
