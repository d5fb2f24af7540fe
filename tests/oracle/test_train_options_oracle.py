"""Oracle: training options that change the optimizer or the inputs train the adapter PyTorch trains with them.

`qwen-qlora train --init-adapter` runs a few optimizer steps from a PEFT adapter with every A and B drawn at random
(seeded; a B = 0 start would leave every A's first gradient zero) on the real stories260K (`qwen-quant
import-llama2c`, fp32), r=4, alpha=8, all seven Linears, no dropout, exact fp32 block inputs, each step one
micro-batch holding every record, padded rows, the linear schedule without warm-up (case 1: cosine), weight decay
0.1, clipping at 1.0. PyTorch does
the same steps from the same adapter on the same tokens (`qwen-qlora data --dump` writes the ids and loss masks train
reads): the mean next-token NLL over every loss token, torch.nn.utils.clip_grad_norm_, torch.optim.AdamW and
transformers' get_linear_schedule_with_warmup. Every trained entry is compared, relative to the largest move of its
tensor (max |torch − start|): each tensor's median within MEDIAN_TOL, and at most MAX_FLIPS entries of a case off by
more than FLIP. Adam's first updates are nearly sign(g)·lr, so an entry whose gradient is within rounding of zero at
some step moves (partly) the other way on one side: a few entries per run are off by 1e-3 to 1e-2 of the largest
move, one was off by half of it, while the median entry agrees within 2e-5.

1. LoRA+ (--loraplus-lr-ratio 16, 4 Alpaca records), with the cosine schedule after 2 warm-up steps (transformers'
   get_cosine_schedule_with_warmup: lr 0 at the first step): PyTorch's optimizer is
   peft.optimizers.create_loraplus_optimizer over AdamW (loraplus_weight_decay = the run's weight decay). A trainer
   giving B the plain rate misses every entry by more than FLIP.
2. The same with --use-dora, whose magnitudes are PEFT's one-dimensional "groupB" (the B rate).
3. NEFTune (--neftune-noise-alpha 40, one record, so that the micro-batch's row is that record): transformers' own
   neftune_post_forward_hook on the input embeddings decides the half-width α/√(L·d) from the embeddings' shape, and
   its uniform_(−a, a) draw is replaced by our generator's u (kernels/dropout_mask.h, written out below in numpy:
   u(noise_key(micro_batch_dropout_seed(seed, step, 0)), i) over the row-major [L, d] embeddings) as −a + 2a·u. The
   same PyTorch run without the noise must miss more than half of ours' entries by more than FLIP, so the noise is
   seen.
4. AdamW's own settings (--adam-beta1 0.8 --adam-beta2 0.95 --adam-epsilon 1e-5, transformers' adam_beta1,
   adam_beta2, adam_epsilon) against torch.optim.AdamW(betas=(0.8, 0.95), eps=1e-5); the defaults' run must miss
   more than a tenth of ours' entries by more than FLIP, so the settings are seen.
"""
import json
import os

import numpy as np

from oracle_common import check, finish, import_stories260k, parse_args, require_shared, run, skip, work_dir

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import peft
    import torch
    from peft.optimizers import create_loraplus_optimizer
    from safetensors.torch import load_file
    from transformers import Qwen2ForCausalLM, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup
    from transformers.trainer_utils import neftune_post_forward_hook
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/peft not importable: {e}")

# |ours − torch| of an entry over the largest move of its tensor in STEPS steps:
MEDIAN_TOL = 2e-4  # each tensor's median (seen: at most 2.0e-5)
FLIP = 2e-2  # an entry further off ... (seen: 0.5 once; every other entry of the 3 cases within 9e-3)
MAX_FLIPS = 4  # ... at most this many of a case's ~23,000 entries (seen: at most 1)
STEPS, LR, WD, SEED = 6, 1e-3, 0.1, 42
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

data = os.path.join(args.shared, "data")
ql = os.path.join(args.build, "qwen-qlora")
out = work_dir(args.build, "train_options_oracle")
base_dir = import_stories260k(args.build, args.shared, os.path.join(out, "base"))
with open(os.path.join(data, "alpaca", "alpaca_en_demo.json")) as f:
    alpaca = json.load(f)

# ---- kernels/dropout_mask.h's generator, in numpy (uint64 arithmetic wraps modulo 2^64 as the C++ does) ----------
G = np.uint64(0x9E3779B97F4A7C15)


def mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def noise_uniforms(run_seed, step, n):
    """u(noise_key(micro_batch_dropout_seed(run_seed, step, 0)), i) for i < n (trainer/lora_model.cpp's seed mix)."""
    with np.errstate(over="ignore"):
        seed = mix64(mix64(mix64(np.uint64(run_seed)) + np.uint64(step)) + np.uint64(0))
        key = mix64(mix64(seed + G))
        i = np.arange(n, dtype=np.uint64)
        z = mix64(key + (i + np.uint64(1)) * G)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def records_file(name, records):
    path = os.path.join(out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(records, f)
    dump = os.path.join(out, f"{name}.examples.jsonl")
    run([ql, "data", "--model", base_dir, "--data", path, "--dump", dump, "--show", "0"])
    examples = [json.loads(line) for line in open(dump)]
    check(len(examples) == len(records), f"data --dump wrote {len(examples)} examples, not {len(records)}")
    return path, examples


def start_adapter(dora, where, seed):
    """A PEFT adapter on the base with random A and B (and DoRA's magnitudes as PEFT starts them), saved at `where`.
    B is 0.1·N(0, 1), not oracle_common.randomize_lora's 0.2: at 0.2 the start's loss is 9.6 (the base's 4.2) with
    gradient norms of 70 clipped to 1, and 6 steps of even plain AdamW amplify rounding to 1.5e-3 of the moves."""
    torch.manual_seed(seed)
    base = Qwen2ForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager")
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=TARGETS,
                           use_dora=dora)
    pm = peft.get_peft_model(base, lcfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn_like(p) / (p.shape[1] ** 0.5))
            elif "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    pm.save_pretrained(where)


def torch_steps(init_dir, examples, loraplus_ratio=None, neftune_alpha=None, warmup=0, betas=(0.9, 0.999), eps=1e-8):
    """PEFT + torch AdamW from init_dir; returns (start, end) adapters by PEFT's saved names."""
    base = Qwen2ForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager")
    pm = peft.PeftModel.from_pretrained(base, init_dir, is_trainable=True)
    pm.train()
    start = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(pm).items()}
    params = [p for p in pm.parameters() if p.requires_grad]
    if loraplus_ratio is None:
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, betas=betas, eps=eps)
    else:
        opt = create_loraplus_optimizer(pm, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=loraplus_ratio,
                                        loraplus_weight_decay=WD, betas=betas, eps=eps)
    sched = (get_cosine_schedule_with_warmup(opt, warmup, STEPS) if warmup
             else get_linear_schedule_with_warmup(opt, 0, STEPS))
    if neftune_alpha is not None:
        assert len(examples) == 1, "the noise is drawn over one micro-batch row"
        emb = pm.get_input_embeddings()
        emb.neftune_noise_alpha = neftune_alpha
        emb.register_forward_hook(neftune_post_forward_hook)
    counted = sum(sum(e["loss_mask"][1:]) for e in examples)
    real_uniform = torch.Tensor.uniform_
    for step in range(STEPS):
        opt.zero_grad()
        loss = 0.0
        for e in examples:
            ids = torch.tensor([e["ids"]])
            mask = torch.tensor(e["loss_mask"][1:], dtype=torch.bool)
            if neftune_alpha is not None:
                u = torch.from_numpy(noise_uniforms(SEED, step, ids.numel() * base.config.hidden_size))

                def ours(t, lo, hi, u=u):  # the hook's zeros_like(output).uniform_(-a, a), with our draws
                    return t.copy_((lo + (hi - lo) * u).reshape(t.shape))

                torch.Tensor.uniform_ = ours
            try:
                logits = pm(input_ids=ids).logits[0, :-1]
            finally:
                torch.Tensor.uniform_ = real_uniform
            loss = loss + torch.nn.functional.cross_entropy(logits[mask], ids[0, 1:][mask], reduction="sum")
        (loss / counted).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return start, {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(pm).items()}


def distances(ours, start, expected):
    """Per tensor: |ours − expected| of each entry over the tensor's largest move max |expected − start|, as (the
    median, how many exceed FLIP)."""
    res = {}
    for k in sorted(set(ours) & set(expected)):
        rel = (ours[k].float() - expected[k]).abs() / (expected[k] - start[k]).abs().max().clamp_min(1e-30)
        res[k] = (rel.median().item(), int((rel > FLIP).sum()))
    return res


def case(name, records, flags, dora=False, loraplus_ratio=None, neftune_alpha=None, adapter_seed=5, warmup=0,
         betas=(0.9, 0.999), eps=1e-8):
    data_path, examples = records_file(name, records)
    init_dir, run_dir = os.path.join(out, f"init_{name}"), os.path.join(out, f"run_{name}")
    start_adapter(dora, init_dir, adapter_seed)
    seq_len = max(len(e["ids"]) for e in examples) + 8
    run([ql, "train", "--model", base_dir, "--data", data_path, "--out", run_dir, "--overwrite", "--init-adapter",
         init_dir, "--max-steps", str(STEPS), "--batch-size", str(len(records)), "--batching", "padding", "--seq-len",
         str(seq_len), "--lr", str(LR), "--scheduler", "cosine" if warmup else "linear", "--warmup-steps", str(warmup),
         "--weight-decay", str(WD),
         "--max-grad-norm", "1", "--lora-dropout", "0", "--fp32-checkpoints", "--eval-fraction", "0", "--seed",
         str(SEED), "--quiet"] + flags + (["--use-dora"] if dora else []))
    ours = load_file(os.path.join(run_dir, "adapter_model.safetensors"))
    start, expected = torch_steps(init_dir, examples, loraplus_ratio, neftune_alpha, warmup, betas, eps)
    check(set(ours) == set(expected), f"{name}: tensor names differ: {sorted(set(ours) ^ set(expected))[:4]}")
    worst, flips = (0.0, ""), 0
    for k, (median, off) in distances(ours, start, expected).items():
        worst = max(worst, (median, k))
        flips += off
        check(median <= MEDIAN_TOL, f"{name}: {k}: the median entry is off by {median:.3g} of the largest move")
    print(f"{name}: largest median error {worst[0]:.3g} of the largest move ({worst[1]}); {flips} entries off by "
          f"more than {FLIP}")
    check(flips <= MAX_FLIPS, f"{name}: {flips} entries are off by more than {FLIP} of their tensor's largest move")
    if dora:
        check(any("magnitude" in k for k in ours), f"{name}: no DoRA magnitude was compared")
    if neftune_alpha is not None:
        _, quiet = torch_steps(init_dir, examples, loraplus_ratio, None)
        off = sum(n for _, n in distances(ours, start, quiet).values())
        total = sum(v.numel() for v in ours.values())
        print(f"{name}: without the noise PyTorch misses {off} of ours' {total} entries by more than {FLIP}")
        check(off > total // 2, f"{name}: the noise moves only {off} entries: this case cannot see it")
    if betas != (0.9, 0.999) or eps != 1e-8:
        _, plain = torch_steps(init_dir, examples, loraplus_ratio, neftune_alpha, warmup)
        off = sum(n for _, n in distances(ours, start, plain).values())
        total = sum(v.numel() for v in ours.values())
        print(f"{name}: with the default betas and epsilon PyTorch misses {off} of ours' {total} entries by more than "
              f"{FLIP}")
        check(off > total // 10, f"{name}: the Adam settings move only {off} entries: this case cannot see them")


case("loraplus", alpaca[:4], ["--loraplus-lr-ratio", "16"], loraplus_ratio=16.0, warmup=2)
case("loraplus_dora", alpaca[:4], ["--loraplus-lr-ratio", "16"], dora=True, loraplus_ratio=16.0, adapter_seed=7)
case("neftune", alpaca[1:2], ["--neftune-noise-alpha", "40"], neftune_alpha=40.0, adapter_seed=9)
case("adam_settings", alpaca[:4], ["--adam-beta1", "0.8", "--adam-beta2", "0.95", "--adam-epsilon", "1e-5"],
     betas=(0.8, 0.95), eps=1e-5, adapter_seed=11)
finish()
