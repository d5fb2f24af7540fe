"""Oracle: `qwen-qlora train --objective classify` trains the text classifier that transformers' Qwen2ForSequenceClassification
(num_labels 3) with a PEFT SEQ_CLS adapter trains, and its files are the ones PEFT and transformers read.

The real stories260K (`qwen-quant import-llama2c`, fp32). Twelve TinyStories sentences labelled by the one animal each
names (bird, cat, dog), written here. PEFT makes a SEQ_CLS adapter (r=4, alpha=8, all seven Linears) on the classifier
with random A, B and score head (seeded) and saves it at init/; then:
  1. `train --init-adapter init/` runs STEPS optimizer steps of one micro-batch holding every text (no dropout, exact
     fp32 block inputs, constant rate, weight decay, clipping at 1); PyTorch does the same steps from the same adapter
     on the texts as transformers' tokenizer encodes them: CrossEntropyLoss over the pooled logits (the last token that
     is not the pad id; the pad id set as ours), clip_grad_norm_, torch.optim.AdamW. Every step's loss in metrics.jsonl
     is torch's (relative LOSS_TOL), and every trained entry of the final adapter (LoRA tensors and the head) is
     torch's, relative to the largest move of its tensor (median within MEDIAN_TOL, at most MAX_FLIPS entries off by
     more than FLIP: Adam's first steps are about sign(g)·lr, so an entry whose gradient is within rounding of zero
     can move the other way);
  2. PEFT loads our final adapter directory (and the starting one) onto a fresh classifier: its loss and accuracy on
     the texts are what `qwen-qlora eval --objective classify` reports, with its per-label precision, recall, F1,
     macro F1 and confusion matrix as sklearn defines them, computed here; labels.json names the labels;
  3. `qwen-qlora merge` of it loads in transformers' AutoModelForSequenceClassification with the same logits as PEFT's
     and the label names in id2label;
  4. the refusals: a label outside --labels (naming file:line), a missing text, one label only, --batching, a
     classify flag with another objective, a head of another size from --init-adapter.
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

STEPS, LR, WD, SEED = 4, 2e-3, 0.1, 7
LOSS_TOL = 2e-5    # relative, per step (seen: at most 1e-6)
MEDIAN_TOL = 2e-4  # each tensor's median entry, of its largest move (seen: at most 2e-5)
FLIP, MAX_FLIPS = 2e-2, 4
LABELS = ["bird", "cat", "dog"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXTS = [("The little bird sang a happy song in the tree.", "bird"),
         ("Tom saw a big dog in the park and he ran to it.", "dog"),
         ("The cat was sleeping on the warm mat all day.", "cat"),
         ("A bird flew over the house and landed on the roof.", "bird"),
         ("Lily gave her dog a bone and it wagged its tail.", "dog"),
         ("The cat chased a ball of red yarn.", "cat"),
         ("One day, a small bird found a shiny stone.", "bird"),
         ("The dog barked at the mailman.", "dog"),
         ("Her cat liked to drink milk from a bowl.", "cat"),
         ("The bird built a nest with sticks and leaves.", "bird"),
         ("Max the dog was very happy to see Sue.", "dog"),
         ("The cat jumped onto the table and looked at the fish.", "cat")]

ql = os.path.join(args.build, "qwen-qlora")
out = work_dir(args.build, "classify_oracle")
base_dir = import_stories260k(args.build, args.shared, os.path.join(out, "base"))
data = os.path.join(out, "animals.jsonl")
with open(data, "w") as f:
    for text, label in TEXTS:
        f.write(json.dumps({"text": text, "label": label}) + "\n")
tok = transformers.AutoTokenizer.from_pretrained(base_dir)
PAD = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # trainer/reward.h's rule
ids = [torch.tensor(tok(t)["input_ids"]) for t, _ in TEXTS]
y = torch.tensor([LABELS.index(lab) for _, lab in TEXTS])


def classifier():
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=len(LABELS), pad_token_id=PAD, torch_dtype=torch.float32, attn_implementation="eager")


def logits_of(m):
    return torch.stack([m(input_ids=s[None, :]).logits[0] for s in ids])


# The starting adapter: random A, B (B = 0.1·N(0, 1): a B = 0 start leaves every A's first gradient zero) and head.
torch.manual_seed(SEED)
init_dir = os.path.join(out, "init")
pm = peft.get_peft_model(classifier(), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="SEQ_CLS",
                                                       target_modules=TARGETS))
randomize_seq_cls(pm)
pm.save_pretrained(init_dir)

# 1. our steps against PyTorch's.
run_dir = os.path.join(out, "run")
seq_len = max(len(s) for s in ids) + 4
COMMON = ["--model", base_dir, "--data", data, "--labels", ",".join(LABELS), "--seq-len", str(seq_len), "--threads", "2"]
run([ql, "train", "--objective", "classify", *COMMON, "--out", run_dir, "--overwrite", "--init-adapter", init_dir,
     "--max-steps", str(STEPS), "--batch-size", str(len(TEXTS)), "--eval-fraction", "0", "--lr", str(LR),
     "--scheduler", "constant", "--weight-decay", str(WD), "--max-grad-norm", "1", "--lora-r", "4", "--lora-alpha", "8",
     "--lora-dropout", "0", "--fp32-checkpoints", "--seed", str(SEED), "--quiet"])
with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    ours_losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]

tm = peft.PeftModel.from_pretrained(classifier(), init_dir, is_trainable=True)
tm.train()
start = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(tm).items()}
params = [p for p in tm.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, betas=(0.9, 0.999), eps=1e-8)
torch_losses = []
for step in range(STEPS):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(logits_of(tm), y)
    loss.backward()
    torch_losses.append(loss.item())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
expected = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(tm).items()}
print("losses: ours", [round(v, 6) for v in ours_losses], "torch", [round(v, 6) for v in torch_losses])
check(len(ours_losses) == STEPS, f"{len(ours_losses)} step records")
for step, (a, b) in enumerate(zip(ours_losses, torch_losses)):
    check(abs(a - b) <= LOSS_TOL * abs(b), f"step {step + 1}: loss {a}, torch {b}")
ours = load_file(os.path.join(run_dir, "adapter_model.safetensors"))
check(any(k.endswith("score.weight") for k in ours), "no score head in our adapter")
check_trained_tensors(ours, expected, start, MEDIAN_TOL, FLIP, MAX_FLIPS)

# 2. PEFT on our final adapter against `qwen-qlora eval`.
with open(os.path.join(run_dir, "labels.json")) as f:
    check(json.load(f) == {"id2label": {str(i): n for i, n in enumerate(LABELS)}}, "labels.json")
# (then the starting adapter, whose predictions are still wrong: its per-label report and confusion are not trivial)
for adapter_dir in (init_dir, run_dir):
    loaded = peft.PeftModel.from_pretrained(classifier(), adapter_dir).eval()
    with torch.no_grad():
        peft_logits = logits_of(loaded)
    peft_loss = torch.nn.functional.cross_entropy(peft_logits, y).item()
    peft_acc = (peft_logits.argmax(-1) == y).double().mean().item()
    ev = json.loads(run([ql, "eval", "--objective", "classify", "--adapter", adapter_dir, *COMMON[2:], "--batch-size",
                         "5", "--fp32-checkpoints", "--json"]))
    print(f"PEFT on {os.path.basename(adapter_dir)}: loss {peft_loss:.6f} accuracy {peft_acc:.3f}; ours "
          f"{ev['loss']:.6f} {ev['accuracy']:.3f}")
    check(abs(ev["loss"] - peft_loss) <= LOSS_TOL * peft_loss, f"eval loss {ev['loss']}, PEFT {peft_loss}")
    check(ev["accuracy"] == peft_acc and ev["examples"] == len(TEXTS), f"eval {ev}, PEFT accuracy {peft_acc}")
    check_label_report(ev, LABELS, peft_logits, y, single=True)

# 3. the merged classifier in transformers.
merged = os.path.join(out, "merged")
run([ql, "merge", "--adapter", run_dir, "--model", base_dir, "--out", merged, "--overwrite", "--dtype", "fp32"])
mm = transformers.AutoModelForSequenceClassification.from_pretrained(merged, attn_implementation="eager").eval()
check(mm.config.id2label == dict(enumerate(LABELS)), f"merged id2label {mm.config.id2label}")
check(mm.config.pad_token_id == PAD, f"merged pad_token_id {mm.config.pad_token_id}, not {PAD}")
with torch.no_grad():
    merged_logits = logits_of(mm)
diff = ((merged_logits - peft_logits).abs().max() / peft_logits.abs().max()).item()
print(f"merged classifier against PEFT: max relative logit difference {diff:.3g}")
check(diff <= 1e-5, f"the merged classifier's logits differ from PEFT's by {diff:.3g}")

# 4. refusals.
def refused(name, records, extra, needle, objective="classify"):
    train_refused(ql, base_dir, out, seq_len, name, records, extra, needle, objective)


good = [{"text": t, "label": lab} for t, lab in TEXTS]
refused("unknown label", good + [{"text": "A fish swam.", "label": "fish"}], ["--labels", "bird,cat,dog"],
        "bad.jsonl:13: label \"fish\" is not one of the 3 labels (bird, cat, dog)")
refused("id out of range", [{"text": "A cat.", "label": 0}, {"text": "A dog.", "label": 5}], ["--labels", "a,b"],
        "bad.jsonl:2: label 5 is outside [0, 2)")
refused("missing text", [{"label": "cat"}], [], "bad.jsonl:1: no \"text\"")
refused("one label", [{"text": "A cat.", "label": "cat"}], [], "1 label(s); a classifier needs at least 2")
refused("mixed", [{"text": "A cat.", "label": "cat"}, {"text": "A dog.", "label": 1}], [], "holds both integers and names")
refused("batching", good, ["--batching", "packing"], "leave --batching out")
refused("labels with sft", good, ["--labels", "a,b"], "--labels applies to --objective classify", objective="sft")
refused("head size", good, ["--init-adapter", init_dir, "--labels", "bird,cat,dog,fish", "--lora-r", "4",
                            "--lora-alpha", "8"], "a score head of 3 label(s) (task_type SEQ_CLS), not 4")
finish()
