"""Oracle: `qwen-quant imatrix` statistics against transformers' own forward, and its files read by gguf-py 0.17.1.

Tiny random Qwen2 (untied, q/k/v biases, GQA), Qwen3 (q/k norms, head_dim 32 != hidden/heads, tied) and Llama (GQA)
models, and a Qwen3-MoE (8 experts) and a Qwen2-MoE (shared expert), are made with transformers (fp32, sdpa off:
eager attention). An expert's Linear is matrix e of its layer's ffn_*_exps entry (the rows routed to it, its own
count); the router is ffn_gate_inp. The calibration text is the shared WikiText-2
test text; `qwen-quant imatrix --ctx 64 --chunks 6 --process-output` writes the GGUF form. Independently, forward
hooks on every nn.Linear of the transformers model, run on the same chunks (our tokenizer's ids, cut into 6 chunks of
64 tokens as llama-imatrix cuts them: the tokenizer adds no BOS here), sum x_j² and x_j of each Linear's input in
float64. gguf-py's GGUFReader parses our file: general.type "imatrix", imatrix.chunk_count 6, imatrix.chunk_size 64,
one <gguf name>.in_sum2 / .in_sum / .counts per Linear (q, k, v, o, gate, up, down of each layer, and output.weight for
the untied models only), counts 384; every in_sum2 and in_sum within 2e-5 (relative to the largest value of its entry)
of the hooks' sums. The --output-format dat file gives the same E[x²] = in_sum2 / counts through the legacy layout,
parsed here from its bytes (values E[x²]·ncall, ncall = 6).
Exit 0 pass, 1 fail, 77 skip (torch/transformers/gguf not importable, or no shared data).
"""
import json
import os
import shutil
import struct

from oracle_common import check, finish, parse_args, require_shared, run, skip, spread_weights, work_dir

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import numpy as np
    import torch
    import transformers
    from gguf import GGUFReader
except Exception as e:  # pragma: no cover
    skip(f"torch/transformers/gguf not usable ({type(e).__name__}: {e}); scripts/oracle_env.sh installs them")

print("transformers", transformers.__version__, "torch", torch.__version__)
qq = os.path.join(args.build, "qwen-quant")
out = work_dir(args.build, "imatrix_oracle")
torch.manual_seed(97)
CTX, CHUNKS = 64, 6
text_path = os.path.join(args.shared, "data", "wikitext2", "wiki.test.raw")

tok_dir = os.path.join(out, "tok")
run([qq, "init-random", "--preset", "tiny", "--out", tok_dir, "--overwrite"])
TOK_FILES = [f for f in os.listdir(tok_dir) if f not in ("model.safetensors", "config.json")]

from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,  # noqa: E402
                          Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig,
                          Qwen3MoeForCausalLM)

common = dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              attn_implementation="eager")
SPECS = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                                                  rope_theta=1e6, tie_word_embeddings=False)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(intermediate_size=172, num_attention_heads=4, num_key_value_heads=2,
                                                  head_dim=32, rope_theta=1e6, tie_word_embeddings=True)),
    "llama": (LlamaConfig, LlamaForCausalLM, dict(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                                                  rope_theta=5e5, tie_word_embeddings=False)),
    # Mixtures of experts as llama.cpp's qwen3moe / qwen2moe: one matrix per expert in each ffn_*_exps entry.
    "qwen3moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(intermediate_size=96, moe_intermediate_size=32,
                                                           num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                                                           num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                                           rope_theta=1e6, tie_word_embeddings=False)),
    "qwen2moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM, dict(intermediate_size=96, moe_intermediate_size=32,
                                                           shared_expert_intermediate_size=64, num_experts=4,
                                                           num_experts_per_tok=2, norm_topk_prob=False,
                                                           num_attention_heads=4, num_key_value_heads=2,
                                                           rope_theta=1e6, tie_word_embeddings=True)),
}
GGUF_NAME = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}


MOE_NAME = {"mlp.gate": "ffn_gate_inp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
            "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
            "mlp.shared_expert.down_proj": "ffn_down_shexp"}


def gguf_name(module_name):
    """(GGUF entry, matrix index) of an nn.Linear: an expert's Linear is matrix e of its layer's stack."""
    if module_name == "lm_head":
        return "output.weight", 0
    parts = module_name.split(".")  # model.layers.<l>.<self_attn|mlp>.<proj> or mlp.experts.<e>.<proj>
    rest = ".".join(parts[3:])
    if parts[3] == "mlp" and parts[4] == "experts":
        return f"blk.{parts[2]}.ffn_{parts[6][:-5]}_exps.weight", int(parts[5])
    if rest in MOE_NAME:
        return f"blk.{parts[2]}.{MOE_NAME[rest]}.weight", 0
    return f"blk.{parts[2]}.{GGUF_NAME[rest]}.weight", 0


for arch, (config_cls, model_cls, extra) in SPECS.items():
    d = os.path.join(out, arch)
    shutil.rmtree(d, ignore_errors=True)
    model = model_cls(config_cls(**common, **extra)).eval()
    spread_weights(model)
    model.save_pretrained(d, safe_serialization=True)
    for f in TOK_FILES:
        shutil.copy(os.path.join(tok_dir, f), d)
    tied = extra["tie_word_embeddings"]

    path = os.path.join(out, f"{arch}-imatrix.gguf")
    run([qq, "imatrix", "--model", d, "--calib", text_path, "--ctx", str(CTX), "--chunks", str(CHUNKS),
         "--process-output", "--out", path, "--overwrite", "--quiet"])
    dat = os.path.join(out, f"{arch}-imatrix.dat")
    run([qq, "imatrix", "--model", d, "--calib", text_path, "--ctx", str(CTX), "--chunks", str(CHUNKS),
         "--process-output", "--out", dat, "--output-format", "dat", "--overwrite", "--quiet"])

    # The chunks, from our tokenizer's ids of the whole text (checked against HF's in test_tokenizer_oracle).
    ids = json.loads(run([qq, "tokenize", "--model", d, "--file", text_path]))["ids"]
    check(len(ids) >= CTX * CHUNKS, f"{arch}: only {len(ids)} tokens")
    sums = {}

    def hook(name):
        def fn(_module, inputs, _output):
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
            s2, s1, n = sums.get(name, (0, 0, 0))
            sums[name] = (s2 + (x * x).sum(0).numpy(), s1 + x.sum(0).numpy(), n + x.shape[0])
        return fn

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and (name != "lm_head" or not tied):
            m.register_forward_hook(hook(name))
    with torch.no_grad():
        for c in range(CHUNKS):
            model(torch.tensor([ids[c * CTX:(c + 1) * CTX]]))

    r = GGUFReader(path)
    fields = {k: v for k, v in r.fields.items()}
    check(bytes(fields["general.type"].parts[-1]).decode() == "imatrix", f"{arch}: general.type")
    check(int(fields["imatrix.chunk_count"].parts[-1][0]) == CHUNKS, f"{arch}: imatrix.chunk_count")
    check(int(fields["imatrix.chunk_size"].parts[-1][0]) == CTX, f"{arch}: imatrix.chunk_size")
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in r.tensors}
    # Per entry: its matrices' sums, stacked (an expert's Linear fills row e of its stack; an expert never called, or
    # called on no rows, keeps zeros and count 0).
    n_mat = {}
    for name in sums:
        g, e = gguf_name(name)
        n_mat[g] = max(n_mat.get(g, 1), e + 1)
    n_mat = {g: (extra["num_experts"] if g.endswith("_exps.weight") else k) for g, k in n_mat.items()}
    want = {}
    for name, (s2, s1, n) in sums.items():
        g, e = gguf_name(name)
        K = len(s2)
        w2, w1, wn = want.get(g, (np.zeros(n_mat[g] * K), np.zeros(n_mat[g] * K), [0.0] * n_mat[g]))
        w2[e * K:(e + 1) * K] += s2
        w1[e * K:(e + 1) * K] += s1
        wn[e] += n
        want[g] = (w2, w1, wn)
    got_names = {n[:-len(".in_sum2")] for n in tensors if n.endswith(".in_sum2")}
    check(got_names == set(want), f"{arch}: entries {sorted(got_names ^ set(want))} differ")
    for g, (s2, s1, n) in want.items():
        if g not in got_names:
            continue
        check(tensors[g + ".counts"].tolist() == [float(c) for c in n],
              f"{arch} {g}: counts {tensors[g + '.counts']} != {n}")
        for suffix, ref in ((".in_sum2", s2), (".in_sum", s1)):
            err = float(np.abs(tensors[g + suffix] - ref).max() / max(np.abs(ref).max(), 1e-30))
            check(err < 2e-5, f"{arch} {g}{suffix}: relative error {err:.2e}")

    # The legacy file: i32 n; per entry i32 len, name, i32 ncall, i32 nval, f32 values (E[x²]·ncall).
    b = open(dat, "rb").read()
    pos, legacy = 4, {}
    for _ in range(struct.unpack_from("<i", b, 0)[0]):
        ln = struct.unpack_from("<i", b, pos)[0]
        name = b[pos + 4:pos + 4 + ln].decode()
        ncall, nval = struct.unpack_from("<ii", b, pos + 4 + ln)
        vals = np.frombuffer(b, np.float32, nval, pos + 12 + ln).astype(np.float64)
        legacy[name] = (ncall, vals)
        pos += 12 + ln + 4 * nval
    check(set(legacy) == set(want), f"{arch}: .dat entries differ")
    for g, (ncall, vals) in legacy.items():
        if g not in want or len(want[g][2]) > 1:  # an expert stack's legacy values: per-expert counts, not checked
            continue
        s2, _, (n,) = want[g]
        check(ncall == CHUNKS, f"{arch} {g}: .dat ncall {ncall}")
        err = float(np.abs(vals / ncall - s2 / n).max() / np.abs(s2 / n).max())
        check(err < 2e-5, f"{arch} {g}: .dat E[x²] relative error {err:.2e}")
    print(f"{arch}: {len(want)} entries checked")

finish()
