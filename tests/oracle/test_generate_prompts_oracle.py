"""Oracle: the chat prompts of `qwen-qlora generate --prompts` against transformers' apply_chat_template.

1. A random tiny model (`qwen-quant init-random --preset tiny`, its byte-level Qwen2Tokenizer, which transformers
   loads) with Qwen2.5's and Qwen3's chat templates (tests/data/chat_templates/) runs an evaluation set through
   `qwen-qlora generate --prompts ... -n 1`, with and without --system, --no-thinking and --chat. Every record's
   "prompt" equals apply_chat_template(messages, tools=..., add_generation_prompt=True, enable_thinking=...) of the
   conversation written out here independently: a final assistant message removed (it is the reference), a
   --system message put first unless the record opens with its own, ShareGPT's "conversations" mapped to roles with
   the record's "system" first and its "tools" string read with json.loads, a tool-call message without "content"
   passed without it; "prompt_tokens" equals the length of the Hugging Face encoding of that text, and "reference"
   is the record's answer (the final assistant message, or the last message of a conversational "completion").
2. The same ShareGPT and tool-call records with the real Qwen2 tokenizer (../shared/data/qwen2-tokenizer plus Qwen's
   added tokens, as tests/oracle/test_chat_template_oracle.py builds it): `qwen-quant tokenize --chat` text and ids
   equal Hugging Face's with and without the generation prompt.
Exit 0 pass, 1 fail (every mismatch printed), 77 skip.
"""
import copy
import json
import os
import shutil

from oracle_common import auto_tokenizer_for_chat, check, finish, parse_args, require_shared, run, work_dir
from test_chat_template_oracle import TEMPLATES, make_dirs

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}}


def records():
    """(name, record, messages, tools, reference): the record as written to the prompt file, and the conversation
    transformers renders for it, written out by hand (before --system)."""
    sharegpt_tools = json.dumps([WEATHER])
    return [
        ("chat_reference",
         {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
         [{"role": "user", "content": "What is 2+2?"}], None, "4"),
        ("own_system",
         {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]},
         [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], None, None),
        ("prompt_completion_lists",
         {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                     {"role": "user", "content": "c"}],
          "completion": [{"role": "assistant", "content": "first"}, {"role": "assistant", "content": "d"}]},
         [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
         None, "d"),
        ("sharegpt_tools_string",
         {"system": "Use tools.", "tools": sharegpt_tools,
          "conversations": [{"from": "human", "value": "Weather in Oslo?"}, {"from": "gpt", "value": "Cold."}]},
         [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Oslo?"}],
         json.loads(sharegpt_tools), "Cold."),
        ("sharegpt_tools_array",
         {"tools": [WEATHER], "conversations": [{"from": "user", "value": "Weather?"}]},
         [{"role": "user", "content": "Weather?"}], [WEATHER], None),
        ("sharegpt_tools_empty_string",
         {"tools": "", "conversations": [{"from": "human", "value": "No tools here."}]},
         [{"role": "user", "content": "No tools here."}], None, None),
        ("tool_call_without_content",
         {"tools": [WEATHER], "messages": [
             {"role": "user", "content": "Weather in Oslo for 2 days?"},
             {"role": "assistant", "tool_calls": [CALL]},
             {"role": "tool", "content": "{\"temp\": -3}"}]},
         [{"role": "user", "content": "Weather in Oslo for 2 days?"}, {"role": "assistant", "tool_calls": [CALL]},
          {"role": "tool", "content": "{\"temp\": -3}"}], [WEATHER], None),
        ("tool_call_null_content_then_answer",
         {"tools": [WEATHER], "messages": [
             {"role": "user", "content": "Oslo?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
             {"role": "tool", "content": "cold"}, {"role": "assistant", "content": "It is cold."}]},
         [{"role": "user", "content": "Oslo?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
          {"role": "tool", "content": "cold"}], [WEATHER], "It is cold."),
    ]


def with_system(messages, system):
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}] + messages
    return messages


def tiny_model(qq, root, template_name):
    d = os.path.join(root, f"tiny-{template_name}")
    run([qq, "init-random", "--preset", "tiny", "--out", d, "--dtype", "fp32", "--overwrite"])
    path = os.path.join(d, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    with open(os.path.join(TEMPLATES, template_name + ".jinja"), encoding="utf-8") as f:
        cfg["chat_template"] = f.read()
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
    return d


def write_records(path, recs):
    """The records of `recs` (records()' tuples) as a JSONL file at `path`; returns path."""
    with open(path, "w", encoding="utf-8") as f:
        for _, r, _, _, _ in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def check_generate_prompts(qq, ql, root, hf_auto):
    recs = records()
    prompts = write_records(os.path.join(root, "prompts.jsonl"), recs)
    n = 0
    for tname in ("qwen2.5", "qwen3"):
        d = tiny_model(qq, root, tname)
        hf = hf_auto.from_pretrained(d)
        for system in ("", "Be brief."):
            for think in (True, False):
                out = os.path.join(root, f"preds-{tname}-s{int(bool(system))}-t{int(think)}.jsonl")
                cmd = [ql, "generate", "--model", d, "--prompts", prompts, "--out", out, "-n", "1", "--threads", "1"]
                cmd += ["--system", system] if system else []
                cmd += [] if think else ["--no-thinking"]
                run(cmd)
                with open(out, encoding="utf-8") as f:
                    ours = [json.loads(line) for line in f]
                check(len(ours) == len(recs), f"{out}: {len(ours)} records, expected {len(recs)}")
                for (name, _, msgs, tools, ref), o in zip(recs, ours):
                    what = f"{tname} {name} system={system!r} enable_thinking={think}"
                    kw = {"tools": tools} if tools else {}
                    text = hf.apply_chat_template(copy.deepcopy(with_system(msgs, system)), tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=think, **kw)
                    if check(o["prompt"] == text, f"{what}: prompt differs\n  ours: {o['prompt']!r}\n  HF:   {text!r}"):
                        ids = hf(text, add_special_tokens=False)["input_ids"]
                        check(o["prompt_tokens"] == len(ids), f"{what}: {o['prompt_tokens']} prompt tokens, HF {len(ids)}")
                    check(o.get("reference") == ref, f"{what}: reference {o.get('reference')!r}, expected {ref!r}")
                    check(o["new_tokens"] == 1 and o["message"]["role"] == "assistant", f"{what}: output record {o}")
                    n += 1
        # --chat wraps plain records as one user turn (and an Alpaca instruction + input as instruction\ninput).
        plain = os.path.join(root, "plain.jsonl")
        with open(plain, "w", encoding="utf-8") as f:
            f.write(json.dumps({"instruction": "Add.", "input": "1 2", "output": "3"}) + "\n")
            f.write(json.dumps({"text": "Once upon a time"}) + "\n")
        out = os.path.join(root, f"preds-{tname}-plain.jsonl")
        run([ql, "generate", "--model", d, "--prompts", plain, "--out", out, "--chat", "--system", "S", "-n", "1",
             "--threads", "1"])
        with open(out, encoding="utf-8") as f:
            ours = [json.loads(line) for line in f]
        for user, o in zip(("Add.\n1 2", "Once upon a time"), ours):
            text = hf.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": user}],
                                          tokenize=False, add_generation_prompt=True)
            check(o["prompt"] == text, f"{tname} --chat {user!r}: prompt differs\n  ours: {o['prompt']!r}\n  HF:   {text!r}")
            n += 1
    return n


def check_tokenize_real_vocabulary(qq, shared, root, hf_auto):
    dirs = make_dirs(shared, os.path.join(root, "real"))
    recs = [r for r in records() if r[0].startswith("sharegpt") or r[0].startswith("tool_call")]
    path = write_records(os.path.join(root, "real.jsonl"), recs)
    n = 0
    for tname in ("qwen2.5", "qwen3"):
        hf = hf_auto.from_pretrained(dirs[tname])
        for gen in (False, True):
            out = os.path.join(root, f"real-{tname}-g{int(gen)}.jsonl")
            run([qq, "tokenize", "--model", dirs[tname], "--chat", "--file", path, "--out", out, "-q"]
                + (["--add-generation-prompt"] if gen else []))
            with open(out, encoding="utf-8") as f:
                ours = [json.loads(line) for line in f]
            check(len(ours) == len(recs), f"{out}: {len(ours)} records, expected {len(recs)}")
            for (name, r, msgs, tools, ref), o in zip(recs, ours):
                full = list(msgs) + ([{"role": "assistant", "content": ref}] if ref is not None else [])
                kw = {"tools": tools} if tools else {}
                text = hf.apply_chat_template(copy.deepcopy(full), tokenize=False, add_generation_prompt=gen, **kw)
                what = f"real {tname} {name} generation_prompt={gen}"
                if check(o["text"] == text, f"{what}: text differs\n  ours: {o['text']!r}\n  HF:   {text!r}"):
                    ids = hf(text, add_special_tokens=False)["input_ids"]
                    check(o["ids"] == ids, f"{what}: ids differ\n  ours: {o['ids']}\n  HF:   {ids}")
                n += 1
    return n


def main():
    args = parse_args(__doc__.split("\n")[0])
    require_shared(args.shared)
    AutoTokenizer = auto_tokenizer_for_chat()
    qq = os.path.join(args.build, "qwen-quant")
    ql = os.path.join(args.build, "qwen-qlora")
    root = work_dir(args.build, "generate_prompts")
    shutil.rmtree(root)
    os.makedirs(root)
    n1 = check_generate_prompts(qq, ql, root, AutoTokenizer)
    n2 = check_tokenize_real_vocabulary(qq, args.shared, root, AutoTokenizer)
    print(f"{n1} generate --prompts prompts and {n2} tokenize --chat renderings with the real Qwen2 vocabulary equal to "
          f"transformers' apply_chat_template")
    finish()


if __name__ == "__main__":
    main()
