"""AutoAWQ 0.2.9 made usable on the CPU, for the oracle test and benchmarks/bench_awq_vs_autoawq.sh.

scripts/oracle_env.sh installs AutoAWQ apart from the rest (.venv-oracle/autoawq: peft would import it everywhere),
and AutoAWQ imports `datasets` at module level although calibration texts are passed directly: load() puts the
directory on sys.path, stubs `datasets`, and patches two things AutoAWQ gets wrong on the CPU (below). Returns the
awq module's AutoAWQForCausalLM and dequantize_gemm; raises ImportError when AutoAWQ or torch is missing.
"""
import importlib.machinery
import os
import sys
import types


def load():
    sys.path.insert(0, os.path.join(os.path.dirname(sys.executable), "..", "autoawq"))
    import torch
    stub = types.ModuleType("datasets")  # AutoAWQ imports datasets.load_dataset at module level; unused here
    stub.load_dataset = None
    stub.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    sys.modules.setdefault("datasets", stub)
    from awq import AutoAWQForCausalLM
    from awq.quantize import quantizer as awq_quantizer
    from awq.utils.packing_utils import dequantize_gemm

    # AutoAWQ's scale search saves the module's weights with `{k: v.cpu() for k, v in state_dict().items()}` and
    # scales them in place: on a GPU .cpu() copies, on the CPU it aliases, so from the second grid point on every
    # candidate is tried on already-scaled weights (the losses jump: 0.00313, 0.00406, ... where the algorithm gives
    # 0.00313, 0.00283, ...). Give the search real copies, as it gets on a GPU.
    search = awq_quantizer.AwqQuantizer._compute_best_scale

    def search_with_copies(self, x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs={}):
        state_dict = module2inspect.state_dict
        module2inspect.state_dict = lambda *a, **k: {n: t.clone() for n, t in state_dict(*a, **k).items()}
        try:
            return search(self, x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs)
        finally:
            del module2inspect.state_dict

    awq_quantizer.AwqQuantizer._compute_best_scale = search_with_copies

    # AutoAWQ computes its grid with the scale in the model's dtype: fp16 in its usual runs, fp32 for an fp32 model.
    # Round the scale to fp16 (as an fp16 run has it, as the GEMM checkpoint stores it, and as qwenq does) so that the
    # clip search compares the same grids (computed in fp32 from the weights as given; otherwise AutoAWQ's zero-point
    # branch line by line). Without this, nearly tied clip candidates resolve differently in a few groups.
    def pseudo_quantize_fp16_scale(self, w):
        shape, dtype = w.shape, w.dtype
        w = w.reshape(-1, self.group_size).float()
        max_val, min_val = w.amax(dim=1, keepdim=True), w.amin(dim=1, keepdim=True)
        max_int = 2 ** self.w_bit - 1
        scales = ((max_val - min_val).clamp(min=1e-5) / max_int).half().float()
        zeros = (-torch.round(min_val / scales)).clamp_(0, max_int)
        w = (torch.clamp(torch.round(w / scales) + zeros, 0, max_int) - zeros) * scales
        return w.reshape(shape).to(dtype), scales.view(shape[0], -1), zeros.view(shape[0], -1)

    awq_quantizer.AwqQuantizer.pseudo_quantize_tensor = pseudo_quantize_fp16_scale
    return AutoAWQForCausalLM, dequantize_gemm
