"""Oracle: RoPE scaling (config.json's rope_scaling) in our CPU forward pass against Hugging Face transformers.

Tiny random Qwen2, Qwen3 and Llama models saved with rope_scaling of type yarn (factor replaced by
max_position_embeddings / original_max_position_embeddings as transformers 4.51.3 does; without
original_max_position_embeddings; with explicit attention_factor and betas; the old "type" key and the
"rope_type" key), linear (bf16 weights) and llama3. Their original contexts are 16-64 tokens and the longest
sequence 128, so most positions lie past them, and small rope_theta values spread YaRN's ramp over the head.
transformers runs in fp32 with eager attention; the fixture also holds its inv_freq and attention_scaling.
The gtest ModelOracle.* loads each directory with qwenq: the RoPE table bit for bit, max |logit error| <= 1e-4
for a packed batch and for KV-cache decoding.
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
torch.manual_seed(4321)
LENGTHS = [1, 9, 40, 128]


def make_case(name, config_cls, model_cls, dtype, rope_scaling, **cfg):
    out = work_dir(args.build, os.path.join("rope_scaling_oracle", name))
    config = config_cls(rope_scaling=dict(rope_scaling), **cfg)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    spread_weights(model)
    model.save_pretrained(out, safe_serialization=True)
    if dtype == torch.bfloat16:  # store bf16, compute in fp32 from the rounded weights (what we do)
        model = model.to(torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)
        model = model_cls.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager").eval()
    rotary = model.model.rotary_emb
    expected_type = rope_scaling.get("type", rope_scaling.get("rope_type"))
    if rotary.rope_type != expected_type:
        raise SystemExit(f"FAIL: {name}: transformers built rope type {rotary.rope_type}, not {expected_type}")
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
               "logits": torch.cat(flat_logits).contiguous(),
               "rope_inv_freq": rotary.inv_freq.float().contiguous(),
               "rope_attention_scaling": torch.tensor([rotary.attention_scaling], dtype=torch.float32)},
              os.path.join(out, "oracle_expected.safetensors"))
    print(f"{name}: rope {rotary.rope_type}, attention_scaling {rotary.attention_scaling}, "
          f"inv_freq {[round(v, 6) for v in rotary.inv_freq.tolist()]}: wrote {out}")
    return out


from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

try:
    from transformers import Qwen3Config, Qwen3ForCausalLM
except ImportError:
    raise SystemExit("FAIL: this transformers has no Qwen3 (pin transformers>=4.51)")

dirs = []
common = dict(vocab_size=320, hidden_size=64, intermediate_size=172, num_hidden_layers=2, rms_norm_eps=1e-6)
# factor 2 is replaced by 128 / 32 = 4 (the model-card pattern; we warn); θ 50, D 32: the ramp spans i = 3..7.
dirs.append(make_case("qwen2_yarn_context_factor", Qwen2Config, Qwen2ForCausalLM, torch.float32,
                      {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32},
                      num_attention_heads=2, num_key_value_heads=1, rope_theta=50.0, max_position_embeddings=128,
                      tie_word_embeddings=False, **common))
# No original_max_position_embeddings: factor 4 over max_position_embeddings 32; explicit attention factor and betas.
dirs.append(make_case("qwen2_yarn_attention_factor", Qwen2Config, Qwen2ForCausalLM, torch.float32,
                      {"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.3, "beta_fast": 8.0,
                       "beta_slow": 0.5},
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=32,
                      tie_word_embeddings=False, **common))
# Qwen3 (q/k norm before RoPE), default attention factor 0.1 ln 3 + 1.
dirs.append(make_case("qwen3_yarn", Qwen3Config, Qwen3ForCausalLM, torch.float32,
                      {"type": "yarn", "factor": 3.0},
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=50.0,
                      max_position_embeddings=64, tie_word_embeddings=True, **common))
dirs.append(make_case("qwen2_linear_bf16", Qwen2Config, Qwen2ForCausalLM, torch.bfloat16,
                      {"type": "linear", "factor": 4.0},
                      num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0, max_position_embeddings=256,
                      tie_word_embeddings=True, **common))
# Llama 3.1's scheme from a 64-token context: D 16, θ 1e4 gives wavelengths 6.3 (kept), 20 and 63 (smoothed),
# 199 and up (divided by 8).
dirs.append(make_case("llama_llama3", LlamaConfig, LlamaForCausalLM, torch.float32,
                      {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 64},
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=512,
                      tie_word_embeddings=False, **common))

run_gtest(args.build, "ModelOracle.*", {"QWENQ_ORACLE_MODEL_DIRS": ":".join(dirs)})
print("PASS")
