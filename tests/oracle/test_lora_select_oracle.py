"""Oracle: PEFT's finer module selection (layers_to_transform, layers_pattern, exclude_modules, rank_pattern,
alpha_pattern, target_modules as a regex or with module paths) against Hugging Face PEFT 0.15.2, in both directions (lora/lora_select.h).

1. transformers builds a tiny random Qwen2ForCausalLM (hidden 64, 4 layers, 4 heads, 2 KV heads, intermediate 128,
   vocab 320, weights spread) saved as base/ in fp32. For each case of CASES, get_peft_model wraps it with that
   LoraConfig; every lora_A and lora_B is randomized (B != 0; DoRA's magnitudes spread), save_pretrained writes
   <case>/peft_adapter/, and <case>/expected.safetensors holds the logits of a fixed sequence (eval, unmerged), and
   <case>/modules.json every adapted module PEFT made with its r and scaling (LoraLayer.r / .scaling).
2. The gtest LoraSelectOracle.* reads each peft_adapter/ with our loader: the same modules with the same r and scaling
   (exactly: both compute alpha / r, or alpha / sqrt(r), in double), and the logits of the CPU trainer's forward, of
   the unmerged inference forward (QwenModel::attach_adapter) and of the model merged in memory within LOGIT_REL_TOL;
   then saves the adapter again as <case>/ours/.
3. `qwen-qlora merge --dtype fp32` writes <case>/merged/: transformers' logits of it within LOGIT_REL_TOL of PEFT's.
4. PeftModel.from_pretrained reads <case>/ours/: the config's selection fields read back, the same modules with the
   same r and scaling, every tensor bit-exact, the logits equal.
Exit 0 pass, 1 fail, 77 skip (torch/transformers/peft not importable).
"""
import json
import os
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
    from peft.tuners.lora import LoraLayer
    from transformers import Qwen2Config, Qwen2ForCausalLM
except ImportError as e:
    skip(f"peft/transformers not importable ({e}); scripts/oracle_env.sh installs them")

print("torch", torch.__version__, "peft", peft.__version__)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = 4
LOGIT_REL_TOL = 1e-5  # fp32 on both sides; only summation orders differ
CASES = {
    # a list of names on two of the four layers
    "layers": dict(r=4, lora_alpha=8, target_modules=TARGETS, layers_to_transform=[1, 3]),
    # ranks and alphas of their own (a pattern naming one layer's Linear, one naming every down_proj), two exclusions
    "patterns": dict(r=4, lora_alpha=8, target_modules=TARGETS,
                     rank_pattern={"down_proj": 8, "layers.2.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 32},
                     exclude_modules=["model.layers.0.mlp.up_proj", "k_proj"]),
    # target_modules and exclude_modules as regular expressions, rsLoRA, a rank pattern
    "regex": dict(r=4, lora_alpha=8, target_modules=r".*\.(q|v|down)_proj", exclude_modules=r".*layers\.2\..*",
                  use_rslora=True, rank_pattern={"q_proj": 2}),
    # module paths in the list: one named in full escapes layers_to_transform (PEFT's first branch), a suffix does not
    "paths": dict(r=4, lora_alpha=8, target_modules=["v_proj", "self_attn.q_proj", "model.layers.3.mlp.down_proj"],
                  layers_to_transform=[0]),
    # one layer by an int with layers_pattern, DoRA with its own ranks and alphas
    "dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "gate_proj", "up_proj"],
                 layers_to_transform=2, layers_pattern="layers", use_dora=True, rank_pattern={"o_proj": 6},
                 alpha_pattern={"gate_proj": 4}),
}

root = work_dir(args.build, "lora_select_oracle")
shutil.rmtree(root, ignore_errors=True)
os.makedirs(root)
base_dir = os.path.join(root, "base")

torch.manual_seed(20261207)
config = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     tie_word_embeddings=False, torch_dtype="float32")
base = Qwen2ForCausalLM(config)
spread_weights(base)
base.save_pretrained(base_dir, safe_serialization=True)


def load_base(d=base_dir):
    return Qwen2ForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()


def modules_of(model):
    """{module name in the base model: [r, scaling]} of every LoRA layer of a PeftModel."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            out[name.removeprefix("base_model.model.")] = [int(m.r["default"]), float(m.scaling["default"])]
    return out


gen = torch.Generator().manual_seed(7)
ids = torch.randint(0, 320, (1, 24), generator=gen)
expected = {}
for case, kwargs in CASES.items():
    d = os.path.join(root, case)
    os.makedirs(d)
    model = get_peft_model(load_base(), LoraConfig(task_type="CAUSAL_LM", **kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif ".lora_magnitude_vector." in name:
                p.mul_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
    model.eval()
    mods = modules_of(model)
    print(f"{case}: PEFT adapted {len(mods)} modules, r {sorted(set(v[0] for v in mods.values()))}, "
          f"scaling {sorted(set(round(v[1], 4) for v in mods.values()))}")
    with open(os.path.join(d, "modules.json"), "w") as f:
        json.dump(mods, f, indent=1, sort_keys=True)
    model.save_pretrained(os.path.join(d, "peft_adapter"))
    with torch.no_grad():
        logits = model(ids).logits[0].float().contiguous()
    save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits},
              os.path.join(d, "expected.safetensors"))
    expected[case] = (mods, logits, load_file(os.path.join(d, "peft_adapter", "adapter_model.safetensors")))

# 2. Our reader, forwards and writer.
run_gtest(args.build, "LoraSelectOracle.*", {"QWENQ_ORACLE_LORA_SELECT_DIR": root})

for case, kwargs in CASES.items():
    d = os.path.join(root, case)
    mods, logits, peft_tensors = expected[case]
    # 3. qwen-qlora merge vs PEFT.
    run([os.path.join(args.build, "qwen-qlora"), "merge", "--model", base_dir, "--adapter",
         os.path.join(d, "peft_adapter"), "--out", os.path.join(d, "merged"), "--dtype", "fp32", "--quiet"])
    with torch.no_grad():
        e = rel_err(load_base(os.path.join(d, "merged"))(ids).logits[0].float(), logits)
    print(f"{case}: qwen-qlora merge: max |ours - peft| / max |logit| = {e:.3g}")
    check(e <= LOGIT_REL_TOL, f"{case}: merged logits differ by {e:.3g}")

    # 4. PEFT reads ours/.
    loaded = PeftModel.from_pretrained(load_base(), os.path.join(d, "ours")).eval()
    cfg = loaded.peft_config["default"]
    for key in ("layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora"):
        want = kwargs.get(key, getattr(LoraConfig(), key))
        got = getattr(cfg, key)
        if key == "layers_to_transform" and isinstance(want, int):
            want = [want]  # written as a list
        if key == "layers_pattern" and isinstance(want, str):
            want = [want]
        check(got == want, f"{case}: ours/ {key} = {got!r}, PEFT's {want!r}")
    for key in ("target_modules", "exclude_modules"):
        want, got = kwargs.get(key), getattr(cfg, key)
        want = set(want) if isinstance(want, list) else want
        got = set(got) if isinstance(got, (list, set)) else got
        check(got == want, f"{case}: ours/ {key} = {got!r}, PEFT's {want!r}")
    check(modules_of(loaded) == mods, f"{case}: ours/ gives PEFT other modules, ranks or scalings")
    ours = load_file(os.path.join(d, "ours", "adapter_model.safetensors"))
    check(set(ours) == set(peft_tensors), f"{case}: ours/ holds {len(ours)} tensors, PEFT's file {len(peft_tensors)}")
    same = sum(1 for k in ours if k in peft_tensors and torch.equal(ours[k], peft_tensors[k]))
    check(same == len(peft_tensors), f"{case}: ours/ {same}/{len(peft_tensors)} tensors bit-exact")
    with torch.no_grad():
        e = rel_err(loaded(ids).logits[0].float(), logits)
    print(f"{case}: ours/ in PEFT: {same}/{len(peft_tensors)} tensors bit-exact, logits differ by {e:.3g}")
    check(e == 0.0, f"{case}: ours/ in PEFT: logits differ by {e:.3g}")

finish()
