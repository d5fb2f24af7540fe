"""Writes COUNT one-line text records ({"text": "the cat sat on the mat."}) of seeded random subjects and verbs to
FILE: the small SFT data of the training command-line tests. Usage: sentences.py FILE COUNT SEED"""
import json
import random
import sys

path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(seed)
subjects, verbs = ["the cat", "a dog", "the bird", "one fish"], ["sat on the mat", "ran to the park", "sang a song"]
with open(path, "w") as f:
    for _ in range(count):
        f.write(json.dumps({"text": f"{random.choice(subjects)} {random.choice(verbs)}."}) + "\n")
