"""Writes COUNT preference records of seeded names to FILE, "<name> is kind." chosen over "<name> is mean.": every
other one in TRL's implicit-prompt form ({"chosen", "rejected"}, the shared prefix is the prompt), the rest with an
explicit prompt. The pairs of the preference command-line tests (dpo, reward). Usage: kind_pairs.py FILE COUNT SEED"""
import json
import random
import sys

path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(seed)
names = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
with open(path, "w") as f:
    for i in range(count):
        n = random.choice(names)
        if i % 2:
            f.write(json.dumps({"chosen": f"{n} is kind.", "rejected": f"{n} is mean."}) + "\n")
        else:
            f.write(json.dumps({"prompt": f"{n} is", "chosen": " kind.", "rejected": " mean."}) + "\n")
