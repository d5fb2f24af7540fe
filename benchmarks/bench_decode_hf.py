"""Decode speed of Hugging Face transformers on a model directory: the baseline side of bench_decode_cuda.sh.

    python benchmarks/bench_decode_hf.py --model DIR --device cuda --prompt-len 128,4096 --new 64 [--reps 3]

The model in bf16 with sdpa attention (transformers' defaults for a Qwen2 checkpoint: dynamic KV cache in bf16),
greedy. The prompt is random token ids of each length (the speed does not depend on the values). The decode rate
excludes the prompt and the first token, as `qwen-quant generate` reports "then X tok/s": for each prompt, the time
of generate(max_new_tokens=1) is subtracted from that of generate(max_new_tokens=new + 1), both with
min_new_tokens equal to max_new_tokens (no early stop), the best of --reps runs each, device-synchronized.
Prints one JSON line per prompt length.
"""
import argparse
import json
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt-len", default="128,4096")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    t0 = time.time()
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16,
                                                              attn_implementation="sdpa").to(dev).eval()
    load_s = time.time() - t0
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(ids, n):
        best = float("inf")
        for _ in range(a.reps):
            sync()
            t = time.perf_counter()
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            sync()
            best = min(best, time.perf_counter() - t)
        return best, out.shape[1] - ids.shape[1]

    for p in [int(x) for x in a.prompt_len.split(",") if x]:
        ids = torch.randint(0, vocab, (1, p), generator=gen).to(dev)
        timed(ids, 2)  # warm-up: kernels, allocator
        t1, _ = timed(ids, 1)
        tn, made = timed(ids, a.new + 1)
        decode_s = max(tn - t1, 1e-9)
        line = {"side": "transformers", "device": a.device, "torch": torch.__version__,
                "transformers": transformers.__version__, "dtype": "bf16", "attn_implementation": "sdpa",
                "layers": model.config.num_hidden_layers, "prompt_tokens": p, "new_tokens": made - 1,
                "first_token_s": t1, "decode_s": decode_s, "tokens_per_s": (made - 1) / decode_s,
                "load_s": load_s}
        if dev.type == "cuda":
            line["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
