"""Oracle: our native chat templates against transformers' apply_chat_template (Jinja), text, ids and loss spans.

Five tokenizer directories share the real Qwen2 vocabulary and merges (../shared/data/qwen2-tokenizer) plus Qwen's
added tokens <tool_call>, </tool_call>, <tool_response>, </tool_response>, <think>, </think> (not special, ids as in
Qwen2.5/Qwen3), and differ in their chat template:
  qwen2-early   the shared tokenizer_config.json's (early Qwen2-Instruct: the assistant prompt after each user turn)
  qwen2         Qwen2-Instruct's plain ChatML with a default "You are a helpful assistant." turn
  qwen2-escapes plain ChatML whose default system text spells Jinja escapes (\\\\n, \\', \\", \\\\, \\t)
  qwen2.5       tests/data/chat_templates/qwen2.5.jinja (default system text, tools, tool calls, tool responses)
  qwen3         tests/data/chat_templates/qwen3.jinja (reasoning blocks, enable_thinking, tools)
  qwen3-think   qwen3.jinja with the generation prompt "<|im_start|>assistant\\n<think>\\n" (thinking-only models)
For every conversation a template can render (tools and tool calls only with a tools branch):
  1. `qwen-quant tokenize --chat` with and without --add-generation-prompt and --no-thinking: the text equals
     apply_chat_template(messages, tools=..., tokenize=False, add_generation_prompt=..., enable_thinking=...) and
     the ids equal the Hugging Face tokenizer's encoding of it (add_special_tokens=False);
  2. `qwen-qlora data --dump` (the trainer's examples, with and without --no-thinking): the text is Hugging Face's
     rendering, and the ids and loss mask equal the example computed here from it independently: spans from each
     "<|im_start|>assistant\\n" (past the generation prompt's own think block) through the next "<|im_end|>", the
     text cut at their ends and each piece encoded by the Hugging Face tokenizer on its own (so a response starting
     with a line break does not merge with the prompt's; counted and printed).
Exit 0 pass, 1 fail (every mismatch printed), 77 skip.
"""
import json
import os
import shutil

from oracle_common import auto_tokenizer_for_chat, check, finish, parse_args, require_shared, run, skip, work_dir

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "..", "data", "chat_templates")
# The added tokens of Qwen2.5's and Qwen3's tokenizers after the shared file's three (151643-151645), contiguous
# as there (special: the <|...|> ones).
ADDED = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
         "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
         "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
         "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN2_PLAIN = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
               "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
               "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Plain ChatML whose default system text has Jinja escapes: \\n (a backslash and an n, not a newline), \', \",
# \\\\ and \t; its own system turn is a double-quoted literal followed by the message.
QWEN2_ESCAPES = (r"""{% for message in messages %}{% if loop.first and messages[0]['role'] == 'system' %}"""
                 r"""{{ "<|im_start|>system\n" + message['content'] + "<|im_end|>\n" }}{% elif loop.first %}"""
                 r"""{{ '<|im_start|>system\nIt\'s a \"test\": use \\nabla,\tC:\\\\dir\\n.<|im_end|>\n' }}{% endif %}"""
                 r"""{% if not (loop.first and message['role'] == 'system') %}"""
                 r"""{{ "<|im_start|>" + message['role'] + "\n" + message['content'] + "<|im_end|>\n" }}{% endif %}"""
                 r"""{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}""")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7.5}},
                   "required": ["city"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Web search, «quoted» & \"escaped\".",
                                           "parameters": {"type": "object", "properties": {}}}}

ARGS = {"city": "Paris", "unit": "celsius", "days": 3, "ratio": 0.25, "zero": 0.0, "negzero": -0.0, "tiny": 1e-7, "big": 1e20, "whole": 100.0,
        "neg": -0.5, "ok": True, "none": None, "list": [1, 2.5, "x", [], {}], "uni": "Zürich ☀ 東京",
        "quote": "a\"b\\c\nd\te\u0001"}


def conversations():
    """(name, record, has_assistant) for the records every test renders."""
    call = lambda name, args: {"type": "function", "function": {"name": name, "arguments": args}}  # noqa: E731
    c = [
        ("single", {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]}),
        ("system", {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4"}]}),
        ("multi_turn", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}),
        ("think_in_content", {"messages": [{"role": "user", "content": "Why?"},
                                           {"role": "assistant", "content": "<think>\nBecause.\n</think>\n\nSo it is."}]}),
        ("think_multi_turn", {"messages": [
            {"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>r1</think>a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "<think>\n\nr2 <think> nested\n\n</think>\n\na2 </think> tail"}]}),
        ("reasoning_field", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                                           "reasoning_content": "step 1\nstep 2\n"}]}),
        ("reasoning_field_empty", {"messages": [{"role": "user", "content": "q"},
                                                {"role": "assistant", "content": "x</think>y", "reasoning_content": ""}]}),
        ("reasoning_history", {"messages": [
            {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "reasoning_content": None}]}),
        ("tools_weather", {"tools": [WEATHER, SEARCH], "messages": [
            {"role": "system", "content": "You are a bot."}, {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call("get_weather", ARGS)]},
            {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "second"},
            {"role": "assistant", "content": "It is 21 °C."}]}),
        ("tools_no_system", {"tools": [SEARCH], "messages": [
            {"role": "user", "content": "Find x"},
            {"role": "assistant", "content": "Let me check.",
             "tool_calls": [call("search", "{\"q\": \"x\"}"), {"name": "search", "arguments": {}}]},
            {"role": "tool", "content": "res"}, {"role": "assistant", "content": "done"}]}),
        ("tools_empty_content", {"tools": [WEATHER], "messages": [
            {"role": "user", "content": "Two cities"},
            {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Oslo"}),
                                                                call("get_weather", {"city": "Rome"})]},
            {"role": "tool", "content": "cold"}, {"role": "tool", "content": "warm"},
            {"role": "assistant", "content": "<think>\ncompare\n</think>\n\nOslo is colder."}]}),
        ("multi_step_tool", {"tools": [SEARCH], "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [call("search", {"q": "q"})],
             "reasoning_content": "plan"},
            {"role": "user", "content": "<tool_response>\nok\n</tool_response>"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\nfinal"}]}),
        ("system_in_middle", {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "new rule"},
                                           {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}),
        ("unicode", {"messages": [{"role": "user", "content": "Ünïcödé 你好\nline2"},
                                  {"role": "assistant", "content": "Réponse\n\nwith  spaces "}]}),
        ("prompt_only", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]}),
        # Tool messages without tool calls or tools: a plain template renders them as a "tool" turn, the early
        # Qwen2 one skips them, Qwen2.5/Qwen3 wrap them in a user turn (opening one at message 0 too).
        ("tool_messages_only", {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r1"},
                                             {"role": "tool", "content": "r2"}, {"role": "assistant", "content": "a"}]}),
        ("tool_first", {"messages": [{"role": "tool", "content": "r"}, {"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "a"}]}),
        # Qwen3's last query: a user message that opens "<tool_response>" without closing it is a query (message 2),
        # so message 1 keeps no think block.
        ("open_tool_response_short", {"messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r0</think>a0"},
            {"role": "user", "content": "<tool_response>"}, {"role": "assistant", "content": "a1"}]}),
        ("open_tool_response", {"messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r0</think>a0"},
            {"role": "user", "content": "<tool_response>\nok"}, {"role": "assistant", "content": "a1"}]}),
        ("prompt_after_tool", {"tools": [SEARCH], "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [call("search", {"q": 1})]},
            {"role": "tool", "content": "r"}]}),
    ]
    return [(n, r, any(m["role"] == "assistant" for m in r["messages"])) for n, r in c]


def uses_tools(rec):
    """Whether the record needs a template's tools branch (tools or tool calls; tool messages alone do not)."""
    return bool(rec.get("tools")) or any(m.get("tool_calls") for m in rec["messages"])


def make_dirs(shared, root):
    src = os.path.join(shared, "data", "qwen2-tokenizer")
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        base_cfg = json.load(f)
    with open(os.path.join(TEMPLATES, "qwen2.5.jinja"), encoding="utf-8") as f:
        q25 = f.read()
    with open(os.path.join(TEMPLATES, "qwen3.jinja"), encoding="utf-8") as f:
        q3 = f.read()
    gen = ("{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is "
           "defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n"
           "{%- endif %}\n")
    if gen not in q3:
        skip("qwen3.jinja does not end with the generation prompt this test rewrites")
    q3_think = q3.replace(gen, "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n"
                               "{%- endif %}\n")
    templates = {"qwen2-early": base_cfg["chat_template"], "qwen2": QWEN2_PLAIN, "qwen2-escapes": QWEN2_ESCAPES,
                 "qwen2.5": q25, "qwen3": q3, "qwen3-think": q3_think}
    dirs = {}
    for name, tpl in templates.items():
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        for fn in ("vocab.json", "merges.txt"):
            shutil.copyfile(os.path.join(src, fn), os.path.join(d, fn))
        cfg = json.loads(json.dumps(base_cfg))
        cfg["chat_template"] = tpl
        for i, t in enumerate(ADDED):
            cfg["added_tokens_decoder"][str(151646 + i)] = {"content": t, "lstrip": False, "normalized": False,
                                                            "rstrip": False, "single_word": False,
                                                            "special": t.startswith("<|")}
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=2)
        dirs[name] = d
    return dirs


def expected_example(hf, text, think_skip):
    """The trainer's example as defined, computed here with Hugging Face's tokenizer: the spans are found in the
    text independently (after each "<|im_start|>assistant\\n", past the generation prompt's own think block
    `think_skip` when the text goes on with it, through the next "<|im_end|>" with no "<|im_start|>" between), the
    text is cut at their ends, each piece encoded on its own; ids and mask (1 on response pieces, 0 at position 0)."""
    head, end_tok = "<|im_start|>assistant\n", "<|im_end|>"
    spans, at = [], text.find(head)
    while at >= 0:
        b = at + len(head)
        if think_skip and text.startswith(think_skip, b):
            b += len(think_skip)
        e = text.find(end_tok, b)
        if e >= 0 and text.find("<|im_start|>", b, e) < 0:
            spans.append((b, e + len(end_tok)))
        at = text.find(head, b)
    ids, mask, done = [], [], 0
    for b, e in spans + [(len(text), len(text))]:
        for piece, loss in ((text[done:b], 0), (text[b:e], 1)):
            if piece:
                p = hf(piece, add_special_tokens=False)["input_ids"]
                ids += p
                mask += [loss] * len(p)
        done = e
    if mask:
        mask[0] = 0
    return ids, mask


def main():
    args = parse_args(__doc__.split("\n")[0])
    require_shared(args.shared)
    AutoTokenizer = auto_tokenizer_for_chat()
    qq = os.path.join(args.build, "qwen-quant")
    ql = os.path.join(args.build, "qwen-qlora")
    root = work_dir(args.build, "chat_template")
    dirs = make_dirs(args.shared, root)
    convs = conversations()
    n_text = n_mask = n_boundary = 0
    for tname, d in dirs.items():
        hf = AutoTokenizer.from_pretrained(d)
        has_tools = tname.startswith("qwen2.5") or tname.startswith("qwen3")
        recs = [(n, r, a) for n, r, a in convs if has_tools or not uses_tools(r)]
        path = os.path.join(root, f"{tname}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for _, r, _ in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        # 1. Rendering (and generation prompts) through `qwen-quant tokenize --chat`.
        for gen in (False, True):
            for think in (True, False):
                out = os.path.join(root, f"{tname}-g{int(gen)}-t{int(think)}.jsonl")
                cmd = [qq, "tokenize", "--model", d, "--chat", "--file", path, "--out", out, "-q"]
                cmd += ["--add-generation-prompt"] if gen else []
                cmd += [] if think else ["--no-thinking"]
                run(cmd)
                with open(out, encoding="utf-8") as f:
                    ours = [json.loads(line) for line in f]
                check(len(ours) == len(recs), f"{tname}: {len(ours)} records rendered, expected {len(recs)}")
                for (name, r, _), o in zip(recs, ours):
                    kw = {"tools": r["tools"]} if r.get("tools") else {}
                    text = hf.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=gen,
                                                  enable_thinking=think, **kw)
                    what = f"{tname} {name} generation_prompt={gen} enable_thinking={think}"
                    if check(o["text"] == text, f"{what}: text differs\n  ours: {o['text']!r}\n  HF:   {text!r}"):
                        ids = hf(text, add_special_tokens=False)["input_ids"]
                        check(o["ids"] == ids, f"{what}: ids differ\n  ours: {o['ids']}\n  HF:   {ids}")
                    n_text += 1
        # 2. Training examples and loss masks through `qwen-qlora data --dump`.
        train = [(n, r) for n, r, a in recs if a]
        tpath = os.path.join(root, f"{tname}-train.jsonl")
        with open(tpath, "w", encoding="utf-8") as f:
            for _, r in train:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for think in (True, False):
            out = os.path.join(root, f"{tname}-train-t{int(think)}.dump.jsonl")
            cmd = [ql, "data", "--model", d, "--data", tpath, "--format", "chat", "--dump", out]
            cmd += [] if think else ["--no-thinking"]
            run(cmd)
            with open(out, encoding="utf-8") as f:
                ours = [json.loads(line) for line in f]
            check(len(ours) == len(train), f"{tname}: {len(ours)} examples dumped, expected {len(train)}")
            think_skip = "<think>\n" if tname == "qwen3-think" else ("<think>\n\n</think>\n\n"
                                                                    if tname == "qwen3" and not think else "")
            for (name, r), o in zip(train, ours):
                kw = {"tools": r["tools"]} if r.get("tools") else {}
                text = hf.apply_chat_template(r["messages"], tokenize=False, enable_thinking=think, **kw)
                ids, mask = expected_example(hf, text, think_skip)
                what = f"{tname} {name} (train, enable_thinking={think})"
                check(o["text"] == text, f"{what}: text differs\n  ours: {o['text']!r}\n  HF:   {text!r}")
                if not check(o["ids"] == ids, f"{what}: ids differ\n  ours: {o['ids']}\n  here: {ids}"):
                    continue
                if not check(o["loss_mask"] == mask, f"{what}: loss mask differs\n  ours: {o['loss_mask']}\n  here: {mask}"):
                    continue
                check(sum(mask) > 0, f"{what}: no token in the loss")
                n_mask += 1
                n_boundary += ids != hf(text, add_special_tokens=False)["input_ids"]
    print(f"{n_text} renderings equal to transformers' apply_chat_template (text and ids), {n_mask} training "
          f"examples with equal ids and loss masks, over {len(dirs)} templates; {n_boundary} of the examples encode "
          f"differently from their whole text (a response that starts with a line break)")
    finish()


if __name__ == "__main__":
    main()
