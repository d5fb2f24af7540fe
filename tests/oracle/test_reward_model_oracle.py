"""Oracle: a reward model's scores (`--reward model=DIR` of `train --objective grpo`, trainer/reward_model.h) against
transformers' Qwen2ForSequenceClassification, with the texts TRL's GRPOTrainer builds for a reward model.

A tiny random Qwen2ForSequenceClassification (fp32, eager attention, weights spread, one label, pad_token_id the
real Qwen2 tokenizer's "<|endoftext|>", tied embeddings as Qwen2.5-0.5B's) with the real Qwen2 tokenizer from the
shared data (its ChatML template) is saved with save_pretrained. For standard prompts the text is prompt + completion;
for conversational ones the tokenizer's chat template over the prompt's messages and the assistant's completion
(TRL's apply_chat_template, no generation prompt). The texts are tokenized together as TRL does (padding on the right,
add_special_tokens=False) and the reward is logits[:, 0]. One completion ends in "<|endoftext|>", the pad token, so
the pooled position is the token before it. The gtest RewardModelOracle.* reads records.jsonl (prompt, completion,
text, ids, reward) and compares our text, tokens and score (tolerance there).
"""
import json
import os

from oracle_common import auto_tokenizer_for_chat, parse_args, require_shared, run_gtest, skip, spread_weights, work_dir

args = parse_args(__doc__)
require_shared(args.shared)
AutoTokenizer = auto_tokenizer_for_chat()
try:
    import torch
    import transformers
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers not importable: {e}")

print("transformers", transformers.__version__, "torch", torch.__version__)
out = work_dir(args.build, "reward_model_oracle")
rm_dir = os.path.join(out, "rm")
tok = AutoTokenizer.from_pretrained(os.path.join(args.shared, "data", "qwen2-tokenizer"))
pad = tok.convert_tokens_to_ids("<|endoftext|>")
torch.manual_seed(2468)
config = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=512,
                                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, num_labels=1,
                                  pad_token_id=pad)
config._attn_implementation = "eager"
model = transformers.Qwen2ForSequenceClassification(config).eval()
spread_weights(model)
model.save_pretrained(rm_dir, safe_serialization=True)
tok.save_pretrained(rm_dir)

user = lambda text: {"role": "user", "content": text}  # noqa: E731
cases = [
    ("Once upon a time", " there was a little dog named Max."),
    ("The capital of France is", " Paris, a city on the Seine."),
    ("Question: what is 2 + 2?\nAnswer:", " 4<|endoftext|>"),
    ("Café menu:", " crème brûlée ☕ and 日本茶"),
    ([user("Name a pet.")], "A dog."),
    ([{"role": "system", "content": "Answer in one word."}, user("What colour is the sky?")], "Blue"),
    ([user("Write a haiku about rain.")], "Soft rain on the roof\nthe garden drinks in silence\nnight smells of wet stone"),
]
texts = []
for prompt, completion in cases:
    if isinstance(prompt, str):
        texts.append(prompt + completion)
    else:
        messages = prompt + [{"role": "assistant", "content": completion}]
        texts.append(tok.apply_chat_template(messages, tokenize=False))
inputs = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
with torch.no_grad():
    rewards = model(**inputs).logits[:, 0]
with open(os.path.join(out, "records.jsonl"), "w") as f:
    for (prompt, completion), text, ids, mask, r in zip(cases, texts, inputs["input_ids"], inputs["attention_mask"],
                                                       rewards):
        ids = [int(t) for t, m in zip(ids, mask) if m]
        f.write(json.dumps({"prompt": prompt, "completion": completion, "text": text, "ids": ids,
                            "reward": float(r)}, ensure_ascii=False) + "\n")
        print(f"{float(r):+.6f}  {len(ids):3d} tokens  {text[:60]!r}")

run_gtest(args.build, "RewardModelOracle.*", {"QWENQ_ORACLE_REWARD_DIR": out})
print("reward model oracle: OK")
