#!/usr/bin/env python3
"""Preference pairs from TinyStories text, for the preference-training runs of benchmarks/results (DPO, KTO).

Paragraphs (blank-line separated) of at least 45 words, shuffled with --seed; each becomes a pair: prompt = its first
15 words, chosen = its next 30 words, rejected = the same 30-word span (words 15..45) of the next paragraph in the
shuffled order (fluent TinyStories text, but not the continuation). Writes --pairs of them as JSON lines
{"prompt", "chosen", "rejected"} to --out; `head -n 600` / `tail -n 100` of the file give disjoint train and test sets.
"""
import argparse
import json
import random

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--text", required=True, help="tinystories_val.txt (../shared/data/tinystories)")
p.add_argument("--out", required=True)
p.add_argument("--pairs", type=int, default=700)
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()

paragraphs = [par.split() for par in open(a.text, encoding="utf-8").read().split("\n\n")]
paragraphs = [w for w in paragraphs if len(w) >= 45]
random.Random(a.seed).shuffle(paragraphs)
if len(paragraphs) < a.pairs + 1:
    raise SystemExit(f"{a.text}: {len(paragraphs)} paragraphs of 45 words or more, {a.pairs} pairs asked")
with open(a.out, "w", encoding="utf-8") as f:
    for i in range(a.pairs):
        w, nxt = paragraphs[i], paragraphs[i + 1]
        f.write(json.dumps({"prompt": " ".join(w[:15]), "chosen": " " + " ".join(w[15:45]),
                            "rejected": " " + " ".join(nxt[15:45])}) + "\n")
print(f"{a.out}: {a.pairs} pairs from {len(paragraphs)} paragraphs")
