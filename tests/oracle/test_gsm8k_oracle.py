"""Oracle: `qwen-quant gsm8k` against lm-evaluation-harness's gsm8k task rebuilt from its definition with the Python
stack: prompts from Python's own random.Random(1234).sample, greedy generation by transformers, lm-eval's stop-string
cut, its two regex filters and its exact-match normalization with Python's re module.

1. A tiny random Qwen2ForCausalLM (seeded, weights spread by oracle_common.spread_weights, the byte-level tokenizer of
   `qwen-quant init-random --preset tiny`): its greedy outputs are arbitrary bytes, digits among them, so that both
   extractions find numbers (stories260K writes none). Items in
   GSM8K's layout made from TinyStories: the question a story's first sentence; the few-shot pool 12 such records
   with "... #### <n>" answers.
2. Reference: for each item in order, random.Random(FEWSHOT_SEED).sample(pool, FEWSHOT) (one generator for the run, as
   lm-eval's sampler), the prompt "Question: q\\nAnswer: a\\n\\n" per example + "Question: q\\nAnswer:", tokens without
   special tokens, Qwen2ForCausalLM.generate greedy (fp32, eager) for NEW_TOKENS tokens, decoded skipping special
   tokens, cut at "Question:", "</s>", "<|im_end|>"; strict "#### (\\-?[0-9\\.\\,]+)" (first) and flexible
   "(-?[$0-9.,]{2,})|(-?[0-9]+)" (last, non-empty group) with "[invalid]" as fallback; answers and extractions through
   re.sub of ",", "\\$", "(?s).*#### ", "\\.$" and lower(). The answers of half the items are set from the reference's
   own flexible extraction, so that both verdicts occur.
3. Ours: `qwen-quant gsm8k --fewshot 3 --fewshot-data pool.jsonl --predictions`.
Requirements: every prompt, output, extraction and verdict equal; the accuracies equal.
"""
import json
import os
import random
import re
import shutil

from oracle_common import check, finish, parse_args, require_shared, run, skip, spread_weights, work_dir

ITEMS = 16
FEWSHOT = 3
FEWSHOT_SEED = 1234
NEW_TOKENS = 40
MODEL_SEED = 11
DIGIT_SCALE = 3.0
UNTIL = ["Question:", "</s>", "<|im_end|>"]

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
except ImportError as e:
    skip(f"transformers/torch not importable: {e}")

qq = os.path.join(args.build, "qwen-quant")
wd = work_dir(args.build, "gsm8k")
base_dir, tok_dir = os.path.join(wd, "tiny"), os.path.join(wd, "tok")
run([qq, "init-random", "--preset", "tiny", "--out", tok_dir, "--overwrite"])
torch.manual_seed(MODEL_SEED)
model = Qwen2ForCausalLM(Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                     rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                     attn_implementation="eager")).eval()
spread_weights(model)
with torch.no_grad():  # digits likelier than the rest, so that outputs hold numbers: their output rows scaled up
    vocab = json.load(open(os.path.join(tok_dir, "vocab.json"), encoding="utf-8"))
    digit_ids = [vocab[d] for d in "0123456789"]
    model.lm_head.weight[digit_ids] *= DIGIT_SCALE
shutil.rmtree(base_dir, ignore_errors=True)
model.save_pretrained(base_dir, safe_serialization=True)
for f in os.listdir(tok_dir):
    if f not in ("model.safetensors", "config.json"):
        shutil.copy(os.path.join(tok_dir, f), base_dir)
with open(os.path.join(args.shared, "data", "tinystories", "tinystories_val.txt"), encoding="utf-8") as f:
    sentences = [s.strip() + "." for s in f.read().split(".") if 20 < len(s.strip()) < 120][:ITEMS + 12]
pool = [{"question": s, "answer": f"They counted {i + 2} of them.\n#### {i + 2}"} for i, s in enumerate(sentences[:12])]
items = [{"question": s, "answer": "#### 7"} for s in sentences[12:12 + ITEMS]]

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def regex_filter(regex, resp, group_select):
    match = regex.findall(resp)
    if not match:
        return "[invalid]"
    match = match[group_select]
    if isinstance(match, tuple):
        match = [m for m in match if m]
        match = match[0] if match else "[invalid]"
    return match.strip()


def normalize(x):
    for s in [",", "\\$", "(?s).*#### ", "\\.$"]:
        x = re.sub(s, "", x)
    return x.lower()


tok = AutoTokenizer.from_pretrained(base_dir)
rnd = random.Random(FEWSHOT_SEED)
ref = []
for it in items:
    shots = rnd.sample(pool, FEWSHOT)
    prompt = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    prompt += f"Question: {it['question']}\nAnswer:"
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    for term in UNTIL:
        text = text.split(term)[0]
    ref.append({"prompt": prompt, "output": text, "strict": regex_filter(STRICT, text, 0),
                "flexible": regex_filter(FLEXIBLE, text, -1)})
for i, (it, r) in enumerate(zip(items, ref)):  # half the answers from the reference's extraction: matches happen
    if i % 2 == 0 and r["flexible"] != "[invalid]":
        it["answer"] = f"So it is {r['flexible']}.\n#### {r['flexible']}"
for it, r in zip(items, ref):
    r["strict_match"] = normalize(r["strict"]) == normalize(it["answer"])
    r["flexible_match"] = normalize(r["flexible"]) == normalize(it["answer"])

data, pool_path, preds = (os.path.join(wd, n) for n in ("items.jsonl", "pool.jsonl", "preds.jsonl"))
for path, recs in ((data, items), (pool_path, pool)):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
ours = json.loads(run([qq, "gsm8k", "--model", base_dir, "--data", data, "--fewshot", str(FEWSHOT), "--fewshot-data",
                       pool_path, "--max-new-tokens", str(NEW_TOKENS), "--predictions", preds, "--json", "--quiet"])
                  .strip().splitlines()[-1])
with open(preds, encoding="utf-8") as f:
    got = [json.loads(line) for line in f]
check(len(got) == ITEMS, f"{len(got)} predictions")
for i, (g, r) in enumerate(zip(got, ref)):
    for key in ("prompt", "output", "strict", "flexible", "strict_match", "flexible_match"):
        check(g[key] == r[key], f"item {i} {key}: qwenq {g[key]!r} vs reference {r[key]!r}")
flex = sum(r["flexible_match"] for r in ref) / ITEMS
strict = sum(r["strict_match"] for r in ref) / ITEMS
print(f"reference: strict {strict:.4f}, flexible {flex:.4f}; qwenq: strict {ours['exact_match_strict']:.4f}, "
      f"flexible {ours['exact_match_flexible']:.4f}")
numbers = sum(r["flexible"] != "[invalid]" for r in ref)
print(f"{numbers} of {ITEMS} outputs hold a number; first output: {ref[0]['output']!r}")
check(ours["exact_match_strict"] == strict and ours["exact_match_flexible"] == flex, "accuracies")
check(numbers >= 2, "too few outputs with a number for a meaningful check")
finish()
