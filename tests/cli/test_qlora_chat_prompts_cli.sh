#!/usr/bin/env bash
# qwen-qlora chat's /reset and its recovery from an error, and generate --prompts on the record kinds that need no
# chat template, on random tiny models (greedy: no generation_config.json), checked against independent runs. The chat
# half uses the tiny-moe preset (untied embeddings, seed 3): the tied `tiny` model repeats the last prompt token, so its
# replies would not depend on the conversation and could not tell one history from another.
#   - chat: after /reset a turn prints exactly what a fresh session prints for the same message, with the same prompt
#     token count, and --system survives the reset; a message that outgrows the context (max_position_embeddings 64)
#     is an error printed on stderr that leaves the conversation as it was (the next turn equals a session that never
#     had that message) and the process goes on;
#   - generate --prompts --batch 1 / 3 / 8 (the default): the same output file byte for byte, greedy and sampled;
#     --batch without --prompts and past 16 refused;
#   - generate --prompts (no --chat): an Alpaca instruction + input is prompted with exactly the prompt tokens that
#     `qwen-qlora data --dump` gives the same record for training (the SFT Alpaca template), a "text" or "prompt"
#     string as is; TRL's conversational prompt + completion takes the completion's last message as the reference;
#     a record the template cannot render, or too long for the context, is refused by file:line before the first
#     generation (the outputs are written only at the end: a late bad record must not cost the work before it).
# The renderings of chat records against transformers: tests/oracle/test_generate_prompts_oracle.py.
# $1 is qwen-quant; qwen-qlora is built beside it.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null 2>&1
"$QQ" init-random --preset tiny-moe --seed 3 --out "$WORK/moe" --dtype fp32 >/dev/null 2>&1
for m in tiny moe; do
  [ ! -e "$WORK/$m/generation_config.json" ] || fail "init-random wrote a generation_config.json (greedy assumed here)"
done

# chat SESSION ARGS...: feeds $WORK/SESSION.in to `qwen-qlora chat`; stdout to SESSION.out, stderr to SESSION.err.
chat() {
  local s="$1"; shift
  "$QL" chat --model "$WORK/moe" -n 6 --threads 1 "$@" < "$WORK/$s.in" > "$WORK/$s.out" 2> "$WORK/$s.err" \
    || fail "chat $s exited non-zero" "$WORK/$s.err"
}
# prompt_tokens SESSION: the prompt token counts of its turns, one per line.
prompt_tokens() { grep -o '^[0-9]* prompt tokens' "$WORK/$1.err" | cut -d' ' -f1; }
# same A B...: A's stdout is exactly the others' stdouts one after the other.
same() {
  local a="$1"; shift
  local f
  : > "$WORK/cat.out"
  for f in "$@"; do cat "$WORK/$f.out" >> "$WORK/cat.out"; done
  cmp -s "$WORK/$a.out" "$WORK/cat.out" || { diff <(od -c "$WORK/$a.out") <(od -c "$WORK/cat.out") || true;
    fail "chat $a printed other text than $* one after the other"; }
}

# /reset: "hello" then, after the reset, "again" as the first message of a new conversation.
printf 'hello\n/reset\nagain\n' > "$WORK/reset.in"
printf 'hello\n' > "$WORK/hello.in"
printf 'again\n' > "$WORK/again.in"
printf 'hello\nagain\n' > "$WORK/both.in"
for s in reset hello again both; do chat $s; done
same reset hello again
grep -qx "(conversation reset)" "$WORK/reset.err" || fail "no reset notice" "$WORK/reset.err"
[ "$(prompt_tokens reset)" = "$(printf '%s\n%s' "$(prompt_tokens hello)" "$(prompt_tokens again)")" ] \
  || fail "prompt tokens after /reset: $(prompt_tokens reset | tr '\n' ' ') (fresh: $(prompt_tokens hello) $(prompt_tokens again))"
# Without the reset the second turn sees the first: other prompt tokens and another reply, so the comparisons above
# can tell them apart.
[ "$(prompt_tokens both | sed -n 2p)" -gt "$(prompt_tokens again)" ] || fail "the second turn does not hold the first" "$WORK/both.err"
cat "$WORK/hello.out" "$WORK/again.out" | cmp -s - "$WORK/both.out" && fail "the reply to 'again' does not depend on the history"
# The same with a system message: kept by the reset, so the turn after it is a fresh session's with that system.
for s in reset hello again; do cp "$WORK/$s.in" "$WORK/sys_$s.in"; chat "sys_$s" --system "Answer in one word."; done
same sys_reset sys_hello sys_again
[ "$(prompt_tokens sys_reset | sed -n 2p)" = "$(prompt_tokens sys_again)" ] \
  || fail "prompt tokens after /reset with --system: $(prompt_tokens sys_reset | tr '\n' ' ') (fresh: $(prompt_tokens sys_again))"
[ "$(prompt_tokens sys_again)" -gt "$(prompt_tokens again)" ] || fail "--system did not reach the prompt" "$WORK/sys_again.err"
cmp -s "$WORK/sys_again.out" "$WORK/again.out" && fail "the reply does not depend on the system message"

# An error inside chat: with a context of 64 positions a long message cannot be prompted; the error names the reason
# and the way on, the failed message leaves the history, and the session goes on (and still resets).
python3 - "$WORK/moe/config.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["max_position_embeddings"] = 64
json.dump(d, open(sys.argv[1], "w"), indent=2)
PY
long=$(printf 'word %.0s' $(seq 1 20))  # 100 bytes: over 64 tokens of the byte-level vocabulary
printf 'hello\n%s\nagain\n/reset\nagain\n' "$long" > "$WORK/err.in"
chat err
grep -q "^qwen-qlora: error: generate: the prompt has [0-9]* tokens, the model's context is 64 (/reset starts a new conversation)$" \
  "$WORK/err.err" || fail "chat error message" "$WORK/err.err"
[ "$(grep -c "qwen-qlora: error" "$WORK/err.err")" -eq 1 ] || fail "expected one error" "$WORK/err.err"
for s in hello again both; do chat $s; done  # the same sessions on the 64-position model
same err both again
[ "$(prompt_tokens err)" = "$(printf '%s\n%s' "$(prompt_tokens both)" "$(prompt_tokens again)")" ] \
  || fail "prompt tokens around the error: $(prompt_tokens err | tr '\n' ' ')" "$WORK/err.err"
# The long message alone, in a fresh session: the same error, exit status 0 (EOF ends the session).
printf '%s\n' "$long" > "$WORK/long.in"
chat long
grep -q "the model's context is 64 (/reset starts a new conversation)" "$WORK/long.err" || fail "long message" "$WORK/long.err"
[ ! -s "$WORK/long.out" ] || fail "a failed turn printed text" "$WORK/long.out"

# generate --prompts without --chat: Alpaca (with and without input), text and prompt strings; TRL's conversational
# prompt + completion (the reference the completion's last message; none when that has no string content).
cat > "$WORK/prompts.jsonl" <<'JSONL'
{"instruction": "Add the numbers.", "input": "1 2", "output": "3"}
{"instruction": "Say hi.", "output": "hi"}
{"text": "Once upon a time"}
{"prompt": "The cat", "completion": " sat."}
{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello there."}]}
{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}]}
JSONL
"$QL" generate --model "$WORK/tiny" --prompts "$WORK/prompts.jsonl" --out "$WORK/preds.jsonl" -n 4 --threads 1 \
  > "$WORK/preds.txt" 2>&1 || fail "generate --prompts" "$WORK/preds.txt"
# --batch (records decoded together on the CPU; default 8): the same file, byte for byte, one record at a time and
# three at a time, also sampled (each record's sampler seeded alike) on the mixture-of-experts model.
printf '{"text": "%s"}\n' "Once" "Once upon a time" "The cat sat" "A" "Hello there, how are you" "Tom and" \
  > "$WORK/short.jsonl"
for b in 1 3; do
  "$QL" generate --model "$WORK/tiny" --prompts "$WORK/prompts.jsonl" --out "$WORK/preds.b$b.jsonl" -n 4 --threads 1 \
    --batch "$b" > "$WORK/preds.b$b.txt" 2>&1 || fail "generate --prompts --batch $b" "$WORK/preds.b$b.txt"
  cmp -s "$WORK/preds.jsonl" "$WORK/preds.b$b.jsonl" || fail "--batch $b changed the outputs" "$WORK/preds.b$b.jsonl"
  "$QL" generate --model "$WORK/moe" --prompts "$WORK/short.jsonl" --out "$WORK/moe.b$b.jsonl" -n 6 --threads 1 \
    --temperature 0.9 --seed 4 --batch "$b" > "$WORK/moe.b$b.txt" 2>&1 || fail "sampled --batch $b" "$WORK/moe.b$b.txt"
done
cmp -s "$WORK/moe.b1.jsonl" "$WORK/moe.b3.jsonl" || fail "--batch 3 changed the sampled outputs" "$WORK/moe.b3.jsonl"
grep -q "6/6 records" "$WORK/moe.b3.txt" || fail "no progress line for the last record" "$WORK/moe.b3.txt"
if "$QL" generate --model "$WORK/tiny" --prompt "Hi" --batch 2 -n 2 > "$WORK/b.txt" 2>&1; then
  fail "--batch without --prompts was accepted"
fi
grep -q -- "--batch goes with --prompts" "$WORK/b.txt" || fail "--batch without --prompts: unclear refusal" "$WORK/b.txt"
if "$QL" generate --model "$WORK/tiny" --prompts "$WORK/prompts.jsonl" --out "$WORK/b17.jsonl" --batch 17 \
  > "$WORK/b17.txt" 2>&1; then
  fail "--batch 17 was accepted"
fi
grep -q -- "--batch" "$WORK/b17.txt" || fail "--batch 17: unclear refusal" "$WORK/b17.txt"
# The Alpaca records as training reads them (the SFT Alpaca template, --alpaca-prompt stanford): the prompt is the
# tokens before the loss.
head -2 "$WORK/prompts.jsonl" > "$WORK/alpaca.jsonl"
"$QL" data --model "$WORK/tiny" --data "$WORK/alpaca.jsonl" --dump "$WORK/alpaca.dump.jsonl" > "$WORK/data.txt" 2>&1 \
  || fail "data --dump" "$WORK/data.txt"
# generate --prompt on one of the plain strings: the same prompt (every byte a token) and the same greedy text.
"$QL" generate --model "$WORK/tiny" --prompt "Once upon a time" -n 4 --threads 1 > "$WORK/one.txt" 2> /dev/null \
  || fail "generate --prompt"
python3 - "$WORK" <<'PY' || fail "generate --prompts records" "$WORK/preds.jsonl"
import json, sys
w = sys.argv[1]
r = [json.loads(l) for l in open(f"{w}/preds.jsonl", encoding="utf-8")]
dump = [json.loads(l) for l in open(f"{w}/alpaca.dump.jsonl", encoding="utf-8")]
assert len(r) == 6 and len(dump) == 2, (len(r), len(dump))
for x, d in zip(r, dump):
    n = d["loss_mask"].index(1)  # the prompt: every token before the first one in the loss
    assert d["loss_mask"][:n] == [0] * n and all(d["loss_mask"][n:]), d
    # Byte-level vocabulary (256 byte tokens + specials): the prompt's text is its ids' bytes.
    byte_text = bytes(bytearray(i for i in d["ids"][:n])).decode("utf-8")
    assert max(d["ids"][:n]) < 256 and x["prompt"] == byte_text, (x["prompt"], byte_text)
    assert x["prompt_tokens"] == n, (x, n)
    assert "message" not in x, x  # plain text prompts: no chat reply to read
assert r[0]["reference"] == "3" and r[1]["reference"] == "hi"
assert r[0]["prompt"].endswith("### Instruction:\nAdd the numbers.\n\n### Input:\n1 2\n\n### Response:\n"), r[0]
assert "### Input" not in r[1]["prompt"], r[1]
assert r[2]["prompt"] == "Once upon a time" and "reference" not in r[2], r[2]
assert r[2]["prompt_tokens"] == len("Once upon a time"), r[2]
one = open(f"{w}/one.txt", encoding="utf-8", errors="replace").read()
assert one == "Once upon a time" + r[2]["output"] + "\n", (one, r[2]["output"])
assert r[3]["prompt"] == "The cat" and r[3]["reference"] == " sat." and r[3]["prompt_tokens"] == 7, r[3]
# The conversational records render with the template's generation prompt; the reference is the completion's.
assert r[4]["prompt"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", r[4]
assert r[4]["reference"] == "Hello there." and r[4]["message"]["role"] == "assistant", r[4]
assert r[5]["prompt"] == r[4]["prompt"] and "reference" not in r[5], r[5]
assert r[5]["output"] == r[4]["output"], (r[4], r[5])
PY

# A record the template cannot render (tools, and the tiny model's template has no tools branch), and one too long for
# the 64-position model: refused by its line before any record is generated, and no output file is written.
cat > "$WORK/bad.jsonl" <<'JSONL'
{"messages": [{"role": "user", "content": "Hi"}]}
{"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "messages": [{"role": "user", "content": "Hi"}]}
JSONL
if "$QL" generate --model "$WORK/tiny" --prompts "$WORK/bad.jsonl" --out "$WORK/bad_preds.jsonl" -n 2 --threads 1 \
  > "$WORK/bad.txt" 2>&1; then
  fail "generate --prompts rendered tools with a template that has no tools branch"
fi
grep -q "^qwen-qlora: error: $WORK/bad.jsonl:2: .*the chat template has no tools branch$" "$WORK/bad.txt" \
  || fail "unrenderable record message" "$WORK/bad.txt"
if grep -q "records, " "$WORK/bad.txt"; then fail "generated records before refusing line 2" "$WORK/bad.txt"; fi
[ ! -e "$WORK/bad_preds.jsonl" ] || fail "generate --prompts wrote output after a refused record"
printf '{"text": "short"}\n{"text": "%s"}\n' "$long" > "$WORK/long.jsonl"
if "$QL" generate --model "$WORK/moe" --prompts "$WORK/long.jsonl" --out "$WORK/long_preds.jsonl" -n 2 --threads 1 \
  > "$WORK/long.txt" 2>&1; then
  fail "generate --prompts ran a record longer than the context"
fi
grep -q "^qwen-qlora: error: $WORK/long.jsonl:2: the prompt is 100 tokens, which leaves no room for a new one in the model's context of 64 (max_position_embeddings of $WORK/moe); shorten it$" \
  "$WORK/long.txt" || fail "too-long record message" "$WORK/long.txt"
if grep -q "records, " "$WORK/long.txt"; then fail "generated records before refusing line 2" "$WORK/long.txt"; fi
[ ! -e "$WORK/long_preds.jsonl" ] || fail "generate --prompts wrote output after a too-long record"
echo "qlora chat /reset, chat errors, generate --prompts records CLI: OK"
