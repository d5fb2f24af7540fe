"""Oracle: PiSSA (`qwen-quant nf4 --pissa-rank R`) against PEFT 0.15.2's pissa_init followed by bitsandbytes' NF4 of
the residual (QPiSSA as PEFT's PiSSA example runs it: init_lora_weights="pissa" on the original model, the residual
model saved, then quantized to 4 bits).

On the real stories260K (imported by qwen-quant), rank 8, lora_alpha 16 (scaling 2: PEFT divides the singular values by
it, so the split matters), all seven Linears, NF4 blocksize 64 without double quantization (bitsandbytes'
compress_statistics=False):
1. our s*B A against PEFT's: the same rank-8 part of W (PEFT's fp32 torch.linalg.svd against our double
   eigen-decomposition: max difference 2e-5 of its largest entry at most, measured 4.6e-6); each of our A rows and B
   columns equal PEFT's up to the sign of the singular vector pair (5e-4 of the largest entry, measured 5.9e-5: a
   vector moves with fp32's error over its singular value's gap, a product does not);
2. our stored base (qwen-quant dequantize) against bitsandbytes' NF4 of PEFT's residual W - s*B A: the same code
   wherever the two fp32 residuals round alike (values within 1e-6 of max |W| for at least 0.998 of them, measured
   0.99926: the residuals differ in the last bits, which moves a value lying on an NF4 boundary to the next code);
3. ||W - q(W_res) - s*B A|| ours against PEFT's within 1 % (measured equal to 7 digits);
4. PeftModel.from_pretrained reads our pissa_init/ onto the dequantized base, and its logits on 4 windows of 128
   tokens of TinyStories are as close to the original model's as PEFT's own QPiSSA's (within 5 %) and closer than plain
   NF4's (at most 0.9x; measured NF4 0.7437, PEFT's 0.6095, ours 0.6098; on 96 random tokens PiSSA gains little on this
   model: 0.3775 -> 0.3650).
5. `qwen-qlora pissa-to-lora` against PEFT's save_pretrained(path_initial_model_for_weight_conversion=...): PEFT's
   initial adapter (saved as PEFT's PiSSA example saves it) and a "trained" one (every A and B moved by seeded noise)
   give the same rank-16 adapter, bit for bit, with the same r and lora_alpha.
Exit 0 pass, 1 fail, 77 skip (torch/peft/bitsandbytes not importable, or ../shared absent).
"""
import json
import os

from oracle_common import (bnb_nf4_round_trip, check, finish, import_stories260k, parse_args, require_shared, run,
                           skip, work_dir)

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
    import bitsandbytes as bnb
    from safetensors.torch import load_file
    from peft import LoraConfig, PeftModel, get_peft_model
    from tokenizers import Tokenizer
    from transformers import Qwen2ForCausalLM
except Exception as e:  # pragma: no cover
    skip(f"torch/peft/bitsandbytes not usable ({type(e).__name__}: {e}); scripts/oracle_env.sh installs them")

print("torch", torch.__version__, "bitsandbytes", bnb.__version__)
qq = os.path.join(args.build, "qwen-quant")
out = work_dir(args.build, "pissa_oracle")
dense = os.path.join(out, "dense")
import_stories260k(args.build, args.shared, dense)
W_all = load_file(os.path.join(dense, "model.safetensors"))
RANK, ALPHA = 8, 16
S = ALPHA / RANK
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# PEFT: pissa_init on the fp32 original; the base layers now hold the residual.
torch.manual_seed(0)
orig = Qwen2ForCausalLM.from_pretrained(dense, torch_dtype=torch.float32).eval()
peft_model = get_peft_model(
    Qwen2ForCausalLM.from_pretrained(dense, torch_dtype=torch.float32),
    LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(LINEARS), init_lora_weights="pissa", lora_dropout=0.0))
peft_layers = {}
for name, module in peft_model.named_modules():
    if hasattr(module, "lora_A") and "default" in module.lora_A:
        path = name[len("base_model.model."):]
        peft_layers[path] = (module.get_base_layer().weight.detach().clone(),
                             module.lora_A["default"].weight.detach().clone(),
                             module.lora_B["default"].weight.detach().clone())
expected = sum(1 for k in W_all if k.endswith(tuple(l + ".weight" for l in LINEARS)))
check(len(peft_layers) == expected, f"PEFT adapted {len(peft_layers)} Linears, the model has {expected}")

case = os.path.join(out, "nf4_pissa")
run([qq, "nf4", "--model", dense, "--out", case, "--overwrite", "--no-double-quant", "--pissa-rank", str(RANK),
     "--pissa-alpha", str(ALPHA), "--quiet"])
run([qq, "dequantize", "--model", case, "--out", case + "-deq", "--dtype", "fp32", "--overwrite"])
ours_base = load_file(os.path.join(case + "-deq", "model.safetensors"))
ours_ad = load_file(os.path.join(case, "pissa_init", "adapter_model.safetensors"))

worst_prod = worst_vec = 0.0
close = total = 0
err_ours = err_peft = 0.0
for path, (res_peft, A_p, B_p) in sorted(peft_layers.items()):
    W = W_all[path + ".weight"].float()
    key = "base_model.model." + path
    A_o, B_o = ours_ad[key + ".lora_A.weight"].float(), ours_ad[key + ".lora_B.weight"].float()
    sba_o, sba_p = S * B_o @ A_o, S * B_p @ A_p
    worst_prod = max(worst_prod, float((sba_o - sba_p).abs().max() / sba_p.abs().max()))
    # A singular vector pair is defined up to its sign: align each component by its A row's dot product.
    sign = torch.sign((A_o * A_p).sum(dim=1))
    worst_vec = max(worst_vec, float((A_o * sign[:, None] - A_p).abs().max() / A_p.abs().max()),
                    float((B_o * sign[None, :] - B_p).abs().max() / B_p.abs().max()))
    q_peft = bnb_nf4_round_trip(res_peft)
    q_ours = ours_base[path + ".weight"].float()
    close += int(((q_ours - q_peft).abs() <= 1e-6 * W.abs().max()).sum())
    total += W.numel()
    err_ours += float(((W - q_ours - sba_o) ** 2).sum())
    err_peft += float(((W - q_peft - sba_p) ** 2).sum())
err_ours, err_peft = err_ours ** 0.5, err_peft ** 0.5
agree = close / total
print(f"max |sBA ours - PEFT's| / max |PEFT's| {worst_prod:.3e}; A, B up to sign {worst_vec:.3e}; base values with "
      f"PEFT's code {close} of {total} ({agree:.6f}); ||W - q(W_res) - sBA|| ours {err_ours:.6f}, PEFT {err_peft:.6f}")
check(worst_prod <= 2e-5, f"s*B*A differs from PEFT's by {worst_prod:.3e} of its largest entry")
check(worst_vec <= 5e-4, f"A or B differs from PEFT's (up to sign) by {worst_vec:.3e} of its largest entry")
check(agree >= 0.998, f"only {agree:.6f} of the base values have the code of PEFT's residual")
check(abs(err_ours - err_peft) <= 0.01 * err_peft, f"error {err_ours} vs PEFT's {err_peft}")

# 4. PEFT reads our adapter onto our base; the logits against the original's, beside PEFT's own QPiSSA and plain NF4.
with open(os.path.join(args.shared, "data", "tinystories", "tinystories_val.txt"), encoding="utf-8") as f:
    ids = Tokenizer.from_file(os.path.join(dense, "tokenizer.json")).encode(f.read(20000)).ids
tokens = torch.tensor(ids[:512]).reshape(4, 128)
with torch.no_grad():
    ref = orig(tokens).logits
    base = Qwen2ForCausalLM.from_pretrained(case + "-deq", torch_dtype=torch.float32).eval()
    ours = float((PeftModel.from_pretrained(base, os.path.join(case, "pissa_init")).eval()(tokens).logits - ref)
                 .abs().mean())
    for path, (res_peft, _, _) in peft_layers.items():  # PEFT's QPiSSA: its adapter on NF4 of its residual
        layer = peft_model.get_submodule("base_model.model." + path).get_base_layer()
        layer.weight.copy_(bnb_nf4_round_trip(res_peft))
    peft_q = float((peft_model.eval()(tokens).logits - ref).abs().mean())
    plain_model = Qwen2ForCausalLM.from_pretrained(dense, torch_dtype=torch.float32).eval()
    for path in peft_layers:
        w = plain_model.get_submodule(path).weight
        w.copy_(bnb_nf4_round_trip(w.detach().clone()))
    plain = float((plain_model(tokens).logits - ref).abs().mean())
print(f"mean |logit error| vs the original: NF4 {plain:.5f}, PEFT's QPiSSA {peft_q:.5f}, ours read by PEFT {ours:.5f}")
check(ours <= 1.05 * peft_q, f"our PiSSA's logit error {ours} vs PEFT's {peft_q}")
check(ours <= 0.9 * plain, f"our PiSSA's logit error {ours} vs plain NF4's {plain}")

# 5. PiSSA -> LoRA, PEFT's conversion against ours on the same two adapters.
qlora = os.path.join(args.build, "qwen-qlora")
peft_init, peft_trained, peft_conv, ours_conv = (os.path.join(out, n) for n in ("peft_init", "peft_trained",
                                                                                "peft_conv", "ours_conv"))
peft_model.peft_config["default"].init_lora_weights = True  # PEFT's example: else loading it splits the base again
peft_model.save_pretrained(peft_init)
gen = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, p in peft_model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
peft_model.save_pretrained(peft_trained)
peft_model.save_pretrained(peft_conv, path_initial_model_for_weight_conversion=peft_init)
run([qlora, "pissa-to-lora", "--init", peft_init, "--adapter", peft_trained, "--out", ours_conv, "--overwrite"])
theirs = load_file(os.path.join(peft_conv, "adapter_model.safetensors"))
mine = load_file(os.path.join(ours_conv, "adapter_model.safetensors"))
check(sorted(theirs) == sorted(mine), f"tensor names differ: {sorted(set(theirs) ^ set(mine))[:4]}")
differ = [k for k in theirs if k in mine and not torch.equal(theirs[k], mine[k])]
check(not differ, f"{len(differ)} tensors differ from PEFT's conversion, e.g. {differ[:2]}")
with open(os.path.join(peft_conv, "adapter_config.json")) as f:
    cfg_theirs = json.load(f)
with open(os.path.join(ours_conv, "adapter_config.json")) as f:
    cfg_mine = json.load(f)
for key in ("r", "lora_alpha", "use_rslora", "init_lora_weights"):
    check(cfg_theirs[key] == cfg_mine[key], f"adapter_config {key}: PEFT {cfg_theirs[key]}, ours {cfg_mine[key]}")
print(f"pissa-to-lora: {len(mine)} tensors, r {cfg_mine['r']}, lora_alpha {cfg_mine['lora_alpha']}; "
      f"{len(differ)} differ from PEFT's conversion")

finish()
