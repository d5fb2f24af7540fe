"""Oracle: 4-bit checkpoints made by bitsandbytes itself (not by us) load in qwenq and give bitsandbytes' logits.

transformers refuses to quantize with bitsandbytes on a CPU, so this builds what its save_pretrained writes by
hand, with the same objects: a tiny random Qwen2 (transformers, fp32) whose seven decoder Linear types are replaced
by bitsandbytes.nn.Linear4bit (Params4bit._quantize on the CPU, bitsandbytes 0.46 CPU backend), saved as
model.state_dict() (weight, weight.absmax, weight.quant_map, weight.nested_*, weight.quant_state.bitsandbytes__*)
with config.json carrying BitsAndBytesConfig(...).to_dict() as quantization_config. Cases: NF4 with double
quantization and without (bitsandbytes' CPU backend cannot quantize FP4). The logits of the bitsandbytes model (its own CPU dequantize + fp32 matmul)
on a fixed sequence are the expected values; the gtest BnbPythonOracle.* loads each directory with qwenq and
compares (tolerance in the C++ half).
"""
import json
import os

from oracle_common import parse_args, run_gtest, skip, work_dir

args = parse_args(__doc__)
try:
    import torch
    import transformers
    import bitsandbytes as bnb
    from safetensors.torch import save_file
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/bitsandbytes not importable: {e}")

print("transformers", transformers.__version__, "bitsandbytes", bnb.__version__)
out = work_dir(args.build, "bnb_python_oracle")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_case(name, quant_type, double_quant):
    torch.manual_seed(7)
    case = os.path.join(out, name)
    os.makedirs(case, exist_ok=True)
    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=320, max_position_embeddings=256,
                                   tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for lname in LINEARS:
                lin = getattr(parent, lname, None)
                if lin is None:
                    continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      compute_dtype=torch.float32, compress_statistics=double_quant, quant_type=quant_type)
                q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False,
                                             compress_statistics=double_quant, quant_type=quant_type)._quantize("cpu")
                if lin.bias is not None:
                    q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
                setattr(parent, lname, q)
    ids = torch.tensor([[1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 99]])
    with torch.no_grad():
        logits = model(ids).logits[0].float().contiguous()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(case, "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config["torch_dtype"] = "float32"
    config["quantization_config"] = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.float32).to_dict()
    with open(os.path.join(case, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits},
              os.path.join(case, "expected.safetensors"))
    print(name, sorted(k for k in state if k.startswith("model.layers.0.self_attn.q_proj")))
    return case


# FP4: bitsandbytes 0.46's CPU backend quantizes NF4 only ("quant_type must be nf4 on CPU").
cases = [make_case("nf4_dq", "nf4", True), make_case("nf4", "nf4", False)]
run_gtest(args.build, "BnbPythonOracle.*", {"QWENQ_ORACLE_BNB_DIRS": ":".join(cases)})
print("bnb python oracle: OK")
