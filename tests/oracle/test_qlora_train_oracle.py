"""Oracle: an adapter trained by `qwen-qlora train` loads in PEFT on the same base and gives the same logits as
our own forward with that adapter, and the same greedy text.

1. `qwen-quant import-llama2c` makes the real stories260K a Hugging Face Qwen2 directory (fp32).
2. `qwen-qlora train` runs 20 steps on the shared Alpaca data (r=8, all seven Linears, dropout 0.05) and leaves
   adapter_config.json + adapter_model.safetensors in its run directory.
3. transformers loads the base, peft.PeftModel.from_pretrained loads our adapter; the logits of a fixed token
   sequence are saved, and the gtest TrainedAdapterOracle.* compares them with trainer/lora_model's forward
   (max |error| relative to max |logit|, tolerance in the C++ half).
4. Greedy decoding of an Alpaca prompt: `qwen-qlora generate --adapter` against PEFT's generate().
5. The same for a DoRA adapter: `qwen-qlora train --use-dora` (10 steps, dropout 0.05) into run_dora/; PEFT loads
   it (use_dora read back, every magnitude moved from its init), logits and greedy text as in 3 and 4 (our side:
   the CPU trainer's DoRA forward, and generate's in-memory merge).
6. A tiny random Qwen3-MoE (`init-random --preset tiny-moe`): `train` on TinyStories lines with all seven targets
   (every expert's gate/up/down adapted); PEFT on transformers' Qwen3MoeForCausalLM gives the logits our forward gives
   (the gtest of 3).
"""
import os

from oracle_common import import_stories260k, parse_args, require_shared, run, run_gtest, skip, work_dir

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
    import peft
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2ForCausalLM
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/peft not importable: {e}")

data = os.path.join(args.shared, "data")
qq = os.path.join(args.build, "qwen-quant")
ql = os.path.join(args.build, "qwen-qlora")
out = work_dir(args.build, "qlora_train_oracle")
base_dir, run_dir = os.path.join(out, "base"), os.path.join(out, "run")
import_stories260k(args.build, args.shared, base_dir)
run([ql, "train", "--model", base_dir, "--data", f"{data}/alpaca/alpaca_en_demo.json", "--out", run_dir,
     "--overwrite", "--max-steps", "20", "--seq-len", "256", "--batch-size", "4", "--lr", "2e-3",
     "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0.05", "--target", "all-linear", "--quiet"])

tok = AutoTokenizer.from_pretrained(base_dir)
base = Qwen2ForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
model = peft.PeftModel.from_pretrained(base, run_dir).eval()
prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
          "\n\n### Instruction:\nTell me a story about a cat.\n\n### Response:\n")
ids = tok(prompt, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits[0].float().contiguous()
save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits},
          os.path.join(out, "expected.safetensors"))
run_gtest(args.build, "TrainedAdapterOracle.*", {"QWENQ_ORACLE_TRAINED_DIR": out})



def check_generate(adapter_dir, peft_model, what):
    ours = run([ql, "generate", "--model", base_dir, "--adapter", adapter_dir, "--prompt", prompt, "-n", "40",
                "--threads", "1"])
    with torch.no_grad():
        gen = peft_model.generate(input_ids=ids, max_new_tokens=40, do_sample=False)
    hf = tok.decode(gen[0], skip_special_tokens=True)
    print(f"{what} qwen-qlora generate:", repr(ours))
    print(f"{what} peft generate:      ", repr(hf))
    if ours.strip() != hf.strip():
        raise SystemExit(f"FAIL: greedy generations with the {what} adapter differ")


check_generate(run_dir, model, "LoRA")

# 5. DoRA.
dora_dir = os.path.join(out, "run_dora")
run([ql, "train", "--model", base_dir, "--data", f"{data}/alpaca/alpaca_en_demo.json", "--out", dora_dir,
     "--overwrite", "--max-steps", "10", "--seq-len", "256", "--batch-size", "4", "--lr", "2e-3", "--use-dora",
     "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0.05", "--target", "all-linear", "--quiet"])
dbase = Qwen2ForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
dmodel = peft.PeftModel.from_pretrained(dbase, dora_dir).eval()
if not dmodel.peft_config["default"].use_dora:
    raise SystemExit("FAIL: PEFT did not read use_dora from our adapter_config.json")
moved = 0.0
for name, mod in dmodel.named_modules():
    if hasattr(mod, "lora_magnitude_vector") and "default" in getattr(mod, "lora_magnitude_vector", {}):
        w = mod.get_base_layer().weight.detach()
        moved = max(moved, float((mod.lora_magnitude_vector["default"].weight - w.norm(dim=1)).abs().max()))
print(f"DoRA: largest move of a magnitude from its init ||W||: {moved:.3g}")
if not moved > 1e-4:
    raise SystemExit("FAIL: the trained DoRA magnitudes did not move")
with torch.no_grad():
    dlogits = dmodel(ids).logits[0].float().contiguous()
save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": dlogits},
          os.path.join(out, "expected_dora.safetensors"))
run_gtest(args.build, "TrainedAdapterOracle.*",
          {"QWENQ_ORACLE_TRAINED_DIR": out, "QWENQ_ORACLE_TRAINED_RUN": "run_dora"})
check_generate(dora_dir, dmodel, "DoRA")

# 6. A mixture of experts (tiny random Qwen3-MoE: 8 experts, top 2, one dense layer): `train` adapts every Linear,
# each expert's too; PEFT loads the adapter onto transformers' Qwen3MoeForCausalLM.
moe_out = work_dir(args.build, "qlora_train_oracle_moe")
moe_base, moe_run = os.path.join(moe_out, "base"), os.path.join(moe_out, "run")
run([qq, "init-random", "--preset", "tiny-moe", "--dtype", "fp32", "--seed", "3", "--out", moe_base, "--overwrite"])
import json  # noqa: E402
with open(f"{data}/tinystories/tinystories_val.txt", encoding="utf-8") as f:
    stories = [line.strip()[:400] for line in f if len(line.strip()) > 40][:64]
with open(os.path.join(moe_out, "stories.jsonl"), "w", encoding="utf-8") as f:
    for st in stories:
        f.write(json.dumps({"text": st}) + "\n")
run([ql, "train", "--model", moe_base, "--data", os.path.join(moe_out, "stories.jsonl"), "--out", moe_run,
     "--overwrite", "--max-steps", "10", "--seq-len", "256", "--batch-size", "2", "--lr", "3e-3", "--lora-r", "4",
     "--lora-alpha", "8", "--lora-dropout", "0.05", "--target", "all-linear", "--quiet"])
from transformers import AutoModelForCausalLM  # noqa: E402
mbase = AutoModelForCausalLM.from_pretrained(moe_base, torch_dtype=torch.float32, attn_implementation="eager").eval()
if type(mbase).__name__ != "Qwen3MoeForCausalLM":
    raise SystemExit(f"FAIL: transformers built {type(mbase).__name__} from the tiny-moe config")
mmodel = peft.PeftModel.from_pretrained(mbase, moe_run).eval()
mids = torch.tensor([[ord(ch) for ch in "Once upon a time, a little fox found a red ball."]])
with torch.no_grad():
    mlogits = mmodel(mids).logits[0].float().contiguous()
save_file({"input_ids": mids[0].to(torch.int32).contiguous(), "logits": mlogits},
          os.path.join(moe_out, "expected.safetensors"))
run_gtest(args.build, "TrainedAdapterOracle.*", {"QWENQ_ORACLE_TRAINED_DIR": moe_out})
print("qlora train oracle: OK")
