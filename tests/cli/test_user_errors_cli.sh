#!/usr/bin/env bash
# What a careless user types, and what each command must answer: one clear error naming the flag (or file), a
# non-zero exit, and nothing written or destroyed. Each case below was a defect found by using the tools as a new
# user would (the comment says what happened before):
#  - numeric flags out of range (negative counts, top-p outside (0, 1], a shard size of 0) were accepted, some
#    silently meaning something else (--max-grad-norm -1: no clipping), or failed late with an internal name
#    (--weight-decay -1: "adamw_step_ref" after loading everything), or wrongly (generate -n -3: "the prompt has 2
#    tokens, the model's context is ..."); --threads -1 printed a 300-digit bound;
#  - windows longer than the model's context (eval --seq-len, gptq/awq --calib-seq-len) ran for hours on
#    positions the model never saw; a default (2048) longer than the context now shrinks to it;
#  - train --overwrite with a bad --data deleted the previous run before failing; a refused run left an empty
#    run directory; a --config key also given on the command line was refused instead of "the command line wins";
#  - train --stop-after printed "adapter in DIR" though no adapter is written;
#  - examples longer than --seq-len were cut silently, leaving steps with loss 0 (no response token left): now
#    dropped at load by default, and counted in a warning when --max-len exceeds --seq-len;
#  - eval --json-out / awq --save-search into a missing directory failed only after the whole evaluation / search;
#  - generate with a prompt longer than the context echoed the prompt, then the error on the same line;
#  - train --out FILE said "cannot write FILE/metrics.jsonl" after loading everything; eval --json-out DIR failed
#    with "rename failed: Is a directory" after the evaluation;
#  - a mistyped subcommand (qwen-quant evl) got "A subcommand is required";
#  - a malformed training record said "(skip_bad skips such records)", the C++ field, not the --skip-bad flag;
#  - train --help showed "--no-checkpointing{false}" (CLI11's rendering of a negated flag);
#  - every error ended with "[check `...` failed in func at file:line]", internal names a user cannot act on: now
#    only with QWENQ_DEBUG=1 (for bug reports); without a GPU every command said "cudaGetDeviceCount returned 'CUDA
#    driver version is insufficient ...'", which reads as advice to update a driver the machine does not have;
#  - gptq --calib-samples 100000 was killed by the kernel for lack of memory (exit 137, no message);
#  - (new options, LoftQ) the adapter's settings against the command line's, and the inputs LoftQ cannot use;
#  - (new options, PiSSA) the residual and its adapter load, train and evaluate, the trained adapter converts to LoRA
#    for the original; with LoftQ, too large a rank, a conversion of another run;
#  - (new command, gguf) an existing output file, a GGUF given where a directory is read, a cut GGUF file;
#  - (new flag, --int8-activations) a model that is not a GGUF file or a GPTQ/AWQ checkpoint, --device cuda;
#  - (new command, imatrix) too little text for one chunk, a chunk longer than the context, an imatrix of another
#    model or a cut one given to gguf --imatrix (nothing written), a model file given as the imatrix;
#  - (new models, qwen3_moe / qwen2_moe) what runs on a mixture of experts (eval, generate, rtn, nf4, gptq, train
#    with attention targets), and one clear error from each command that does not take one yet, before any output;
#  - (new format, compressed-tensors) written files compute as the GPTQ file of the same codes; 3-bit refused;
#  - (new command, fp8) its output loads (a MoE's too, in both formats) and is a quantizer's source;
#  - (new flag, eval --kl-base) a base that tokenizes the text differently, or is missing: named before any
#    evaluation; (new command, multiple-choice) a malformed item, before the model loads;
#  - (new flags, eval --save-kld / --kl-base FILE) text given with a base file (which carries its tokens), another
#    --seq-len than the file's, both flags at once, a cut file, too little text: no file left behind;
#  - (new command, gsm8k) a malformed record, before the model loads; --fewshot without --fewshot-data; compare
#    --gsm8k the same, before any quantization.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"
cd "$WORK"

# refuse NAME WANT CMD...: CMD fails, its output (the device line aside) is one error line (CLI11 adds "Run with
# --help") containing WANT, and no crash.
refuse() {
  local name="$1" want="$2"; shift 2
  local rc=0
  "$@" > "$name.txt" 2>&1 < /dev/null || rc=$?
  [ "$rc" -ne 0 ] || fail "$name: accepted" "$name.txt"
  [ "$rc" -lt 128 ] || fail "$name: crashed (exit $rc)" "$name.txt"
  grep -qF -- "$want" "$name.txt" || fail "$name: no '$want' in the message" "$name.txt"
  local lines
  lines=$(grep -v -e '^device: ' -e '^Run with --help' "$name.txt" | grep -c . || true)
  [ "$lines" -eq 1 ] || fail "$name: $lines lines instead of one error" "$name.txt"
  if [ -z "${QWENQ_DEBUG:-}" ]; then
    grep -qE '\[(check `|in [A-Za-z_0-9]+ at )' "$name.txt" && fail "$name: the check's location is shown" "$name.txt"
  fi
  return 0
}

"$QQ" init-random --preset tiny --out tiny --dtype fp32 > /dev/null 2>&1
# A context of 128 tokens, to test the window checks against.
sed -i 's/"max_position_embeddings": [0-9]*/"max_position_embeddings": 128/' tiny/config.json
grep -q '"max_position_embeddings": 128' tiny/config.json || fail "could not set the context of the tiny model"
for i in $(seq 1 40); do echo "{\"text\": \"Once upon a time there was a little cat number $i who liked to play in the sun.\"}"; done > text.jsonl
# Alpaca records whose prompt alone is longer than 32 tokens: cut to --seq-len 32, no response token is left.
for i in $(seq 1 8); do
  echo "{\"instruction\": \"Write a long and careful answer to question number $i about the little cat who liked to play in the warm sun every single day of the week\", \"input\": \"\", \"output\": \"Yes.\"}"
done > alpaca.jsonl

# --- a mistyped subcommand is named (CLI11 said "A subcommand is required") ----------------------------------------
refuse sub_quant "unknown subcommand 'evl' (known: eval, generate," "$QQ" evl --model tiny
refuse sub_qlora "unknown subcommand 'trian' (known: train, merge," "$QL" trian --model tiny

# --- the location of a failed check only under QWENQ_DEBUG; the device line in words ----------------------------------
QWENQ_DEBUG=1 refuse debug_location "[check \`" "$QQ" eval --model tiny --data text.jsonl --seq-len 1000
"$QQ" eval --model tiny --data text.jsonl --seq-len 64 > device_line.txt 2>&1 || fail "eval failed" device_line.txt
grep -q "^device: " device_line.txt || fail "eval printed no device line" device_line.txt
grep -q -e "cudaGetDeviceCount" -e "driver version is insufficient" device_line.txt \
  && fail "the device line shows the CUDA runtime's string" device_line.txt

# --- --help: train's flags without CLI11's "{false}" (shown for negated flags) -------------------------------------
"$QL" train --help > train_help.txt
grep -q -- "--no-checkpointing  " train_help.txt && grep -q -- "--fp32-checkpoints  " train_help.txt \
  || fail "train --help lacks the checkpointing flags" train_help.txt
grep -q "{false}" train_help.txt && fail "train --help shows {false}" train_help.txt

# --- numeric flags ---------------------------------------------------------------------------------------------
refuse threads "--threads: must be at least 0, got -1" "$QQ" eval --model tiny --data text.jsonl --threads -1
grep -q "17976931" threads.txt && fail "threads: the bound of a double in the message" threads.txt
refuse max_windows "--max-windows: must be at least 0" "$QQ" eval --model tiny --data text.jsonl --max-windows -1
refuse shard0 "--max-shard-size: must be greater than 0" "$QQ" rtn --model tiny --out q0 --max-shard-size 0
refuse shardneg "--max-shard-size: must be greater than 0" "$QQ" nf4 --model tiny --out q1 --max-shard-size -1
for tool in "$QQ" "$QL"; do
  refuse gen_n "--max-new-tokens: must be at least 0, got -3" "$tool" generate --model tiny --prompt hi -n -3
  refuse gen_t "--temperature: must be at least 0" "$tool" generate --model tiny --prompt hi --temperature -1
  refuse gen_p0 "--top-p: must be in (0, 1]" "$tool" generate --model tiny --prompt hi --top-p 0
  refuse gen_p2 "--top-p: must be in (0, 1]" "$tool" generate --model tiny --prompt hi --top-p 1.5
  refuse gen_k "--top-k: must be at least 0" "$tool" generate --model tiny --prompt hi --top-k -2
done
# A prompt longer than the context: the error alone, not the echoed prompt glued to it.
LONG=$(for i in $(seq 1 300); do printf 'word%d ' "$i"; done)
for tool in "$QQ" "$QL"; do
  refuse gen_long "leaves no room for a new one in the model's context of 128" "$tool" generate --model tiny --prompt "$LONG"
  grep -q word1 gen_long.txt && fail "the prompt was echoed before the error" gen_long.txt
done
"$QQ" generate --model tiny --prompt hi -n 3 --top-p 1 --temperature 0.7 --top-k 5 > gen_ok.txt 2>&1 \
  || fail "generate with valid sampling flags" gen_ok.txt
refuse ir_layers "--layers: must be at least 0, got -1" "$QQ" init-random --layers -1 --out ir
[ ! -e ir ] || fail "a refused init-random left its output"
refuse plan_layers "--layers: must be at least 1" "$QL" plan --preset tiny --layers -1
refuse plan_threads "--threads: must be at least 1" "$QL" plan --preset tiny --device cpu --threads -1
refuse plan_gpus "--gpus: must be at least 1" "$QL" plan --preset tiny --gpus 0
refuse plan_cpu_gpus "plan: --gpus 2 with --device cpu" "$QL" plan --preset tiny --device cpu --gpus 2
refuse plan_cpu_mem "--cpu-mem-gb: must be greater than 0" "$QL" plan --preset tiny --device cpu --cpu-mem-gb -1
refuse plan_alpha "--lora-alpha: must be greater than 0" "$QL" plan --preset tiny --lora-alpha -1
T=(train --model tiny --data text.jsonl --max-steps 2 --seq-len 64 -q)
refuse wd "--weight-decay: must be at least 0, got -1" "$QL" "${T[@]}" --out r --weight-decay -1
refuse gn "--max-grad-norm: must be at least 0" "$QL" "${T[@]}" --out r --max-grad-norm -1
refuse ws "--warmup-steps: must be at least 0" "$QL" "${T[@]}" --out r --warmup-steps -1
refuse wr "--warmup-ratio: must be in [0, 1], got 2" "$QL" "${T[@]}" --out r --warmup-ratio 2
refuse ee "--eval-every: must be at least 0" "$QL" "${T[@]}" --out r --eval-every -1
refuse eb "--eval-batches: must be at least 0" "$QL" "${T[@]}" --out r --eval-batches -1
refuse se "--save-every: must be at least 0" "$QL" "${T[@]}" --out r --save-every -1
refuse stl "--save-total-limit: must be at least 0" "$QL" "${T[@]}" --out r --save-total-limit -1
refuse ml "--max-len: must be at least 0" "$QL" "${T[@]}" --out r --max-len -1
refuse sa "--stop-after: must be at least 1" "$QL" "${T[@]}" --out r --stop-after -1
refuse la "--lora-alpha: must be greater than 0" "$QL" "${T[@]}" --out r --lora-alpha -1
# A LoRA setting the library refuses is refused before the data is read (no other line first).
refuse lr0 "LoRA rank r must be at least 1" "$QL" train --model tiny --data alpaca.jsonl --max-steps 2 --seq-len 32 \
  -q --out r --lora-r 0
[ ! -e r ] || fail "a refused train left its run directory"

# A malformed record names its line and the flag that skips it (it said "skip_bad", the C++ field).
printf '{"text": "a cat"}\n{"text": oops}\n' > badline.jsonl
refuse bad_record "badline.jsonl:2: not valid JSON" "$QL" train --model tiny --data badline.jsonl --out r --max-steps 1 -q
grep -qF "(pass --skip-bad to skip such records)" bad_record.txt || fail "bad record: no --skip-bad hint" bad_record.txt
[ ! -e r ] || fail "a refused train left its run directory"

# --- windows longer than the context ------------------------------------------------------------------------------
refuse ctx_eval "--seq-len 1000 is longer than the model's context: tiny/config.json has max_position_embeddings 128" \
  "$QQ" eval --model tiny --data text.jsonl --seq-len 1000
refuse ctx_gptq "--calib-seq-len 129 is longer than the model's context" \
  "$QQ" gptq --model tiny --out g --calib text.jsonl --calib-seq-len 129 --group-size 32
refuse ctx_awq "--calib-seq-len 1000 is longer than the model's context" \
  "$QQ" awq --model tiny --out a --calib text.jsonl --calib-seq-len 1000 --group-size 32
refuse ctx_compare "--seq-len 256 is longer than the model's context" \
  "$QQ" compare --model tiny --data text.jsonl --methods rtn-g32 --seq-len 256 --out cmp
[ ! -e g ] && [ ! -e a ] && [ ! -e cmp ] || fail "a refused window length left output"
# A calibration that cannot fit in host memory: refused at once with the parts (gptq --calib-samples 100000 on a
# 24 GiB machine was killed by the kernel, exit 137, no message).
refuse mem_gptq "gptq: the calibration needs at least" \
  "$QQ" gptq --model tiny --out g --calib text.jsonl --calib-samples 1000000000000 --calib-seq-len 64 --group-size 32
grep -q "lower --calib-samples or --calib-seq-len" mem_gptq.txt || fail "no advice in the memory refusal" mem_gptq.txt
refuse mem_awq "awq: the calibration needs at least" \
  "$QQ" awq --model tiny --out a --calib text.jsonl --calib-samples 1000000000000 --calib-seq-len 64 --group-size 32
[ ! -e g ] && [ ! -e a ] || fail "a refused calibration left output"
# The default window (2048) shrinks to the context.
"$QQ" eval --model tiny --data text.jsonl --json --threads 1 -q > eval_default.json 2> eval_default.err \
  || fail "eval with the default --seq-len on a 128-token model" eval_default.err
grep -q '"seq_len":128' eval_default.json || fail "the default window is not the context" eval_default.json
"$QQ" gptq --model tiny --out g --calib text.jsonl --calib-samples 2 --group-size 32 --threads 1 > gptq.txt 2>&1 \
  || fail "gptq with the default --calib-seq-len on a 128-token model" gptq.txt
grep -q "2 calibration windows x 128 tokens" gptq.txt || fail "gptq's default window is not the context" gptq.txt
grep -q "gptq: time by stage: .*solves .* of " gptq.txt || fail "gptq printed no time by stage" gptq.txt
refuse calib_dtype "--calib-dtype: fp16 not in {fp32,bf16}" \
  "$QQ" gptq --model tiny --out g2 --calib text.jsonl --calib-samples 2 --group-size 32 --calib-dtype fp16

# --- eval --json-out is checked before the evaluation ------------------------------------------------------------
refuse json_out "--json-out nodir/x.json: directory nodir does not exist" \
  "$QQ" eval --model tiny --data text.jsonl --json-out nodir/x.json --threads 1
refuse save_search "--save-search nodir/s.safetensors: directory nodir does not exist" \
  "$QQ" awq --model tiny --out a --calib text.jsonl --calib-samples 2 --group-size 32 --save-search nodir/s.safetensors
[ ! -e a ] || fail "a refused awq left its output"

# --- train: nothing destroyed or left by a refused run -------------------------------------------------------------
"$QL" "${T[@]}" --out run --threads 1 > run.txt 2>&1 || fail "train" run.txt
[ -s run/adapter_model.safetensors ] || fail "no adapter" run.txt
refuse overwrite_bad_data "cannot open missing.jsonl" "$QL" train --model tiny --data missing.jsonl --out run \
  --overwrite --max-steps 2 -q
[ -s run/adapter_model.safetensors ] && [ -s run/metrics.jsonl ] || fail "--overwrite with bad data destroyed the run"
cp -r tiny noweights && rm noweights/model.safetensors
refuse bad_model "has neither model.safetensors" "$QL" train --model noweights --data text.jsonl --out run2 --max-steps 2 -q
[ ! -e run2 ] || fail "a refused train left an empty run directory"

# --out naming a file, --json-out naming a directory: said as such, before any work.
echo x > afile
refuse out_file "--out afile is a file, not a run directory" "$QL" train --model tiny --data text.jsonl --out afile \
  --max-steps 1 -q
refuse json_dir "--json-out tiny is a directory" "$QQ" eval --model tiny --data text.jsonl --json-out tiny -q

# --- train --config: the command line wins -------------------------------------------------------------------------
echo '{"max-steps": 5, "seq-len": 64, "lr": 0.001}' > cfg.json
"$QL" train --config cfg.json --model tiny --data text.jsonl --out runc --max-steps 3 --threads 1 -q > cfg.txt 2>&1 \
  || fail "--config with --max-steps on the command line" cfg.txt
[ "$(grep -c '"loss"' runc/metrics.jsonl)" -eq 3 ] || fail "the config's max-steps won over the command line" cfg.txt
grep -q '"lr":0.001' runc/metrics.jsonl || fail "the config's lr was not applied" runc/metrics.jsonl

# --- LoftQ: the adapter qwen-quant writes, and train starting from it (or computing it) ------------------------------
"$QQ" nf4 --model tiny --out lq --loftq-rank 4 --loftq-iter 2 -q > lq.txt 2>&1 || fail "nf4 --loftq-rank" lq.txt
grep -q "loftq: lq/loftq_init (rank 4, 2 iteration(s)): ||W - Q|| .* -> ||W - Q - s\*B\*A|| .*(-[0-9.]*%)" lq.txt \
  || fail "nf4 --loftq-rank summary" lq.txt
LT=(train --model lq --data text.jsonl --max-steps 2 --seq-len 64 -q)
[ -f lq/loftq_init/adapter_model.safetensors ] || fail "no lq/loftq_init adapter"
grep -q '"r": 4' lq/loftq_init/adapter_config.json || fail "loftq_init's rank" lq/loftq_init/adapter_config.json
"$QQ" eval --model lq --adapter lq/loftq_init --data text.jsonl --seq-len 64 > lq_eval.txt 2>&1 || fail "eval LoftQ" lq_eval.txt
"$QL" "${LT[@]}" --init-adapter lq/loftq_init --out lq_run --threads 1 > lq_run.txt 2>&1 || fail "train --init-adapter" lq_run.txt
grep -q '"r": 4' lq_run/adapter_config.json || fail "train --init-adapter kept the adapter's rank" lq_run/adapter_config.json
"$QL" "${LT[@]}" --loftq-model tiny --out lq_run2 --threads 1 > lq_run2.txt 2>&1 || fail "train --loftq-model" lq_run2.txt
refuse lq_rank "--lora-r differs from --init-adapter lq/loftq_init's r 4 (leave it out" \
  "$QL" "${LT[@]}" --init-adapter lq/loftq_init --lora-r 8 --out lq_bad
refuse lq_alpha "--lora-alpha differs from --init-adapter lq/loftq_init's lora_alpha 4 (leave it out" \
  "$QL" "${LT[@]}" --init-adapter lq/loftq_init --lora-alpha 32 --out lq_bad
refuse lq_both "give --init-adapter or --loftq-model, not both" \
  "$QL" "${LT[@]}" --init-adapter lq/loftq_init --loftq-model tiny --out lq_bad
refuse lq_quantized "--loftq-model lq is quantized" "$QL" "${LT[@]}" --loftq-model lq --out lq_bad
[ ! -e lq_bad ] || fail "a refused LoftQ run left its run directory"
refuse lq_big "--loftq-rank: LoRA rank r=100 exceeds min(N, K) = 64" "$QQ" rtn --model tiny --out lq_big --loftq-rank 100
refuse lq_iter "--loftq-iter: must be at least 1" "$QQ" nf4 --model tiny --out lq_bad --loftq-rank 4 --loftq-iter 0
[ ! -e lq_big ] && [ ! -e lq_bad ] || fail "a refused LoftQ quantization left its output"

# --- PiSSA: the quantized residual and its adapter, and train starting from it ---------------------------------------
"$QQ" rtn --model tiny --out ps --group-size 32 --pissa-rank 4 --pissa-alpha 8 -q > ps.txt 2>&1 || fail "rtn --pissa-rank" ps.txt
grep -q "pissa: ps/pissa_init (rank 4, [0-9.]*% of the adapted weights' squared norm): ||W - q(W)|| .* -> ||W - q(W_res) - s\*B\*A|| .*" ps.txt \
  || fail "rtn --pissa-rank summary" ps.txt
grep -q '"lora_alpha": 8' ps/pissa_init/adapter_config.json || fail "pissa_init's alpha" ps/pissa_init/adapter_config.json
grep -q '"init_lora_weights": true' ps/pissa_init/adapter_config.json \
  || fail "pissa_init would make PEFT split the base again" ps/pissa_init/adapter_config.json
"$QQ" eval --model ps --adapter ps/pissa_init --data text.jsonl --seq-len 64 > ps_eval.txt 2>&1 || fail "eval PiSSA" ps_eval.txt
"$QL" train --model ps --data text.jsonl --max-steps 2 --seq-len 64 -q --init-adapter ps/pissa_init --out ps_run \
  --threads 1 > ps_run.txt 2>&1 || fail "train --init-adapter pissa_init" ps_run.txt
# The trained PiSSA adapter as a LoRA adapter of the original model (rank 2r), which eval and merge take.
"$QL" pissa-to-lora --init ps/pissa_init --adapter ps_run --out ps_lora > ps_lora.txt 2>&1 || fail "pissa-to-lora" ps_lora.txt
grep -q "wrote ps_lora: a LoRA adapter of rank 8, lora_alpha 16, on 14 Linears" ps_lora.txt || fail "pissa-to-lora summary" ps_lora.txt
"$QQ" eval --model tiny --adapter ps_lora --data text.jsonl --seq-len 64 > ps_lora_eval.txt 2>&1 \
  || fail "eval of the original with the converted adapter" ps_lora_eval.txt
"$QL" merge --model tiny --adapter ps_lora --out ps_merged -q > ps_merged.txt 2>&1 || fail "merge ps_lora" ps_merged.txt
refuse ps_convert_other "differ in their configs" "$QL" pissa-to-lora --init ps/pissa_init --adapter lq_run --out ps_bad
# The residual alone is not a model: eval without the adapter says so (one warning line) and still runs.
"$QQ" eval --model ps --data text.jsonl --seq-len 64 > ps_alone.txt 2>&1 || fail "eval of the PiSSA residual alone" ps_alone.txt
grep -q "^warning: ps is a PiSSA residual (it holds pissa_init/), used here without an adapter" ps_alone.txt \
  || fail "no PiSSA residual warning" ps_alone.txt
if grep -q "PiSSA residual" ps_eval.txt ps_run.txt; then fail "a PiSSA warning with the adapter given" ps_eval.txt; fi
refuse ps_both "give --loftq-rank or --pissa-rank, not both" \
  "$QQ" nf4 --model tiny --out ps_bad --loftq-rank 4 --pissa-rank 4
refuse ps_big "--pissa-rank: LoRA rank r=100 exceeds min(N, K) = 64" "$QQ" nf4 --model tiny --out ps_bad --pissa-rank 100
refuse ps_alpha "--pissa-alpha: must be greater than 0, got -16" "$QQ" nf4 --model tiny --out ps_bad --pissa-rank 4 \
  --pissa-alpha -16
refuse lq_alpha_neg "--loftq-alpha: must be greater than 0, got 0" "$QQ" nf4 --model tiny --out ps_bad --loftq-rank 4 \
  --loftq-alpha 0
[ ! -e ps_bad ] || fail "a refused PiSSA quantization left its output"

# --- (new command, GGUF) an existing output, a GGUF where a directory is read, a damaged GGUF --------------------
"$QQ" gguf --model tiny --out tiny.gguf --type q4_0 -q > gguf.txt 2>&1 || fail "gguf export" gguf.txt
cp tiny.gguf tiny_before.gguf
refuse gguf_exists "tiny.gguf: already exists (pass --overwrite to replace it)" "$QQ" gguf --model tiny --out tiny.gguf
cmp -s tiny.gguf tiny_before.gguf || fail "a refused gguf export changed the existing file"
refuse gguf_type "--type: q5_k not in" "$QQ" gguf --model tiny --out x.gguf --type q5_k
refuse gguf_dir "directory nodir does not exist" "$QQ" gguf --model tiny --out nodir/x.gguf
refuse gguf_as_dir "tiny.gguf: a GGUF file; this command reads Hugging Face model directories" \
  "$QQ" gptq --model tiny.gguf --out g_gguf --calib text.jsonl
head -c 3000 tiny.gguf > cut.gguf
echo "notes" > notes.txt
refuse gguf_cut "cut.gguf: metadata 'tokenizer.ggml.tokens' claims 320 array elements, more than the 2324 bytes left hold (truncated or corrupt file)" "$QQ" eval --model cut.gguf --data text.jsonl
refuse gguf_not_dir "notes.txt: not a directory nor a GGUF file" "$QQ" eval --model notes.txt --data text.jsonl
"$QQ" eval --model tiny.gguf --data text.jsonl --seq-len 64 -q > gguf_eval.txt 2>&1 || fail "eval of a GGUF" gguf_eval.txt
grep -q "perplexity" gguf_eval.txt || fail "eval of a GGUF printed no perplexity" gguf_eval.txt
# --int8-activations: GGUF files and GPTQ/AWQ checkpoints on the CPU only; with one, eval says so in its line and its
# JSON, and a GPTQ model's perplexity stays within 1 % of the exact product's.
refuse int8_not_gguf "--int8-activations: tiny is neither a GGUF file nor a GPTQ/AWQ/compressed-tensors integer checkpoint" \
  "$QQ" eval --model tiny --data text.jsonl --int8-activations
"$QQ" eval --model g --data text.jsonl --seq-len 64 -q --json > g_exact.txt 2>&1 || fail "eval of a GPTQ model" g_exact.txt
"$QQ" eval --model g --data text.jsonl --seq-len 64 -q --int8-activations --json > g_int8.txt 2>&1 ||
  fail "eval --int8-activations of a GPTQ model" g_int8.txt
grep -q '"int8_activations":true' g_int8.txt || fail "eval --int8-activations of GPTQ did not say so" g_int8.txt
int8_n=$(sed -n 's/.*"int8_linears":\([0-9]*\).*/\1/p' g_int8.txt)
all_n=$(sed -n 's/.*"linears":\([0-9]*\).*/\1/p' g_int8.txt)
[ -n "$int8_n" ] && [ "$int8_n" -gt 0 ] && [ "$int8_n" = "$all_n" ] ||
  fail "GPTQ g32: $int8_n of $all_n Linears took the int8 products" g_int8.txt
ppl() { sed -n 's/.*"perplexity":\([0-9.e+-]*\).*/\1/p' "$1"; }
awk -v a="$(ppl g_exact.txt)" -v b="$(ppl g_int8.txt)" 'BEGIN { exit !(a > 0 && b != a && (b - a) / a < 0.01 && (a - b) / a < 0.01) }' ||
  fail "GPTQ perplexity with int8 activations $(ppl g_int8.txt) vs exact $(ppl g_exact.txt)" g_int8.txt
# act-order GPTQ: its rows are sorted by group at load, so every Linear takes the int8 products too (the coverage line
# says so), and its perplexity stays within 1 % of its exact one.
"$QQ" gptq --model tiny --out g_act --calib text.jsonl --calib-samples 2 --group-size 32 --desc-act --threads 1 \
  > gptq_act.txt 2>&1 || fail "gptq --desc-act" gptq_act.txt
"$QQ" eval --model g_act --data text.jsonl --seq-len 64 -q --json > g_act_exact.txt 2>&1 ||
  fail "eval of an act-order GPTQ model" g_act_exact.txt
"$QQ" eval --model g_act --data text.jsonl --seq-len 64 --json --int8-activations > g_act_int8.txt 2>&1 ||
  fail "eval --int8-activations of an act-order GPTQ model" g_act_int8.txt
grep -q "int8 activations: $all_n of $all_n Linears" g_act_int8.txt ||
  fail "act-order: the coverage line does not say every Linear took the int8 products" g_act_int8.txt
awk -v a="$(ppl g_act_exact.txt)" -v b="$(ppl g_act_int8.txt)" 'BEGIN { exit !(a > 0 && b != a && (b - a) / a < 0.01 && (a - b) / a < 0.01) }' ||
  fail "act-order GPTQ perplexity with int8 activations $(ppl g_act_int8.txt) vs exact $(ppl g_act_exact.txt)" g_act_int8.txt
# (new format, compressed-tensors) gptq --format compressed-tensors writes the same codes in llm-compressor's layout:
# the same perplexity as the act-order GPTQ file above, and the int8 products on every Linear; what the format
# cannot hold is refused before any output.
"$QQ" gptq --model tiny --out g_ct --format compressed-tensors --calib text.jsonl --calib-samples 2 --group-size 32 \
  --desc-act --threads 1 > gptq_ct.txt 2>&1 || fail "gptq --format compressed-tensors" gptq_ct.txt
grep -q '"quant_method": "compressed-tensors"' g_ct/config.json || fail "gptq --format compressed-tensors: config" g_ct/config.json
"$QQ" eval --model g_ct --data text.jsonl --seq-len 64 -q --json > g_ct_exact.txt 2>&1 ||
  fail "eval of a compressed-tensors model written by gptq" g_ct_exact.txt
[ "$(ppl g_ct_exact.txt)" = "$(ppl g_act_exact.txt)" ] ||
  fail "compressed-tensors perplexity $(ppl g_ct_exact.txt) vs the GPTQ file's $(ppl g_act_exact.txt)" g_ct_exact.txt
"$QQ" eval --model g_ct --data text.jsonl --seq-len 64 --json --int8-activations > g_ct_int8.txt 2>&1 ||
  fail "eval --int8-activations of a compressed-tensors model" g_ct_int8.txt
grep -q "int8 activations: $all_n of $all_n Linears" g_ct_int8.txt ||
  fail "compressed-tensors: not every Linear took the int8 products" g_ct_int8.txt
# (new command, fp8) float8 weights per channel (compressed-tensors) load and evaluate; an FP8 model is a source for
# the 4-bit quantizers (the same bytes as from its dequantized fp32 twin).
"$QQ" fp8 --model tiny --out f8 -q > fp8.txt 2>&1 || fail "fp8" fp8.txt
"$QQ" eval --model f8 --data text.jsonl --seq-len 64 -q > f8_eval.txt 2>&1 || fail "eval of an fp8 model" f8_eval.txt
"$QQ" rtn --model f8 --out f8_rtn --group-size 32 -q > f8_rtn.txt 2>&1 || fail "rtn from an fp8 model" f8_rtn.txt
"$QQ" dequantize --model f8 --out f8_dense --dtype fp32 -q > f8_dense.txt 2>&1 || fail "dequantize of fp8" f8_dense.txt
"$QQ" rtn --model f8_dense --out f8_dense_rtn --group-size 32 -q > f8_dense_rtn.txt 2>&1 || fail "rtn" f8_dense_rtn.txt
cmp -s f8_rtn/model.safetensors f8_dense_rtn/model.safetensors || fail "rtn from fp8 differs from rtn of its dequantized model"
refuse ct_3bit "compressed-tensors pack-quantized files are written with 2, 4 or 8-bit codes, not 3" \
  "$QQ" rtn --model tiny --out ct3 --bits 3 --format compressed-tensors
[ ! -e ct3 ] || fail "a refused rtn --format compressed-tensors left ct3"
refuse int8_cuda "--int8-activations: the int8 products run on the CPU" \
  "$QQ" generate --model tiny.gguf --prompt hi --int8-activations --device cuda
"$QQ" eval --model tiny.gguf --data text.jsonl --seq-len 64 -q --int8-activations --json > gguf_int8.txt 2>&1 ||
  fail "eval --int8-activations of a GGUF" gguf_int8.txt
grep -q '"int8_activations":true' gguf_int8.txt || fail "eval --int8-activations did not say so" gguf_int8.txt
[ ! -e x.gguf ] && [ ! -e g_gguf ] || fail "a refused command left an output"

# --- imatrix and gguf --imatrix -------------------------------------------------------------------------------------
echo "a short text" > short.txt
refuse imx_short "short.txt: tokenizes to 13 tokens, fewer than one chunk of 32" "$QQ" imatrix --model tiny \
  --calib short.txt --ctx 32 --out im.gguf
refuse imx_ctx "--ctx 4096 is longer than the model's context (128 tokens)" "$QQ" imatrix --model tiny \
  --calib text.jsonl --ctx 4096 --out im.gguf
refuse imx_chunks "--chunks: must be positive or -1 (all), got 0" "$QQ" imatrix --model tiny --calib text.jsonl \
  --ctx 32 --chunks 0 --out im.gguf
"$QQ" imatrix --model tiny --calib text.jsonl --ctx 32 --out im.gguf -q > imx.txt 2>&1 || fail "imatrix" imx.txt
grep -q "wrote im.gguf: 14 entries from" imx.txt || fail "imatrix summary" imx.txt
refuse imx_none "imatrix: give --calib TEXT (with --model), --in-file FILE to merge, or both" "$QQ" imatrix --out im2.gguf
refuse imx_nomodel "imatrix: --calib needs --model" "$QQ" imatrix --calib text.jsonl --out im2.gguf
"$QQ" imatrix --in-file im.gguf --in-file im.gguf --out im2.gguf > imx2.txt 2>&1 || fail "imatrix --in-file" imx2.txt
grep -q "wrote im2.gguf: 14 entries, .* chunks in all (2 earlier file(s) added)" imx2.txt || fail "imatrix merge" imx2.txt
refuse imx_exists "im.gguf: already exists (pass --overwrite to replace it)" "$QQ" imatrix --model tiny \
  --calib text.jsonl --ctx 32 --out im.gguf
"$QQ" init-random --preset tiny256 --layers 1 --out tiny_wide --dtype fp32 > /dev/null 2>&1 || fail "init-random tiny256"
"$QQ" imatrix --model tiny_wide --calib text.jsonl --ctx 32 --out wide.gguf -q > /dev/null 2>&1 || fail "imatrix wide"
refuse imx_other "wide.gguf: imatrix entry blk.0.attn_q.weight has 256 values but the tensor has 64 columns" \
  "$QQ" gguf --model tiny --out x.gguf --type q4_0 --imatrix wide.gguf
refuse imx_model "tiny.gguf: general.type is \"model\", not an imatrix file" \
  "$QQ" gguf --model tiny --out x.gguf --type q4_0 --imatrix tiny.gguf
head -c 700 im.gguf > im_cut.gguf
refuse imx_cut "im_cut.gguf:" "$QQ" gguf --model tiny --out x.gguf --type q4_0 --imatrix im_cut.gguf
"$QQ" gguf --model tiny --out x_im.gguf --type q4_0 --imatrix im.gguf -q > gim.txt 2>&1 || fail "gguf --imatrix" gim.txt
grep -q "importance matrix for 14 of them" gim.txt || fail "gguf --imatrix summary" gim.txt
[ ! -e x.gguf ] || fail "a refused gguf --imatrix left an output"

# --- train --stop-after: says there is no adapter ------------------------------------------------------------------
"$QL" train --model tiny --data text.jsonl --seq-len 64 -q --out runs --max-steps 6 --save-every 2 --stop-after 3 \
  --threads 1 > stop.txt 2>&1 || fail "--stop-after run" stop.txt
grep -q "stopped after 3 steps .*no final adapter; continue with --resume (from runs/checkpoint-2)" stop.txt \
  || fail "--stop-after summary" stop.txt
grep -q "adapter in" stop.txt && fail "--stop-after claims an adapter" stop.txt
[ ! -e runs/adapter_model.safetensors ] || fail "--stop-after wrote an adapter"

# --- train: examples cut to --seq-len are dropped when no response is left, or reported --------------------------
# By default (--max-len 0 = --seq-len) an example without a response token in --seq-len is dropped at load: here all.
refuse cut0 "empty dataset (every example lost its response to max_len 32)" \
  "$QL" train --model tiny --data alpaca.jsonl --out runt --max-steps 1 --seq-len 32 --threads 1 -q
# A --max-len above --seq-len keeps them for the batcher to cut: warned, with those that keep no response token.
"$QL" train --model tiny --data alpaca.jsonl --out runt --max-steps 1 --seq-len 32 --max-len 2048 --threads 1 -q \
  > cut.txt 2>&1 || fail "train on long examples" cut.txt
grep -q "warning: 8 of 8 training examples are longer than --seq-len 32 and are cut to it; 8 of them keep no response token" \
  cut.txt || fail "no warning about examples cut to --seq-len" cut.txt
# --- mixtures of experts: quantize, evaluate, generate; the rest refuses by name ----------------------------------
"$QQ" init-random --preset tiny-moe --out moe --dtype bf16 > /dev/null 2>&1 || fail "init-random tiny-moe"
"$QQ" gptq --model moe --out moe_gptq --calib text.jsonl --calib-samples 4 --calib-seq-len 32 --group-size 32 -q \
  > moe_gptq.txt 2>&1 || fail "gptq on a MoE model" moe_gptq.txt
"$QQ" nf4 --model moe --out moe_nf4 -q > moe_nf4.txt 2>&1 || fail "nf4 on a MoE model" moe_nf4.txt
for m in moe moe_gptq moe_nf4; do
  "$QQ" eval --model $m --data text.jsonl --seq-len 64 -q > "eval_$m.txt" 2>&1 || fail "eval $m" "eval_$m.txt"
  grep -q "^perplexity " "eval_$m.txt" || fail "eval $m printed no perplexity" "eval_$m.txt"
done
"$QQ" generate --model moe_gptq --prompt "Once upon" -n 4 > moe_gen.txt 2>&1 || fail "generate on GPTQ MoE" moe_gen.txt
"$QL" train --model moe --data text.jsonl --out moe_dora_run --max-steps 2 --seq-len 32 -q --target all-linear \
  --use-dora > moe_dora.txt 2>&1 || fail "DoRA on every expert of a MoE" moe_dora.txt
"$QL" merge --model moe --adapter moe_dora_run --out moe_dora_merged --dtype fp32 -q > moe_dora_merge.txt 2>&1 \
  || fail "merge of a MoE DoRA adapter" moe_dora_merge.txt
"$QL" train --model moe_gptq --data text.jsonl --out moe_run --max-steps 3 --seq-len 32 -q --target all-linear \
  > moe_train.txt 2>&1 || fail "LoRA on every expert of a GPTQ MoE base" moe_train.txt
# The CPU runs both unmerged (the experts' branches, DoRA's gains computed as the adapter attaches) and scores the
# text as the adapter merged into an fp32 directory does, within the branch's fp32 reassociation.
"$QL" merge --model moe_gptq --adapter moe_run --out moe_merged32 --dtype fp32 -q > moe_merge32.txt 2>&1 \
  || fail "merge into a GPTQ MoE base (fp32)" moe_merge32.txt
for m in ad:moe_gptq:moe_run m32:moe_merged32: dora:moe:moe_dora_run dm:moe_dora_merged:; do
  IFS=: read -r tag model adapter <<< "$m"
  "$QQ" eval --model "$model" ${adapter:+--adapter "$adapter"} --data text.jsonl --seq-len 64 --json \
    > "moe_eval_$tag.json" 2> "moe_eval_$tag.err" || fail "eval --adapter on a MoE ($tag)" "moe_eval_$tag.err"
done
grep -q "adapter moe_run applied unmerged (base kept as stored)" moe_eval_ad.err \
  || fail "the MoE adapter's unmerged line" moe_eval_ad.err
grep -q "adapter moe_dora_run applied unmerged (base kept as stored): .* (DoRA)" moe_eval_dora.err \
  || fail "the DoRA adapter's unmerged line" moe_eval_dora.err
python3 - <<'PY' || fail "a MoE's unmerged adapters against their merged directories"
import json
kUnmergedPplRelTol = 1e-5  # as tests/cli/test_qlora_cli.sh's: fp32 reassociation of the branch through the model
p = {t: json.load(open(f"moe_eval_{t}.json"))["perplexity"] for t in ("ad", "m32", "dora", "dm")}
for unmerged, merged in (("ad", "m32"), ("dora", "dm")):
    assert abs(p[unmerged] - p[merged]) <= kUnmergedPplRelTol * p[merged], (unmerged, merged, p)
PY
"$QL" merge --model moe_gptq --adapter moe_run --out moe_merged -q > moe_merge.txt 2>&1 || fail "merge into a GPTQ MoE base" moe_merge.txt
"$QQ" eval --model moe_merged --data text.jsonl --seq-len 64 -q > moe_eval_m.txt 2>&1 || fail "eval of a merged MoE" moe_eval_m.txt
refuse moe_awq "the AutoAWQ layout cannot mark a MoE model's routers unquantized" "$QQ" awq --model moe --out moe_awq \
  --calib text.jsonl --calib-seq-len 32 -q
refuse moe_gguf "a mixture of experts with dense layers" "$QQ" gguf --model moe --out moe.gguf --type q4_0 -q
"$QQ" init-random --preset tiny-moe-shared --out moe_shared --dtype fp32 > /dev/null 2>&1 || fail "init-random tiny-moe-shared"
"$QQ" gguf --model moe_shared --out moe_shared.gguf --type q4_k_m -q > moe_shared_gguf.txt 2>&1 \
  || fail "gguf of an all-sparse Qwen2-MoE" moe_shared_gguf.txt
"$QQ" eval --model moe_shared.gguf --data text.jsonl --seq-len 64 -q > moe_shared_eval.txt 2>&1 \
  || fail "eval of a qwen2moe GGUF" moe_shared_eval.txt
"$QQ" imatrix --model moe_shared --calib text.jsonl --ctx 32 --chunks 4 --out moe_shared_imatrix.gguf -q \
  > moe_shared_imatrix.txt 2>&1 || fail "imatrix of a Qwen2-MoE" moe_shared_imatrix.txt
"$QQ" gguf --model moe_shared --out moe_shared_im.gguf --type q4_k_m --imatrix moe_shared_imatrix.gguf -q \
  > moe_shared_gguf_im.txt 2>&1 || fail "gguf --imatrix of a Qwen2-MoE" moe_shared_gguf_im.txt
"$QQ" nf4 --model moe_shared --out moe_lq --loftq-rank 4 -q > moe_lq.txt 2>&1 || fail "nf4 --loftq-rank of a MoE" moe_lq.txt
"$QL" train --model moe_lq --data text.jsonl --out moe_lq_run --max-steps 2 --seq-len 32 -q \
  --init-adapter moe_lq/loftq_init > moe_lq_run.txt 2>&1 || fail "train --init-adapter LoftQ on a MoE" moe_lq_run.txt
"$QL" plan --model moe --device cpu --cpu-mem-gb 8 --seq-len 64 > moe_plan.txt 2>&1 || fail "plan of a MoE model on the CPU" moe_plan.txt
grep -q "2 MoE layers: 8 experts x 32, top-2" moe_plan.txt || fail "plan names the MoE layers" moe_plan.txt
"$QL" plan --model moe --device cuda --gpus 1 --seq-len 64 > moe_plan_gpu.txt 2>&1 || fail "plan of a MoE model on the GPU" moe_plan_gpu.txt
grep -q "2 MoE layers: 8 experts x 32, top-2" moe_plan_gpu.txt || fail "the GPU plan names the MoE layers" moe_plan_gpu.txt
"$QL" plan --model moe --device cuda --gpus 1 --seq-len 64 --use-dora > moe_plan_dora.txt 2>&1 \
  || fail "plan of DoRA on a MoE model on the GPU" moe_plan_dora.txt
refuse moe_compare "compare --methods gguf-q4_0: moe/config.json: a mixture of experts with dense layers" "$QQ" compare \
  --model moe --out moe_cmp --methods rtn,gguf-q4_0 \
  --data text.jsonl --calib text.jsonl
refuse moe_compare_awq "compare --methods awq: the AutoAWQ layout cannot mark" "$QQ" compare --model moe --out moe_cmp \
  --methods rtn,awq --data text.jsonl --calib text.jsonl
"$QQ" awq --model moe --out moe_awq2 --format gptq_v2 --calib text.jsonl --calib-seq-len 32 --calib-samples 8 -q \
  > moe_awq2.txt 2>&1 || fail "awq --format gptq_v2 on a MoE model" moe_awq2.txt
"$QQ" eval --model moe_awq2 --data text.jsonl --seq-len 64 -q --json > moe_awq2_eval.txt 2>&1 || fail "eval of an AWQ MoE" moe_awq2_eval.txt
# compressed-tensors ignores the routers by pattern, so AWQ's MoE with dense layers needs no GPTQ layout either.
"$QQ" awq --model moe --out moe_awq_ct --format compressed-tensors --calib text.jsonl --calib-seq-len 32 \
  --calib-samples 8 -q > moe_awq_ct.txt 2>&1 || fail "awq --format compressed-tensors on a MoE model" moe_awq_ct.txt
grep -qF '"re:.*mlp\\.gate$"' moe_awq_ct/config.json || fail "compressed-tensors MoE: routers not ignored" moe_awq_ct/config.json
"$QQ" eval --model moe_awq_ct --data text.jsonl --seq-len 64 -q --json > moe_awq_ct_eval.txt 2>&1 ||
  fail "eval of a compressed-tensors AWQ MoE" moe_awq_ct_eval.txt
[ "$(ppl moe_awq_ct_eval.txt)" = "$(ppl moe_awq2_eval.txt)" ] ||
  fail "compressed-tensors AWQ MoE perplexity $(ppl moe_awq_ct_eval.txt) vs gptq_v2's $(ppl moe_awq2_eval.txt)" moe_awq_ct_eval.txt
"$QQ" fp8 --model moe --out moe_f8 --format fp8 -q > moe_f8.txt 2>&1 || fail "fp8 --format fp8 of a MoE model" moe_f8.txt
grep -q '"model.layers.0.mlp.gate"' moe_f8/config.json || fail "block-wise fp8 MoE: routers not listed" moe_f8/config.json
"$QQ" eval --model moe_f8 --data text.jsonl --seq-len 64 -q > moe_f8_eval.txt 2>&1 || fail "eval of a fp8 MoE" moe_f8_eval.txt
for d in moe_awq moe.gguf moe_cmp; do [ ! -e $d ] || fail "a refused MoE command left $d"; done

# --- eval --kl-base: both models must read the text as the same tokens ---------------------------------------------
cp -r tiny tiny_swapped
python3 - tiny_swapped/vocab.json <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
a, b = "a", "b"  # two byte symbols trade ids: "a" and "b" in the text become each other's id
v[a], v[b] = v[b], v[a]
json.dump(v, open(sys.argv[1], "w"))
PY
refuse kl_tokens "--kl-base tiny_swapped: its tokenizer splits text.jsonl differently from tiny's" \
  "$QQ" eval --model tiny --data text.jsonl --seq-len 64 --kl-base tiny_swapped
refuse kl_missing "cannot find model 'no_such_base'" "$QQ" eval --model tiny --data text.jsonl --kl-base no_such_base
# --- gsm8k: a bad record is named by file:line before the model loads; few-shot examples need their file ---------
printf '{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n' > gsm.jsonl
refuse gsm_record "gsm.jsonl:2: \"answer\" missing or not a string" "$QQ" gsm8k --model tiny --data gsm.jsonl
refuse gsm_fewshot "--fewshot 5 draws its examples from --fewshot-data" "$QQ" gsm8k --model tiny --data gsm.jsonl --fewshot 5
printf '{"question": "1+1?", "answer": "#### 2"}\n' > gsm_ok.jsonl
# compare --gsm8k: the same checks before any quantization (nothing under the output directory).
refuse cmp_gsm_record "gsm.jsonl:2: \"answer\" missing or not a string" "$QQ" compare --model tiny --data text.jsonl \
  --methods rtn-g32 --seq-len 64 --gsm8k gsm.jsonl --out cmp_gsm
refuse cmp_gsm_fewshot "--gsm8k-fewshot 5 draws its examples from --gsm8k-fewshot-data" "$QQ" compare --model tiny \
  --data text.jsonl --methods rtn-g32 --seq-len 64 --gsm8k gsm_ok.jsonl --out cmp_gsm
refuse cmp_gsm_pool "--gsm8k-fewshot 2 needs as many records; gsm_ok.jsonl has 1" "$QQ" compare --model tiny \
  --data text.jsonl --methods rtn-g32 --seq-len 64 --gsm8k gsm_ok.jsonl --gsm8k-fewshot 2 --gsm8k-fewshot-data gsm_ok.jsonl \
  --out cmp_gsm
[ ! -e cmp_gsm ] || fail "a refused compare --gsm8k left cmp_gsm"
"$QQ" gsm8k --model tiny --data gsm_ok.jsonl --fewshot 1 --fewshot-data gsm_ok.jsonl -n 8 --predictions gsm_preds.jsonl \
  --json -q > gsm.json 2> gsm.err || fail "gsm8k on a tiny model" gsm.err
python3 - gsm.json gsm_preds.jsonl <<'PY' || fail "gsm8k: unexpected output" gsm.json
import json, sys
j = json.load(open(sys.argv[1]))
p = [json.loads(l) for l in open(sys.argv[2])]
assert j["items"] == 1 and j["fewshot"] == 1 and 0 <= j["exact_match_flexible"] <= 1, j
assert len(p) == 1 and p[0]["prompt"] == "Question: 1+1?\nAnswer: #### 2\n\nQuestion: 1+1?\nAnswer:", p
assert 0 < p[0]["new_tokens"] <= 8, p
PY
# --- eval --save-kld / --kl-base FILE: llama-perplexity's base file, written whole or not at all -------------------
"$QQ" eval --model tiny --data text.jsonl --seq-len 64 --save-kld tiny.kld --json -q > save_kld.json 2> save_kld.err ||
  fail "eval --save-kld" save_kld.err
"$QQ" eval --model tiny --kl-base tiny.kld --json -q > kld_self.json 2> kld_self.err || fail "eval --kl-base FILE" kld_self.err
python3 - save_kld.json kld_self.json tiny.kld <<'PY' || fail "eval --save-kld then --kl-base FILE: unexpected output" kld_self.json
import json, os, sys
saved, self_ = (json.load(open(p)) for p in sys.argv[1:3])
assert saved["save_kld_bytes"] == os.path.getsize(sys.argv[3]) and saved["seq_len"] == 64, saved
kl = self_["kl_divergence"]
# the model against its own file: only the 16-bit encoding's error, the same positions and perplexity
assert kl["positions"] == saved["scored_tokens"] == self_["scored_tokens"] > 0, (kl, saved)
assert kl["kld"]["max"] < 1e-5 and kl["same_top1"] == 1.0, kl
assert abs(self_["perplexity"] / saved["perplexity"] - 1) < 1e-3 and abs(kl["base_perplexity"] / saved["perplexity"] - 1) < 1e-3
PY
refuse kld_with_data "--kl-base tiny.kld is a KL-divergence base file, which carries the tokens it scores; leave --data out" \
  "$QQ" eval --model tiny --kl-base tiny.kld --data text.jsonl
refuse kld_seq_len "--seq-len 32 differs from the n_ctx 64 of tiny.kld" "$QQ" eval --model tiny --kl-base tiny.kld --seq-len 32
refuse kld_both "--save-kld writes a base file from --model; --kl-base scores --model against a base: give one of them" \
  "$QQ" eval --model tiny --data text.jsonl --kl-base tiny.kld --save-kld other.kld
refuse kld_no_data "eval needs --data" "$QQ" eval --model tiny
refuse kld_text "text.jsonl does not start with \"_logits_\": not a KL-divergence base file" \
  "$QQ" eval --model tiny --kl-base text.jsonl
head -c 1000 tiny.kld > cut.kld
refuse kld_cut "cut.kld is 1000 bytes; its header (n_ctx 64, n_vocab" "$QQ" eval --model tiny --kl-base cut.kld
refuse kld_no_dir "--save-kld no_dir/x.kld: directory no_dir does not exist" \
  "$QQ" eval --model tiny --data text.jsonl --seq-len 64 --save-kld no_dir/x.kld
echo "Once upon a time" > short.txt
refuse kld_short "fewer than one chunk of --seq-len 128" "$QQ" eval --model tiny --data short.txt --save-kld short.kld
[ ! -e short.kld ] && [ ! -e other.kld ] || fail "a refused --save-kld left a file"
ls short.kld.tmp.* other.kld.tmp.* > /dev/null 2>&1 && fail "a refused --save-kld left a temporary file"
# --- multiple-choice: a bad item is named by file:line before the model loads; a good set scores -----------------
printf '{"context": "a", "choices": [" b", " c"], "label": 0}\n{"context": "a", "choices": [" b", " c"], "label": 5}\n' > mc.jsonl
refuse mc_label "mc.jsonl:2: \"label\" 5 is not one of the 2 choices" "$QQ" multiple-choice --model tiny --data mc.jsonl
printf '{"context": "The cat", "choices": [" sat", " ran", " is"], "label": 1}\n' > mc_ok.jsonl
"$QQ" multiple-choice --model tiny --data mc_ok.jsonl -q > mc_ok.txt 2>&1 || fail "multiple-choice" mc_ok.txt
grep -q "^acc [01].0000 ± 0.0000, acc_norm [01].0000 ± 0.0000  (1 items of mc_ok.jsonl" mc_ok.txt || fail "multiple-choice line" mc_ok.txt
echo "user errors CLI: OK"
