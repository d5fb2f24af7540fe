#!/usr/bin/env bash
# qwen-qlora data --objective classify shows each problem type's targets as train reads them: a multi-label file
# (lists of names, inferred) with each text's labels and the count per label, a regression file (--problem-type
# regression) with each text's values; the flag with another objective and a fraction without it are refused.
set -euo pipefail
source "$(dirname "$0")/cli_setup.sh"

"$QQ" init-random --preset tiny --out "$WORK/tiny" --dtype fp32 > /dev/null 2>&1
cat > "$WORK/multi.jsonl" <<'J'
{"text": "a cat and a dog", "label": ["cat", "dog"]}
{"text": "the sun", "label": []}
{"text": "one dog", "label": ["dog"]}
J
"$QL" data -m "$WORK/tiny" -d "$WORK/multi.jsonl" --objective classify --show 3 > "$WORK/multi.txt" 2>&1 ||
  fail "data of a multi-label file" "$WORK/multi.txt"
grep -q '^--- text 1 \[labels cat, dog: ' "$WORK/multi.txt" || fail "multi-label text 1" "$WORK/multi.txt"
grep -q '^--- text 2 \[labels none: ' "$WORK/multi.txt" || fail "multi-label text 2 (no label)" "$WORK/multi.txt"
grep -q '^multi_label_classification, 2 labels (0 cat: 1, 1 dog: 2)$' "$WORK/multi.txt" || fail "multi-label counts" "$WORK/multi.txt"
"$QL" data -m "$WORK/tiny" -d "$WORK/multi.jsonl" --objective classify --dump "$WORK/multi_dump.jsonl" > /dev/null 2>&1 ||
  fail "data --dump of a multi-label file"
python3 - "$WORK/multi_dump.jsonl" <<'PY'
import json, sys
labels = [json.loads(l)["label"] for l in open(sys.argv[1])]
assert labels == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]], labels
PY

cat > "$WORK/scores.jsonl" <<'J'
{"text": "a cat and a dog", "label": 0.25}
{"text": "the sun", "label": -1.5}
J
"$QL" data -m "$WORK/tiny" -d "$WORK/scores.jsonl" --objective classify --problem-type regression --show 2 \
  > "$WORK/reg.txt" 2>&1 || fail "data of a regression file" "$WORK/reg.txt"
grep -q '^--- text 1 \[values 0.25: ' "$WORK/reg.txt" || fail "regression text 1" "$WORK/reg.txt"
grep -q '^--- text 2 \[values -1.5: ' "$WORK/reg.txt" || fail "regression text 2" "$WORK/reg.txt"
grep -q '^regression, 1 outputs (0 LABEL_0)$' "$WORK/reg.txt" || fail "regression summary" "$WORK/reg.txt"
if "$QL" data -m "$WORK/tiny" -d "$WORK/scores.jsonl" --objective classify > "$WORK/frac.txt" 2>&1; then
  fail "a fraction without --problem-type accepted" "$WORK/frac.txt"
fi
grep -q 'scores.jsonl:1: "label" 0.25 is not a label id or name (a regression head: --problem-type regression)' \
  "$WORK/frac.txt" || fail "a fraction without --problem-type" "$WORK/frac.txt"
if "$QL" data -m "$WORK/tiny" -d "$WORK/scores.jsonl" --problem-type regression > "$WORK/sft.txt" 2>&1; then
  fail "--problem-type with sft accepted" "$WORK/sft.txt"
fi
grep -q -- "--problem-type, --text-field, --text-pair-field and --label-field apply to --objective classify" "$WORK/sft.txt" ||
  fail "--problem-type with sft" "$WORK/sft.txt"
echo "classify CLI: OK"
