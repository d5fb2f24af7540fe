#!/usr/bin/env python3
"""The baseline side of benchmarks/bench_qlora_step.sh: a LoRA training step with Hugging Face transformers + peft.

Loads a model directory's dense weights in bf16 with transformers (attn_implementation="sdpa"), wraps the model
with peft LoraConfig(r, lora_alpha, all seven Linears q/k/v/o/gate/up/down, lora_dropout 0), turns gradient
checkpointing on (non-reentrant, one checkpoint per decoder layer: the same regime as `qwen-qlora train`, which
always recomputes each block in the backward pass), and trains with torch.optim.AdamW (fused on cuda) on
batch x seq random token ids (labels = inputs, the model's own shifted cross-entropy). Warm-up steps first, then
timed steps, each one forward + backward + optimizer step + zero_grad between two torch.cuda.synchronize().

  tokens/s = batch * seq * timed steps / (sum of the timed steps' seconds)
  peak     = torch.cuda.max_memory_allocated / max_memory_reserved over the whole run (load included), cuda;
             the process's peak RSS (getrusage ru_maxrss) on every device

bitsandbytes is not on the GPU machine, so the base stays in bf16 (LoRA, not QLoRA): the comparison the issue
asks for (our 4-bit QLoRA step against transformers + peft bf16 LoRA). Prints a JSON line on stdout after each
timed step (the last one is the result; "partial": true on the earlier ones); progress on stderr. On the CPU (--device cpu) the same code runs, for a dry run with a tiny model.

  python3 benchmarks/bench_qlora_step_peft.py --model DIR --device cuda --seq 2048 --warmup 2 --steps 5
"""
import argparse
import json
import math
import resource
import sys
import time


def log(msg):
    print(f"[peft] {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model directory (config.json + safetensors, dense weights)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--seq", type=int, default=2048, help="tokens per row")
    ap.add_argument("--batch", type=int, default=1, help="rows per step")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.seq < 2 or a.batch < 1 or a.warmup < 0 or a.steps < 1:
        sys.exit("bench_qlora_step_peft.py: need --seq >= 2, --batch >= 1, --warmup >= 0, --steps >= 1")

    t_start = time.perf_counter()
    import torch
    import transformers
    import peft
    from transformers import AutoConfig, AutoModelForCausalLM

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_qlora_step_peft.py: --device cuda but torch sees no GPU")
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"imports {time.perf_counter() - t_start:.1f} s")

    # transformers >= 4.56 spells the load dtype `dtype` (and 5.x deprecates `torch_dtype`).
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    t0 = time.perf_counter()
    cfg = AutoConfig.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, attn_implementation="sdpa", **{dtype_kw: torch.bfloat16})
    model.to(dev)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lcfg = peft.LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(model, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    # get_peft_model's autocast_adapter_dtype (default on) keeps the adapter weights in fp32 on a bf16 base, as
    # ours are; the step itself runs under bf16 autocast, as the Trainer's bf16=True does.
    adapter_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in trainable})
    opt = torch.optim.AdamW(trainable, lr=a.lr, weight_decay=0.0, fused=(a.device == "cuda"))
    load_s = time.perf_counter() - t0
    log(f"loaded {cfg.num_hidden_layers} layers on {a.device} in {load_s:.1f} s; {n_trainable} trainable parameters")

    g = torch.Generator().manual_seed(a.seed)
    vocab_hi = min(cfg.vocab_size, 256)  # byte tokens of the random model's tokenizer (speed does not depend on them)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    step_s, losses = [], []
    for i in range(a.warmup + a.steps):
        ids = torch.randint(0, vocab_hi, (a.batch, a.seq), generator=g).to(dev)
        sync()
        t = time.perf_counter()
        with torch.autocast(device_type=a.device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t
        losses.append(float(loss.detach()))
        if i >= a.warmup:
            step_s.append(dt)
        log(f"step {i + 1}{' (warm-up)' if i < a.warmup else ''}: loss {losses[-1]:.4f}, {dt:.3f} s, "
            f"{a.batch * a.seq / dt:.0f} tokens/s")
        if not math.isfinite(losses[-1]):
            sys.exit(f"bench_qlora_step_peft.py: the loss of step {i + 1} is not finite: {losses}")
        if step_s:  # a line after each timed step: a run cut by a time limit still reports the steps it finished
            print(json.dumps(result(a, cfg, model, torch, transformers, peft, n_trainable, adapter_dtypes, load_s,
                                    step_s, losses, partial=i + 1 < a.warmup + a.steps)), flush=True)


def result(a, cfg, model, torch, transformers, peft, n_trainable, adapter_dtypes, load_s, step_s, losses, partial):
    tokens = a.batch * a.seq
    return {
        "side": "transformers+peft",
        "device": a.device,
        "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "base": "bf16", "attn_implementation": getattr(model.get_base_model().config, "_attn_implementation", None),
        "gradient_checkpointing": True, "optimizer": "AdamW" + (" (fused)" if a.device == "cuda" else ""),
        "autocast": "bf16", "adapter_dtype": "/".join(adapter_dtypes),
        "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size,
        "r": a.r, "alpha": a.alpha, "targets": 7, "trainable_params": n_trainable,
        "batch": a.batch, "seq": a.seq, "tokens_per_step": tokens, "warmup": a.warmup, "steps": len(step_s),
        "steps_requested": a.steps, "partial": partial,
        "step_s": [round(x, 5) for x in step_s],
        "tokens_per_s": tokens * len(step_s) / sum(step_s),
        "loss_first": losses[0], "loss_last": losses[-1], "load_s": round(load_s, 2),
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() if a.device == "cuda" else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if a.device == "cuda" else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


if __name__ == "__main__":
    main()
