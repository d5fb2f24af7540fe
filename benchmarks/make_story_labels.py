#!/usr/bin/env python3
"""Labelled sentences from TinyStories text, for the classification runs of benchmarks/results (`train --objective
classify`).

Sentences (split after . ! or ?) of 21 to 199 characters that name exactly one of the animals bird, cat and dog (as a
whole lower-cased word), shuffled with --seed; each gives one JSON line {"text": sentence, "label": animal}. Writes at
most --max of them to --out and prints the count per label.
"""
import argparse
import collections
import json
import random
import re

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--text", required=True, help="tinystories_val.txt (../shared/data/tinystories)")
p.add_argument("--out", required=True)
p.add_argument("--max", type=int, default=600)
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()

ANIMALS = ("bird", "cat", "dog")
stories = [s.strip() for s in re.split(r"<\|endoftext\|>|\n\n+", open(a.text, encoding="utf-8").read()) if s.strip()]
records = []
for story in stories:
    for sentence in re.split(r"(?<=[.!?])\s+", story):
        sentence = sentence.strip()
        if not 20 < len(sentence) < 200:
            continue
        named = [x for x in ANIMALS if x in set(re.findall(r"[a-z]+", sentence.lower()))]
        if len(named) == 1:
            records.append({"text": sentence, "label": named[0]})
random.Random(a.seed).shuffle(records)
records = records[: a.max]
with open(a.out, "w", encoding="utf-8") as f:
    for r in records:
        f.write(json.dumps(r) + "\n")
print(f"{a.out}: {len(records)} sentences,", dict(collections.Counter(r["label"] for r in records)))
