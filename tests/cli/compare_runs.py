"""Compares two `qwen-qlora train` run directories: RUN against ORACLE, every step's loss and every eval_loss within
LOSS_RTOL (relative), every adapter tensor within ADAPTER_RTOL of the oracle tensor's largest value. Used by the
data-parallel checks (tests/cli/test_qlora_data_parallel_cli.sh, scripts/gpu_check.sh's dp phase).
Usage: compare_runs.py RUN ORACLE LOSS_RTOL ADAPTER_RTOL"""
import array, json, struct, sys
a, b, loss_rtol, ad_rtol = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
def records(run, key):
    return [(j["step"], j[key]) for j in map(json.loads, open(run + "/metrics.jsonl")) if key in j]
for key in ("loss", "eval_loss"):
    x, y = records(a, key), records(b, key)
    assert len(x) == len(y) and len(x) > 0, f"{key}: {len(x)} vs {len(y)} records"
    for (s, u), (t, v) in zip(x, y):
        assert s == t and abs(u - v) <= loss_rtol * abs(v), f"{key} at step {s}: {u} vs {v}"
def tensors(run):
    raw = open(run + "/adapter_model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    out = {}
    for name, t in json.loads(raw[8:8 + n]).items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", t["dtype"]
        s, e = t["data_offsets"]
        v = array.array("f")
        v.frombytes(raw[8 + n + s:8 + n + e])
        out[name] = v
    return out
x, y = tensors(a), tensors(b)
assert sorted(x) == sorted(y), "different tensors"
for name in y:
    top = max(abs(v) for v in y[name])
    worst = max(abs(u - v) for u, v in zip(x[name], y[name]))
    assert top > 0 and worst <= ad_rtol * top, f"{name}: off by {worst} (largest value {top})"
print(f"{len(records(a, 'loss'))} steps, {len(y)} tensors within tolerance")
