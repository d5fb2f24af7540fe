"""Oracle: `qwen-qlora train --objective classify` with transformers' other problem types trains the classifier that
Qwen2ForSequenceClassification(problem_type=...) with a PEFT SEQ_CLS adapter trains: multi_label_classification
(BCEWithLogitsLoss over a multi-hot row per text) and regression (MSELoss over one value per text).

The real stories260K (`qwen-quant import-llama2c`, fp32). Twelve TinyStories sentences, written here, each tagged with
the animals it names (bird, cat, dog; some none, some two: the multi-label run infers its type from the lists) and
scored by its length in words / 10 (the regression run, --problem-type regression). For each, PEFT makes a SEQ_CLS
adapter (r=4, alpha=8, all seven Linears; random A, B and head, seeded) on a classifier with that problem_type, then:
  1. `train --init-adapter` runs STEPS optimizer steps of one micro-batch holding every text (no dropout, fp32 block
     inputs, constant rate, weight decay, clipping at 1); PyTorch takes the same steps with the loss transformers'
     model computes itself from `labels` on the right-padded batch (its problem_type's loss, pooled at the last token
     that is not the pad id), clip_grad_norm_ and torch.optim.AdamW. Every step's loss is torch's (relative LOSS_TOL)
     and every trained entry of the final adapter is torch's relative to the largest move of its tensor (median
     within MEDIAN_TOL, at most MAX_FLIPS entries off by more than FLIP);
  2. PEFT loads our final adapter: its loss and metrics on the texts (exact-match accuracy and micro F1 at logit 0;
     Pearson's r and, per output, Spearman's rho; multi-label's per-label precision, recall and F1 as sklearn defines
     them) are what
     `qwen-qlora eval --objective classify` reports, and labels.json names the problem type;
     the same for the starting adapter (not yet perfect), its names and type given by --labels / --problem-type;
  3. `qwen-qlora merge` of it loads in transformers with that problem_type and PEFT's logits; `eval --predictions` on the
     texts without their labels writes each record back in file order with PEFT's logits and their prediction;
  4. the refusals: a regression list of another length (naming file:line), a fraction without --problem-type (with
     the hint), --problem-type with another objective;
  5. sentence pairs (--text-pair-field; also a third case above, single-label, trained and checked as 1-3) are the ids
     transformers' tokenizer(text, text_pair, truncation=True, max_length) gives, for stories260K's Llama tokenizer and
     the real Qwen2 one, at lengths that cut one text, the longer, or both.
"""
import json
import os

from oracle_common import (check, check_label_report, check_trained_tensors, finish, import_stories260k, parse_args, randomize_seq_cls,
                           require_shared, run, skip, train_refused, work_dir)

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
    import peft
    import transformers
    from safetensors.torch import load_file
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/peft not importable: {e}")

STEPS, LR, WD, SEED = 4, 2e-3, 0.1, 11
LOSS_TOL = 2e-5    # relative, per step
MEDIAN_TOL = 2e-4  # each tensor's median entry, of its largest move
FLIP, MAX_FLIPS = 2e-2, 4
METRIC_TOL = 1e-5  # eval's Pearson r against torch's, absolute
ANIMALS = ["bird", "cat", "dog"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXTS = ["The little bird sang a happy song in the tree.",
         "Tom saw a big dog and a cat in the park.",
         "The sun was warm and the sky was blue.",
         "A bird flew over the house and landed on the roof.",
         "Lily gave her dog a bone and it wagged its tail.",
         "The cat chased a ball of red yarn.",
         "One day, a small bird and a cat found a shiny stone.",
         "The dog barked.",
         "Her cat liked to drink milk from a bowl.",
         "Sue and Max played with blocks all day long.",
         "Max the dog was very happy to see the little bird.",
         "The cat jumped onto the table and looked at the fish."]

ql = os.path.join(args.build, "qwen-qlora")
out = work_dir(args.build, "classify_problem_types_oracle")
base_dir = import_stories260k(args.build, args.shared, os.path.join(out, "base"))
tok = transformers.AutoTokenizer.from_pretrained(base_dir)
PAD = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # trainer/reward.h's rule
PAIRS = [(t, TEXTS[(i + 5) % len(TEXTS)]) for i, t in enumerate(TEXTS)]


def tags(text):
    return [a for a in ANIMALS if a in text.split(" ") or a + "." in text or a + "," in text]


def padded(encoded):
    """The right-padded batch, its attention mask and a --seq-len that holds every text."""
    width = max(len(s) for s in encoded)
    return (torch.tensor([s + [PAD] * (width - len(s)) for s in encoded]),
            torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in encoded]), width + 4)


CASES = {
    "multi": dict(problem_type="multi_label_classification", num_labels=3,
                  records=[{"text": t, "label": tags(t)} for t in TEXTS],
                  y=torch.tensor([[1.0 if a in tags(t) else 0.0 for a in ANIMALS] for t in TEXTS]),
                  flags=[], labels=ANIMALS),
    "regression": dict(problem_type="regression", num_labels=1,
                       records=[{"text": t, "label": len(t.split()) / 10} for t in TEXTS],
                       y=torch.tensor([len(t.split()) / 10 for t in TEXTS], dtype=torch.float32),
                       flags=["--problem-type", "regression"], labels=["LABEL_0"]),
    # sentence pairs (--text-pair-field): do the two texts name a common animal? tokenizer(text, text_pair)'s ids
    "pairs": dict(problem_type="single_label_classification", num_labels=2,
                  records=[{"text": a, "second": b, "label": "same" if set(tags(a)) & set(tags(b)) else "different"}
                           for a, b in PAIRS],
                  y=torch.tensor([1 if set(tags(a)) & set(tags(b)) else 0 for a, b in PAIRS]),
                  flags=["--text-pair-field", "second"], labels=["different", "same"],
                  lr=2e-4),  # (at LR its loss is 6e-5 by step 4, where fp32 rounding alone is 1e-4 of it)
}


def classifier(case):
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=case["num_labels"], problem_type=case["problem_type"], pad_token_id=PAD,
        torch_dtype=torch.float32, attn_implementation="eager")


def mean_ranks(v):
    """1-based ranks, ties at their mean (scipy.stats.rankdata's "average")."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks, i = [0.0] * len(v), 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def metrics_of(case, logits, y):
    """Our eval's metrics of logits [N, C] by hand (classify.h's definitions)."""
    if case["problem_type"] == "regression":
        z, t = logits[:, 0].double(), y.double()
        return {"pearson": torch.corrcoef(torch.stack([z, t]))[0, 1].item()}
    if case["problem_type"] == "single_label_classification":
        return {"accuracy": (logits.argmax(-1) == y).double().mean().item()}
    pred, truth = logits > 0, y > 0.5
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    return {"accuracy": (pred == truth).all(-1).double().mean().item(),
            "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else 0.0}


for name, case in CASES.items():
    print(f"--- {case['problem_type']}")
    wd = os.path.join(out, name)
    os.makedirs(wd, exist_ok=True)
    data = os.path.join(wd, "data.jsonl")
    with open(data, "w") as f:
        for r in case["records"]:
            f.write(json.dumps(r) + "\n")
    y, lr = case["y"], case.get("lr", LR)
    encoded = [tok(r["text"], r["second"])["input_ids"] if "second" in r else tok(r["text"])["input_ids"]
               for r in case["records"]]
    batch, mask, seq_len = padded(encoded)
    pair_flags = ["--text-pair-field", "second"] if "second" in case["records"][0] else []

    torch.manual_seed(SEED)
    init_dir = os.path.join(wd, "init")
    pm = peft.get_peft_model(classifier(case), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                               task_type="SEQ_CLS", target_modules=TARGETS))
    randomize_seq_cls(pm)
    pm.save_pretrained(init_dir)

    # 1. our steps against PyTorch's.
    run_dir = os.path.join(wd, "run")
    common = ["--model", base_dir, "--data", data, "--seq-len", str(seq_len), "--threads", "2", *case["flags"]]
    run([ql, "train", "--objective", "classify", *common, "--out", run_dir, "--overwrite", "--init-adapter", init_dir,
         "--max-steps", str(STEPS), "--batch-size", str(len(TEXTS)), "--eval-fraction", "0", "--lr", str(lr),
         "--scheduler", "constant", "--weight-decay", str(WD), "--max-grad-norm", "1", "--lora-r", "4",
         "--lora-alpha", "8", "--lora-dropout", "0", "--fp32-checkpoints", "--seed", str(SEED), "--quiet"])
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        ours_losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]

    tm = peft.PeftModel.from_pretrained(classifier(case), init_dir, is_trainable=True)
    tm.train()
    start = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(tm).items()}
    params = [p for p in tm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WD, betas=(0.9, 0.999), eps=1e-8)
    torch_losses = []
    for step in range(STEPS):
        opt.zero_grad()
        loss = tm(input_ids=batch, attention_mask=mask, labels=y).loss  # transformers' own problem_type loss
        loss.backward()
        torch_losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    expected = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(tm).items()}
    print("losses: ours", [round(v, 6) for v in ours_losses], "torch", [round(v, 6) for v in torch_losses])
    check(len(ours_losses) == STEPS, f"{name}: {len(ours_losses)} step records")
    for step, (a, b) in enumerate(zip(ours_losses, torch_losses)):
        check(abs(a - b) <= LOSS_TOL * abs(b), f"{name} step {step + 1}: loss {a}, torch {b}")
    check_trained_tensors(load_file(os.path.join(run_dir, "adapter_model.safetensors")), expected, start, MEDIAN_TOL,
                          FLIP, MAX_FLIPS, f"{name}: ")

    # 2. PEFT on our final adapter against `qwen-qlora eval` (its type and names from labels.json).
    with open(os.path.join(run_dir, "labels.json")) as f:
        labels_json = json.load(f)
    single = case["problem_type"] == "single_label_classification"
    want_json = {"id2label": {str(i): n for i, n in enumerate(case["labels"])}}
    if not single:  # (single-label: transformers' default, left unnamed)
        want_json["problem_type"] = case["problem_type"]
    check(labels_json == want_json, f"{name}: labels.json {labels_json}")
    # (and on the starting adapter, whose metrics are not yet perfect: its names and type given on the command line)
    for adapter_dir, extra in ((run_dir, []), (init_dir, ["--labels", ",".join(case["labels"]),
                                                          "--problem-type", case["problem_type"]])):
        loaded = peft.PeftModel.from_pretrained(classifier(case), adapter_dir).eval()
        with torch.no_grad():
            res = loaded(input_ids=batch, attention_mask=mask, labels=y)
        peft_loss, peft_logits = res.loss.item(), res.logits
        want = metrics_of(case, peft_logits, y)
        if adapter_dir == run_dir:
            final_logits = peft_logits
        ev = json.loads(run([ql, "eval", "--objective", "classify", "--adapter", adapter_dir, "--model", base_dir,
                             "--data", data, "--seq-len", str(seq_len), "--threads", "2", "--batch-size", "5",
                             "--fp32-checkpoints", "--json", *pair_flags, *extra]))
        print(f"PEFT on {os.path.basename(adapter_dir)}: loss {peft_loss:.6f} {want}; ours {ev['loss']:.6f} "
              f"{ {k: ev[k] for k in want if k in ev} }")
        check(ev["problem_type"] == case["problem_type"] and ev["examples"] == len(TEXTS), f"{name}: eval {ev}")
        check(abs(ev["loss"] - peft_loss) <= LOSS_TOL * peft_loss, f"{name}: eval loss {ev['loss']}, PEFT {peft_loss}")
        for k, v in want.items():
            tol = METRIC_TOL if k == "pearson" else 0.0
            check(k in ev and abs(ev[k] - v) <= tol, f"{name}: eval {k} {ev.get(k)}, by hand from PEFT's logits {v}")
        if case["problem_type"] == "regression":  # one output: its own MSE and r are the whole's
            po = ev["per_output"][0]
            check(po["output"] == "LABEL_0" and abs(po["mse"] - ev["loss"]) <= 1e-12 * ev["loss"] and
                  abs(po["pearson"] - ev["pearson"]) <= 1e-12, f"{name}: per_output {po}")
            rz, ry = mean_ranks(peft_logits[:, 0].tolist()), mean_ranks(y.tolist())
            rho = torch.corrcoef(torch.tensor([rz, ry], dtype=torch.float64))[0, 1].item()
            check(abs(po["spearman"] - rho) <= METRIC_TOL, f"{name}: spearman {po['spearman']}, by hand {rho}")
        else:
            check_label_report(ev, case["labels"], peft_logits, y, single=single)

    # 3. the merged classifier in transformers.
    merged = os.path.join(wd, "merged")
    run([ql, "merge", "--adapter", run_dir, "--model", base_dir, "--out", merged, "--overwrite", "--dtype", "fp32"])
    mm = transformers.AutoModelForSequenceClassification.from_pretrained(merged, attn_implementation="eager").eval()
    check(mm.config.problem_type == (None if single else case["problem_type"]),
          f"{name}: merged problem_type {mm.config.problem_type}")
    check(mm.config.num_labels == case["num_labels"], f"{name}: merged num_labels {mm.config.num_labels}")
    with torch.no_grad():
        mres = mm(input_ids=batch, attention_mask=mask, labels=y)
    diff = ((mres.logits - final_logits).abs().max() / final_logits.abs().max()).item()
    print(f"merged classifier against PEFT: max relative logit difference {diff:.3g}; loss {mres.loss.item():.6f}")
    check(diff <= 1e-5, f"{name}: the merged classifier's logits differ from PEFT's by {diff:.3g}")

    # 3b. the texts without their labels, labelled by `eval --predictions` (the adapter's labels.json naming the
    # labels and type): each record back in file order with PEFT's logits as its scores and their prediction.
    bare = os.path.join(wd, "bare.jsonl")
    with open(bare, "w") as f:
        for r in case["records"]:
            f.write(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n")
    preds_file = os.path.join(wd, "predictions.jsonl")
    run([ql, "eval", "--objective", "classify", "--adapter", run_dir, "--model", base_dir, "--data", bare,
         "--seq-len", str(seq_len), "--threads", "2", "--batch-size", "5", "--fp32-checkpoints", *pair_flags,
         "--predictions", preds_file])
    with open(preds_file) as f:
        preds = [json.loads(line) for line in f]
    check(len(preds) == len(TEXTS), f"{name}: {len(preds)} predictions")
    worst = 0.0
    for i, (p, r) in enumerate(zip(preds, case["records"])):
        z = final_logits[i]
        check(p["text"] == r["text"] and "label" not in p, f"{name}: prediction {i} is not record {i}: {p}")
        worst = max(worst, (torch.tensor(p["scores"]) - z).abs().max().item() / final_logits.abs().max().item())
        if case["problem_type"] == "single_label_classification":
            want = case["labels"][int(z.argmax())]
        elif case["problem_type"] == "multi_label_classification":
            want = [n for n, v in zip(case["labels"], z) if v > 0]
        else:
            want = None
        check(want is None or p["predicted"] == want, f"{name}: prediction {i} {p['predicted']}, PEFT's {want}")
    print(f"predictions of the unlabelled texts: scores within {worst:.3g} of PEFT's logits (relative to the largest)")
    check(worst <= 1e-5, f"{name}: predicted scores differ from PEFT's logits by {worst:.3g}")

# 5. sentence pairs as transformers' tokenizers encode them, cut to max_length "longest_first": stories260K's Llama
# tokenizer (<s> A <s> B) and the real Qwen2 tokenizer (A B), ours read back from `data --dump` (file order).
LONG = "Once upon a time there was a little girl who liked to play in the big green park with her dog."
TOK_PAIRS = PAIRS[:4] + [(LONG, "Yes."), ("No.", LONG), (LONG, LONG), ("The cat sat.", "The dog sat.")]
pairs_file = os.path.join(out, "tok_pairs.jsonl")
with open(pairs_file, "w") as f:
    for a, b in TOK_PAIRS:
        f.write(json.dumps({"text": a, "second": b, "label": 0}) + "\n")
for tok_dir in (base_dir, os.path.join(args.shared, "data", "qwen2-tokenizer")):
    hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
    cuts = 0
    for max_len in (None, 5, 8, 9, 14, 15, 25):
        dump = os.path.join(out, "tok_pairs_dump.jsonl")
        run([ql, "data", "--model", tok_dir, "--data", pairs_file, "--objective", "classify", "--labels", "a,b",
             "--text-pair-field", "second", "--dump", dump, *(["--max-len", str(max_len)] if max_len else [])])
        with open(dump) as f:
            ours = [json.loads(line)["ids"] for line in f]
        for (a, b), got in zip(TOK_PAIRS, ours):
            want = hf(a, b, truncation=True, max_length=max_len)["input_ids"] if max_len else hf(a, b)["input_ids"]
            cuts += max_len is not None and len(hf(a, b)["input_ids"]) > max_len
            check(got == want, f"{type(hf).__name__} pair ({a[:20]!r}, {b[:20]!r}) max_length {max_len}: ours {got}, "
                               f"transformers {want}")
    print(f"{type(hf).__name__}: {len(TOK_PAIRS)} pairs x 7 lengths as transformers encodes them ({cuts} cut)")

# 4. refusals.
def refused(what, records, extra, needle, objective="classify"):
    train_refused(ql, base_dir, out, seq_len, what, records, extra, needle, objective)


refused("list length", [{"text": "A cat.", "label": [0.5, 1.0]}, {"text": "A dog.", "label": [2.0]}],
        ["--problem-type", "regression"], "bad.jsonl:2: 1 value(s) for a regression head of 2 output(s)")
refused("fraction", [{"text": "A cat.", "label": 1}, {"text": "A dog.", "label": 0.25}], [],
        "bad.jsonl:2: \"label\" 0.25 is not a label id or name (a regression head: --problem-type regression)")
refused("problem type with sft", [{"text": "A cat."}], ["--problem-type", "regression"],
        "--problem-type applies to --objective classify", objective="sft")
finish()
