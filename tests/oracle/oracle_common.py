"""Helpers shared by the oracle scripts: argument parsing, skipping, running our binaries, spreading the weights
of a tiny random transformers model."""
import argparse
import os
import subprocess
import sys

SKIP = 77


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--build", required=True, help="CMake build directory holding qwen-quant and qwenq_tests")
    p.add_argument("--shared", required=True, help="the shared data directory (../shared)")
    return p.parse_args()


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(SKIP)


def require_shared(shared):
    if not os.path.isdir(os.path.join(shared, "data")):
        skip(f"shared data not found at {shared}/data")


def auto_tokenizer_for_chat():
    """transformers' AutoTokenizer, with jinja2 present (apply_chat_template needs it); skips the test without them."""
    try:
        from transformers import AutoTokenizer
        import jinja2  # noqa: F401
    except ImportError as e:
        skip(f"transformers/jinja2 not importable: {e}")
    return AutoTokenizer


def work_dir(build, name):
    d = os.path.join(build, "oracle_tmp", name)
    os.makedirs(d, exist_ok=True)
    return d


_failures = []


def check(cond, what):
    """Records a mismatch (printed at once) without stopping, so one run lists every one; returns cond."""
    if not cond:
        _failures.append(what)
        print("MISMATCH:", what, flush=True)
    return cond


def finish(passed="PASS"):
    """Exits 1 with the count when check() recorded a mismatch, else prints `passed`."""
    if _failures:
        print(f"FAIL: {len(_failures)} mismatches", flush=True)
        sys.exit(1)
    print(passed)


def bnb_nf4_round_trip(x):
    """bitsandbytes' NF4 of the torch tensor x and back: blocksize 64, fp32 absmax (compress_statistics=False, as
    PEFT's LoftQ calls it and `qwen-quant nf4 --no-double-quant` stores it)."""
    import bitsandbytes.functional as bnb_f

    q, state = bnb_f.quantize_4bit(x.contiguous(), blocksize=64, compress_statistics=False, quant_type="nf4")
    return bnb_f.dequantize_4bit(q, state)


def spread_weights(model):
    """transformers initialises with std 0.02, zero biases and unit norms; spread every parameter (seeded by the
    caller's torch.manual_seed) so that an error anywhere shows in the logits."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))


def rel_err(got, want):
    """max |got - want| / max |want| of two torch tensors (logits), as a float."""
    return float((got - want).abs().max() / want.abs().max())


def tiny_qwen2_with_lora(out):
    """The preference oracles' model: a tiny random Qwen2 (fp32, eager attention, weights spread, untied head) saved
    at out/base, wrapped in a PEFT LoRA adapter on all seven Linears (r=4, alpha=8, no dropout); returns
    (config, the PEFT model)."""
    import peft
    import transformers

    config = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=320,
                                      max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
                                      tie_word_embeddings=False)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    spread_weights(model)
    model.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return config, peft.get_peft_model(model, lcfg)


def randomize_lora(pm, b_scale=0.2):
    """Every LoRA A of the PEFT model to N(0, 1/in) and B to b_scale·N(0, 1) (seeded by the caller), so the adapter
    changes the model; returns a copy of the adapter's parameters."""
    import torch

    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if "lora_A" in pname:
                p.copy_(torch.randn_like(p) / (p.shape[1] ** 0.5))
            elif "lora_B" in pname:
                p.copy_(b_scale * torch.randn_like(p))
    return {k: v.detach().clone() for k, v in pm.named_parameters() if "lora_" in k}


def randomize_seq_cls(pm):
    """A SEQ_CLS PEFT model's LoRA A to N(0, 1/in), B to 0.1·N(0, 1) (a B = 0 start leaves every A's first gradient
    zero) and its trainable score head to 0.5·N(0, 1), seeded by the caller."""
    import torch

    randomize_lora(pm, b_scale=0.1)
    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if "score" in pname and "lora_" not in pname and p.requires_grad:
                p.copy_(0.5 * torch.randn_like(p))


def check_trained_tensors(ours, expected, start, median_tol, flip, max_flips, what=""):
    """Every trained tensor of `ours` against torch's `expected` (both started at `start`), relative to the largest
    move of its tensor: the median entry within median_tol, at most max_flips entries off by more than flip (Adam's
    first steps are about sign(g)·lr, so an entry whose gradient is within rounding of zero can move the other way)."""
    check(set(ours) == set(expected), f"{what}tensor names differ: {sorted(set(ours) ^ set(expected))[:4]}")
    worst, flips = (0.0, ""), 0
    for k in sorted(set(ours) & set(expected)):
        rel = (ours[k].float() - expected[k]).abs() / (expected[k] - start[k]).abs().max().clamp_min(1e-30)
        median, off = rel.median().item(), int((rel > flip).sum())
        worst, flips = max(worst, (median, k)), flips + off
        check(median <= median_tol, f"{what}{k}: the median entry is off by {median:.3g} of the largest move")
    print(f"largest median error {worst[0]:.3g} of the largest move ({worst[1]}); {flips} entries off by more than {flip}")
    check(flips <= max_flips, f"{what}{flips} entries are off by more than {flip} of their tensor's largest move")


def check_label_report(ev, names, logits, truth, single):
    """`qwen-qlora eval --objective classify --json`'s per-label report against sklearn's definitions computed here from
    PEFT's logits [N, C]: single-label predicts the argmax (truth: label ids [N]), multi-label each label at logit > 0
    (truth: 0/1 [N, C]); precision, recall, F1 (0 for an empty denominator), support, macro F1, and single-label's
    confusion matrix [true][predicted]."""
    import torch

    C = len(names)
    if single:
        pred = torch.nn.functional.one_hot(logits.argmax(-1), C).bool()
        true = torch.nn.functional.one_hot(truth, C).bool()
    else:
        pred, true = logits > 0, truth > 0.5
    f1s = []
    for c, name in enumerate(names):
        tp, fp = int((pred[:, c] & true[:, c]).sum()), int((pred[:, c] & ~true[:, c]).sum())
        fn = int((~pred[:, c] & true[:, c]).sum())
        want = {"label": name, "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
                "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0, "support": tp + fn}
        f1s.append(want["f1"])
        got = ev["per_label"][c]
        check(got["label"] == name and got["support"] == want["support"] and
              all(abs(got[k] - want[k]) <= 1e-12 for k in ("precision", "recall", "f1")),
              f"per-label report of {name}: {got}, by hand {want}")
    check(abs(ev["macro_f1"] - sum(f1s) / C) <= 1e-12, f"macro F1 {ev['macro_f1']}, by hand {sum(f1s) / C}")
    if single:
        conf = [[int(((truth == t) & (logits.argmax(-1) == p)).sum()) for p in range(C)] for t in range(C)]
        check(ev["confusion"] == conf, f"confusion {ev['confusion']}, by hand {conf}")
    print(f"per-label report as computed from PEFT's logits: macro F1 {ev['macro_f1']:.4f}")


def train_refused(ql, base_dir, out, seq_len, what, records, extra, needle, objective):
    """`qwen-qlora train --objective OBJECTIVE` on `records` (written to out/bad.jsonl) with `extra` flags must fail with
    `needle` in its stderr and write no metrics."""
    import json
    import shutil

    bad = os.path.join(out, "bad.jsonl")
    with open(bad, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    d = os.path.join(out, "refused")
    shutil.rmtree(d, ignore_errors=True)
    p = subprocess.run([ql, "train", "--objective", objective, "--model", base_dir, "--data", bad, "--out", d,
                        "--max-steps", "1", "--seq-len", str(seq_len), "--quiet", *extra],
                       capture_output=True, text=True)
    check(p.returncode != 0 and needle in p.stderr, f"{what}: rc {p.returncode}, stderr {p.stderr.strip()}")
    check(not os.path.exists(os.path.join(d, "metrics.jsonl")), f"{what}: the refused run wrote metrics")


def import_stories260k(build, shared, out_dir):
    """The real stories260K from the shared data as an fp32 Hugging Face Qwen2 directory at out_dir
    (`qwen-quant import-llama2c`); returns out_dir."""
    stories = os.path.join(shared, "data", "stories260K")
    run([os.path.join(build, "qwen-quant"), "import-llama2c", "--checkpoint", os.path.join(stories, "stories260K.bin"),
         "--tokenizer", os.path.join(stories, "tok512.bin"), "--out", out_dir, "--overwrite"])
    return out_dir


def stories260k_and_rtn4(build, shared, wd):
    """stories260K imported (fp32) at wd/base, its 4-bit RTN (`qwen-quant rtn`: group 32, GPTQ layout, MLP padded) at
    wd/rtn, and that dequantized to fp32 for transformers at wd/rtn-dense; returns the three directories."""
    qq = os.path.join(build, "qwen-quant")
    base_dir, rtn_dir, deq_dir = (os.path.join(wd, n) for n in ("base", "rtn", "rtn-dense"))
    import_stories260k(build, shared, base_dir)
    run([qq, "rtn", "--model", base_dir, "--out", rtn_dir, "--group-size", "32", "--pad-intermediate", "--overwrite",
         "--quiet"])
    run([qq, "dequantize", "--model", rtn_dir, "--out", deq_dir, "--dtype", "fp32", "--overwrite", "--quiet"])
    return base_dir, rtn_dir, deq_dir


def run(cmd, env=None):
    """Runs a command, echoing it and its stderr; returns its stdout; fails the test if it fails."""
    print("+", " ".join(cmd), flush=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    r = subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.stderr:
        print(r.stderr, end="", flush=True)
    if r.returncode != 0:
        print(r.stdout)
        raise SystemExit(f"FAIL: command exited {r.returncode}: {' '.join(cmd)}")
    return r.stdout


def run_gtest(build, pattern, env):
    """Runs the C++ half of an oracle test (a gtest that skips unless `env` points it at the fixtures)."""
    out = run([os.path.join(build, "qwenq_tests"), f"--gtest_filter={pattern}"], env=env)
    print(out)
    if "[  PASSED  ]" not in out or "SKIPPED" in out:
        raise SystemExit(f"FAIL: gtest {pattern} did not pass")
