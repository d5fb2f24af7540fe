#!/usr/bin/env bash
# End to end through the command line: a random tiny model, `qwen-quant compare` with RTN, NF4, GPTQ, LoftQ, PiSSA
# and GGUF methods, and the four report files with one row per method plus the original; models quantized elsewhere as
# more rows (--quantized).
set -euo pipefail
QQ="$1"; SRC="$2"; WORK="$3"
rm -rf "$WORK" && mkdir -p "$WORK"
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 >/dev/null
"$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods rtn-g32,nf4,gptq-g32,nf4-lq4-it2,nf4-ps4,gptq-g32-ps4,gguf-q4_0 --calib "$SRC/README.md" --calib-samples 4 --calib-seq-len 64 --seq-len 128 --out "$WORK/cmp" \
  --threads 1 > "$WORK/out.txt" 2>&1 || { cat "$WORK/out.txt"; exit 1; }
for f in compare.md compare.csv compare.json compare.svg; do
  [ -s "$WORK/cmp/$f" ] || { echo "missing $f"; cat "$WORK/out.txt"; exit 1; }
done
rows=$(grep -c '^| ' "$WORK/cmp/compare.md")
[ "$rows" -eq 9 ] || { echo "expected header + 8 rows, got $rows lines"; cat "$WORK/cmp/compare.md"; exit 1; }
grep -q '^| rtn-g32 | gptq | 4 | 32 |' "$WORK/cmp/compare.md" || { cat "$WORK/cmp/compare.md"; exit 1; }
grep -q '^| nf4 | bnb-nf4+dq | 4 | 64 |' "$WORK/cmp/compare.md" || { cat "$WORK/cmp/compare.md"; exit 1; }
grep -q '^| gptq-g32 | gptq | 4 | 32 |' "$WORK/cmp/compare.md" || { cat "$WORK/cmp/compare.md"; exit 1; }
# llama.cpp's Q4_0: one GGUF file (MLP padded), evaluated from the file itself.
grep -q '^| gguf-q4_0 | gguf q4_0 (llama.cpp) | 4 | 32 |' "$WORK/cmp/compare.md" || { cat "$WORK/cmp/compare.md"; exit 1; }
grep -q "\"model\": \"$WORK/cmp/models/gguf-q4_0\"" "$WORK/cmp/logs/gguf-q4_0.eval0.json" \
  || { echo "the GGUF method was not evaluated from its file"; cat "$WORK/cmp/logs/gguf-q4_0.eval0.json"; exit 1; }
# LoftQ: evaluated with its adapter, whose bytes count in the size.
grep -q '^| nf4-lq4-it2 | bnb-nf4+dq +LoftQ r4 x2 | 4 | 64 |' "$WORK/cmp/compare.md" || { cat "$WORK/cmp/compare.md"; exit 1; }
grep -q "\"adapter\": \"$WORK/cmp/models/nf4-lq4-it2/loftq_init\"" "$WORK/cmp/logs/nf4-lq4-it2.eval0.json" \
  || { echo "the LoftQ method was evaluated without its adapter"; cat "$WORK/cmp/logs/nf4-lq4-it2.eval0.json"; exit 1; }
# PiSSA: the residual's NF4 or GPTQ evaluated with its adapter.
grep -q '^| nf4-ps4 | bnb-nf4+dq +PiSSA r4 | 4 | 64 |' "$WORK/cmp/compare.md" || { cat "$WORK/cmp/compare.md"; exit 1; }
grep -q '^| gptq-g32-ps4 | gptq +PiSSA r4 | 4 | 32 |' "$WORK/cmp/compare.md" || { cat "$WORK/cmp/compare.md"; exit 1; }
grep -q "\"adapter\": \"$WORK/cmp/models/nf4-ps4/pissa_init\"" "$WORK/cmp/logs/nf4-ps4.eval0.json" \
  || { echo "the PiSSA method was evaluated without its adapter"; cat "$WORK/cmp/logs/nf4-ps4.eval0.json"; exit 1; }
python3 - "$WORK/cmp/compare.json" <<'PY'
import json, sys
rows = {r["method"]: r for r in json.load(open(sys.argv[1]))["rows"]}
assert rows["nf4-lq4-it2"]["size_bytes"] > rows["nf4"]["size_bytes"], (rows["nf4-lq4-it2"], rows["nf4"])
assert rows["nf4-ps4"]["size_bytes"] > rows["nf4"]["size_bytes"], (rows["nf4-ps4"], rows["nf4"])
assert 0 < rows["gguf-q4_0"]["size_bytes"] < rows["nf4"]["size_bytes"], (rows["gguf-q4_0"], rows["nf4"])
PY
if "$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods nf4-it3 --out "$WORK/cmp3" > "$WORK/bad3.txt" 2>&1; then
  echo "it<T> without lq<R> accepted"; exit 1
fi
grep -q "gives it<T> without lq<R>" "$WORK/bad3.txt" || { cat "$WORK/bad3.txt"; exit 1; }
if "$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --calib "$SRC/README.md" --methods gptq-g32-lq4-it2 \
  --out "$WORK/cmp4" > "$WORK/bad4.txt" 2>&1; then
  echo "gptq with LoftQ iterations accepted"; exit 1
fi
grep -q "GPTQ's LoftQ is one-shot" "$WORK/bad4.txt" || { cat "$WORK/bad4.txt"; exit 1; }
if "$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods nf4-lq4-ps4 --out "$WORK/cmp-lqps" \
  > "$WORK/bad-lqps.txt" 2>&1; then
  echo "LoftQ and PiSSA in one method accepted"; exit 1
fi
grep -q "gives both lq<R> and ps<R>" "$WORK/bad-lqps.txt" || { cat "$WORK/bad-lqps.txt"; exit 1; }
# Models quantized elsewhere (--quantized NAME=PATH): rows evaluated on the same text. The RTN file the rtn-g32 method
# writes, made apart and given back, scores exactly what that method's row scores; a GGUF file is described from its
# header; the rows have no quantization time of ours.
"$QQ" rtn --model "$WORK/tiny" --out "$WORK/given-rtn" --group-size 32 --quiet
"$QQ" gguf --model "$WORK/tiny" --out "$WORK/given.gguf" --type q8_0 --quiet
"$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods rtn-g32,fp8,fp8-b32 --quantized "mine=$WORK/given-rtn" \
  --quantized "q8=$WORK/given.gguf" --seq-len 128 --out "$WORK/cmp5" --threads 1 > "$WORK/out5.txt" 2>&1 \
  || { cat "$WORK/out5.txt"; exit 1; }
grep -q '^| original | safetensors float32 | 32 |' "$WORK/cmp5/compare.md" || { cat "$WORK/cmp5/compare.md"; exit 1; }
grep -q '^| mine | gptq | 4 | 32 |' "$WORK/cmp5/compare.md" || { cat "$WORK/cmp5/compare.md"; exit 1; }
grep -q '^| q8 | gguf q8_0 | 8 | 32 |.* | - | - |$' "$WORK/cmp5/compare.md" || { cat "$WORK/cmp5/compare.md"; exit 1; }
python3 - "$WORK/cmp5/compare.json" <<'PY'
import json, sys
rows = {r["method"]: r for r in json.load(open(sys.argv[1]))["rows"]}
assert set(rows) == {"original", "rtn-g32", "fp8", "fp8-b32", "mine", "q8"}, rows.keys()
assert rows["fp8"]["format"] == "compressed-tensors float8" and rows["fp8"]["bits"] == 8, rows["fp8"]
assert rows["fp8-b32"]["format"] == "fp8 e4m3 blocks 32x32", rows["fp8-b32"]
# 8 bits lose far less than 4: the FP8 models sit between the original and RTN.
orig = rows["original"]["perplexity"]["README"]
for m in ("fp8", "fp8-b32"):
    assert abs(rows[m]["perplexity"]["README"] - orig) < abs(rows["rtn-g32"]["perplexity"]["README"] - orig), (rows[m], rows["rtn-g32"])
assert rows["mine"]["perplexity"] == rows["rtn-g32"]["perplexity"], (rows["mine"], rows["rtn-g32"])
assert rows["mine"]["given"] and rows["mine"]["quant_seconds"] is None and "given" not in rows["rtn-g32"]
assert rows["q8"]["size_bytes"] > 0
PY
# The other integer options (b<N>, pc, act, asym) and AWQ as methods; AWQ, bitsandbytes and FP8 directories as given
# rows, described from their own configs; the FP8 directory made as the fp8-b32 method makes it scores what that row
# scores.
"$QQ" rtn --model "$WORK/tiny" --out "$WORK/given-awq" --format awq --group-size 32 --quiet
"$QQ" nf4 --model "$WORK/tiny" --out "$WORK/given-nf4" --quiet
"$QQ" fp8 --model "$WORK/tiny" --out "$WORK/given-fp8" --format fp8 --block 32 --quiet
"$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods rtn-b8-pc,awq-g32,gptq-g32-act-asym,fp8-b32 \
  --quantized "gawq=$WORK/given-awq" --quantized "gnf4=$WORK/given-nf4" --quantized "gfp8=$WORK/given-fp8" \
  --calib "$SRC/README.md" --calib-samples 4 --calib-seq-len 64 --seq-len 128 --out "$WORK/cmp9" --threads 1 \
  > "$WORK/out9.txt" 2>&1 || { cat "$WORK/out9.txt"; exit 1; }
for row in '| rtn-b8-pc | gptq | 8 | -1 |' '| awq-g32 | awq-gemm | 4 | 32 |' '| gptq-g32-act-asym | gptq_v2 act-order | 4 | 32 |' \
  '| gawq | awq-gemm | 4 | 32 |' '| gnf4 | bnb-nf4+dq | 4 | 64 |' '| gfp8 | fp8 e4m3 blocks 32x32 | 8 | 32 |'; do
  grep -qF "$row" "$WORK/cmp9/compare.md" || { echo "no row $row"; cat "$WORK/cmp9/compare.md"; exit 1; }
done
python3 - "$WORK/cmp9/compare.json" <<'PY'
import json, sys
rows = {r["method"]: r for r in json.load(open(sys.argv[1]))["rows"]}
assert rows["gfp8"]["perplexity"] == rows["fp8-b32"]["perplexity"], (rows["gfp8"], rows["fp8-b32"])
orig = rows["original"]["perplexity"]["README"]
# 8 bits per channel lose less than 4 bits in groups of 32
assert abs(rows["rtn-b8-pc"]["perplexity"]["README"] - orig) < abs(rows["gawq"]["perplexity"]["README"] - orig), rows
PY
# A method whose quantization fails at run time (GPTQ on a calibration file with a malformed line) leaves its row out
# and says why; the table holds the others, and the exit status is 1 (like make -k). The output directory's name has a
# quote and a space (no shell runs on it); the quantized models are removed after their evaluations.
printf '{"text": "one calibration line"}\n{"text": 5}\n' > "$WORK/bad-calib.jsonl"
if "$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods rtn-g32,gptq-g32 --calib "$WORK/bad-calib.jsonl" \
  --seq-len 128 --out "$WORK/it's cmp10" --threads 1 > "$WORK/out10.txt" 2>&1; then
  echo "a failed method gave exit status 0"; cat "$WORK/out10.txt"; exit 1
fi
grep -q '^| rtn-g32 | gptq | 4 | 32 |' "$WORK/it's cmp10/compare.md" || { cat "$WORK/out10.txt"; exit 1; }
! grep -q '^| gptq-g32 ' "$WORK/it's cmp10/compare.md" || { cat "$WORK/it's cmp10/compare.md"; exit 1; }
[ -z "$(ls -A "$WORK/it's cmp10/models")" ] || { echo "quantized models left behind"; ls -R "$WORK/it's cmp10"; exit 1; }
grep -q "not in the table: gptq-g32: .*bad-calib.jsonl:2: " "$WORK/out10.txt" || { cat "$WORK/out10.txt"; exit 1; }
grep -q "error: compare: 1 of 2 methods and given models failed" "$WORK/out10.txt" || { cat "$WORK/out10.txt"; exit 1; }
# --kld: each row's KL divergence from the original and its top-1 agreement beside the perplexity (eval --kl-base),
# the perplexities the same to the bit as without it; a given model scores what the method that made it scores.
# --choices: each row's multiple-choice accuracy (qwen-quant multiple-choice) too.
for i in 1 2 3 4 5 6; do echo "{\"context\": \"Item $i: the model\", \"choices\": [\" runs\", \" reads\", \" is\"], \"label\": $((i % 3))}"; done \
  > "$WORK/mc.jsonl"
# --gsm8k: each row's GSM8K exact match (qwen-quant gsm8k), 1-shot, 3 of 4 items, 12 new tokens.
for i in 1 2 3 4; do echo "{\"question\": \"Tom has $i apples and gets $i more. How many?\", \"answer\": \"He has $i+$i=$((2 * i)).\\n#### $((2 * i))\"}"; done \
  > "$WORK/gsm.jsonl"
"$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods rtn-g32,nf4 --quantized "mine=$WORK/given-rtn" \
  --seq-len 128 --kld --choices "$WORK/mc.jsonl" --gsm8k "$WORK/gsm.jsonl" --gsm8k-fewshot 1 \
  --gsm8k-fewshot-data "$WORK/gsm.jsonl" --gsm8k-limit 3 --gsm8k-max-new-tokens 12 --out "$WORK/cmp7" --threads 1 \
  > "$WORK/out7.txt" 2>&1 || { cat "$WORK/out7.txt"; exit 1; }
grep -q '| acc mc | acc_norm mc | gsm8k strict gsm | gsm8k flexible gsm | quant time |' "$WORK/cmp7/compare.md" \
  || { cat "$WORK/cmp7/compare.md"; exit 1; }
[ "$(wc -l < "$WORK/cmp7/logs/nf4.gsm8k.predictions.jsonl")" -eq 3 ] \
  || { echo "nf4's gsm8k predictions are not the 3 items"; cat "$WORK/cmp7/logs/nf4.gsm8k.predictions.jsonl"; exit 1; }
grep -q '| ppl README | Δ README | KLD README | top-1 README | acc mc |' "$WORK/cmp7/compare.md" \
  || { cat "$WORK/cmp7/compare.md"; exit 1; }
grep -q '^| original | safetensors float32 | 32 | - | .* | - | - | - | [0-9.]*% | [0-9.]*% | [0-9.]*% | [0-9.]*% | - | - |$' "$WORK/cmp7/compare.md" \
  || { cat "$WORK/cmp7/compare.md"; exit 1; }
grep -q "\"base\": \"$WORK/tiny\"" "$WORK/cmp7/logs/nf4.eval0.json" \
  || { echo "nf4 was not evaluated against the original"; cat "$WORK/cmp7/logs/nf4.eval0.json"; exit 1; }
python3 - "$WORK/cmp7/compare.json" "$WORK/cmp5/compare.json" "$WORK/cmp7/compare.csv" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
rows = {r["method"]: r for r in t["rows"]}
before = {r["method"]: r for r in json.load(open(sys.argv[2]))["rows"]}
assert t["kld"] is True and "kld" not in rows["original"], rows["original"]
for m in ("rtn-g32", "nf4", "mine"):
    k, top = rows[m]["kld"]["README"], rows[m]["same_top1"]["README"]
    assert 0 < k < 1 and 0.5 < top <= 1, (m, k, top)
assert rows["mine"]["kld"] == rows["rtn-g32"]["kld"], (rows["mine"], rows["rtn-g32"])
for m in ("original", "rtn-g32", "mine"):
    assert rows[m]["perplexity"] == before[m]["perplexity"], (m, rows[m]["perplexity"], before[m]["perplexity"])
for m in ("original", "rtn-g32", "nf4", "mine"):
    acc = rows[m]["acc"]["mc"]
    assert acc * 6 == round(acc * 6) and 0 <= rows[m]["acc_norm"]["mc"] <= 1, rows[m]
assert rows["mine"]["acc"] == rows["rtn-g32"]["acc"], (rows["mine"], rows["rtn-g32"])
assert t["gsm8k"] == {"set": "gsm", "fewshot": 1}, t["gsm8k"]
for m in ("original", "rtn-g32", "nf4", "mine"):
    g = rows[m]["gsm8k"]
    for k in ("exact_match_strict", "exact_match_flexible"):
        assert g[k] * 3 == round(g[k] * 3) and 0 <= g[k] <= 1, (m, g)
assert rows["mine"]["gsm8k"] == rows["rtn-g32"]["gsm8k"], (rows["mine"], rows["rtn-g32"])
header = open(sys.argv[3]).readline().strip().split(",")
assert header[5:9] == ["ppl_README", "delta_pct_README", "kld_README", "same_top1_README"], header
PY
# --kld-file: the same columns from one base file of the original per text (eval --save-kld) that every model is
# scored against (eval --kl-base FILE, llama.cpp's chunks); the perplexities still those of the plain eval; the file
# removed at the end.
"$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods rtn-g32 --quantized "mine=$WORK/given-rtn" \
  --seq-len 128 --max-windows 6 --kld-file --out "$WORK/cmp8" --threads 1 > "$WORK/out8.txt" 2>&1 \
  || { cat "$WORK/out8.txt"; exit 1; }
grep -q '| ppl README | Δ README | KLD README | top-1 README | quant time |' "$WORK/cmp8/compare.md" \
  || { cat "$WORK/cmp8/compare.md"; exit 1; }
[ ! -e "$WORK/cmp8/logs/original.text0.kld" ] || { echo "--kld-file left its base file"; exit 1; }
"$QQ" eval --model "$WORK/tiny" --data "$SRC/README.md" --seq-len 128 --max-windows 6 --batch 1 --threads 1 --json -q \
  > "$WORK/plain8.json" 2>/dev/null || { echo "plain eval"; exit 1; }
python3 - "$WORK/cmp8/compare.json" "$WORK/plain8.json" "$WORK/cmp8/logs" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
rows = {r["method"]: r for r in t["rows"]}
assert t["kld"] is True and t["kld_scoring"].startswith("llama-perplexity chunks"), t
assert rows["original"]["perplexity"]["README"] == json.load(open(sys.argv[2]))["perplexity"], rows["original"]
saved = json.load(open(sys.argv[3] + "/original.save-kld0.json"))
assert saved["windows"] == 6 and saved["save_kld_bytes"] > 0, saved
for m in ("rtn-g32", "mine"):
    k = json.load(open(sys.argv[3] + "/" + m + ".kld0.json"))["kl_divergence"]
    assert k["positions"] == 6 * 63, k  # positions 64 .. 126 of each 128-token chunk
    assert rows[m]["kld"]["README"] == k["kld"]["mean"] and rows[m]["same_top1"]["README"] == k["same_top1"], (m, k)
    assert 0 < k["kld"]["mean"] < 1 and 0.5 < k["same_top1"] <= 1, k
assert rows["mine"]["kld"] == rows["rtn-g32"]["kld"], (rows["mine"], rows["rtn-g32"])
PY
# eval --cpu-matmul bf16: the same windows on bf16 operands, recorded in the JSON, a perplexity within 1 % of the fp32
# products' and not equal to it; another value refused by name.
"$QQ" eval --model "$WORK/tiny" --data "$SRC/README.md" --seq-len 128 --max-windows 6 --batch 1 --threads 1 --json -q \
  --cpu-matmul bf16 > "$WORK/bf16.json" 2>/dev/null || { echo "eval --cpu-matmul bf16"; exit 1; }
python3 - "$WORK/plain8.json" "$WORK/bf16.json" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert b["cpu_matmul"] == "bf16" and "cpu_matmul" not in a, (a, b)
assert b["perplexity"] != a["perplexity"] and abs(b["perplexity"] / a["perplexity"] - 1) < 0.01, (a, b)
PY
if "$QQ" eval --model "$WORK/tiny" --data "$SRC/README.md" --cpu-matmul fp16 > "$WORK/fp16.txt" 2>&1; then
  echo "eval --cpu-matmul fp16 was accepted"; exit 1
fi
grep -q -- "--cpu-matmul" "$WORK/fp16.txt" || { cat "$WORK/fp16.txt"; exit 1; }
"$QQ" init-random --preset tiny256 --layers 2 --out "$WORK/other" >/dev/null
for bad in "x=$WORK/other|is not a quantization of" "$WORK/given-rtn|expected NAME=PATH" "rtn-g32=$WORK/given-rtn|already a row"; do
  if "$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods rtn-g32 --quantized "${bad%%|*}" \
    --out "$WORK/cmp6" > "$WORK/bad6.txt" 2>&1; then
    echo "--quantized ${bad%%|*} accepted"; exit 1
  fi
  grep -q "${bad#*|}" "$WORK/bad6.txt" || { cat "$WORK/bad6.txt"; exit 1; }
  [ ! -e "$WORK/cmp6/compare.md" ] || { echo "--quantized ${bad%%|*}: refused after work"; exit 1; }
done
# Options a quantizer would refuse are refused before any work too, with the method's name (a number that is not one,
# bits and groups the file formats cannot hold, AWQ without calibration text), and leave no output directory.
for bad in "rtn-gfoo|option 'gfoo' in method 'rtn-gfoo' needs a number" "gptq-b7|method 'gptq-b7': --bits 7 is not supported" \
  "rtn-g0|method 'rtn-g0': --group-size must be -1 or at least 8" "rtn-awq-b3|AWQ GEMM files hold 4-bit codes only" \
  "nf4-lq99999999999|option 'lq99999999999' in method" "awq-g32|method 'awq-g32' needs calibration text"; do
  if "$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods "rtn-g32,${bad%%|*}" --out "$WORK/cmp11" \
    > "$WORK/bad11.txt" 2>&1; then
    echo "method ${bad%%|*} accepted"; exit 1
  fi
  grep -qF "${bad#*|}" "$WORK/bad11.txt" || { cat "$WORK/bad11.txt"; exit 1; }
  [ ! -e "$WORK/cmp11" ] || { echo "method ${bad%%|*}: refused after work"; exit 1; }
done
# A method that cannot exist is refused before any work.
if "$QQ" compare --model "$WORK/tiny" --data "$SRC/README.md" --methods bogus --out "$WORK/cmp2" > "$WORK/bad.txt" 2>&1; then
  echo "bogus method accepted"; exit 1
fi
grep -q "unknown method 'bogus'" "$WORK/bad.txt" || { cat "$WORK/bad.txt"; exit 1; }
echo "compare CLI: OK"
