"""Oracle: `qwen-quant multiple-choice` against lm-evaluation-harness's loglikelihood scoring, done here with
transformers on the same model.

1. stories260K imported (fp32). ITEMS multiple-choice items made from TinyStories (seeded): the context is the start
   of a story (some with trailing spaces or a newline, which lm-eval moves into the continuation), the choices are
   the true next words and the next words of three other stories, in shuffled order; a quarter of the items are in
   ARC's Hugging Face layout (question, choices {text, label}, answerKey), which lm-eval renders as
   "Question: Q\\nAnswer:" with " " before each choice.
2. Reference, following lm-eval 0.4's rules written out here: the context's trailing whitespace moved to the
   continuation, whole = tokenizer(context + continuation), context = tokenizer(context) (no special tokens; an empty
   context is the EOS token), continuation = whole[len(context):]; one forward of context + continuation[:-1] in
   Qwen2ForCausalLM (fp32, eager); loglik = sum of the continuation tokens' log_softmax; acc = argmax loglik, acc_norm
   = argmax loglik / len(choice text) (the text without the delimiter), first index on ties.
Requirements: every choice's loglik within LL_ABS_TOL; every prediction (both kinds) and both accuracies equal.
"""
import json
import os
import random

from oracle_common import check, finish, import_stories260k, parse_args, require_shared, run, skip, work_dir

ITEMS = 48
LL_ABS_TOL = 2e-4  # a sum of up to ~12 fp32 log-probabilities of two implementations (observed below 4e-5)

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM
except ImportError as e:
    skip(f"transformers/torch not importable: {e}")

wd = work_dir(args.build, "multiple_choice")
model_dir = import_stories260k(args.build, args.shared, os.path.join(wd, "stories"))
with open(os.path.join(args.shared, "data", "tinystories", "tinystories_val.txt"), encoding="utf-8") as f:
    stories = [l.split() for l in f if len(l.split()) > 30]
rng = random.Random(5)
records, items = [], []  # records as written; items as (context, delimiter, choices, label)
for i in range(ITEMS):
    picks = rng.sample(range(len(stories)), 4)
    cut = rng.randint(8, 20)
    context = " ".join(stories[picks[0]][:cut]) + rng.choice(["", " ", "\n"])
    endings = [" ".join(stories[p][cut:cut + rng.randint(2, 6)]) for p in picks]
    order = list(range(4))
    rng.shuffle(order)
    choices = [endings[k] for k in order]
    label = order.index(0)
    if i % 4 == 3:  # ARC's layout
        keys = ["A", "B", "C", "D"]
        records.append({"id": f"q{i}", "question": context.strip(),
                        "choices": {"text": choices, "label": keys}, "answerKey": keys[label]})
        items.append(("Question: " + context.strip() + "\nAnswer:", " ", choices, label))
    else:
        choices = [" " + c if k % 2 else c for k, c in enumerate(choices)]  # a leading space or not, as given
        records.append({"context": context, "choices": choices, "label": label if i % 2 else str(label)})
        items.append((context, "", choices, label))
data = os.path.join(wd, "items.jsonl")
with open(data, "w", encoding="utf-8") as f:
    for r in records:
        f.write(json.dumps(r) + "\n")

qq = os.path.join(args.build, "qwen-quant")
pred_path = os.path.join(wd, "predictions.jsonl")
ours = json.loads(run([qq, "multiple-choice", "--model", model_dir, "--data", data, "--predictions", pred_path,
                       "--batch-tokens", "256", "--json", "-q"]).strip().splitlines()[-1])
preds = [json.loads(l) for l in open(pred_path, encoding="utf-8")]

tok = AutoTokenizer.from_pretrained(model_dir)
model = Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()


def encode_pair(context, continuation):
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    cont = whole[len(ctx):]
    return (ctx if ctx else [tok.eos_token_id]), cont


hits = hits_norm = 0
with torch.no_grad():
    for i, (context, delim, choices, label) in enumerate(items):
        lls = []
        for c in choices:
            ctx, cont = encode_pair(context, delim + c)
            x = torch.tensor([ctx + cont[:-1]])
            logp = torch.log_softmax(model(x).logits[0].double(), -1)
            lls.append(float(sum(logp[len(ctx) - 1 + k, t] for k, t in enumerate(cont))))
        norm = [ll / len(c) for ll, c in zip(lls, choices)]
        pred, pred_norm = max(range(4), key=lambda k: (lls[k], -k)), max(range(4), key=lambda k: (norm[k], -k))
        hits += pred == label
        hits_norm += pred_norm == label
        p = preds[i]
        check(p["label"] == label, f"item {i}: label {p['label']} vs {label}")
        for k in range(4):
            check(abs(p["loglik"][k] - lls[k]) <= LL_ABS_TOL, f"item {i} choice {k}: {p['loglik'][k]} vs {lls[k]}")
        check(p["pred"] == pred and p["pred_norm"] == pred_norm,
              f"item {i}: predictions {p['pred']}/{p['pred_norm']} vs {pred}/{pred_norm}")
print(f"reference: acc {hits / ITEMS:.4f}, acc_norm {hits_norm / ITEMS:.4f}; qwenq: {ours}")
check(ours["items"] == ITEMS and ours["acc"] == hits / ITEMS and ours["acc_norm"] == hits_norm / ITEMS,
      f"accuracies {ours['acc']}/{ours['acc_norm']} vs {hits / ITEMS}/{hits_norm / ITEMS}")
check(0 < hits < ITEMS, "a vacuous test: every prediction right or none")  # the model tells stories apart, not always
finish()
