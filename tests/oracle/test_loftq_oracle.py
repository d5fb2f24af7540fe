"""Oracle: LoftQ (`qwen-quant nf4 --loftq-rank R --loftq-iter T`) against PEFT 0.15.2's LoftQ with bitsandbytes' NF4.

PEFT's loftq_init (init_lora_weights="loftq") sends bitsandbytes' 4-bit quantization to a CUDA device, so on this
CPU the reference runs the same loop with the same parts: bitsandbytes' CPU NF4 (Params4bit semantics:
quantize_4bit, blocksize 64, compress_statistics=False, as loftq_init calls it; bitsandbytes 0.46) and PEFT's own
peft.utils.loftq_utils._low_rank_decomposition (torch.linalg.svd), with PEFT's assignment lora_A = R, lora_B = L:
    res = W;  T times: Q = dequant(quant(res)); L, R = _low_rank_decomposition(W - Q, r); res = W - L @ R
On the real stories260K (imported by qwen-quant), rank 8, lora_alpha = r (scaling 1, where PEFT's assignment is
exact), T = 1 and 3:
1. our stored base (qwen-quant dequantize) against PEFT's Q: T = 1 bit for bit; T = 3 the same codes but where
   fp32 SVDs differing in the last bits move a value across an NF4 boundary (at most 1 in 1000; none on this model), while X = W - L R
   rounding differently gives block absmax values a few ulps apart (so "equal" is within 1e-6 of max |W|);
2. our B A against PEFT's L R, and ||W - Q - B A|| against PEFT's: T = 1 to fp32 rounding, T = 3 within 1 %;
3. PeftModel.from_pretrained reads our loftq_init/ onto the dequantized base, and its logits on 96 random tokens are
   closer to the original model's than the base's alone: mean |error| at most 0.95 x the base's (measured 0.926 at
   T = 1, 0.728 at T = 3, whose base alone is further off).
Exit 0 pass, 1 fail, 77 skip (torch/peft/bitsandbytes not importable, or ../shared absent).
"""
import os

from oracle_common import (bnb_nf4_round_trip, check, finish, import_stories260k, parse_args, require_shared, run,
                           skip, work_dir)

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
    import bitsandbytes as bnb
    from safetensors.torch import load_file
    from peft import PeftModel
    from peft.utils.loftq_utils import _low_rank_decomposition
    from transformers import Qwen2ForCausalLM
except Exception as e:  # pragma: no cover
    skip(f"torch/peft/bitsandbytes not usable ({type(e).__name__}: {e}); scripts/oracle_env.sh installs them")

print("torch", torch.__version__, "bitsandbytes", bnb.__version__)
qq = os.path.join(args.build, "qwen-quant")
data = os.path.join(args.shared, "data")
out = work_dir(args.build, "loftq_oracle")
dense = os.path.join(out, "dense")
import_stories260k(args.build, args.shared, dense)
W_all = load_file(os.path.join(dense, "model.safetensors"))
RANK = 8
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
names = sorted(k[: -len(".weight")] for k in W_all if any(k.endswith(l + ".weight") for l in LINEARS))


def peft_loftq(W, iters):
    res = W.clone()
    for _ in range(iters):
        Q = bnb_nf4_round_trip(res)
        out_ = _low_rank_decomposition(W - Q, reduced_rank=RANK)
        L, R = out_["L"], out_["R"]
        res = W - L @ R
    return Q, R, L  # dequantized base, lora_A, lora_B


for iters in (1, 3):
    case = os.path.join(out, f"nf4_r{RANK}_t{iters}")
    run([qq, "nf4", "--model", dense, "--out", case, "--overwrite", "--no-double-quant", "--loftq-rank", str(RANK),
         "--loftq-iter", str(iters), "--quiet"])
    run([qq, "dequantize", "--model", case, "--out", case + "-deq", "--dtype", "fp32", "--overwrite"])
    ours_base = load_file(os.path.join(case + "-deq", "model.safetensors"))
    ours_ad = load_file(os.path.join(case, "loftq_init", "adapter_model.safetensors"))
    equal = close = total = 0
    worst_prod = 0.0
    err_ours = err_peft = 0.0
    for n in names:
        W = W_all[n + ".weight"].float()
        Q, A, B = peft_loftq(W, iters)
        q_ours = ours_base[n + ".weight"].float()
        equal += int((q_ours == Q).sum())
        # the same code under an absmax a few ulps apart (X = W - L R rounds differently here and there)
        close += int(((q_ours - Q).abs() <= 1e-6 * W.abs().max()).sum())
        total += Q.numel()
        key = "base_model.model." + n
        BA = ours_ad[key + ".lora_B.weight"].float() @ ours_ad[key + ".lora_A.weight"].float()
        LR = B @ A
        worst_prod = max(worst_prod, float((BA - LR).abs().max() / LR.abs().max()))
        err_ours += float(((W - q_ours - BA) ** 2).sum())
        err_peft += float(((W - Q - LR) ** 2).sum())
    err_ours, err_peft = err_ours ** 0.5, err_peft ** 0.5
    agree = close / total
    print(f"T={iters}: base values equal to PEFT's: {equal} of {total} bit for bit, {close} within 1e-6 of max |W| "
          f"(the same code; {total - close} codes differ); "
          f"max |BA - LR| / max |LR| {worst_prod:.3e}; ||W - Q - BA|| ours {err_ours:.6f}, PEFT {err_peft:.6f}")
    if iters == 1:
        check(equal == total, f"T=1: {total - equal} base values differ from PEFT's")
        check(worst_prod <= 1e-4, f"T=1: B A differs from PEFT's L R by {worst_prod:.3e} of its largest entry")
        check(abs(err_ours - err_peft) <= 1e-5 * err_peft, f"T=1: error {err_ours} vs PEFT's {err_peft}")
    else:
        check(agree >= 0.999, f"T={iters}: only {agree:.6f} of the base values have PEFT's code")
        check(abs(err_ours - err_peft) <= 0.01 * err_peft, f"T={iters}: error {err_ours} vs PEFT's {err_peft}")

    # 3. PEFT reads the adapter; logits of base + adapter move toward the original model's.
    torch.manual_seed(0)
    tokens = torch.randint(3, 512, (1, 96))
    with torch.no_grad():
        ref = Qwen2ForCausalLM.from_pretrained(dense, torch_dtype=torch.float32).eval()(tokens).logits
        base = Qwen2ForCausalLM.from_pretrained(case + "-deq", torch_dtype=torch.float32).eval()
        plain = float((base(tokens).logits - ref).abs().mean())
        peft_model = PeftModel.from_pretrained(base, os.path.join(case, "loftq_init")).eval()
        corrected = float((peft_model(tokens).logits - ref).abs().mean())
    print(f"T={iters}: PEFT logits mean |error| vs the original: base {plain:.5f}, base + our LoftQ adapter {corrected:.5f}")
    check(corrected < 0.95 * plain, f"T={iters}: the adapter left the logit error at {corrected} (base {plain})")

finish()
