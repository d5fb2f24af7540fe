#!/usr/bin/env python3
"""Helpers of benchmarks/bench_qlora_step.sh (standard library only):

  measure --timeout T --rss-out F -- CMD...   runs CMD (killed after T s, exit 124; T = 0: no limit), writes the
                                              peak RSS of CMD and its children (getrusage RUSAGE_CHILDREN) to F
  ours --metrics metrics.jsonl ...            our side's JSON line from `qwen-qlora train`'s metrics.jsonl
  report --work DIR --out FILE.md ...         the Markdown result from the JSON lines in DIR

Our tokens/s: the step records after the warm-up ones, sum(tokens) / sum(tokens / tokens_per_s) (each record's
tokens_per_s is its own step's wall time, synchronized with the device). Our peak device memory: the keys
"device_peak_allocated_bytes" / "device_peak_reserved_bytes" of the last metrics record that has them (null when
the build writes none). A run cut by its time limit still counts the steps it finished (marked partial).

Ratios: ours / theirs for tokens/s (target >= 2) and for peak memory (target <= 0.40): device memory reserved on
cuda (what the process holds on the card; allocated is shown too), peak RSS on the CPU. Per layer: from two runs at
LAYERS and LAYERS_BASE layers, slope = (f(L) - f(L0)) / (L - L0) of the step time and of the memory, and the
full-depth estimate f(L) + (FULL - L) * slope; without the second run, per layer = f(L) / L.
"""
import argparse
import json
import os
import resource
import subprocess
import sys


def cmd_measure(a):
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        sys.exit("measure: no command")
    p = subprocess.Popen(cmd)
    try:
        rc = p.wait(timeout=a.timeout if a.timeout > 0 else None)
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        print(f"measure: killed after {a.timeout} s: {' '.join(cmd[:2])}", file=sys.stderr)
        rc = 124
    with open(a.rss_out, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024) + "\n")
    sys.exit(rc)


def read_records(path):
    recs = []
    if os.path.exists(path):
        for line in open(path):
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass  # a line cut by a kill
    return recs


def cmd_ours(a):
    recs = read_records(a.metrics)
    steps = sorted((r for r in recs if "loss" in r and r.get("tokens_per_s", 0) > 0), key=lambda r: r["step"])
    timed = [r for r in steps if r["step"] > a.warmup]
    rss = None
    if os.path.exists(a.rss):
        rss = int(open(a.rss).read().strip() or 0) or None
    out = {"side": "qwenq", "device": a.device, "base": f"4-bit {a.quant}", "layers": a.layers, "rc": a.rc,
           "warmup": a.warmup, "steps_requested": a.steps, "steps": len(timed)}
    if not timed:
        out["failed"] = f"no timed step in {a.metrics} (exit {a.rc}, {len(steps)} step records)"
        print(json.dumps(out))
        return
    secs = [r["tokens"] / r["tokens_per_s"] for r in timed]
    peak = [r for r in recs if "device_peak_allocated_bytes" in r or "device_peak_reserved_bytes" in r]
    out.update({
        "partial": a.rc != 0 or len(timed) < a.steps,
        "tokens_per_step": sum(r["tokens"] for r in timed) / len(timed),
        "step_s": [round(s, 5) for s in secs],
        "tokens_per_s": sum(r["tokens"] for r in timed) / sum(secs),
        "loss_first": steps[0]["loss"], "loss_last": steps[-1]["loss"],
        "setup_s": round(steps[0]["elapsed_s"] - steps[0]["tokens"] / steps[0]["tokens_per_s"], 2),
        "peak_allocated_bytes": peak[-1].get("device_peak_allocated_bytes") if peak else None,
        "peak_reserved_bytes": peak[-1].get("device_peak_reserved_bytes") if peak else None,
        "peak_rss_bytes": rss,
    })
    prof = [r for r in recs if "profile_ms_per_step" in r]  # --profile (trainer/step_profile.h)
    if prof:
        out["profile_ms_per_step"] = prof[-1]["profile_ms_per_step"]
    print(json.dumps(out))


def load_side(work, tag):
    """The side's JSON line, or a failure record with its exit code and the end of its log."""
    path = os.path.join(work, tag + ".json")
    rc_path = os.path.join(work, tag + ".rc")
    rc = open(rc_path).read().strip() if os.path.exists(rc_path) else None
    j = None
    if os.path.exists(path) and open(path).read().strip():
        j = json.loads(open(path).read().strip().splitlines()[-1])
    if rc is None and j is None:
        return None  # not run (no time left, or not asked for)
    if j is None or "failed" in j or not (j.get("tokens_per_s") or 0) > 0:
        j = dict(j or {"side": "qwenq" if tag.startswith("ours") else "transformers+peft"},
                 failed=(j or {}).get("failed", f"exit {rc}, no result line"))
    log = os.path.join(work, tag + ".log")
    if "failed" in j and os.path.exists(log):
        j["log_tail"] = open(log, errors="replace").read().splitlines()[-15:]
    return j


def gib(b):
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def mib(b):
    return "n/a" if b is None else f"{b / 2**20:.0f} MiB"


def ratio(x, y):
    return None if x is None or y is None or not y > 0 else x / y


def fmt_ratio(r, target, op):
    if r is None:
        return "n/a", "n/a"
    met = r >= target if op == ">=" else r <= target
    return f"{r:.2f}", "yes" if met else "no"


def load_variants(work):
    """[(tag, env, side)] of the VARIANTS runs (oursvN.env and its result), in N's order."""
    out = []
    n = 1
    while os.path.exists(os.path.join(work, f"oursv{n}.env")):
        env = open(os.path.join(work, f"oursv{n}.env")).read().strip()
        out.append((f"oursv{n}", env, load_side(work, f"oursv{n}")))
        n += 1
    return out


def write_variants(w, variants, ours, ours0, L, L0):
    """The section on our side under the VARIANTS switch sets; returns the summary's part."""
    ok = lambda j: j is not None and "failed" not in j
    step_s = lambda j: j["tokens_per_step"] / j["tokens_per_s"]
    w("")
    w("## Our step under the switches (same call)")
    w("")
    w(f"Our side again at {L} layers with each switch set exported, against the default run above. Per layer: the "
      f"default's per-layer time (its {L}- and {L0}-layer runs) plus the step's change / {L}, which holds for a switch "
      "that changes the decoder layers only (QWENQ_LOGITS_CHUNK changes the lm_head, the fixed part: read its "
      "step's change instead).")
    w("")
    w(f"| switches | tokens/s | s/step | vs default | step change | s/step per layer | peak reserved | notes |")
    w("|---|---|---|---|---|---|---|---|")
    base_ok = ok(ours)
    per0 = (step_s(ours) - step_s(ours0)) / (L - L0) if base_ok and ok(ours0) and L > L0 else None
    if base_ok:
        w(f"| (default) | {ours['tokens_per_s']:.0f} | {step_s(ours):.4f} | 1.00 | | "
          f"{'n/a' if per0 is None else f'{per0 * 1e3:.2f} ms'} | {gib(ours.get('peak_reserved_bytes'))} | |")
    parts = []
    for tag, env, j in variants:
        if j is None:
            w(f"| `{env}` | not run | | | | | | no time left |")
            parts.append(f"{env}: not run")
        elif not ok(j):
            w(f"| `{env}` | failed | | | | | | {j['failed']} |")
            parts.append(f"{env}: FAILED")
        else:
            r = ratio(j["tokens_per_s"], ours["tokens_per_s"]) if base_ok else None
            change = step_s(j) - step_s(ours) if base_ok else None
            per = per0 + change / L if per0 is not None else None
            note = "partial" if j.get("partial") else ""
            w(f"| `{env}` | {j['tokens_per_s']:.0f} | {step_s(j):.4f} | {'n/a' if r is None else f'{r:.2f}'} | "
              f"{'n/a' if change is None else f'{change * 1e3:+.2f} ms'} | "
              f"{'n/a' if per is None else f'{per * 1e3:.2f} ms'} | {gib(j.get('peak_reserved_bytes'))} | {note} |")
            parts.append(f"{env}: " + ("n/a" if r is None else f"{r:.2f}x"))
    profs = [("default", (ours or {}).get("profile_ms_per_step"))] + \
        [(env, (j or {}).get("profile_ms_per_step")) for _, env, j in variants]
    profs = [(n, p) for n, p in profs if p]
    if len(profs) > 1:
        w("")
        w(f"GPU milliseconds per step by phase (`--profile`, {L} layers):")
        w("")
        w("| phase | " + " | ".join(f"`{n}`" if n != "default" else n for n, _ in profs) + " |")
        w("|---|" + "---|" * len(profs))
        keys = list(profs[0][1])
        for _, p in profs[1:]:
            keys += [k for k in p if k not in keys]
        last = {"unattributed": 1, "step": 2}
        for k in sorted(keys, key=lambda k: (last.get(k, 0), -profs[0][1].get(k, 0.0))):
            w(f"| {k} | " + " | ".join("" if k not in p else f"{p[k]:.2f}" for _, p in profs) + " |")
    return "switches vs default: " + ", ".join(parts)


def cmd_report(a):
    ours, theirs = load_side(a.work, "ours"), load_side(a.work, "theirs")
    ours0, theirs0 = load_side(a.work, "ours0"), load_side(a.work, "theirs0")
    ok = lambda j: j is not None and "failed" not in j
    cuda = a.device == "cuda"
    mem_key = "peak_reserved_bytes" if cuda else "peak_rss_bytes"
    mem_name = "device memory reserved" if cuda else "process peak RSS"
    L, L0, full = a.layers, a.layers_base, a.full_layers
    date = os.popen("date -u +%Y-%m-%dT%H:%M:%SZ").read().strip()
    o = []
    w = o.append
    w(f"# QLoRA training step vs transformers + peft, {a.device}, {date[:10]}")
    w("")
    if not cuda and a.preset == "tiny":
        w("**CPU dry run: a tiny model and a short sequence, to show the script works end to end. These figures are "
          "not the benchmark (issue 5 is about the GPU).**")
        w("")
    elif not cuda:
        w("**On the CPU: both sides' CPU paths on the same machine in the same run. The issue's targets (>= 2x tokens/s "
          "at <= 40% memory) are for the GPU; they are printed for reference.**")
        w("")
    w(f"- date: {date}; commit {a.commit}")
    w(f"- device: {a.device_info if cuda else 'cpu'}; host: {a.cpu_info}; threads {a.threads}")
    w(f"- model: {a.preset} shape with random weights, **{L} of its {full} decoder layers** (all figures below are "
      f"for {L} layers unless marked per layer); ours: 4-bit {'RTN in the GPTQ layout (4 bits, group 128)' if a.quant == 'rtn' else 'NF4 (bitsandbytes layout, block 64)'}, "
      "embedding and lm_head bf16; theirs: the same weights, dense bf16")
    w(f"- step: 1 x {a.seq} tokens (one packed row), LoRA r={a.rank}, alpha={a.alpha}, dropout 0, all seven Linears "
      f"(q/k/v/o/gate/up/down), AdamW; {a.warmup} warm-up + {a.steps} timed steps; tokens/s = tokens / wall time of "
      "the timed steps (device-synchronized)")
    w("- same memory regime: ours always recomputes each decoder block in the backward pass (block inputs kept, "
      "rounded to bf16, as theirs are in bf16); theirs runs with gradient checkpointing (non-reentrant, per decoder "
      "layer). Ours keeps an untied input embedding table in host memory (each step uploads the [T, C] rows it "
      "gathers; the table counts in our peak RSS, not in our device memory); theirs holds it on the device")
    tv = theirs or {}
    w(f"- baseline: transformers {tv.get('transformers', '?')}, peft {tv.get('peft', '?')}, torch {tv.get('torch', '?')}; "
      f"attn_implementation sdpa, bf16 autocast, fp32 adapters, torch.optim.AdamW{' fused' if cuda else ''}. "
      "bitsandbytes is not installed on the GPU machine, so the baseline is bf16 LoRA (not 4-bit QLoRA), as the "
      "issue states")
    if cuda:
        w("- memory: ours: the device_peak_allocated/reserved_bytes keys of metrics.jsonl (n/a when this build writes "
          "none); theirs: torch.cuda.max_memory_allocated / max_memory_reserved; neither counts the CUDA context. "
          "Peak RSS: the whole process on the host")
    else:
        w("- memory: the peak RSS of each process (ours: qwen-qlora and its children; theirs: the Python process)")
    w(f"- preparation (CPU): {a.prepared}; this run {a.elapsed} s{f' of a {a.budget} s budget' if a.budget > 0 else ''}")
    w("")
    w(f"## {L} layers")
    w("")
    w("| side | tokens/s | s/step | peak allocated | peak reserved | peak RSS | notes |")
    w("|---|---|---|---|---|---|---|")
    for name, j in (("qwenq (4-bit)", ours), ("transformers + peft (bf16 LoRA)", theirs)):
        if j is None:
            w(f"| {name} | not run | | | | | no time left in the budget |")
        elif not ok(j):
            w(f"| {name} | failed | | | | | {j['failed']} |")
        else:
            note = f"partial: cut by its time limit after {j['steps']} timed steps" if j.get("partial") else ""
            w(f"| {name} | {j['tokens_per_s']:.0f} | {j['tokens_per_step'] / j['tokens_per_s']:.3f} | "
              f"{gib(j.get('peak_allocated_bytes'))} | {gib(j.get('peak_reserved_bytes'))} | {gib(j.get('peak_rss_bytes'))} | {note} |")
    w("")
    both = ok(ours) and ok(theirs)
    r_tps = ratio(ours["tokens_per_s"], theirs["tokens_per_s"]) if both else None
    r_mem = ratio(ours.get(mem_key), theirs.get(mem_key)) if both else None
    r_alloc = ratio(ours.get("peak_allocated_bytes"), theirs.get("peak_allocated_bytes")) if both and cuda else None
    w("| ours / theirs | value | target | met |")
    w("|---|---|---|---|")
    v, m = fmt_ratio(r_tps, 2.0, ">=")
    w(f"| tokens/s | {v} | >= 2 | {m} |")
    v, m = fmt_ratio(r_mem, 0.40, "<=")
    w(f"| peak memory ({mem_name}) | {v} | <= 0.40 | {m} |")
    if cuda:
        v, m = fmt_ratio(r_alloc, 0.40, "<=")
        w(f"| peak memory (allocated, for information) | {v} | | |")
    w("")
    summary = f"qlora step ({L} layers, {a.device}): ours {ours['tokens_per_s']:.0f} tok/s, peft {theirs['tokens_per_s']:.0f} tok/s" \
        if both else f"qlora step ({L} layers, {a.device}): ours {'ok' if ok(ours) else 'FAILED'}, peft {'ok' if ok(theirs) else 'FAILED'}"
    if both:
        summary += f", tokens/s ratio {r_tps:.2f} (>= 2), memory ratio {'n/a' if r_mem is None else f'{r_mem:.2f}'} (<= 0.40)"

    w("## Per layer")
    w("")
    diff = L0 > 0 and ok(ours0) and ok(theirs0) and both
    if diff:
        w(f"From the runs at {L} and {L0} layers (same files, the first {L0} layers): per layer = difference / {L - L0}; "
          f"fixed = the {L}-layer figure minus {L} per-layer shares (embedding, lm_head, loss, optimizer and runtime); "
          f"full = fixed + {full} per-layer shares, the estimate for the whole {a.preset} model.")
        w("")
        w(f"| side | s/step per layer | memory per layer | fixed s/step | fixed memory | full {full} layers: tokens/s | full: memory |")
        w("|---|---|---|---|---|---|---|")
        est, per_layer_s = {}, {}
        for name, j, j0 in (("qwenq (4-bit)", ours, ours0), ("transformers + peft", theirs, theirs0)):
            s, s0 = j["tokens_per_step"] / j["tokens_per_s"], j0["tokens_per_step"] / j0["tokens_per_s"]
            ds = (s - s0) / (L - L0)
            per_layer_s[name] = ds
            mem, mem0 = j.get(mem_key), j0.get(mem_key)
            dm = (mem - mem0) / (L - L0) if mem is not None and mem0 is not None else None
            sf = s + (full - L) * ds
            mf = mem + (full - L) * dm if dm is not None else None
            est[name] = (j["tokens_per_step"] / sf if sf > 0 else None, mf)
            w(f"| {name} | {ds * 1e3:.1f} ms | {mib(dm)} | {s - L * ds:.3f} | {gib(None if dm is None else mem - L * dm)} | "
              f"{'n/a' if est[name][0] is None else f'{est[name][0]:.0f}'} | {gib(mf)} |")
        w("")
        if min(per_layer_s.values()) <= 0:
            # A layer's time below the run-to-run noise (tiny models, a loaded machine): the difference says nothing.
            w("No full-depth estimate: a per-layer time is <= 0 (" +
              ", ".join(f"{n} {v * 1e3:.1f} ms" for n, v in per_layer_s.items()) +
              "), i.e. the layers' cost is within the timing noise of the two runs.")
            summary += f"; full {full}-layer estimate: n/a (per-layer time within noise)"
        else:
            (t_o, m_o), (t_t, m_t) = est["qwenq (4-bit)"], est["transformers + peft"]
            v1, m1 = fmt_ratio(ratio(t_o, t_t), 2.0, ">=")
            v2, m2 = fmt_ratio(ratio(m_o, m_t), 0.40, "<=")
            w(f"Full-depth estimate, ours / theirs: tokens/s {v1} (>= 2: {m1}), peak memory ({mem_name}) {v2} (<= 0.40: {m2}).")
            summary += f"; full {full}-layer estimate: tokens/s ratio {v1}, memory ratio {v2}"
    else:
        why = "LAYERS_BASE=0" if L0 <= 0 else "no complete second pair of runs"
        w(f"Whole step / {L} ({why}): these shares include the embedding, lm_head, loss and optimizer, so they "
          "overstate a decoder layer.")
        rows = [(n, j) for n, j in (("qwenq (4-bit)", ours), ("transformers + peft", theirs)) if ok(j)]
        if rows:
            w("")
            w("| side | s/step / layer | memory / layer |")
            w("|---|---|---|")
        for name, j in rows:
            w(f"| {name} | {j['tokens_per_step'] / j['tokens_per_s'] / L * 1e3:.1f} ms | "
              f"{mib(None if j.get(mem_key) is None else j[mem_key] / L)} |")
    # Our step by phase (qwen-qlora train --profile: CUDA events; the first step left out), per layer from the pair.
    p_l, p_0 = (ours or {}).get("profile_ms_per_step"), (ours0 or {}).get("profile_ms_per_step")
    if p_l:
        w("")
        w("## Our step by phase (`--profile`, GPU milliseconds per step)")
        w("")
        per_layer = p_0 is not None and L0 > 0 and L > L0
        w(f"| phase | {L} layers |" + (f" {L0} layer(s) | per layer |" if per_layer else ""))
        w("|---|---|" + ("---|---|" if per_layer else ""))
        last = {"unattributed": 1, "step": 2}  # the phases, largest first, then these two
        for k in sorted(p_l, key=lambda k: (last.get(k, 0), -p_l[k])):
            row = f"| {k} | {p_l[k]:.2f} |"
            if per_layer:
                b = p_0.get(k, 0.0)
                row += f" {b:.2f} | {(p_l[k] - b) / (L - L0):.2f} |"
            w(row)
    variants = load_variants(a.work)
    if variants:
        summary += "; " + write_variants(w, variants, ours, ours0, L, L0)
    w("")
    w("## Raw JSON lines")
    w("")
    w("```")
    runs = [("ours", ours), ("theirs", theirs), ("ours0", ours0), ("theirs0", theirs0)] + \
        [(t, j) for t, _, j in variants]
    for tag, j in runs:
        if j is not None:
            w(json.dumps(dict({k: v for k, v in j.items() if k != "log_tail"}, run=tag)))
    w("```")
    fails = [(t, j) for t, j in runs if j is not None and "log_tail" in j]
    for t, j in fails:
        w("")
        w(f"## Log of the failed run `{t}` (last lines)")
        w("")
        w("```")
        o.extend(j["log_tail"])
        w("```")
    with open(a.out + ".tmp", "w") as f:
        f.write("\n".join(o) + "\n")
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out}")
    print(summary)
    if not both:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="sub", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--timeout", type=int, default=0)
    m.add_argument("--rss-out", required=True)
    m.add_argument("cmd", nargs=argparse.REMAINDER)
    u = sub.add_parser("ours")
    u.add_argument("--metrics", required=True)
    u.add_argument("--rss", required=True)
    u.add_argument("--rc", type=int, required=True)
    u.add_argument("--warmup", type=int, required=True)
    u.add_argument("--steps", type=int, required=True)
    u.add_argument("--layers", type=int, required=True)
    u.add_argument("--quant", required=True)
    u.add_argument("--device", required=True)
    r = sub.add_parser("report")
    for k in ("work", "out", "device", "device-info", "cpu-info", "commit", "preset", "quant", "prepared"):
        r.add_argument("--" + k, required=True)
    for k in ("full-layers", "layers", "layers-base", "seq", "warmup", "steps", "rank", "threads", "budget", "elapsed"):
        r.add_argument("--" + k, type=int, required=True)
    r.add_argument("--alpha", type=float, required=True)
    a = ap.parse_args()
    {"measure": cmd_measure, "ours": cmd_ours, "report": cmd_report}[a.sub](a)


if __name__ == "__main__":
    main()
