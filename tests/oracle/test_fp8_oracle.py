"""Oracle: our reading of block-wise FP8 checkpoints (quant/fp8.h) against PyTorch's float8_e4m3fn.

torch writes model.safetensors (safetensors.torch) in the layout of Qwen's and DeepSeek's FP8 releases: three
Linears [96, 200] quantized by blocks of 32 x 64 (partial blocks along K), scale = amax / 448 per block stored as
`weight_scale_inv` in BF16, F16 and F32 (the dtypes those releases use), weight = (W / scale).to(float8_e4m3fn);
expected.safetensors holds what the published dequantization computes, weight.to(float32) * scale_inv.to(float32)
per block, and the float32 value torch gives each of the 256 float8 bytes. The gtest Fp8Oracle.* reads the
checkpoint with qwenq and requires bit-exact equality (NaN only as NaN).
Exit 0 pass, 1 fail, 77 skip (torch or safetensors missing).
"""
import os

from oracle_common import finish, parse_args, run_gtest, skip, work_dir

args = parse_args(__doc__)
try:
    import torch
    from safetensors.torch import save_file
except ImportError as e:
    skip(f"torch/safetensors not importable: {e}")
if not hasattr(torch, "float8_e4m3fn"):
    skip(f"torch {torch.__version__} has no float8_e4m3fn")
print("torch", torch.__version__)

N, K, BN, BK = 96, 200, 32, 64
d = work_dir(args.build, "fp8")
gen = torch.Generator().manual_seed(8)
tensors, expected = {}, {}
for name, scale_dtype in [("model.layers.0.mlp.up_proj", torch.bfloat16),
                          ("model.layers.0.mlp.down_proj", torch.float16),
                          ("model.layers.0.self_attn.q_proj", torch.float32)]:
    w = torch.randn(N, K, generator=gen, dtype=torch.float32) * 0.05
    sn, sk = (N + BN - 1) // BN, (K + BK - 1) // BK
    scale = torch.empty(sn, sk, dtype=torch.float32)
    for i in range(sn):
        for j in range(sk):
            scale[i, j] = w[i * BN:(i + 1) * BN, j * BK:(j + 1) * BK].abs().max() / 448.0
    scale = scale.to(scale_dtype)
    full = scale.to(torch.float32).repeat_interleave(BN, 0)[:N].repeat_interleave(BK, 1)[:, :K]
    q = (w / full).to(torch.float8_e4m3fn)
    tensors[name + ".weight"] = q
    tensors[name + ".weight_scale_inv"] = scale
    expected[name] = (q.to(torch.float32) * full).contiguous()
codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
tensors["all_codes"] = codes
expected["all_codes"] = codes.to(torch.float32)
save_file(tensors, os.path.join(d, "model.safetensors"))
save_file(expected, os.path.join(d, "expected.safetensors"))

run_gtest(args.build, "Fp8Oracle.*", env={"QWENQ_ORACLE_FP8_DIR": d})
finish()
