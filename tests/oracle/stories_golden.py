"""Generator of the golden perplexity in tests/test_model.cpp (Stories.PerplexityMatchesTransformersGolden).

Runs Hugging Face transformers on the imported stories260K directory: the first 1,024 tokens of
tinystories_val.txt (BOS first, as the tokenizer adds it), four non-overlapping 256-token windows, mean NLL of
the 4 x 255 next-token predictions. Usage:
  .venv-oracle/bin/python tests/oracle/stories_golden.py build/oracle_tmp/stories/stories260K-hf ../shared
(the directory comes from `qwen-quant import-llama2c`). transformers 4.51.3 / torch 2.5.1 printed
4.056757757563922.
"""
import math
import sys

import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

model_dir, shared = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
with open(f"{shared}/data/tinystories/tinystories_val.txt", encoding="utf-8") as f:
    ids = tok(f.read()).input_ids[:1024]
nll, count = 0.0, 0
with torch.no_grad():
    for w in range(0, 1024, 256):
        x = torch.tensor([ids[w:w + 256]])
        logits = model(x).logits[0]
        nll += torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
        count += 255
print(math.exp(nll / count))
