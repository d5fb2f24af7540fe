"""Oracle: how `generate` picks tokens (trainer/sampling.h) against transformers' own logits processors, and a
generation_config.json read as transformers' generate() reads it.

1. Cases: seeded logits over vocabularies of 7, 64, 1000 and Qwen2.5's 151,936 (N(0, s²), s 0.5 to 4), contexts of
   repeated ids, and settings from transformers' GenerationConfig: do_sample with temperature, top_k, top_p, min_p,
   repetition_penalty in combinations (Qwen2.5-Instruct's 0.7/20/0.8/1.05 among them), and do_sample false with a
   penalty. transformers 4.51.3 builds the processor list itself (GenerationMixin._get_logits_processor on a tiny
   Qwen2ForCausalLM, so its order and its conditions are the library's) and applies it to the logits with the
   context as input_ids; the reference is softmax of the result (fp32) for sampling, its argmax for greedy.
2. The gtest SamplingOracle.* (tests/test_sampling_oracle.cpp) reads the cases and requires the same kept set and
   probabilities within 2e-6 + 1e-4·p (fp32 softmax against our double one), and the same greedy token.
3. End to end: stories260K with a generation_config.json of do_sample false and repetition_penalty 1.3: `qwen-quant
   generate` with no flags gives transformers' generate() with no arguments but max_new_tokens (both read the file),
   token for token, and differs from plain greedy.
"""
import json
import os
import shutil

import numpy as np

from oracle_common import import_stories260k, parse_args, require_shared, run, run_gtest, skip, work_dir

SEED = 7
PENALTY_E2E = 1.3
NEW_TOKENS = 60

args = parse_args(__doc__)
try:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM
except ImportError as e:
    skip(f"transformers/torch not importable: {e}")

wd = work_dir(args.build, "sampling")
tiny = Qwen2ForCausalLM(Qwen2Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                    num_attention_heads=1, num_key_value_heads=1)).eval()

SETTINGS = [  # (do_sample, temperature, top_k, top_p, min_p, repetition_penalty)
    (True, 1.0, 0, 1.0, None, 1.0),
    (True, 0.7, 20, 0.8, None, 1.05),   # Qwen2.5-Instruct's generation_config.json
    (True, 0.5, 40, 0.7, None, 1.1),    # Qwen2's
    (True, 1.3, 0, 0.9, None, 1.0),
    (True, 0.8, 5, 1.0, None, 2.0),
    (True, 1.0, 0, 1.0, 0.1, 1.0),
    (True, 0.6, 50, 0.95, 0.05, 1.2),
    (False, 1.0, 50, 1.0, None, 1.3),
    (False, 1.0, 50, 1.0, None, 0.7),   # a penalty below 1 favours repeats
]
rng = np.random.default_rng(SEED)
cases = []
for V in (7, 64, 1000, 151936):
    for i, (do_sample, t, k, p, m, rep) in enumerate(SETTINGS):
        if V == 151936 and k == 0 and p == 1.0:
            continue  # every token kept: the same check as at V = 1000, 600 KB of JSON more
        scale = [0.5, 2.0, 4.0][i % 3]
        logits = (rng.standard_normal(V) * scale).astype(np.float32)
        context = rng.integers(0, V, size=12).tolist()
        context += context[:4]  # repeated ids: penalized once
        gc = GenerationConfig(do_sample=do_sample, temperature=t, top_k=k, top_p=p, min_p=m, repetition_penalty=rep)
        gc._eos_token_tensor = None  # what generate()'s _prepare_special_tokens sets without an eos token
        procs = tiny._get_logits_processor(generation_config=gc, input_ids_seq_length=len(context),
                                           encoder_input_ids=None, prefix_allowed_tokens_fn=None,
                                           logits_processor=LogitsProcessorList(), device="cpu")
        scores = procs(torch.tensor([context]), torch.tensor(logits)[None, :].clone())[0]
        case = {"vocab": V, "logits": logits.tolist(), "context": context, "do_sample": do_sample,
                "temperature": t, "top_k": k, "top_p": p, "min_p": m or 0.0, "repetition_penalty": rep,
                "processors": [type(x).__name__ for x in procs]}
        if do_sample:
            probs = torch.softmax(scores, dim=-1)
            kept = torch.nonzero(probs > 0).flatten().tolist()
            case["kept"] = kept
            case["probs"] = probs[kept].tolist()
        else:
            case["greedy"] = int(torch.argmax(scores))
        cases.append(case)
path = os.path.join(wd, "cases.json")
with open(path, "w") as f:
    json.dump({"cases": cases}, f)
print(f"{len(cases)} cases; processors of the Qwen2.5-Instruct case: {cases[1]['processors']}")
run_gtest(args.build, "SamplingOracle.*", {"QWENQ_SAMPLING_ORACLE": path})

require_shared(args.shared)
qq = os.path.join(args.build, "qwen-quant")
model_dir = os.path.join(wd, "stories260K-hf")
import_stories260k(args.build, args.shared, model_dir)
pen_dir = os.path.join(wd, "stories260K-penalty")
shutil.rmtree(pen_dir, ignore_errors=True)
shutil.copytree(model_dir, pen_dir)
gen_path = os.path.join(pen_dir, "generation_config.json")
with open(gen_path) as f:
    gen = json.load(f)
gen.update({"do_sample": False, "repetition_penalty": PENALTY_E2E})
with open(gen_path, "w") as f:
    json.dump(gen, f)
prompt = "Once upon a time"
tok = AutoTokenizer.from_pretrained(pen_dir)
model = Qwen2ForCausalLM.from_pretrained(pen_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
print("transformers' generation config:", model.generation_config.to_diff_dict())
enc = tok(prompt, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**enc, max_new_tokens=NEW_TOKENS)
    plain = model.generate(**enc, max_new_tokens=NEW_TOKENS, repetition_penalty=1.0)
hf_text = tok.decode(out[0], skip_special_tokens=True)
plain_text = tok.decode(plain[0], skip_special_tokens=True)
ours_text = run([qq, "generate", "--model", pen_dir, "--prompt", prompt, "-n", str(NEW_TOKENS), "--threads", "1"])
print("qwenq generate:       ", repr(ours_text))
print("transformers generate:", repr(hf_text))
print("without the penalty:  ", repr(plain_text))
if ours_text.strip() != hf_text.strip():
    raise SystemExit("FAIL: generations with the model's repetition_penalty differ")
if hf_text.strip() == plain_text.strip():
    raise SystemExit(f"FAIL: repetition_penalty {PENALTY_E2E} changed nothing (the check would not see a difference)")
print("PASS")
