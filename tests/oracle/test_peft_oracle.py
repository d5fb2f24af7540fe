"""Oracle: LoRA adapter directories against Hugging Face PEFT, in both directions.

1. transformers builds a tiny random Qwen2ForCausalLM (hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate
   128, vocab 320) and saves it as base/. peft.get_peft_model wraps it with LoraConfig(r=4, lora_alpha=8, all
   seven projections); lora_A keeps PEFT's Kaiming-uniform init, lora_B gets seeded random nonzero values;
   save_pretrained writes peft_adapter/. Every lora_A/lora_B of the live PeftModel is also stored as fp32 in
   peft_expected.safetensors under "layers.{l}.{name}.A|B".
2. The gtest PeftOracle.* loads peft_adapter/ with our loader and requires those values bit for bit, then writes
   ours_f32/ and ours_bf16/ with our saver (seeded init plus random B).
3. peft.PeftModel.from_pretrained loads each of ours on the base model: its config must read back (r, alpha,
   scaling 2, the seven targets), and every lora_A/lora_B parameter must equal the tensor in our file exactly
   (fp32; bf16 widened), with no parameter left out.
Exit 0 pass, 1 fail, 77 skip (torch/transformers/peft not importable).
"""
import os
import re
import shutil

from oracle_common import check, finish, parse_args, run_gtest, skip, work_dir

args = parse_args(__doc__)
try:
    import torch
    import transformers
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
except ImportError as e:
    skip(f"torch/transformers/safetensors not importable: {e}")
try:
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model
except ImportError as e:
    skip(f"peft not importable ({e}); scripts/oracle_env.sh installs it")

print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = 2
PARAM = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)"
                   r"\.lora_([AB])\.default\.weight$")


def lora_params(model):
    """{(layer, name, "A"|"B"): tensor} of a PeftModel; fails on any lora parameter of another form."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" not in name:
            continue
        m = PARAM.match(name)
        if not check(m is not None, f"unexpected PEFT parameter name {name}"):
            continue
        out[(int(m.group(1)), m.group(2), m.group(3))] = p.detach()
    return out


root = work_dir(args.build, "peft_oracle")
for sub in ("base", "peft_adapter", "ours_f32", "ours_bf16"):
    shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
base_dir = os.path.join(root, "base")

# 1. Base model and PEFT's adapter.
torch.manual_seed(20240611)
config = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     tie_word_embeddings=False)
Qwen2ForCausalLM(config).save_pretrained(base_dir, safe_serialization=True)

model = get_peft_model(Qwen2ForCausalLM.from_pretrained(base_dir),
                       LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), task_type="CAUSAL_LM"))
gen = torch.Generator().manual_seed(7)
with torch.no_grad():
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
params = lora_params(model)
check(len(params) == LAYERS * len(TARGETS) * 2, f"PEFT made {len(params)} lora tensors")
model.save_pretrained(os.path.join(root, "peft_adapter"))
save_file({f"layers.{l}.{n}.{ab}": t.float().contiguous() for (l, n, ab), t in params.items()},
          os.path.join(root, "peft_expected.safetensors"))
with safe_open(os.path.join(root, "peft_adapter", "adapter_model.safetensors"), "pt") as f:
    dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})
    print("PEFT saved", len(list(f.keys())), "tensors, dtypes", dtypes, "metadata", f.metadata())

# 2. Our loader on PEFT's directory; our saver writes ours_f32/ and ours_bf16/.
run_gtest(args.build, "PeftOracle.*", {"QWENQ_ORACLE_PEFT_DIR": root})

# 3. PEFT's loader on ours.
for sub, dtype in (("ours_f32", torch.float32), ("ours_bf16", torch.bfloat16)):
    d = os.path.join(root, sub)
    ours = load_file(os.path.join(d, "adapter_model.safetensors"))
    check(all(t.dtype == dtype for t in ours.values()), f"{sub}: tensors are not all {dtype}")
    loaded = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(base_dir), d)
    cfg = loaded.peft_config["default"]
    check(cfg.r == 4 and cfg.lora_alpha == 8 and not cfg.use_rslora, f"{sub}: config read back as {cfg}")
    check(set(cfg.target_modules) == set(TARGETS), f"{sub}: target_modules {cfg.target_modules}")
    q = loaded.base_model.model.model.layers[0].self_attn.q_proj
    check(q.scaling["default"] == 2.0, f"{sub}: scaling {q.scaling}")
    got = lora_params(loaded)
    check(len(got) == len(ours) == LAYERS * len(TARGETS) * 2, f"{sub}: {len(got)} PEFT tensors, {len(ours)} in file")
    exact = 0
    for (l, n, ab), t in got.items():
        parent = "self_attn" if n in TARGETS[:4] else "mlp"
        key = f"base_model.model.model.layers.{l}.{parent}.{n}.lora_{ab}.weight"
        if not check(key in ours, f"{sub}: {key} not in our file"):
            continue
        want = ours[key].float()
        if check(t.dtype == torch.float32 and t.shape == want.shape and torch.equal(t, want),
                 f"{sub}: {key} differs (PEFT {t.dtype} {tuple(t.shape)}, ours {tuple(want.shape)})"):
            exact += 1
    print(f"{sub}: PEFT loaded {exact}/{len(got)} lora tensors bit-exact")

finish()
