"""Oracle: `qwen-qlora train --scheduler reduce_lr_on_plateau` sets the rate as torch's ReduceLROnPlateau does when
transformers' Trainer steps it (Trainer._evaluate: scheduler.step(metrics["eval_" + metric_for_best_model]) after each
evaluation; no step-0 evaluation, no warm-up).

The real stories260K (`qwen-quant import-llama2c`) trains LoRA on the shared Alpaca demo at a rate too large on purpose,
so that the held-out loss soon stops improving, evaluating every step, with LoRA+ (two rate groups: A at --lr, B at
2 · --lr) and a min_lr that binds group A first. The run's evaluations (metrics.jsonl) are replayed through torch's
ReduceLROnPlateau over an SGD optimizer with the same two groups; then:
  1. every step's logged "lr" (group A's, as the Trainer logs its first group's) is torch's rate after the
     evaluations before that step, to the bit; the summary's final rates of both groups are torch's;
  2. the same run killed after STOP_AFTER steps (--stop-after) and resumed gives the same records (losses, rates) and
     the same final adapter bytes;
  3. a mode that disagrees with the metric's direction is run as given, with a warning;
  4. the refusals: no --eval-every, a warm-up (steps or ratio), kwargs torch would refuse or this trainer cannot
     honour, no held-out set (nothing is written).
"""
import json
import os
import shutil
import subprocess

from oracle_common import check, finish, import_stories260k, parse_args, require_shared, skip, work_dir

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
except ImportError as e:  # pragma: no cover
    skip(f"torch not importable: {e}")

LR, RATIO = 0.01, 2.0
KWARGS = {"patience": 1, "factor": 0.5, "min_lr": 3e-3}  # A: 0.01, 0.005, then the floor; B: 0.02, 0.01, 0.005
MAX_STEPS, SAVE_EVERY, STOP_AFTER = 30, 4, 13

data = os.path.join(args.shared, "data", "alpaca", "alpaca_en_demo.json")
ql = os.path.join(args.build, "qwen-qlora")
out = work_dir(args.build, "lr_plateau_oracle")
base_dir = import_stories260k(args.build, args.shared, os.path.join(out, "base"))
COMMON = ["--model", base_dir, "--data", data, "--seed", "3", "--seq-len", "256", "--batch-size", "4", "--threads", "2",
          "--eval-count", "24", "--lr", str(LR), "--lora-r", "8", "--loraplus-lr-ratio", str(RATIO),
          "--scheduler", "reduce_lr_on_plateau"]


def train(name, *extra, kwargs=KWARGS, steps=MAX_STEPS):
    d = os.path.join(out, name)
    cmd = [ql, "train", *COMMON, "--scheduler-kwargs", json.dumps(kwargs), "--out", d, "--max-steps", str(steps),
           "--eval-every", "1", "--quiet", *extra, *([] if "--resume" in extra else ["--overwrite"])]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout, p.stderr)
        raise SystemExit(f"train {name} failed")
    return d, p


def records(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = {r["step"]: r for r in rows if "loss" in r}
    evals = [(r["step"], r) for r in rows if "eval_loss" in r]
    summary = [r for r in rows if r.get("final")]
    return steps, evals, summary[-1] if summary else None


def torch_rates(evals, kwargs, total):
    """Group rates torch gives each step 1..total: the rates after the evaluations of the steps before it (those of
    steps 1..total-1: the Trainer steps its scheduler at each evaluation, and none follows the last step's)."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": LR}, {"params": [params[1]], "lr": LR * RATIO}])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    by_step = dict(evals)
    rates = {}
    for step in range(1, total + 1):
        rates[step] = [g["lr"] for g in opt.param_groups]
        if step < total:
            sched.step(by_step[step]["eval_loss"])
    return rates, sched


# 1. the rates against torch's.
a_dir, a_proc = train("plateau")
a_steps, a_evals, a_summary = records(a_dir)
check(a_summary is not None and a_summary["step"] == MAX_STEPS, f"the run did not finish: {a_summary}")
rates, sched = torch_rates(a_evals, KWARGS, MAX_STEPS)
print("eval_loss by step: " + ", ".join(f"{s}:{r['eval_loss']:.4f}" for s, r in a_evals))
print("lr by step: " + ", ".join(f"{s}:{r['lr']:.4g}" for s, r in sorted(a_steps.items())))
for step in range(1, MAX_STEPS + 1):
    check(a_steps[step]["lr"] == rates[step][0], f"step {step}: lr {a_steps[step]['lr']}, torch {rates[step][0]}")
distinct = sorted({r[0] for r in rates.values()}, reverse=True)
check(len(distinct) >= 3, f"torch reduced the rate fewer than twice ({distinct}): the test needs a plateau (tune LR)")
check(rates[MAX_STEPS][0] == KWARGS["min_lr"] and rates[MAX_STEPS][1] > KWARGS["min_lr"],
      f"min_lr did not bind group A alone: {rates[MAX_STEPS]} (tune LR)")
state = a_summary["lr_plateau"]
# The summary's state: after the in-run evaluations (the end's evaluation steps nothing).
check(state["lrs"] == [g["lr"] for g in sched.optimizer.param_groups],
      f"final rates {state['lrs']}, torch {[g['lr'] for g in sched.optimizer.param_groups]}")
check(state["best"] == sched.best and state["bad_evaluations"] == sched.num_bad_epochs,
      f"best {state['best']} / bad {state['bad_evaluations']}, torch {sched.best} / {sched.num_bad_epochs}")
check(state["evaluations"] == MAX_STEPS - 1, f"evaluations {state['evaluations']}")

# 2. killed and resumed: the same records and final adapter.
b_dir, _ = train("resumed", "--save-every", str(SAVE_EVERY), "--stop-after", str(STOP_AFTER))
check(not os.path.exists(os.path.join(b_dir, "adapter_model.safetensors")), "--stop-after wrote a final adapter")
train("resumed", "--save-every", str(SAVE_EVERY), "--resume")
b_steps, b_evals, b_summary = records(b_dir)
for step in range(1, MAX_STEPS + 1):
    check((b_steps[step]["loss"], b_steps[step]["lr"]) == (a_steps[step]["loss"], a_steps[step]["lr"]),
          f"resumed step {step}: {b_steps[step]['loss']} at {b_steps[step]['lr']}, uninterrupted "
          f"{a_steps[step]['loss']} at {a_steps[step]['lr']}")
check(b_summary["lr_plateau"] == a_summary["lr_plateau"], f"resumed state {b_summary['lr_plateau']}")
with open(os.path.join(a_dir, "adapter_model.safetensors"), "rb") as fa, \
        open(os.path.join(b_dir, "adapter_model.safetensors"), "rb") as fb:
    check(fa.read() == fb.read(), "the resumed run's final adapter differs")

# 3. mode "max" on eval_loss: run as torch would (the loss rising counts as improving), with a warning.
c_dir, c_proc = train("mode_max", kwargs={"mode": "max", "patience": 0}, steps=6)
check("runs in mode \"max\" while eval_loss is better when smaller" in c_proc.stderr,
      f"no warning for mode max on eval_loss: {c_proc.stderr.strip()}")
c_steps, c_evals, _ = records(c_dir)
c_rates, _ = torch_rates(c_evals, {"mode": "max", "patience": 0}, 6)
for step in range(1, 7):
    check(c_steps[step]["lr"] == c_rates[step][0], f"mode max, step {step}: lr {c_steps[step]['lr']}, torch {c_rates[step][0]}")

# 4. refusals, before anything is written.
for name, extra, kwargs, needle in [
        ("no_eval_every", [], KWARGS, "--scheduler reduce_lr_on_plateau compares the evaluations"),
        ("warmup_steps", ["--eval-every", "1", "--warmup-steps", "2"], KWARGS, "has no warm-up"),
        ("warmup_ratio", ["--eval-every", "1", "--warmup-ratio", "0.1"], KWARGS, "leave --warmup-ratio out"),
        ("factor", ["--eval-every", "1"], {"factor": 1.5}, "factor must be in (0, 1)"),
        ("verbose", ["--eval-every", "1"], {"verbose": True}, "not \"verbose\""),
        ("min_lr_list", ["--eval-every", "1"], {"min_lr": [0, 0]}, "must be one number"),
        ("min_lr_ratio", ["--eval-every", "1", "--min-lr-ratio", "0.1"], KWARGS, "--min-lr-ratio does not apply")]:
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    cmd = [ql, "train", *COMMON, "--scheduler-kwargs", json.dumps(kwargs), "--out", d, "--max-steps", "2", "--quiet",
           *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    check(p.returncode != 0 and needle in p.stderr, f"{name}: rc {p.returncode}, stderr {p.stderr.strip()}")
    check(not os.path.exists(d), f"{name}: the refused run left {d}")
d = os.path.join(out, "no_split")
shutil.rmtree(d, ignore_errors=True)
no_split = [a for a in COMMON if a not in ("--eval-count", "24")]
p = subprocess.run([ql, "train", *no_split, "--out", d, "--max-steps", "2", "--eval-every", "1", "--quiet"],
                   capture_output=True, text=True)
check(p.returncode != 0 and "needs held-out examples" in p.stderr, f"no_split: {p.stderr.strip()}")
check(not os.path.exists(d), "no_split: the refused run left its directory")

finish()
