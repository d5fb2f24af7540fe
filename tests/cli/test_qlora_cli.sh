#!/usr/bin/env bash
# qwen-qlora merge / generate / chat / eval end to end on a random tiny model: an adapter from a few `qwen-qlora train`
# steps (a large learning rate, so B is far from 0), merged into an fp32 directory; greedy text from the base with
# --adapter (applied unmerged) equals greedy text from the merged directory and scores the text as it does within
# fp32 reassociation, on the fp32 base and on an NF4 one (whose packed base stays packed); chat answers
# each line until /exit and keeps the history; the refusals (no adapter directory, no chat template) are clear and
# leave nothing behind. $1 is qwen-quant; qwen-qlora is built beside it.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

for sub in merge generate eval chat; do
  "$QL" "$sub" --help > "$WORK/help.txt" || fail "$sub --help" "$WORK/help.txt"
  grep -q -- "--model" "$WORK/help.txt" || fail "$sub --help lacks --model" "$WORK/help.txt"
done
grep -q -- "--adapter" "$WORK/help.txt" || fail "chat --help lacks --adapter" "$WORK/help.txt"

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null 2>&1
for i in $(seq 1 16); do echo '{"text": "Once upon a time there was a little cat who liked to play in the sun."}'; done \
  > "$WORK/data.jsonl"
"$QL" train --model "$WORK/tiny" --data "$WORK/data.jsonl" --out "$WORK/run" --max-steps 4 --lr 0.05 --seq-len 64 \
  --threads 1 -q > "$WORK/train.txt" 2>&1 || fail "adapter fixture: qwen-qlora train failed" "$WORK/train.txt"
[ -s "$WORK/run/adapter_model.safetensors" ] || fail "no adapter in $WORK/run" "$WORK/train.txt"

# merge: one summary line and the re-quantization hint; a dense directory without quantization_config.
"$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/merged" --dtype fp32 --threads 1 -q \
  > "$WORK/merge.txt" 2>&1 || fail "merge" "$WORK/merge.txt"
grep -q "^wrote $WORK/merged: 14 Linear layers .* merged with $WORK/run, weights in fp32, 1 shard(s)" "$WORK/merge.txt" \
  || fail "merge summary line" "$WORK/merge.txt"
grep -q "qwen-quant gptq|awq|nf4 --model $WORK/merged" "$WORK/merge.txt" || fail "re-quantize hint" "$WORK/merge.txt"
[ -s "$WORK/merged/model.safetensors" ] && [ -s "$WORK/merged/vocab.json" ] || fail "merged files" "$WORK/merge.txt"
if grep -q quantization_config "$WORK/merged/config.json"; then fail "quantization_config in merged config.json"; fi
# A second merge onto the same output needs --overwrite.
if "$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/merged" -q > "$WORK/again.txt" 2>&1; then
  fail "merge replaced an existing directory without --overwrite"
fi
grep -q -- "--overwrite" "$WORK/again.txt" || fail "overwrite message" "$WORK/again.txt"

# merge --gguf: one GGUF file (no directory left beside it) that scores as the merged directory does: F32 exactly, Q8_0
# within its rounding; an existing file needs --overwrite.
"$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/merged.gguf" --gguf f32 --dtype fp32 --threads 1 \
  -q > "$WORK/merge_gguf.txt" 2>&1 || fail "merge --gguf" "$WORK/merge_gguf.txt"
grep -q "^wrote $WORK/merged.gguf: 14 Linear layers .* as GGUF f32 (qwen2)" "$WORK/merge_gguf.txt" \
  || fail "merge --gguf summary line" "$WORK/merge_gguf.txt"
[ ! -e "$WORK/merged.gguf.merged" ] || fail "merge --gguf left its dense copy"
"$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/merged8.gguf" --gguf q8_0 --threads 1 -q \
  > "$WORK/merge_gguf8.txt" 2>&1 || fail "merge --gguf q8_0" "$WORK/merge_gguf8.txt"
echo "Once upon a time there was a little cat who liked to play in the sun with a ball." > "$WORK/text.txt"
for m in merged merged.gguf merged8.gguf; do
  "$QQ" eval --model "$WORK/$m" --data "$WORK/text.txt" --seq-len 16 --json --threads 1 -q > "$WORK/ppl_$m.json" \
    2>/dev/null || fail "eval of $m"
done
python3 - "$WORK" <<'PY' || fail "merge --gguf perplexities"
import json, sys
p = {m: json.load(open(f"{sys.argv[1]}/ppl_{m}.json"))["perplexity"] for m in ("merged", "merged.gguf", "merged8.gguf")}
assert p["merged.gguf"] == p["merged"], p
assert abs(p["merged8.gguf"] - p["merged"]) < 0.01 * p["merged"] and p["merged8.gguf"] != p["merged"], p
PY
if "$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/merged.gguf" --gguf f32 -q \
  > "$WORK/again_gguf.txt" 2>&1; then
  fail "merge --gguf replaced an existing file without --overwrite"
fi
grep -q "merged.gguf: already exists (pass --overwrite to replace it)" "$WORK/again_gguf.txt" \
  || fail "merge --gguf refusal" "$WORK/again_gguf.txt"
# merge --gguf --imatrix-calib: the merged model's importance matrix, kept beside the file, then the same bytes as
# `qwen-quant imatrix` on the merged directory followed by `qwen-quant gguf --imatrix`.
for i in $(seq 1 12); do echo "Once upon a time there was a little cat number $i who liked to play in the sun."; done \
  > "$WORK/calib.txt"
"$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/mq4.gguf" --gguf q4_0 --imatrix-calib \
  "$WORK/calib.txt" --imatrix-ctx 64 --dtype fp32 --threads 1 -q > "$WORK/merge_im.txt" 2>&1 \
  || fail "merge --imatrix-calib" "$WORK/merge_im.txt"
grep -q "as GGUF q4_0 (qwen2), importance matrix $WORK/mq4.imatrix.gguf" "$WORK/merge_im.txt" \
  || fail "merge --imatrix-calib summary" "$WORK/merge_im.txt"
"$QQ" imatrix --model "$WORK/merged" --calib "$WORK/calib.txt" --ctx 64 --out "$WORK/m.imatrix.gguf" --threads 1 -q \
  > /dev/null 2>&1 || fail "imatrix of the merged directory"
"$QQ" gguf --model "$WORK/merged" --out "$WORK/mq4b.gguf" --type q4_0 --imatrix "$WORK/m.imatrix.gguf" --threads 1 -q \
  > /dev/null 2>&1 || fail "gguf --imatrix of the merged directory"
python3 - "$WORK" <<'PY' || fail "merge --imatrix-calib: other tensors than imatrix + gguf --imatrix"
import sys
w = sys.argv[1]
a, b = open(f"{w}/mq4.gguf", "rb").read(), open(f"{w}/mq4b.gguf", "rb").read()
# The metadata differs (general.name, quantize.imatrix.file); the tensor data at the end of the files must not.
n = 200000 if len(a) > 200000 else len(a) // 2
assert a[-n:] == b[-n:], (len(a), len(b))
PY
if "$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/mq.gguf" --imatrix "$WORK/m.imatrix.gguf" -q \
  > "$WORK/merge_im_bad.txt" 2>&1; then
  fail "merge --imatrix without --gguf accepted"
fi
grep -q -- "--imatrix and --imatrix-calib quantize a GGUF file: give --gguf TYPE too" "$WORK/merge_im_bad.txt" \
  || fail "merge --imatrix without --gguf: message" "$WORK/merge_im_bad.txt"

# generate: the unmerged adapter and the merged directory give the same greedy text (and plain and --chat run).
"$QL" generate --model "$WORK/tiny" --adapter "$WORK/run" --prompt "Once upon a time" -n 24 --threads 1 \
  > "$WORK/gen_adapter.txt" 2> "$WORK/gen_adapter.err" || fail "generate --adapter" "$WORK/gen_adapter.err"
# Without --model the adapter's adapter_config.json names the base (PEFT's AutoPeftModelForCausalLM): the same text.
"$QL" generate --adapter "$WORK/run" --prompt "Once upon a time" -n 24 --threads 1 > "$WORK/gen_auto.txt" \
  2> "$WORK/gen_auto.err" || fail "generate --adapter without --model" "$WORK/gen_auto.err"
cmp -s "$WORK/gen_adapter.txt" "$WORK/gen_auto.txt" || fail "the adapter's own base generates other text" "$WORK/gen_auto.txt"
grep -q "^model: $WORK/tiny (the base --adapter $WORK/run names in adapter_config.json)" "$WORK/gen_auto.err" \
  || fail "no line names the adapter's base" "$WORK/gen_auto.err"
if "$QL" generate --prompt "x" > "$WORK/gen_none.txt" 2>&1; then fail "generate without --model or --adapter ran"; fi
grep -q "give --model (or an --adapter whose adapter_config.json names its base model)" "$WORK/gen_none.txt" \
  || fail "unclear refusal of generate without a model" "$WORK/gen_none.txt"
"$QL" generate --model "$WORK/merged" --prompt "Once upon a time" -n 24 --threads 1 \
  > "$WORK/gen_merged.txt" 2> "$WORK/gen_merged.err" || fail "generate on merged" "$WORK/gen_merged.err"
cmp -s "$WORK/gen_adapter.txt" "$WORK/gen_merged.txt" || { diff <(od -c "$WORK/gen_adapter.txt") \
  <(od -c "$WORK/gen_merged.txt") || true; fail "--adapter and the merged directory generate different text"; }
grep -q "^Once upon a time" "$WORK/gen_adapter.txt" || fail "prompt not echoed" "$WORK/gen_adapter.txt"
grep -q "adapter $WORK/run applied unmerged (base kept as stored): 7 target(s)" "$WORK/gen_adapter.err" \
  || fail "adapter line" "$WORK/gen_adapter.err"
# qwen-quant eval --adapter: the unmerged adapter scores the text as the merged directory does, up to the branch's
# fp32 reassociation (kUnmergedPplRelTol), and differently from the base. The same on an NF4 base with its LoftQ
# adapter (nf4 --loftq-rank) against that pair merged into an fp32 directory.
"$QQ" nf4 --model "$WORK/tiny" --out "$WORK/tiny_nf4" --loftq-rank 4 --threads 1 -q > "$WORK/nf4.txt" 2>&1 \
  || fail "nf4 --loftq-rank fixture" "$WORK/nf4.txt"
"$QL" merge --model "$WORK/tiny_nf4" --adapter "$WORK/tiny_nf4/loftq_init" --out "$WORK/merged_nf4" --dtype fp32 \
  --threads 1 -q > "$WORK/merge_nf4.txt" 2>&1 || fail "merge of the NF4 base" "$WORK/merge_nf4.txt"
for m in adapter merged base nf4_adapter merged_nf4 nf4; do
  case $m in adapter) args=(--model "$WORK/tiny" --adapter "$WORK/run");; merged) args=(--model "$WORK/merged");;
             base) args=(--model "$WORK/tiny");; merged_nf4) args=(--model "$WORK/merged_nf4");;
             nf4_adapter) args=(--model "$WORK/tiny_nf4" --adapter "$WORK/tiny_nf4/loftq_init");;
             nf4) args=(--model "$WORK/tiny_nf4");; esac
  "$QQ" eval "${args[@]}" --data "$WORK/data.jsonl" --seq-len 64 --threads 1 --json > "$WORK/ueval_$m.json" \
    2> "$WORK/ueval_$m.err" || fail "eval ($m)" "$WORK/ueval_$m.err"
done
grep -q "adapter $WORK/tiny_nf4/loftq_init applied unmerged (base kept as stored)" "$WORK/ueval_nf4_adapter.err" \
  || fail "eval adapter line" "$WORK/ueval_nf4_adapter.err"
python3 - "$WORK" <<'PY' || fail "eval --adapter against the merged directories"
import json, sys
kUnmergedPplRelTol = 1e-5  # x (W + s·B A)ᵀ against x Wᵀ + s·(x Aᵀ) Bᵀ in fp32, through the whole model
p = {m: json.load(open(f"{sys.argv[1]}/ueval_{m}.json"))["perplexity"]
     for m in ("adapter", "merged", "base", "nf4_adapter", "merged_nf4", "nf4")}
for unmerged, merged, base in (("adapter", "merged", "base"), ("nf4_adapter", "merged_nf4", "nf4")):
    assert abs(p[unmerged] - p[merged]) <= kUnmergedPplRelTol * p[merged], (unmerged, merged, p)
    assert abs(p[unmerged] - p[base]) > 100 * kUnmergedPplRelTol * p[base], (unmerged, "scored as", base, p)
PY
grep -q "\"adapter\":\"$WORK/run\"" "$WORK/ueval_adapter.json" || fail "adapter in eval JSON" "$WORK/ueval_adapter.json"
# multiple-choice and gsm8k --adapter: the same continuation log-likelihoods as the merged directory within the branch's
# reassociation, and the same greedy answers.
printf '%s\n' '{"context": "Once upon a time", "choices": [" there", " a cat", " sun"], "label": 0}' \
  '{"context": "The little cat", "choices": [" liked", " play"], "label": 1}' > "$WORK/mc.jsonl"
printf '%s\n' '{"question": "1+1?", "answer": "#### 2"}' '{"question": "Once upon a time", "answer": "#### 3"}' \
  > "$WORK/gsm.jsonl"
for m in adapter merged base; do
  case $m in adapter) args=(--model "$WORK/tiny" --adapter "$WORK/run");; merged) args=(--model "$WORK/merged");;
             base) args=(--model "$WORK/tiny");; esac
  "$QQ" multiple-choice "${args[@]}" --data "$WORK/mc.jsonl" --predictions "$WORK/mc_$m.jsonl" --threads 1 -q \
    > "$WORK/mc_$m.txt" 2>&1 || fail "multiple-choice ($m)" "$WORK/mc_$m.txt"
  "$QQ" gsm8k "${args[@]}" --data "$WORK/gsm.jsonl" -n 12 --predictions "$WORK/gsm_$m.jsonl" --threads 1 -q \
    > "$WORK/gsm_$m.txt" 2>&1 || fail "gsm8k ($m)" "$WORK/gsm_$m.txt"
done
python3 - "$WORK" <<'PY' || fail "multiple-choice / gsm8k --adapter against the merged directory"
import json, sys
kUnmergedLoglikRelTol = 1e-5
rows = lambda name: [json.loads(l) for l in open(f"{sys.argv[1]}/{name}.jsonl")]
for a, m, b in zip(rows("mc_adapter"), rows("mc_merged"), rows("mc_base")):
    for x, y in zip(a["loglik"], m["loglik"]):
        assert abs(x - y) <= kUnmergedLoglikRelTol * abs(y), (a, m)
    assert a["loglik"] != b["loglik"], ("scored as the base", a, b)
assert [r["output"] for r in rows("gsm_adapter")] == [r["output"] for r in rows("gsm_merged")]
PY
"$QL" generate --model "$WORK/tiny" --adapter "$WORK/run" --chat --prompt "Hi" -n 8 --temperature 0.8 --top-p 0.9 \
  --seed 3 --threads 1 > "$WORK/gen_chat.txt" 2>&1 || fail "generate --chat" "$WORK/gen_chat.txt"

# chat: two turns, then /exit (the line after it is never read); the second prompt holds the first turn.
printf 'hello\n\nagain\n/exit\nignored\n' | "$QL" chat --model "$WORK/tiny" --adapter "$WORK/run" -n 8 --threads 1 \
  > "$WORK/chat.txt" 2> "$WORK/chat.err" || fail "chat" "$WORK/chat.err"
turns=$(grep -c "new tokens in" "$WORK/chat.err" || true)
[ "$turns" -eq 2 ] || fail "expected 2 chat turns, got $turns" "$WORK/chat.err"
p1=$(grep "new tokens in" "$WORK/chat.err" | sed -n 1p | cut -d' ' -f1)
p2=$(grep "new tokens in" "$WORK/chat.err" | sed -n 2p | cut -d' ' -f1)
[ "$p2" -gt "$((p1 + 8))" ] || fail "the second turn's prompt ($p2 tokens) does not hold the first ($p1)" "$WORK/chat.err"
# EOF ends the loop too.
printf 'hello\n' | "$QL" chat --model "$WORK/tiny" -n 4 --threads 1 > /dev/null 2> "$WORK/chat_eof.err" \
  || fail "chat until EOF" "$WORK/chat_eof.err"

# A tokenizer without a chat template: chat refuses before reading anything.
cp -r "$WORK/tiny" "$WORK/notpl"
python3 - "$WORK/notpl/tokenizer_config.json" <<'EOF'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
d.pop("chat_template")
json.dump(d, open(p, "w"), indent=2)
EOF
if echo hi | "$QL" chat --model "$WORK/notpl" > "$WORK/notpl.txt" 2>&1; then fail "chat without a chat template ran"; fi
grep -q "has no chat template" "$WORK/notpl.txt" || fail "no-template message" "$WORK/notpl.txt"

# A missing adapter directory: an error naming both directories, and no output.
if "$QL" merge --model "$WORK/tiny" --adapter "$WORK/nope" --out "$WORK/m2" > "$WORK/nope.txt" 2>&1; then
  fail "merge accepted a missing adapter"
fi
grep -q "cannot merge the LoRA adapter $WORK/nope into the base model $WORK/tiny" "$WORK/nope.txt" \
  || fail "missing-adapter message" "$WORK/nope.txt"
if ls "$WORK" | grep -q '^m2'; then fail "merge left $(ls "$WORK" | grep '^m2')"; fi
if "$QL" generate --model "$WORK/tiny" --adapter "$WORK/nope" --prompt x > "$WORK/nope2.txt" 2>&1; then
  fail "generate accepted a missing adapter"
fi
grep -q "cannot apply the LoRA adapter $WORK/nope to the base model $WORK/tiny" "$WORK/nope2.txt" \
  || fail "generate missing-adapter message" "$WORK/nope2.txt"
# eval: train's held-out loss again, for the same split (--eval-count, --seed) and thread count: the trained adapter
# gives the run's last eval_loss, the base alone (a zero adapter) its step-0 one, to the bit; without a split every
# record counts; an adapter of another base is refused.
for i in $(seq 1 12); do echo "{\"instruction\": \"Say $i\", \"input\": \"\", \"output\": \"Number $i it is.\"}"; done \
  > "$WORK/alpaca.jsonl"
"$QL" train --model "$WORK/tiny" --data "$WORK/alpaca.jsonl" --out "$WORK/erun" --max-steps 3 --lr 0.05 --seq-len 256 \
  --eval-count 4 --seed 7 --threads 1 -q > "$WORK/etrain.txt" 2>&1 || fail "train with an eval split" "$WORK/etrain.txt"
"$QL" eval --model "$WORK/tiny" --adapter "$WORK/erun" --data "$WORK/alpaca.jsonl" --seq-len 256 --eval-count 4 \
  --seed 7 --threads 1 --json > "$WORK/eval_adapter.json" 2> "$WORK/eval.err" || fail "eval --adapter" "$WORK/eval.err"
"$QL" eval --model "$WORK/tiny" --data "$WORK/alpaca.jsonl" --seq-len 256 --eval-count 4 --seed 7 --threads 1 --json \
  > "$WORK/eval_base.json" 2> "$WORK/eval.err" || fail "eval of the base" "$WORK/eval.err"
"$QL" eval --model "$WORK/tiny" --adapter "$WORK/erun" --data "$WORK/alpaca.jsonl" --seq-len 256 --threads 1 \
  > "$WORK/eval_all.txt" 2> "$WORK/eval.err" || fail "eval of every record" "$WORK/eval.err"
grep -q "^eval loss .* over 12 examples of $WORK/alpaca.jsonl, .* loss tokens; adapter $WORK/erun" "$WORK/eval_all.txt" \
  || fail "eval summary line" "$WORK/eval_all.txt"
python3 - "$WORK/erun/metrics.jsonl" "$WORK/eval_adapter.json" "$WORK/eval_base.json" <<'PY' || fail "eval vs train's eval_loss"
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if "eval_loss" in r]
adapter, base = (json.load(open(p)) for p in sys.argv[2:4])
assert adapter["loss"] == evals[-1]["eval_loss"] and adapter["loss_tokens"] == evals[-1]["eval_tokens"], (adapter, evals)
assert base["loss"] == evals[0]["eval_loss"] and base["adapter"] is None, (base, evals)
assert adapter["examples"] == base["examples"] == 4 and adapter["split"] == "eval", adapter
assert adapter["loss"] != base["loss"], (adapter, base)  # the trained adapter changed the answer losses
PY
"$QQ" init-random --preset tiny256 --layers 2 --out "$WORK/other" > /dev/null 2>&1
if "$QL" eval --model "$WORK/other" --adapter "$WORK/erun" --data "$WORK/alpaca.jsonl" > "$WORK/eval_bad.txt" 2>&1; then
  fail "eval ran an adapter of another base"
fi
grep -q "cannot apply the LoRA adapter $WORK/erun to the base model $WORK/other" "$WORK/eval_bad.txt" \
  || fail "eval: adapter of another base message" "$WORK/eval_bad.txt"

echo "qlora merge/generate/chat/eval CLI: OK"
