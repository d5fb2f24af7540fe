"""Oracle: `qwen-qlora train --load-best-model-at-end --early-stopping-patience N` decides as transformers' Trainer.

The real stories260K (`qwen-quant import-llama2c`) trains LoRA on the shared Alpaca demo at a learning rate that
is too large on purpose (constant schedule), so that the held-out loss falls for a few steps and then rises: the run
evaluates every step, checkpoints every SAVE_EVERY steps and keeps at most one (--save-total-limit 1).
Each run's evaluations (metrics.jsonl) are replayed through transformers' own code: EarlyStoppingCallback.on_evaluate
and then Trainer._determine_best_metric (the order of Trainer._maybe_log_save_evaluate) at every evaluation after step
0, and Trainer._rotate_checkpoints (with _save_checkpoint's choice of best_model_checkpoint) after each of our saves
in a mirror directory of empty checkpoints. They must give the step the run stopped at, the best step and value, and
the checkpoints left on disk. Then:
  1. load best: the final adapter is the best checkpoint's (equal tensors), and `qwen-qlora eval` of it gives the
     best evaluation's eval_loss to the bit (same split, same threads);
  2. the same run killed after STOP_AFTER steps (--stop-after) and resumed ends with the same evaluations, the same
     decisions and the same final adapter bytes;
  3. early stopping alone (no --load-best-model-at-end), with a threshold: the final adapter is the last step's;
  4. the refusals: no --eval-every, no held-out set, a metric the objective does not report (nothing is written);
     a metric this held-out set does not report (KTO's eval_rewards_chosen without a desirable example), at the
     step-0 evaluation, before any step.
"""
import json
import os
import shutil
import subprocess
import tempfile
import types

from oracle_common import check, finish, import_stories260k, parse_args, require_shared, run, skip, work_dir

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import Trainer, TrainerControl, TrainerState
    from transformers.trainer_callback import EarlyStoppingCallback
    from transformers.trainer_utils import SaveStrategy
except ImportError as e:  # pragma: no cover
    skip(f"transformers/safetensors not importable: {e}")

LR = 0.01  # too large: the held-out loss falls for about 10 steps, not steadily, then rises (seen: best at 11)
# STOP_AFTER: the kill lands after a checkpoint whose patience counter is not 0 (seen: step 12, counter 1).
MAX_STEPS, SAVE_EVERY, PATIENCE, STOP_AFTER, THRESHOLD = 40, 4, 3, 13, 0.01

data = os.path.join(args.shared, "data", "alpaca", "alpaca_en_demo.json")
ql = os.path.join(args.build, "qwen-qlora")
out = work_dir(args.build, "best_model_oracle")
base_dir = import_stories260k(args.build, args.shared, os.path.join(out, "base"))
# What `train` and `eval` share (the held-out split and its batches), then train's own.
DATA = ["--model", base_dir, "--data", data, "--seed", "3", "--seq-len", "256", "--batch-size", "4", "--threads", "2"]
SPLIT = ["--eval-count", "24"]
COMMON = DATA + ["--lr", str(LR), "--scheduler", "constant", "--lora-r", "8"]


def train(name, *extra, expect_ok=True):
    d = os.path.join(out, name)
    cmd = [ql, "train", *COMMON, *SPLIT, "--out", d, "--max-steps", str(MAX_STEPS), "--eval-every", "1", "--quiet",
           *extra, *([] if "--resume" in extra else ["--overwrite"])]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and p.returncode != 0:
        print(p.stdout, p.stderr)
        raise SystemExit(f"train {name} failed")
    return d, p


def records(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    evals = [(r["step"], r) for r in rows if any(k.startswith("eval_") for k in r)]
    summary = [r for r in rows if r.get("final")]
    return evals, summary[-1] if summary else None


def hf_decisions(evals, metric, greater, patience, threshold):
    """transformers' decisions over the evaluations after step 0: (stop step or None, best_global_step, best_metric,
    the steps at which _determine_best_metric saw a new best)."""
    targs = types.SimpleNamespace(metric_for_best_model=metric, greater_is_better=greater,
                                  save_strategy=SaveStrategy.STEPS)
    state, control = TrainerState(), TrainerControl()
    callback = EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
    trainer = types.SimpleNamespace(args=targs, state=state)
    stop, new_bests = None, []
    for step, r in evals:
        if step == 0:
            continue
        state.global_step = step
        metrics = {k: v for k, v in r.items() if k.startswith("eval_")}
        callback.on_evaluate(targs, state, control, metrics)
        if Trainer._determine_best_metric(trainer, metrics, None):
            new_bests.append(step)
        if control.should_training_stop:
            stop = step
            break
    return stop, state.best_global_step, state.best_metric, new_bests


def hf_rotation(saves, keep):
    """Empty checkpoint-<step> directories made in the order of `saves` [(step, best_global_step)], each followed by
    _save_checkpoint's best_model_checkpoint update and Trainer._rotate_checkpoints; returns the steps left."""
    mirror = tempfile.mkdtemp(dir=out)
    state = TrainerState()
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(save_total_limit=keep), state=state)
    trainer._sorted_checkpoints = lambda **kw: Trainer._sorted_checkpoints(trainer, **kw)
    for step, best_step in saves:
        os.makedirs(os.path.join(mirror, f"checkpoint-{step}"))
        if best_step:
            best_dir = os.path.join(mirror, f"checkpoint-{best_step}")
            if os.path.exists(best_dir):
                state.best_model_checkpoint = best_dir
        Trainer._rotate_checkpoints(trainer, output_dir=mirror)
    left = sorted(int(n.split("-")[1]) for n in os.listdir(mirror))
    shutil.rmtree(mirror)
    return left


def checkpoints(d):
    return sorted(int(n.split("-")[1]) for n in os.listdir(d)
                  if n.startswith("checkpoint-") and n.split("-")[1].isdigit())


def same_tensors(a_path, b_path, what):
    a, b = load_file(a_path), load_file(b_path)
    ok = check(sorted(a) == sorted(b), f"{what}: tensor names differ")
    for k in sorted(a) if ok else []:
        check(np.array_equal(a[k], b[k]), f"{what}: {k} differs")


def check_run(d, load_best, threshold, what):
    evals, summary = records(d)
    check(summary is not None, f"{what}: no summary record")
    stop, best_step, best_metric, new_bests = hf_decisions(evals, "loss", False, PATIENCE, threshold)
    last = evals[-1][0]
    print(f"{what}: eval_loss by step " + ", ".join(f"{s}:{r['eval_loss']:.4f}" for s, r in evals))
    print(f"{what}: transformers stops at {stop}, best step {best_step} ({best_metric}); ours: {summary}")
    check(stop is not None and stop < MAX_STEPS, f"{what}: the curve never stopped early (tune LR): {stop}")
    check(summary["step"] == stop and last == stop, f"{what}: stopped at {summary['step']}, transformers at {stop}")
    check(summary["early_stopped"] is True, f"{what}: early_stopped {summary['early_stopped']}")
    check(summary["best_step"] == best_step, f"{what}: best step {summary['best_step']}, transformers {best_step}")
    check(summary["best_metric"] == best_metric, f"{what}: best {summary['best_metric']}, transformers {best_metric}")
    check(summary["best_metric_name"] == "eval_loss", f"{what}: metric {summary['best_metric_name']}")
    check(best_step != stop, f"{what}: the best is the last step; the test needs a rise after it")
    # Our saves: every SAVE_EVERY steps, and with load_best each new best; transformers' rotation over them.
    saved = sorted(set(range(SAVE_EVERY, stop + 1, SAVE_EVERY)) | (set(new_bests) if load_best else set()))
    best_at = lambda s: max([b for b in new_bests if b <= s], default=None) if load_best else None
    left = hf_rotation([(s, best_at(s)) for s in saved], keep=1)
    check(checkpoints(d) == left, f"{what}: checkpoints left {checkpoints(d)}, transformers' rotation {left}")
    return evals, summary, best_step, stop


# 1. load best + early stopping.
a_dir, _ = train("best", "--load-best-model-at-end", "--early-stopping-patience", str(PATIENCE), "--save-every",
                 str(SAVE_EVERY), "--save-total-limit", "1")
a_evals, a_summary, a_best, a_stop = check_run(a_dir, True, 0.0, "load best")
check(a_summary["final_adapter_step"] == a_best, f"final_adapter_step {a_summary['final_adapter_step']}")
same_tensors(os.path.join(a_dir, "adapter_model.safetensors"),
             os.path.join(a_dir, f"checkpoint-{a_best}", "adapter", "adapter_model.safetensors"),
             "the final adapter against the best checkpoint's")
ev = json.loads(run([ql, "eval", "--adapter", a_dir, *DATA, *SPLIT, "--json"]))
best_eval = dict(a_evals)[a_best]
check(ev["loss"] == best_eval["eval_loss"] and ev["loss_tokens"] == best_eval["eval_tokens"],
      f"eval of the final adapter {ev['loss']} ({ev['loss_tokens']} tokens), the best evaluation's "
      f"{best_eval['eval_loss']} ({best_eval['eval_tokens']})")

# 2. killed and resumed: the same evaluations, decisions and final adapter.
b_dir, _ = train("resumed", "--load-best-model-at-end", "--early-stopping-patience", str(PATIENCE), "--save-every",
                 str(SAVE_EVERY), "--save-total-limit", "1", "--stop-after", str(STOP_AFTER))
check(not os.path.exists(os.path.join(b_dir, "adapter_model.safetensors")), "--stop-after wrote a final adapter")
train("resumed", "--load-best-model-at-end", "--early-stopping-patience", str(PATIENCE), "--save-every",
      str(SAVE_EVERY), "--save-total-limit", "1", "--resume")
b_evals, b_summary = records(b_dir)
check([(s, r["eval_loss"]) for s, r in b_evals] == [(s, r["eval_loss"]) for s, r in a_evals],
      "the resumed run's evaluations differ from the uninterrupted run's")
for k in ("step", "best_step", "best_metric", "early_stopped", "final_adapter_step"):
    check(b_summary[k] == a_summary[k], f"resumed {k} {b_summary[k]}, uninterrupted {a_summary[k]}")
check(checkpoints(b_dir) == checkpoints(a_dir), f"resumed checkpoints {checkpoints(b_dir)}, {checkpoints(a_dir)}")
with open(os.path.join(a_dir, "adapter_model.safetensors"), "rb") as fa, \
        open(os.path.join(b_dir, "adapter_model.safetensors"), "rb") as fb:
    check(fa.read() == fb.read(), "the resumed run's final adapter differs")

# 3. early stopping alone, with a threshold (an improvement of less than it counts as none: it stops sooner): the
#    final adapter is the last step's.
c_dir, _ = train("patience", "--early-stopping-patience", str(PATIENCE), "--early-stopping-threshold",
                 str(THRESHOLD), "--save-every", str(SAVE_EVERY), "--save-total-limit", "1")
c_evals, c_summary, c_best, c_stop = check_run(c_dir, False, THRESHOLD, "patience with threshold")
check(c_stop < a_stop, f"the threshold {THRESHOLD} stopped no earlier ({c_stop}) than none ({a_stop})")
check(c_summary["final_adapter_step"] == c_stop, f"final_adapter_step {c_summary['final_adapter_step']} != {c_stop}")

# 4. refusals, before anything is written.
for name, extra, needle in [
        ("no_eval_every", SPLIT + ["--load-best-model-at-end"], "--eval-every"),
        ("no_split", ["--load-best-model-at-end", "--eval-every", "2"], "held-out"),
        ("bad_metric", SPLIT + ["--early-stopping-patience", "2", "--eval-every", "2", "--metric-for-best-model",
                                "rewards_accuracy"], "eval_rewards_accuracy is not among")]:
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    cmd = [ql, "train", *COMMON, "--out", d, "--max-steps", "2", "--quiet", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    check(p.returncode != 0 and needle in p.stderr, f"{name}: rc {p.returncode}, stderr {p.stderr.strip()}")
    check(not os.path.exists(d), f"{name}: the refused run left {d}")

# A metric the objective reports only for some held-out sets (KTO's eval_rewards_chosen needs a desirable example) is
# refused at the step-0 evaluation, before any training step, naming what the evaluation reports.
with open(data) as f:
    alpaca = json.load(f)
kto_train, kto_eval = os.path.join(out, "kto.jsonl"), os.path.join(out, "kto_eval.jsonl")
with open(kto_train, "w") as f:
    for i, r in enumerate(alpaca[:32]):
        f.write(json.dumps({"prompt": r["instruction"][:150], "completion": r["output"][:150], "label": i % 2 == 0}) + "\n")
with open(kto_eval, "w") as f:
    for r in alpaca[32:40]:
        f.write(json.dumps({"prompt": r["instruction"][:150], "completion": r["output"][:150], "label": False}) + "\n")
d = os.path.join(out, "kto")
p = subprocess.run([ql, "train", "--objective", "kto", "--model", base_dir, "--data", kto_train, "--eval-data", kto_eval,
                    "--out", d, "--overwrite", "--seq-len", "256", "--batch-size", "4", "--max-steps", "4",
                    "--eval-every", "1", "--metric-for-best-model", "rewards_chosen", "--early-stopping-patience", "1",
                    "--quiet", "--threads", "2"], capture_output=True, text=True)
check(p.returncode != 0 and "evaluation at step 0 reports no eval_rewards_chosen" in p.stderr
      and "eval_rewards_rejected" in p.stderr, f"kto without desirable held-out examples: {p.stderr.strip()}")
with open(os.path.join(d, "metrics.jsonl")) as f:
    steps_run = [r for r in map(json.loads, f) if "loss" in r]
check(not steps_run, f"kto: {len(steps_run)} steps ran before the metric was checked")

finish()
