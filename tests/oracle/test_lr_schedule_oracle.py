"""Oracle: `qwen-qlora train --scheduler NAME --scheduler-kwargs JSON` steps the learning rate transformers' Trainer
steps with lr_scheduler_type=NAME and lr_scheduler_kwargs=JSON.

Each case trains the real stories260K (`qwen-quant import-llama2c`) for STEPS steps on the shared Alpaca demo and
reads the learning rate of every step from metrics.jsonl; transformers' get_scheduler(NAME, optimizer,
num_warmup_steps, num_training_steps, scheduler_specific_kwargs) over a torch AdamW at the same --lr gives the rate
of each step as the Trainer uses it (the optimizer steps, then the scheduler). They must agree within REL_TOL of the
peak rate (the formulas are the same; a few are written in another order, e.g. linear's 1 − p against (T − s)/(T − w)).
The warm-up steps come from --warmup-steps or --warmup-ratio as the Trainer's get_warmup_steps takes them.
"""
import json
import os
import subprocess

from oracle_common import check, finish, import_stories260k, parse_args, require_shared, skip, work_dir

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
    from transformers import get_scheduler
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers not importable: {e}")

REL_TOL = 1e-12  # of the peak rate (seen: at most 2.2e-16)
STEPS, LR = 24, 1e-3

ql = os.path.join(args.build, "qwen-qlora")
out = work_dir(args.build, "lr_schedule_oracle")
base_dir = import_stories260k(args.build, args.shared, os.path.join(out, "base"))
data = os.path.join(args.shared, "data", "alpaca", "alpaca_en_demo.json")

# (our --scheduler, its kwargs, warm-up flags, transformers' name, its kwargs, the Trainer's warm-up steps)
CASES = [
    ("linear", None, ["--warmup-steps", "3"], "linear", {}, 3),
    ("cosine", None, ["--warmup-ratio", "0.1"], "cosine", {}, 3),  # ceil(0.1 · 24)
    ("cosine", {"num_cycles": 1.5}, ["--warmup-steps", "2"], "cosine", {"num_cycles": 1.5}, 2),
    ("cosine_with_restarts", {"num_cycles": 3}, ["--warmup-steps", "2"], "cosine_with_restarts", {"num_cycles": 3}, 2),
    ("cosine_with_restarts", None, [], "cosine_with_restarts", {}, 0),
    ("polynomial", {"power": 2.0, "lr_end": 1e-5}, ["--warmup-steps", "4"], "polynomial",
     {"power": 2.0, "lr_end": 1e-5}, 4),
    ("constant", None, ["--warmup-steps", "5"], "constant_with_warmup", {}, 5),
    ("constant_with_warmup", None, ["--warmup-steps", "5"], "constant_with_warmup", {}, 5),
    ("inverse_sqrt", None, ["--warmup-steps", "4"], "inverse_sqrt", {}, 4),
    ("inverse_sqrt", None, [], "inverse_sqrt", {}, 0),
    ("cosine_with_min_lr", {"min_lr": 1e-4}, ["--warmup-steps", "3"], "cosine_with_min_lr", {"min_lr": 1e-4}, 3),
    ("cosine_with_min_lr", {"min_lr_rate": 0.2, "num_cycles": 0.75}, [], "cosine_with_min_lr",
     {"min_lr_rate": 0.2, "num_cycles": 0.75}, 0),
    ("cosine", None, ["--min-lr-ratio", "0.1", "--warmup-steps", "3"], "cosine_with_min_lr", {"min_lr_rate": 0.1}, 3),
    ("warmup_stable_decay", {"num_decay_steps": 8}, ["--warmup-steps", "4"], "warmup_stable_decay",
     {"num_decay_steps": 8}, 4),
    ("warmup_stable_decay", {"num_decay_steps": 6, "warmup_type": "cosine", "decay_type": "1-sqrt",
                             "min_lr_ratio": 0.1}, ["--warmup-steps", "5"], "warmup_stable_decay",
     {"num_decay_steps": 6, "warmup_type": "cosine", "decay_type": "1-sqrt", "min_lr_ratio": 0.1}, 5),
    ("warmup_stable_decay", {"num_decay_steps": 5, "num_stable_steps": 10, "warmup_type": "1-sqrt",
                             "decay_type": "linear"}, ["--warmup-steps", "3"], "warmup_stable_decay",
     {"num_decay_steps": 5, "num_stable_steps": 10, "warmup_type": "1-sqrt", "decay_type": "linear"}, 3),
]


def hf_rates(name, kwargs, warmup):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=LR)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=STEPS,
                          scheduler_specific_kwargs=kwargs)
    rates = []
    for _ in range(STEPS):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


for i, (ours, kw, warm, theirs, hf_kw, hf_warmup) in enumerate(CASES):
    d = os.path.join(out, f"case{i}")
    cmd = [ql, "train", "--model", base_dir, "--data", data, "--out", d, "--overwrite", "--max-steps", str(STEPS),
           "--batch-size", "1", "--seq-len", "256", "--lr", str(LR), "--scheduler", ours, "--threads", "2", "--quiet",
           *warm, *(["--scheduler-kwargs", json.dumps(kw)] if kw else [])]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if not check(p.returncode == 0, f"case {i} ({ours} {kw}): train failed: {p.stderr.strip()[-400:]}"):
        continue
    with open(os.path.join(d, "metrics.jsonl")) as f:
        got = [r["lr"] for r in map(json.loads, f) if "lr" in r]
    want = hf_rates(theirs, hf_kw, hf_warmup)
    worst = max(abs(a - b) for a, b in zip(got, want)) / LR if len(got) == len(want) else float("inf")
    print(f"case {i}: {ours} {kw or ''} {' '.join(warm)}: {len(got)} steps, worst |ours - transformers| / lr "
          f"{worst:.1e}; transformers' rates " + " ".join(f"{r:.3g}" for r in want))
    check(len(got) == STEPS, f"case {i}: {len(got)} step records, not {STEPS}")
    check(worst <= REL_TOL, f"case {i} ({ours} {kw}): ours {got} against transformers' {want}")

# Refusals, before anything is written: a key the schedule does not take, kwargs for one that takes none, a
# warmup_stable_decay longer than the run, cosine_with_min_lr without (or with two) minimums.
for name, flags, needle in [
        ("bad_key", ["--scheduler", "cosine", "--scheduler-kwargs", '{"power": 2}'], "takes num_cycles, not \"power\""),
        ("no_kwargs", ["--scheduler", "linear", "--scheduler-kwargs", '{"num_cycles": 2}'], "takes no keyword"),
        ("not_object", ["--scheduler", "cosine", "--scheduler-kwargs", "[1]"], "must be a JSON object"),
        ("wsd_long", ["--scheduler", "warmup_stable_decay", "--warmup-steps", "10", "--scheduler-kwargs",
                      '{"num_decay_steps": 20}'], "exceed the run's 24 steps"),
        ("min_lr_none", ["--scheduler", "cosine_with_min_lr"], "exactly one of --min-lr-ratio"),
        ("unknown", ["--scheduler", "cosine_annealing"], "--scheduler must be")]:
    d = os.path.join(out, name)
    cmd = [ql, "train", "--model", base_dir, "--data", data, "--out", d, "--max-steps", str(STEPS), "--quiet", *flags]
    p = subprocess.run(cmd, capture_output=True, text=True)
    check(p.returncode != 0 and needle in p.stderr, f"{name}: rc {p.returncode}, stderr {p.stderr.strip()}")
    check(not os.path.exists(d), f"{name}: the refused run left {d}")

finish()
