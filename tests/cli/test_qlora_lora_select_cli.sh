#!/usr/bin/env bash
# PEFT's finer module selection through `qwen-qlora train` (lora/lora_select.h): --layers-to-transform,
# --exclude-modules, --rank-pattern and --alpha-pattern (also from --config, the patterns as JSON objects) train
# exactly the Linears and ranks they name and write them into adapter_config.json under PEFT's names; --target-regex
# the same; a resume refuses a changed pattern; --init-adapter adopts the adapter's selection; generate, eval and merge
# take the adapter (on the CPU: `--device cuda` refused naming the reason); each bad flag gets one clear line and
# nothing written.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"
"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 --layers 3 >/dev/null
python3 "$(dirname "$0")/sentences.py" "$WORK/data.jsonl" 120 3
base=(--model "$WORK/tiny" --data "$WORK/data.jsonl" --max-steps 4 --seq-len 64 --batch-size 2 --lr 0.003
      --lora-r 4 --lora-alpha 8 --eval-count 4 --threads 1 --quiet --device cpu)
"$QL" train "${base[@]}" --target all-linear --layers-to-transform 0,2 --exclude-modules 2.mlp.down_proj \
  --rank-pattern '{"v_proj": 2, "down_proj": 8}' --alpha-pattern '{"q_proj": 16}' --save-every 2 \
  --out "$WORK/run" > "$WORK/run.txt" 2>&1 || fail "training with a fine selection" "$WORK/run.txt"
python3 - "$WORK/run" <<'PY' || fail "the adapter's selection" "$WORK/run/adapter_config.json"
import json, struct, sys
d = sys.argv[1]
cfg = json.load(open(d + "/adapter_config.json"))
assert cfg["layers_to_transform"] == [0, 2] and cfg["exclude_modules"] == ["2.mlp.down_proj"], cfg
assert list(cfg["rank_pattern"].items()) == [("v_proj", 2), ("down_proj", 8)], cfg["rank_pattern"]
assert cfg["alpha_pattern"] == {"q_proj": 16} and cfg["r"] == 4, cfg
raw = open(d + "/adapter_model.safetensors", "rb").read()
h = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
a = {k[len("base_model.model.model.layers."):-len(".lora_A.weight")]: v["shape"][0] for k, v in h.items()
     if k.endswith("lora_A.weight")}
want = {}
for l in (0, 2):
    for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj"):
        if (l, p) == (2, "mlp.down_proj"):
            continue
        want[f"{l}.{p}"] = 2 if p.endswith("v_proj") else 8 if p.endswith("down_proj") else 4
assert a == want, (sorted(a.items()), sorted(want.items()))
PY
# The same run from a --config file, the patterns as JSON objects: the same adapter, bit for bit.
cat > "$WORK/sel.json" <<JSON
{"model": "$WORK/tiny", "data": "$WORK/data.jsonl", "max-steps": 4, "seq-len": 64, "batch-size": 2, "lr": 0.003,
 "lora-r": 4, "lora-alpha": 8, "eval-count": 4, "threads": 1, "quiet": true, "device": "cpu", "target": "all-linear",
 "layers-to-transform": [0, 2], "exclude-modules": ["2.mlp.down_proj"], "rank-pattern": {"v_proj": 2, "down_proj": 8},
 "alpha-pattern": {"q_proj": 16}}
JSON
"$QL" train --config "$WORK/sel.json" --out "$WORK/cfg" > "$WORK/cfg.txt" 2>&1 || fail "the same run from --config" "$WORK/cfg.txt"
cmp "$WORK/run/adapter_model.safetensors" "$WORK/cfg/adapter_model.safetensors" \
  || fail "--config's patterns trained another adapter"
# A resume with another pattern is refused, naming it; with the same one it continues.
if "$QL" train "${base[@]}" --target all-linear --layers-to-transform 0,2 --exclude-modules 2.mlp.down_proj \
     --rank-pattern '{"v_proj": 4}' --alpha-pattern '{"q_proj": 16}' --out "$WORK/run" --resume \
     > "$WORK/resume_bad.txt" 2>&1; then
  fail "a resume with another rank_pattern was accepted" "$WORK/resume_bad.txt"
fi
grep -q "lora_selection" "$WORK/resume_bad.txt" || fail "the resume refusal does not name the selection" "$WORK/resume_bad.txt"
# --target-regex: q and v of every layer but the first.
"$QL" train "${base[@]}" --target-regex 'model\.layers\.[12]\.self_attn\.(q|v)_proj' --out "$WORK/re" \
  > "$WORK/re.txt" 2>&1 || fail "training with --target-regex" "$WORK/re.txt"
python3 - "$WORK/re" <<'PY' || fail "the regex adapter" "$WORK/re/adapter_config.json"
import json, struct, sys
d = sys.argv[1]
cfg = json.load(open(d + "/adapter_config.json"))
assert cfg["target_modules"] == r"model\.layers\.[12]\.self_attn\.(q|v)_proj", cfg["target_modules"]
raw = open(d + "/adapter_model.safetensors", "rb").read()
h = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
assert sorted(k for k in h if k.endswith("lora_A.weight")) == sorted(
    f"base_model.model.model.layers.{l}.self_attn.{p}_proj.lora_A.weight" for l in (1, 2) for p in "qv"), sorted(h)
PY
# --init-adapter takes the adapter's selection; a different --rank-pattern beside it is refused.
"$QL" train "${base[@]}" --init-adapter "$WORK/run" --out "$WORK/init" > "$WORK/init.txt" 2>&1 \
  || fail "--init-adapter with a fine selection" "$WORK/init.txt"
python3 -c "import json,sys; c=json.load(open(sys.argv[1])); assert c['rank_pattern']=={'v_proj':2,'down_proj':8}, c" \
  "$WORK/init/adapter_config.json" || fail "--init-adapter did not keep the selection"
if "$QL" train "${base[@]}" --init-adapter "$WORK/run" --rank-pattern '{"v_proj": 3}' --out "$WORK/init2" \
     > "$WORK/init2.txt" 2>&1; then fail "--init-adapter with another --rank-pattern accepted" "$WORK/init2.txt"; fi
grep -q "differs from --init-adapter" "$WORK/init2.txt" || fail "the --init-adapter refusal" "$WORK/init2.txt"
# generate, eval and merge take it (the adapter line names the selection); merge's model scores as the adapter does.
"$QL" generate --model "$WORK/tiny" --adapter "$WORK/run" --prompt "Ann" --max-new-tokens 4 --threads 1 \
  > "$WORK/gen.txt" 2> "$WORK/gen.err" || fail "generate with the adapter" "$WORK/gen.err"
grep -q "adapter .* 13 Linears (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; layers_to_transform \[0,2\]" \
  "$WORK/gen.err" || fail "generate's adapter line" "$WORK/gen.err"
ev=(eval --model "$WORK/tiny" --data "$WORK/data.jsonl" --eval-count 4 --seq-len 64 --batch-size 2 --threads 1
    --device cpu --json)
"$QL" "${ev[@]}" --adapter "$WORK/run" > "$WORK/ev.json" 2> "$WORK/ev.txt" || fail "eval with the adapter" "$WORK/ev.txt"
"$QL" merge --model "$WORK/tiny" --adapter "$WORK/run" --out "$WORK/merged" --dtype fp32 > "$WORK/merge.txt" 2>&1 \
  || fail "merge" "$WORK/merge.txt"
ev_m=("${ev[@]/$WORK\/tiny/$WORK/merged}")
"$QL" "${ev_m[@]}" > "$WORK/evm.json" 2> "$WORK/evm.txt" || fail "eval of the merged model" "$WORK/evm.txt"
python3 - "$WORK/ev.json" "$WORK/evm.json" <<'PY' || fail "the merged model's loss differs from the adapter's"
import json, sys
a, b = (json.load(open(p))["loss"] for p in sys.argv[1:3])
assert abs(a - b) <= 1e-5 * abs(a), (a, b)
PY
# The GPU paths do not lay out per-Linear ranks: --device cuda refused with the reason (or: no GPU here).
if "$QL" generate --model "$WORK/tiny" --adapter "$WORK/run" --prompt "Ann" --max-new-tokens 2 --device cuda \
     > "$WORK/cuda.txt" 2>&1; then fail "--device cuda with a per-Linear rank adapter accepted" "$WORK/cuda.txt"; fi
grep -qE "rank or alpha of its own|CUDA is not available|no CUDA backend|no CUDA" "$WORK/cuda.txt" \
  || fail "the --device cuda refusal" "$WORK/cuda.txt"
# Bad flags: one line each, nothing written.
bad() {
  local expect="$1"; shift
  if "$QL" train "${base[@]}" "$@" --out "$WORK/bad" > "$WORK/bad.txt" 2>&1; then fail "accepted: $*" "$WORK/bad.txt"; fi
  grep -qF -- "$expect" "$WORK/bad.txt" || fail "refusal of $* does not say '$expect'" "$WORK/bad.txt"
  [ ! -e "$WORK/bad" ] || fail "a refused run wrote $WORK/bad"
}
bad "runs backwards" --layers-to-transform 3-1
bad "not a rank" --rank-pattern '{"v_proj": 0}'
bad "must be a JSON object" --alpha-pattern '[1]'
bad "give --target or --target-regex, not both" --target q_proj --target-regex '.*q_proj'
bad "cannot be used when target_modules is a regular expression" --target-regex '.*q_proj' --layers-to-transform 0
bad "matches no Linear" --layers-to-transform 7
bad "(?<= (lookbehind)" --target-regex '.*(?<=attn)\.q_proj'
bad "selects lm_head" --target-regex '.*'
echo PASS
