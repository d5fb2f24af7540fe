"""Oracle: a checkpoint quantized and written by AutoAWQ itself loads in qwenq and gives the logits of the model
AutoAWQ's own unpacking describes.

1. transformers builds a tiny random Qwen2 (hidden 128 so that every Linear has N % 64 == 0, which AutoAWQ's clip
   search requires), saved in fp32.
2. AutoAWQ 0.2.9 (pure-torch path on the CPU; its `datasets` import is stubbed because calibration texts are
   passed directly) runs its full AWQ (scale search, norm folding, clip search) with w_bit 4, group 32, and
   save_quantized writes the AutoAWQ GEMM checkpoint with the scaled norms.
3. The reference: every Linear dequantized with AutoAWQ's dequantize_gemm (scales widened to fp32 first, so the
   products are exact), put into a dense transformers model together with the checkpoint's other tensors; its
   fp32 logits on a fixed sequence. The gtest AutoAwqOracle.* loads the AutoAWQ directory with qwenq and compares.
"""
import importlib.machinery
import os
import sys
import types

from oracle_common import parse_args, run_gtest, skip, work_dir

args = parse_args(__doc__)
try:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    stub = types.ModuleType("datasets")  # AutoAWQ imports datasets.load_dataset at module level; unused here
    stub.load_dataset = None
    stub.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    sys.modules.setdefault("datasets", stub)
    from awq import AutoAWQForCausalLM
    from awq.utils.packing_utils import dequantize_gemm
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/autoawq not importable: {e}")

out = work_dir(args.build, "autoawq_oracle")
src, qdir = os.path.join(out, "fp32"), os.path.join(out, "awq")
GROUP = 32
torch.manual_seed(11)
cfg = transformers.Qwen2Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=320, max_position_embeddings=256,
                               tie_word_embeddings=False)
model = transformers.Qwen2ForCausalLM(cfg)
with torch.no_grad():
    for pname, p in model.named_parameters():
        if pname.endswith("norm.weight"):
            p.copy_(1.0 + 0.3 * torch.randn_like(p))
        elif pname.endswith("bias"):
            p.copy_(0.2 * torch.randn_like(p))
        else:
            p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
model.save_pretrained(src, safe_serialization=True)


class ByteTokenizer:  # the model has no tokenizer files; AutoAWQ only needs encode()
    def encode(self, text):
        return [b % 320 for b in text.encode()]


awq_model = AutoAWQForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
texts = [f"the cat sat on the mat and the dog ran {i} times to the park" for i in range(300)]
awq_model.quantize(ByteTokenizer(), quant_config={"zero_point": True, "q_group_size": GROUP, "w_bit": 4, "version": "GEMM"},
                   calib_data=texts, max_calib_samples=64, max_calib_seq_len=64)
awq_model.save_quantized(qdir)
print("AutoAWQ wrote", sorted(os.listdir(qdir)))

# Reference: AutoAWQ's own unpacking into a dense model.
state = load_file(os.path.join(qdir, "model.safetensors"))
dense = {}
for name, t in state.items():
    if name.endswith(".qweight"):
        prefix = name[: -len(".qweight")]
        w = dequantize_gemm(t, state[prefix + ".qzeros"], state[prefix + ".scales"].float(), 4, GROUP)
        dense[prefix + ".weight"] = w.t().contiguous().float()
    elif not name.endswith((".qzeros", ".scales")):
        dense[name] = t.float()
ref = transformers.Qwen2ForCausalLM(cfg).eval()
missing, unexpected = ref.load_state_dict(dense, strict=False)
assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
ids = torch.tensor([[1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 99]])
with torch.no_grad():
    logits = ref(ids).logits[0].float().contiguous()
save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits}, os.path.join(qdir, "expected.safetensors"))
run_gtest(args.build, "AutoAwqOracle.*", {"QWENQ_ORACLE_AUTOAWQ_DIR": qdir})
print("autoawq oracle: OK")
