"""Oracle: a checkpoint quantized and written by AutoAWQ itself loads in qwenq and gives the logits of the model
AutoAWQ's own unpacking describes.

1. transformers builds a tiny random Qwen2 (hidden 128 so that every Linear has N % 64 == 0, which AutoAWQ's clip
   search requires), saved in fp32.
2. AutoAWQ 0.2.9 (pure-torch path on the CPU; its `datasets` import is stubbed because calibration texts are
   passed directly) runs its full AWQ (scale search, norm folding, clip search) with w_bit 4, group 32, and
   save_quantized writes the AutoAWQ GEMM checkpoint with the scaled norms.
3. The reference: every Linear dequantized with AutoAWQ's dequantize_gemm (scales widened to fp32 first, so the
   products are exact), put into a dense transformers model together with the checkpoint's other tensors; its
   fp32 logits on a fixed sequence. The gtest AutoAwqOracle.* loads the AutoAWQ directory with qwenq and compares;
   the same for our own AWQ file (its logits in qwenq = AutoAWQ's unpacking of it in transformers).
4. `qwen-quant awq --calib-concat` quantizes the same model on the same calibration blocks (AutoAWQ's convention:
   the first 200 documents, concatenated, cut into blocks of 64 tokens); the gtest compares the two results: the
   scales folded into the norms (the search's choices), every Linear's stored scales (the clip choices and the
   grid), and the logits error against the fp32 model. They cannot be bit-identical: AutoAWQ rounds the scaled,
   clipped weights to fp16 before its final rounding (`_apply_quant`: `.half()`), qwenq quantizes them in fp32.
5. The same for a tiny random Qwen3-MoE (8 experts, top 2; AutoAWQ's awq/models/qwen3_moe.py groups: every expert's
   gate/up after post_attention_layernorm over the MoE block, each expert's up -> down on its own tokens), the routers
   kept unquantized (modules_to_not_convert ["mlp.gate"]). AutoAWQ folds 1/s into post_attention_layernorm but leaves
   the router mlp.gate unscaled, so its file routes tokens differently from the model it quantized; qwenq scales the
   router's columns by s too. The gtest checks that, compares the routing of both files with the fp32 model's, and
   still requires the same scales, clip choices and an error no larger than AutoAWQ's.
6. AutoAWQ's calibration blocks (get_calib_dataset) equal ours (--calib-concat) token for token, with a tokenizer
   without BOS and with stories260K's, which adds one to every document.
"""
import json
import os
import shutil

import autoawq_cpu
from oracle_common import import_stories260k, parse_args, run, run_gtest, skip, spread_weights, work_dir

args = parse_args(__doc__)
try:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    AutoAWQForCausalLM, dequantize_gemm = autoawq_cpu.load()  # on sys.path, `datasets` stubbed, CPU fixes
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/autoawq not importable: {e}")

out = work_dir(args.build, "autoawq_oracle")
GROUP = 32
qq = os.path.join(args.build, "qwen-quant")
# Tokenizer files: the byte-level BPE of `qwen-quant init-random` (vocab 320), read by transformers too.
tk = os.path.join(out, "tokenizer-source")
run([qq, "init-random", "--preset", "tiny", "--out", tk, "--overwrite"])

# Calibration documents, the same for AutoAWQ and for `qwen-quant awq --calib-concat` (AutoAWQ's convention).
words = "the a cat dog bird fish sat ran sang ate on in to park mat song food house tree big small red".split()
gen = torch.Generator().manual_seed(5)
texts = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (int(n),), generator=gen))
         for n in torch.randint(4, 14, (400,), generator=gen)]
docs = os.path.join(out, "calib.jsonl")
with open(docs, "w") as f:
    for t in texts:
        f.write(json.dumps({"text": t}) + "\n")
DOCS, SEQ = 200, 64


def random_model(model_cls, cfg, src):
    """A random model in fp32 (spread_weights: norms near 1, small biases, weights ~ 1/sqrt(fan-in)) with the
    tokenizer files."""
    model = model_cls(cfg)
    spread_weights(model)
    model.save_pretrained(src, safe_serialization=True)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(tk, f), os.path.join(src, f))


def quantize_both(tag, model_cls, cfg, not_convert=None):
    """AutoAWQ and qwen-quant awq on one random model; returns the three directories (source, AutoAWQ's, ours)."""
    src, qdir, ours = (os.path.join(out, tag + suffix) for suffix in ("-fp32", "-awq", "-ours"))
    random_model(model_cls, cfg, src)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    quant_config = {"zero_point": True, "q_group_size": GROUP, "w_bit": 4, "version": "GEMM"}
    if not_convert:
        quant_config["modules_to_not_convert"] = not_convert
    awq_model = AutoAWQForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    awq_model.quantize(tok, quant_config=quant_config, calib_data=texts, max_calib_samples=DOCS, max_calib_seq_len=SEQ)
    awq_model.save_quantized(qdir)
    print("AutoAWQ wrote", sorted(os.listdir(qdir)))

    # Our AWQ on the same model and the same calibration blocks.
    run([qq, "awq", "--model", src, "--out", ours, "--overwrite", "--quiet", "--calib", docs, "--calib-concat",
         "--calib-samples", str(DOCS), "--calib-seq-len", str(SEQ), "--group-size", str(GROUP), "--threads", "1"])
    # References: each AWQ GEMM file unpacked by AutoAWQ's own dequantize_gemm into a dense model (ours too: the file
    # as the Python stack reads it).
    for d in (qdir, ours):
        write_reference(d, model_cls, cfg)
    return src, qdir, ours


def write_reference(qdir, model_cls, cfg):
    """expected.safetensors in qdir: the fp32 logits of the dense model AutoAWQ's unpacking of qdir's file gives."""
    state = load_file(os.path.join(qdir, "model.safetensors"))
    dense = {}
    for name, t in state.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            w = dequantize_gemm(t, state[prefix + ".qzeros"], state[prefix + ".scales"].float(), 4, GROUP)
            dense[prefix + ".weight"] = w.t().contiguous().float()
        elif not name.endswith((".qzeros", ".scales")):
            dense[name] = t.float()
    ref = model_cls(cfg).eval()
    missing, unexpected = ref.load_state_dict(dense, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    ids = torch.tensor([[1, 5, 9, 200, 3, 3, 7, 40, 41, 42, 17, 99]])
    with torch.no_grad():
        logits = ref(ids).logits[0].float().contiguous()
    save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits},
              os.path.join(qdir, "expected.safetensors"))


def check(tag, dirs):
    src, qdir, ours = dirs
    print(f"--- {tag}")
    run_gtest(args.build, "AutoAwqOracle.*-AutoAwqOracle.CalibrationBlocksAreAutoAwqs",
              {"QWENQ_ORACLE_AUTOAWQ_DIR": qdir, "QWENQ_ORACLE_AWQ_OURS": ours, "QWENQ_ORACLE_AWQ_SOURCE": src})
    print(f"--- {tag}: our file as AutoAWQ unpacks it")
    run_gtest(args.build, "AutoAwqOracle.CheckpointGivesTheLogitsOfAutoAwqsUnpacking",
              {"QWENQ_ORACLE_AUTOAWQ_DIR": ours})


torch.manual_seed(11)
check("qwen2", quantize_both("qwen2", transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=320, max_position_embeddings=256, tie_word_embeddings=False)))
# Every Linear's N a multiple of 64 (AutoAWQ's clip search): experts 64 wide, heads of 32.
torch.manual_seed(12)
check("qwen3_moe", quantize_both("qwen3_moe", transformers.Qwen3MoeForCausalLM, transformers.Qwen3MoeConfig(
    hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_experts=8, num_experts_per_tok=2,
    norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, vocab_size=320, max_position_embeddings=256, tie_word_embeddings=False),
    not_convert=["mlp.gate"]))

# 6. The calibration blocks themselves: AutoAWQ's get_calib_dataset against `calibration_blocks_concat` (what
#    --calib-concat feeds both quantizers above), with the tiny byte-level tokenizer (no BOS) and, with ../shared, the
#    imported stories260K's (a Llama tokenizer: AutoAWQ's tokenizer.encode(line) puts a BOS before every document).
from awq.utils.calib_data import get_calib_dataset  # noqa: E402 (AutoAWQ is importable once autoawq_cpu.load ran)


def calib_case(name, tokenizer_dir):
    d = os.path.join(out, "calib-" + name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(tokenizer_dir):
        if f.startswith(("tokenizer", "vocab", "merges", "special_tokens", "config")):
            shutil.copy(os.path.join(tokenizer_dir, f), d)
    shutil.copy(docs, os.path.join(d, "calib.jsonl"))
    tok = transformers.AutoTokenizer.from_pretrained(d)
    blocks = get_calib_dataset(data=texts, tokenizer=tok, n_samples=DOCS, max_seq_len=SEQ)
    save_file({"blocks": torch.cat(blocks, 0).to(torch.int32).contiguous()}, os.path.join(d, "expected_blocks.safetensors"))
    print(f"--- calibration blocks, {name} tokenizer: {len(blocks)} blocks of {SEQ}; bos {tok.bos_token_id} "
          f"first ids {blocks[0][0, :6].tolist()}")
    run_gtest(args.build, "AutoAwqOracle.CalibrationBlocksAreAutoAwqs", {"QWENQ_ORACLE_AWQ_CALIB": d,
                                                                        "QWENQ_ORACLE_AWQ_CALIB_DOCS": str(DOCS),
                                                                        "QWENQ_ORACLE_AWQ_CALIB_SEQ": str(SEQ)})


calib_case("bytelevel", tk)
stories = os.path.join(args.shared, "data", "stories260K")
if os.path.isdir(stories):
    sdir = os.path.join(out, "stories260K")
    import_stories260k(args.build, args.shared, sdir)
    calib_case("llama", sdir)
else:
    print("calibration blocks with a BOS-adding tokenizer: skipped (no ../shared/data/stories260K)")
print("autoawq oracle: OK")
