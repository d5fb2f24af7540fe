#!/usr/bin/env bash
# Chat data end to end with Qwen3's chat template (tests/data/chat_templates/qwen3.jinja) on a random tiny model:
# `qwen-qlora data` shows the loss spans (the reasoning block and the answer; with --no-thinking the empty block is
# prompt; --train-on-prompt counts every token) and dumps the examples; ShareGPT records and Alpaca records with
# --alpaca-prompt chat give the examples of the same conversation in "messages", TRL's prompt-completion spelling
# those of "messages" with --mask-history; `qwen-quant tokenize --chat` renders generation prompts; `train` runs on
# reasoning and tool-call records; `gptq` calibrates, `imatrix` collects and `eval` scores on chat records; `generate --prompts` runs an
# evaluation set as `generate --chat --no-thinking` does one prompt; malformed records are named by file:line.
# $1 is qwen-quant; qwen-qlora is built beside it.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null 2>&1
python3 - "$WORK/tiny/tokenizer_config.json" "$SRC/tests/data/chat_templates/qwen3.jinja" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["chat_template"] = open(sys.argv[2]).read()
json.dump(d, open(sys.argv[1], "w"), indent=2)
PY
cat > "$WORK/chat.jsonl" <<'JSONL'
{"messages": [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": "Rayleigh scattering.", "reasoning_content": "Short light scatters more."}]}
{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
{"tools": [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}], "messages": [{"role": "user", "content": "Time?"}, {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": {}}}]}, {"role": "tool", "content": "12:00"}, {"role": "assistant", "content": "Noon."}]}
JSONL

# data --show: the spans between the markers.
"$QL" data --model "$WORK/tiny" --data "$WORK/chat.jsonl" --show 3 > "$WORK/show.txt" 2>&1 || fail "data --show" "$WORK/show.txt"
grep -q "⟦<think>$" "$WORK/show.txt" || fail "reasoning block not in the loss" "$WORK/show.txt"
grep -qF "Rayleigh scattering.<|im_end|>⟧" "$WORK/show.txt" || fail "answer not in the loss" "$WORK/show.txt"
grep -qF '⟦<tool_call>' "$WORK/show.txt" || fail "tool call not in the loss" "$WORK/show.txt"
grep -qF '<tool_response>' "$WORK/show.txt" || fail "tool response missing" "$WORK/show.txt"
if grep -qF '⟦<tool_response>' "$WORK/show.txt"; then fail "a tool response is in the loss" "$WORK/show.txt"; fi
grep -q "chat.jsonl: chat, 3 records, .* tokens (.* in the loss)" "$WORK/show.txt" || fail "summary line" "$WORK/show.txt"
# --no-thinking: "Hello." loses its empty think block from the loss; --dump writes one line per example.
"$QL" data --model "$WORK/tiny" --data "$WORK/chat.jsonl" --dump "$WORK/think.jsonl" > /dev/null 2>&1 || fail "data --dump"
"$QL" data --model "$WORK/tiny" --data "$WORK/chat.jsonl" --no-thinking --dump "$WORK/nothink.jsonl" \
  > "$WORK/nothink.txt" 2>&1 || fail "data --no-thinking" "$WORK/nothink.txt"
"$QL" data --model "$WORK/tiny" --data "$WORK/chat.jsonl" --train-on-prompt --dump "$WORK/all.jsonl" > /dev/null 2>&1 \
  || fail "data --train-on-prompt"
python3 - "$WORK/all.jsonl" <<'PY' || fail "--train-on-prompt loss masks"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    assert r["loss_mask"] == [0] + [1] * (len(r["ids"]) - 1), r["where"]
PY
python3 - "$WORK/think.jsonl" "$WORK/nothink.jsonl" <<'PY' || fail "--no-thinking loss masks"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 3, (len(a), len(b))
for x, y in zip(a, b):
    assert x["ids"] == y["ids"] and x["text"] == y["text"], "the text must not change"
    assert len(x["ids"]) == len(x["loss_mask"])
assert sum(a[0]["loss_mask"]) == sum(b[0]["loss_mask"]), "a real reasoning block stays in the loss"
assert sum(a[1]["loss_mask"]) == sum(b[1]["loss_mask"]) + len("<think>\n\n</think>\n\n".encode()), "empty block"
assert a[1]["where"].endswith("chat.jsonl:2")
PY

# The same conversations spelled as ShareGPT records, and as Alpaca records with --alpaca-prompt chat: the same
# examples (ids, masks, text) as their "messages" spelling.
cat > "$WORK/msgs.jsonl" <<'JSONL'
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Add\n1 2"}, {"role": "assistant", "content": "3"}]}
JSONL
cat > "$WORK/sharegpt.json" <<'JSON'
[{"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Add\n1 2"}, {"from": "gpt", "value": "3"}]}]
JSON
cat > "$WORK/alpaca.json" <<'JSON'
[{"system": "Be brief.", "history": [["Hi", "Hello."]], "instruction": "Add", "input": "1 2", "output": "3"}]
JSON
"$QL" data --model "$WORK/tiny" --data "$WORK/msgs.jsonl" --dump "$WORK/msgs.dump" > /dev/null 2>&1 || fail "data (messages)"
"$QL" data --model "$WORK/tiny" --data "$WORK/sharegpt.json" --dump "$WORK/sharegpt.dump" > "$WORK/sharegpt.txt" 2>&1 \
  || fail "data (ShareGPT)" "$WORK/sharegpt.txt"
"$QL" data --model "$WORK/tiny" --data "$WORK/alpaca.json" --alpaca-prompt chat --dump "$WORK/alpaca.dump" \
  > "$WORK/alpaca.txt" 2>&1 || fail "data --alpaca-prompt chat" "$WORK/alpaca.txt"
python3 - "$WORK/msgs.dump" "$WORK/sharegpt.dump" "$WORK/alpaca.dump" <<'PY' || fail "ShareGPT / Alpaca-chat examples"
import json, sys
a, b, c = ([json.loads(l) for l in open(p)] for p in sys.argv[1:4])
for other in (b, c):
    assert [(r["ids"], r["loss_mask"], r["text"]) for r in a] == [(r["ids"], r["loss_mask"], r["text"]) for r in other]
PY
# TRL's conversational prompt-completion spelling of the same conversation: the same tokens, the loss on "3" only.
cat > "$WORK/pc.jsonl" <<'JSONL'
{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Add\n1 2"}], "completion": [{"role": "assistant", "content": "3"}]}
JSONL
"$QL" data --model "$WORK/tiny" --data "$WORK/pc.jsonl" --dump "$WORK/pc.dump" > "$WORK/pc.txt" 2>&1 \
  || fail "data (prompt-completion)" "$WORK/pc.txt"
grep -q "pc.jsonl: prompt-completion, 1 records" "$WORK/pc.txt" || fail "prompt-completion summary" "$WORK/pc.txt"
"$QL" data --model "$WORK/tiny" --data "$WORK/msgs.jsonl" --mask-history --dump "$WORK/last.dump" > /dev/null 2>&1 \
  || fail "data --mask-history"
python3 - "$WORK/pc.dump" "$WORK/last.dump" <<'PY' || fail "prompt-completion != messages with --mask-history"
import json, sys
a, b = (json.loads(open(p).readline()) for p in sys.argv[1:3])
assert (a["ids"], a["loss_mask"], a["text"]) == (b["ids"], b["loss_mask"], b["text"])
PY
if "$QL" data --model "$WORK/tiny" --data "$WORK/alpaca.json" --alpaca-prompt jinja > "$WORK/ap.txt" 2>&1; then
  fail "--alpaca-prompt jinja accepted"
fi
grep -q -- "--alpaca-prompt must be stanford or chat" "$WORK/ap.txt" || fail "--alpaca-prompt message" "$WORK/ap.txt"

# tokenize --chat: the generation prompt with and without the switch.
rec='{"messages": [{"role": "user", "content": "hi"}]}'
"$QQ" tokenize --model "$WORK/tiny" --chat --text "$rec" --add-generation-prompt --no-thinking -q > "$WORK/tok.json" \
  2>&1 || fail "tokenize --chat" "$WORK/tok.json"
python3 - "$WORK/tok.json" <<'PY' || fail "tokenize --chat text" "$WORK/tok.json"
import json, sys
r = json.loads(open(sys.argv[1]).readline())
assert r["text"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", r["text"]
assert len(r["ids"]) > 0
PY

# train on the records (reasoning, tool calls), then generate --chat --no-thinking.
"$QL" train --model "$WORK/tiny" --data "$WORK/chat.jsonl" --out "$WORK/run" --max-steps 2 --seq-len 256 --threads 1 \
  --no-thinking -q > "$WORK/train.txt" 2>&1 || fail "train on chat records" "$WORK/train.txt"
"$QL" generate --model "$WORK/tiny" --adapter "$WORK/run" --chat --no-thinking --prompt "Hi" -n 4 --threads 1 \
  > "$WORK/gen.txt" 2>&1 || fail "generate --chat --no-thinking" "$WORK/gen.txt"

# Chat records as calibration (gptq) and evaluation text: rendered with the template, as text records are read.
"$QQ" gptq --model "$WORK/tiny" --out "$WORK/gptq" --calib "$WORK/chat.jsonl" --calib-samples 4 --calib-seq-len 32 \
  --group-size 32 --threads 1 -q > "$WORK/gptq.txt" 2>&1 || fail "gptq calibrated on chat records" "$WORK/gptq.txt"
"$QQ" eval --model "$WORK/gptq" --data "$WORK/chat.jsonl" --seq-len 32 --threads 1 -q --json > "$WORK/eval.json" \
  2> "$WORK/eval.err" || fail "eval on chat records" "$WORK/eval.err"
grep -q '"perplexity"' "$WORK/eval.json" || fail "eval JSON" "$WORK/eval.json"
"$QQ" imatrix --model "$WORK/tiny" --calib "$WORK/chat.jsonl" --ctx 32 --out "$WORK/imatrix.gguf" --threads 1 -q \
  > "$WORK/imatrix.txt" 2>&1 || fail "imatrix on chat records" "$WORK/imatrix.txt"
grep -q "chat records rendered with the chat template, special tokens parsed" "$WORK/imatrix.txt" \
  || fail "imatrix did not render the chat records" "$WORK/imatrix.txt"

# generate --prompts: a chat record (its final assistant message the reference), TRL's prompt + completion, Alpaca
# with --chat; greedy outputs equal `generate --chat --prompt` on the same user turn; each reply read back as a
# message (reasoning and tool calls: tests/test_chat_reply.cpp).
cat > "$WORK/eval.jsonl" <<'JSONL'
{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
{"prompt": "Hi", "completion": "ref"}
{"instruction": "Add", "input": "1 2", "output": "3"}
JSONL
"$QL" generate --model "$WORK/tiny" --adapter "$WORK/run" --prompts "$WORK/eval.jsonl" --out "$WORK/preds.jsonl" \
  --chat --no-thinking -n 6 --threads 1 > "$WORK/preds.txt" 2>&1 || fail "generate --prompts" "$WORK/preds.txt"
grep -q "wrote $WORK/preds.jsonl: 3 records" "$WORK/preds.txt" || fail "generate --prompts summary" "$WORK/preds.txt"
"$QL" generate --model "$WORK/tiny" --adapter "$WORK/run" --chat --no-thinking --prompt "Hi" -n 6 --threads 1 \
  > "$WORK/one.txt" 2> /dev/null || fail "generate --chat"
python3 - "$WORK/preds.jsonl" "$WORK/one.txt" <<'PY' || fail "generate --prompts records" "$WORK/preds.jsonl"
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
assert len(r) == 3
think = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
assert r[0]["prompt"] == "<|im_start|>user\nHi<|im_end|>\n" + think and r[0]["reference"] == "Hello.", r[0]
assert r[1]["prompt"] == r[0]["prompt"] and r[1]["reference"] == "ref", r[1]
assert r[2]["prompt"] == "<|im_start|>user\nAdd\n1 2<|im_end|>\n" + think and r[2]["reference"] == "3", r[2]
assert r[0]["output"] == r[1]["output"] == open(sys.argv[2]).read()[:-1], (r[0]["output"], open(sys.argv[2]).read())
assert all(x["new_tokens"] >= 1 and x["prompt_tokens"] > 5 for x in r)
# Each reply also as the assistant message the template renders it from (6 random bytes: plain content).
for x in r:
    m = x["message"]
    assert m["role"] == "assistant" and "tool_calls" not in m, x
    assert m["content"] == x["output"] or "</think>" in x["output"] or "tool_call_error" in x, x
PY
if "$QL" generate --model "$WORK/tiny" --prompts "$WORK/bad.jsonl" > "$WORK/gp.txt" 2>&1; then fail "--prompts without --out ran"; fi
grep -q -- "generate --prompts needs --out" "$WORK/gp.txt" || fail "--prompts without --out: message" "$WORK/gp.txt"

# Malformed records: named by file:line, with the way out.
printf '%s\n%s\n' '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}' \
  '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool_calls": [{"function": {"arguments": {}}}]}]}' \
  > "$WORK/bad.jsonl"
if "$QL" data --model "$WORK/tiny" --data "$WORK/bad.jsonl" > "$WORK/bad.txt" 2>&1; then fail "data accepted a malformed record"; fi
grep -qF "bad.jsonl:2: messages[1]: tool_calls[0]: expected a string \"name\" (pass --skip-bad" "$WORK/bad.txt" \
  || fail "malformed-record message" "$WORK/bad.txt"
if "$QQ" tokenize --model "$WORK/tiny" --chat --text '{"messages": 3}' > "$WORK/bad2.txt" 2>&1; then
  fail "tokenize --chat accepted a malformed record"
fi
grep -qF -- '--text:1: field "messages" is number, expected an array' "$WORK/bad2.txt" || fail "tokenize --chat message" "$WORK/bad2.txt"
echo "chat data CLI: OK"
