"""Oracle: the imported stories260K model against Hugging Face transformers running the same directory.

1. `qwen-quant import-llama2c` converts ../shared/data/stories260K (llama2.c, interleaved RoPE) into a
   Hugging Face Qwen2 directory (fp32).
2. Perplexity on tinystories_val.txt with 512-token windows: `qwen-quant eval --json` against transformers
   (Qwen2ForCausalLM + the tokenizer.json we wrote, loaded by AutoTokenizer) computing the same windows.
   The whole file is tokenized on both sides; the first MAX_WINDOWS windows (131K tokens) are scored to keep
   CI short on 2 cores. Requirements: identical token count, perplexities within 0.1% (PPL_REL_TOL).
3. Greedy decoding of "Once upon a time": `qwen-quant generate` and transformers' generate() give the same
   text, and it reads as a story (the RoPE permutation is right, or it would be gibberish).
"""
import json
import math
import os

from oracle_common import import_stories260k, parse_args, require_shared, run, skip, work_dir

PPL_REL_TOL = 1e-3
SEQ_LEN = 512
MAX_WINDOWS = 256

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM
except ImportError as e:
    skip(f"transformers/torch not importable: {e}")

data = os.path.join(args.shared, "data")
qq = os.path.join(args.build, "qwen-quant")
model_dir = os.path.join(work_dir(args.build, "stories"), "stories260K-hf")
import_stories260k(args.build, args.shared, model_dir)

text_path = f"{data}/tinystories/tinystories_val.txt"
ours = json.loads(run([qq, "eval", "--model", model_dir, "--data", text_path, "--seq-len", str(SEQ_LEN),
                       "--max-windows", str(MAX_WINDOWS), "--batch", "4", "--json", "--quiet"]).strip().splitlines()[-1])
print("qwenq:", ours)

tok = AutoTokenizer.from_pretrained(model_dir)
model = Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
with open(text_path, encoding="utf-8") as f:
    text = f.read()
ids = tok(text, return_tensors="pt").input_ids
n_windows = min(ids.shape[1] // SEQ_LEN, MAX_WINDOWS)
nll_sum, count = 0.0, 0
with torch.no_grad():
    for w in range(n_windows):
        batch = ids[:, w * SEQ_LEN:(w + 1) * SEQ_LEN]
        logits = model(batch).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum")
        nll_sum += loss.item()
        count += SEQ_LEN - 1
ppl = math.exp(nll_sum / count)
print(f"transformers: {ids.shape[1]} tokens, {n_windows} windows, perplexity {ppl:.6f}")
print(f"qwenq:        {ours['corpus_tokens']} tokens, {ours['windows']} windows, perplexity {ours['perplexity']:.6f}")
failures = []
if ours["corpus_tokens"] != ids.shape[1]:
    failures.append(f"token count differs: qwenq {ours['corpus_tokens']} vs transformers {ids.shape[1]}")
rel = abs(ours["perplexity"] - ppl) / ppl
print(f"relative perplexity difference {rel:.2e} (tolerance {PPL_REL_TOL})")
if rel > PPL_REL_TOL:
    failures.append(f"perplexity differs by {rel:.2e} > {PPL_REL_TOL}")

prompt = "Once upon a time"
ours_text = run([qq, "generate", "--model", model_dir, "--prompt", prompt, "-n", "60", "--threads", "1"])
enc = tok(prompt, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**enc, max_new_tokens=60, do_sample=False)
hf_text = tok.decode(out[0], skip_special_tokens=True)
print("qwenq generate:       ", repr(ours_text))
print("transformers generate:", repr(hf_text))
if ours_text.strip() != hf_text.strip():
    failures.append("greedy generations differ")
words = hf_text.split()
if len(words) < 20 or sum(w.strip(".,!\"'").isalpha() for w in words) < 0.8 * len(words):
    failures.append("generation does not look like English text")

if failures:
    raise SystemExit("FAIL: " + "; ".join(failures))
print("PASS")
