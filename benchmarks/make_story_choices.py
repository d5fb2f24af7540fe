#!/usr/bin/env python3
"""Multiple-choice items from TinyStories for `qwen-quant multiple-choice` / `compare --choices` on story models
(stories260K), where no public benchmark fits: the context is the first 8-20 words of a story, the choices the next
3-6 words of that story and of three other stories (shuffled, seeded). A model that follows the story picks the true
continuation more often than 1 in 4. Usage: make_story_choices.py tinystories_val.txt N OUT.jsonl [SEED]"""
import json
import random
import sys

src, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
with open(src, encoding="utf-8") as f:
    stories = [line.split() for line in f if len(line.split()) > 30]
with open(out, "w", encoding="utf-8") as f:
    for _ in range(n):
        picks = rng.sample(range(len(stories)), 4)
        cut, length = rng.randint(8, 20), rng.randint(3, 6)
        endings = [" " + " ".join(stories[p][cut:cut + length]) for p in picks]
        order = list(range(4))
        rng.shuffle(order)
        f.write(json.dumps({"context": " ".join(stories[picks[0]][:cut]),
                            "choices": [endings[k] for k in order], "label": order.index(0)}) + "\n")
