#!/usr/bin/env python3
"""GRPO prompts from TinyStories text, for the reward-training runs of benchmarks/results (`train --objective grpo`).

Paragraphs (blank-line separated) of at least 30 words, shuffled with --seed; each gives one prompt, its first --words
words, as a JSON line {"prompt": ...}. Writes --prompts of them to --out; `head -n 300` / `tail -n 40` of the file
give disjoint train and held-out sets.
"""
import argparse
import json
import random

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--text", required=True, help="tinystories_val.txt (../shared/data/tinystories)")
p.add_argument("--out", required=True)
p.add_argument("--prompts", type=int, default=340)
p.add_argument("--words", type=int, default=6)
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()

paragraphs = [par.split() for par in open(a.text, encoding="utf-8").read().split("\n\n")]
paragraphs = [w for w in paragraphs if len(w) >= 30]
random.Random(a.seed).shuffle(paragraphs)
if len(paragraphs) < a.prompts:
    raise SystemExit(f"{a.text}: {len(paragraphs)} paragraphs of 30 words or more, {a.prompts} prompts asked")
with open(a.out, "w", encoding="utf-8") as f:
    for w in paragraphs[: a.prompts]:
        f.write(json.dumps({"prompt": " ".join(w[: a.words])}) + "\n")
print(f"{a.out}: {a.prompts} prompts from {len(paragraphs)} paragraphs")
