"""Oracle: DoRA adapters (LoraConfig(use_dora=True)) against Hugging Face PEFT 0.15.2, in both directions.

1. transformers builds a tiny random Qwen2ForCausalLM (hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 128,
   vocab 320, q/k/v biases; weights spread by oracle_common.spread_weights) and saves it as base/ in fp32.
   get_peft_model wraps it with LoraConfig(r=4, lora_alpha=8, all seven projections, use_dora=True); lora_A,
   lora_B and the magnitudes are all randomized (B != 0, m = ‖W‖·(1 + 0.3·N(0, 1)) so that m/n is far from 1);
   save_pretrained writes peft_adapter/. The logits of a fixed sequence (eval, unmerged: PEFT's DoRA forward)
   go to expected.safetensors, with every magnitude as "layers.{l}.{name}.m".
2. The gtest DoraOracle.* loads peft_adapter/ with our reader (magnitudes bit for bit), merges it in memory into
   the base (trainer/lora_merge.h) and compares the logits; runs the CPU trainer's forward (lora_forward_logits)
   with the unmerged adapter against the same logits; and saves the adapter again as ours/.
3. `qwen-qlora merge --dtype fp32` writes merged/; transformers loads it and its logits must equal PEFT's (the
   unmerged forward and merge_and_unload) within LOGIT_REL_TOL of max |logit|.
4. PeftModel.from_pretrained reads ours/: use_dora read back, every lora_A/lora_B/magnitude bit-exact, logits equal.
Exit 0 pass, 1 fail, 77 skip (torch/transformers/peft not importable).
"""
import os
import re
import shutil

from oracle_common import check, finish, parse_args, rel_err, run, run_gtest, skip, spread_weights, work_dir

args = parse_args(__doc__)
try:
    import torch
    from safetensors.torch import load_file, save_file
except ImportError as e:
    skip(f"torch/safetensors not importable: {e}")
try:
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM
except ImportError as e:
    skip(f"peft/transformers not importable ({e}); scripts/oracle_env.sh installs them")

print("torch", torch.__version__, "peft", peft.__version__)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = 2
LOGIT_REL_TOL = 1e-5  # fp32 on both sides; only summation orders differ (norms: double here, fp32 in torch)
PARAM = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)"
                   r"\.lora_(A|B|magnitude_vector)\.default(?:\.weight)?$")


def dora_params(model):
    """{(layer, name, "A"|"B"|"magnitude_vector"): tensor} of a PeftModel with DoRA."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" not in name:
            continue
        m = PARAM.match(name)
        if check(m is not None, f"unexpected PEFT parameter name {name}"):
            out[(int(m.group(1)), m.group(2), m.group(3))] = p.detach()
    return out


root = work_dir(args.build, "dora_oracle")
for sub in ("base", "peft_adapter", "ours", "merged"):
    shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
base_dir = os.path.join(root, "base")

# 1. Base model, PEFT's DoRA adapter with every tensor randomized, its logits.
torch.manual_seed(20241201)
config = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     tie_word_embeddings=False, torch_dtype="float32")
base = Qwen2ForCausalLM(config)
spread_weights(base)
base.save_pretrained(base_dir, safe_serialization=True)


def load_base(d=base_dir):
    return Qwen2ForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()


model = get_peft_model(load_base(), LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), use_dora=True,
                                               task_type="CAUSAL_LM"))
gen = torch.Generator().manual_seed(11)
with torch.no_grad():
    for name, p in model.named_parameters():
        if ".lora_B." in name or ".lora_A." in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        elif ".lora_magnitude_vector." in name:
            p.mul_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
model.eval()
params = dora_params(model)
check(len(params) == LAYERS * len(TARGETS) * 3, f"PEFT made {len(params)} DoRA tensors")
model.save_pretrained(os.path.join(root, "peft_adapter"))
saved = load_file(os.path.join(root, "peft_adapter", "adapter_model.safetensors"))
mags = sorted(k for k in saved if "magnitude" in k)
print("PEFT saved", len(saved), "tensors; magnitude keys like", mags[0], saved[mags[0]].dtype,
      tuple(saved[mags[0]].shape))
ids = torch.randint(0, 320, (1, 24), generator=gen)
with torch.no_grad():
    logits = model(ids).logits[0].float().contiguous()
save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits,
           **{f"layers.{l}.{n}.m": t.float().contiguous() for (l, n, k), t in params.items()
              if k == "magnitude_vector"}},
          os.path.join(root, "expected.safetensors"))
with torch.no_grad():
    unloaded = PeftModel.from_pretrained(load_base(), os.path.join(root, "peft_adapter")).merge_and_unload().eval()
    merged_peft = unloaded(ids).logits[0].float()
print(f"PEFT merge_and_unload vs PEFT unmerged: {rel_err(merged_peft, logits):.3g}")

# 2. Our reader, in-memory merge and trainer forward vs PEFT; ours/ written.
run_gtest(args.build, "DoraOracle.*", {"QWENQ_ORACLE_DORA_DIR": root})

# 3. qwen-qlora merge vs PEFT.
run([os.path.join(args.build, "qwen-qlora"), "merge", "--model", base_dir, "--adapter",
     os.path.join(root, "peft_adapter"), "--out", os.path.join(root, "merged"), "--dtype", "fp32", "--quiet"])
with torch.no_grad():
    ours_merged = load_base(os.path.join(root, "merged"))(ids).logits[0].float()
e1, e2 = rel_err(ours_merged, logits), rel_err(ours_merged, merged_peft)
print(f"qwen-qlora merge: max |ours - peft| / max |logit| = {e1:.3g} (unmerged), {e2:.3g} (merge_and_unload)")
check(e1 <= LOGIT_REL_TOL and e2 <= LOGIT_REL_TOL, f"merged logits differ: {e1:.3g}, {e2:.3g}")

# 4. PEFT reads ours/.
d = os.path.join(root, "ours")
loaded = PeftModel.from_pretrained(load_base(), d).eval()
check(loaded.peft_config["default"].use_dora, "ours/: use_dora not read back")
ours = load_file(os.path.join(d, "adapter_model.safetensors"))
got = dora_params(loaded)
check(len(got) == len(ours) == LAYERS * len(TARGETS) * 3, f"ours/: {len(got)} PEFT tensors, {len(ours)} in file")
exact = 0
for (l, n, k), t in got.items():
    parent = "self_attn" if n in TARGETS[:4] else "mlp"
    key = f"base_model.model.model.layers.{l}.{parent}.{n}." + ("lora_magnitude_vector" if k == "magnitude_vector"
                                                                 else f"lora_{k}.weight")
    if check(key in ours and torch.equal(t, ours[key]) and torch.equal(t, params[(l, n, k)]),
             f"ours/: {key} differs"):
        exact += 1
print(f"ours/: PEFT loaded {exact}/{len(got)} tensors bit-exact")
with torch.no_grad():
    e = rel_err(loaded(ids).logits[0].float(), logits)
check(e == 0.0, f"ours/ in PEFT: logits differ by {e:.3g}")

finish()
