#!/usr/bin/env bash
# Decoding settings from the model's generation_config.json, as transformers' generate() takes them: without one the
# tiny model decodes greedily (transformers' do_sample false); with Qwen2's real file (do_sample, temperature 0.5,
# top_k 40, top_p 0.7, repetition_penalty 1.1) both tools sample with those settings and say where they came from;
# flags override each one; --greedy keeps greedy decoding (the penalty still applies); a malformed file is refused by
# name; gsm8k takes the file's repetition penalty for its greedy decoding, as lm-eval's hf backend. The settings'
# effect on the distribution is tests/test_sampling.cpp and tests/oracle/test_sampling_oracle.py.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null 2>&1
gen() {  # gen OUT TOOL SUBCOMMAND MODEL ARGS...: text into OUT.txt, stderr into OUT.err
  local out="$1" tool="$2" sub="$3" model="$4"; shift 4
  "$tool" "$sub" --model "$model" --prompt "Once upon a time" -n 16 --threads 1 "$@" > "$WORK/$out.txt" \
    2> "$WORK/$out.err" || fail "$out: $tool $sub $*" "$WORK/$out.err"
}
says() {  # says OUT TEXT: OUT.err has the sampling line TEXT
  grep -qxF -- "$2" "$WORK/$1.err" || fail "$1: no line '$2'" "$WORK/$1.err"
}
gen plain "$QQ" generate "$WORK/tiny"
says plain "sampling: greedy (transformers' defaults: the model has no generation_config.json; flags override)"
gen plain_t "$QQ" generate "$WORK/tiny" --temperature 0.8 --seed 3
says plain_t "sampling: temperature 0.8, top-k 50, top-p 1, seed 3 (transformers' defaults: the model has no generation_config.json; flags override, --greedy decodes greedily)"

cp -r "$WORK/tiny" "$WORK/gc"
if [ -f "$SRC/../shared/data/qwen2-tokenizer/generation_config.json" ]; then
  cp "$SRC/../shared/data/qwen2-tokenizer/generation_config.json" "$WORK/gc/"
else  # the same values as Qwen2's file (a user's clone has no ../shared)
  printf '{"do_sample": true, "eos_token_id": [151645, 151643], "repetition_penalty": 1.1, "temperature": 0.5, "top_k": 40, "top_p": 0.7}\n' \
    > "$WORK/gc/generation_config.json"
fi
G="$WORK/gc/generation_config.json"
gen qq_gc "$QQ" generate "$WORK/gc" --seed 5
says qq_gc "sampling: temperature 0.5, top-k 40, top-p 0.7, seed 5, repetition penalty 1.1 (from $G; flags override, --greedy decodes greedily)"
gen qq_gc2 "$QQ" generate "$WORK/gc" --seed 5
cmp -s "$WORK/qq_gc.txt" "$WORK/qq_gc2.txt" || fail "sampling with one seed differs between runs"
gen ql_gc "$QL" generate "$WORK/gc" --seed 5
says ql_gc "sampling: temperature 0.5, top-k 40, top-p 0.7, seed 5, repetition penalty 1.1 (from $G; flags override, --greedy decodes greedily)"
cmp -s "$WORK/qq_gc.txt" "$WORK/ql_gc.txt" || fail "qwen-qlora and qwen-quant generate sample differently"
gen over "$QQ" generate "$WORK/gc" --top-k 7 --min-p 0.05 --repetition-penalty 1 --seed 5
says over "sampling: temperature 0.5, top-k 7, top-p 0.7, min-p 0.05, seed 5 (from $G; flags override, --greedy decodes greedily)"
gen greedy "$QQ" generate "$WORK/gc" --greedy
says greedy "sampling: greedy, repetition penalty 1.1 (from $G; flags override)"
gen greedy_raw "$QQ" generate "$WORK/gc" --greedy --repetition-penalty 1
says greedy_raw "sampling: greedy"
cmp -s "$WORK/plain.txt" "$WORK/greedy_raw.txt" || fail "--greedy --repetition-penalty 1 is not the plain greedy text"
gen t0 "$QQ" generate "$WORK/gc" --temperature 0 --repetition-penalty 1
cmp -s "$WORK/plain.txt" "$WORK/t0.txt" || fail "--temperature 0 is not greedy"
gen greedy_pen "$QQ" generate "$WORK/gc" --greedy --repetition-penalty 5  # the tiny model repeats one byte
cmp -s "$WORK/greedy_pen.txt" "$WORK/greedy_raw.txt" && fail "--repetition-penalty 5 changed nothing in 16 greedy tokens"

# gsm8k decodes greedily as lm-eval's hf backend does: model.generate(do_sample=False) over the same file, so its
# repetition_penalty applies unless --repetition-penalty says otherwise.
printf '{"question": "1+1?", "answer": "#### 2"}\n' > "$WORK/gsm.jsonl"
"$QQ" gsm8k --model "$WORK/gc" --data "$WORK/gsm.jsonl" -n 8 --json > "$WORK/gsm.json" 2> "$WORK/gsm.err" \
  || fail "gsm8k with a generation config" "$WORK/gsm.err"
says gsm "decoding: greedy, repetition penalty 1.1 (from $G, as lm-eval's hf backend applies it; --repetition-penalty 1 for plain greedy)"
"$QQ" gsm8k --model "$WORK/gc" --data "$WORK/gsm.jsonl" -n 8 --json --repetition-penalty 1 > "$WORK/gsm1.json" \
  2> "$WORK/gsm1.err" || fail "gsm8k --repetition-penalty 1" "$WORK/gsm1.err"
grep -q "^decoding:" "$WORK/gsm1.err" && fail "gsm8k --repetition-penalty 1 still names a penalty" "$WORK/gsm1.err"
python3 - "$WORK/gsm.json" "$WORK/gsm1.json" <<'PY' || fail "gsm8k's JSON lacks its repetition penalty" "$WORK/gsm.json"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert abs(a["repetition_penalty"] - 1.1) < 1e-6 and b["repetition_penalty"] == 1.0, (a, b)
PY

refuse() {  # refuse NAME TEXT ARGS...: exits non-zero naming TEXT, one error line
  local name="$1" want="$2"; shift 2
  if "$@" > "$WORK/$name.txt" 2>&1; then fail "$name: accepted" "$WORK/$name.txt"; fi
  grep -qF -- "$want" "$WORK/$name.txt" || fail "$name: no '$want'" "$WORK/$name.txt"
}
refuse both "--greedy and --temperature 0.7 contradict each other" "$QQ" generate --model "$WORK/gc" --prompt x \
  --greedy --temperature 0.7
refuse inf "--temperature inf: must be finite and >= 0" "$QQ" generate --model "$WORK/gc" --prompt x --temperature inf
printf '{"do_sample": true, "temperature": "hot"}\n' > "$G"
refuse bad_t "$G: field \"temperature\" must be a number, got \"hot\"" "$QQ" generate --model "$WORK/gc" --prompt x
printf '{"do_sample": true, "top_p": 1.5}\n' > "$G"
refuse bad_p "$G: \"top_p\" 1.5 outside (0, 1]" "$QL" generate --model "$WORK/gc" --prompt x
printf '{"do_sample": true,' > "$G"
refuse bad_json "$G: not valid JSON" "$QQ" generate --model "$WORK/gc" --prompt x
# --chat: the system and user turns rendered by the model's ChatML template with the generation prompt; sampling with
# one seed then continues exactly as from that text given as a plain prompt (which the output echoes first).
chat_text=$'<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n'
"$QQ" generate --model "$WORK/tiny" --chat --system "Be brief." --prompt "Hello there" -n 12 --temperature 1.5 --seed 3 \
  --threads 1 > "$WORK/chat.txt" 2> "$WORK/chat.err" || fail "generate --chat" "$WORK/chat.err"
"$QQ" generate --model "$WORK/tiny" --prompt "$chat_text" -n 12 --temperature 1.5 --seed 3 --threads 1 \
  > "$WORK/chat_plain.txt" 2> "$WORK/chat_plain.err" || fail "generate on the rendered text" "$WORK/chat_plain.err"
printf '%s' "$chat_text" > "$WORK/chat_prompt.txt"
python3 - "$WORK/chat_plain.txt" "$WORK/chat_prompt.txt" "$WORK/chat.txt" <<'PY' || fail "generate --chat differs" "$WORK/chat.err"
import sys
plain, prompt, chat = (open(f, "rb").read() for f in sys.argv[1:4])
assert plain.startswith(prompt), (plain, prompt)
assert chat and plain[len(prompt):] == chat, (plain[len(prompt):], chat)
PY
grep -q "^49 prompt tokens, 12 new tokens" "$WORK/chat.err" || fail "generate --chat: not the 49 prompt tokens" "$WORK/chat.err"
echo "generate sampling CLI: OK"
