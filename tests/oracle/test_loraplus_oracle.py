"""Oracle: `qwen-qlora train --loraplus-lr-ratio` trains the adapter PyTorch trains with PEFT's LoRA+ optimizer.

1. `qwen-quant import-llama2c` makes the real stories260K an fp32 Hugging Face Qwen2 directory; PEFT wraps it in a
   LoRA adapter on all seven Linears (r=4, alpha=8, no dropout) with every A and B drawn at random (seeded), saved as
   the starting adapter (a B = 0 start would leave every A's first gradient zero).
2. `qwen-qlora train --init-adapter` runs 6 optimizer steps over 4 Alpaca records (one micro-batch of all 4 per step,
   padded rows, exact fp32 block inputs), lr 1e-3 with the linear schedule, weight decay 0.1, clipping at 1.0,
   --loraplus-lr-ratio 16; `qwen-qlora data --dump` writes the token ids and loss masks train reads.
3. PyTorch does the same steps from the same adapter on the same tokens: the mean next-token NLL over every loss
   token of the 4 records, torch.nn.utils.clip_grad_norm_, peft.optimizers.create_loraplus_optimizer over
   torch.optim.AdamW (loraplus_weight_decay = the run's weight decay) and transformers'
   get_linear_schedule_with_warmup.
4. Every trained tensor is compared: ‖ours − torch‖ over ‖torch − start‖ (Frobenius; how far training moved it)
   must stay within TOL. (Largest single entries differ more, up to 1e-2 of the largest move: Adam's first steps are
   nearly sign(g)·lr, so rounding flips an entry whose gradient is near zero.) A trainer that gave B the plain rate
   misses by about 0.9.
5. The same with --use-dora, whose magnitudes are PEFT's one-dimensional "groupB" (the B rate).
"""
import json
import os

from oracle_common import check, finish, import_stories260k, parse_args, require_shared, run, skip, work_dir

args = parse_args(__doc__)
require_shared(args.shared)
try:
    import peft
    import torch
    from peft.optimizers import create_loraplus_optimizer
    from safetensors.torch import load_file
    from transformers import Qwen2ForCausalLM, get_linear_schedule_with_warmup
except ImportError as e:  # pragma: no cover
    skip(f"torch/transformers/peft not importable: {e}")

TOL = 2e-3  # of the distance each tensor moved in 6 steps (seen: at most 7.6e-4)
STEPS, LR, RATIO, WD, RECORDS = 6, 1e-3, 16.0, 0.1, 4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

data = os.path.join(args.shared, "data")
ql = os.path.join(args.build, "qwen-qlora")
out = work_dir(args.build, "loraplus_oracle")
base_dir = import_stories260k(args.build, args.shared, os.path.join(out, "base"))
with open(os.path.join(data, "alpaca", "alpaca_en_demo.json")) as f:
    records = json.load(f)[:RECORDS]
data_path = os.path.join(out, "records.json")
with open(data_path, "w") as f:
    json.dump(records, f)
dump = os.path.join(out, "examples.jsonl")
run([ql, "data", "--model", base_dir, "--data", data_path, "--dump", dump, "--show", "0"])
examples = [json.loads(line) for line in open(dump)]
check(len(examples) == RECORDS, f"data --dump wrote {len(examples)} examples, not {RECORDS}")
seq_len = max(len(e["ids"]) for e in examples) + 8


def start_adapter(dora, where):
    """A PEFT adapter on the base with random A and B (and DoRA's magnitudes as PEFT starts them), saved at `where`."""
    torch.manual_seed(7 if dora else 5)
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


def torch_steps(init_dir):
    """PEFT + torch AdamW with LoRA+'s groups from init_dir; returns (start, end) adapters by PEFT's saved names."""
    base = Qwen2ForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager")
    pm = peft.PeftModel.from_pretrained(base, init_dir, is_trainable=True)
    start = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(pm).items()}
    opt = create_loraplus_optimizer(pm, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO, loraplus_weight_decay=WD,
                                    betas=(0.9, 0.999), eps=1e-8)
    sched = get_linear_schedule_with_warmup(opt, 0, STEPS)
    params = [p for p in pm.parameters() if p.requires_grad]
    counted = sum(sum(e["loss_mask"][1:]) for e in examples)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = 0.0
        for e in examples:
            ids = torch.tensor([e["ids"]])
            mask = torch.tensor(e["loss_mask"][1:], dtype=torch.bool)
            logits = pm(input_ids=ids).logits[0, :-1]
            nll = torch.nn.functional.cross_entropy(logits[mask], ids[0, 1:][mask], reduction="sum")
            loss = loss + nll
        (loss / counted).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return start, {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(pm).items()}


def case(name, dora):
    init_dir, run_dir = os.path.join(out, f"init_{name}"), os.path.join(out, f"run_{name}")
    start_adapter(dora, init_dir)
    run([ql, "train", "--model", base_dir, "--data", data_path, "--out", run_dir, "--overwrite", "--init-adapter",
         init_dir, "--max-steps", str(STEPS), "--batch-size", str(RECORDS), "--batching", "padding", "--seq-len",
         str(seq_len), "--lr", str(LR), "--scheduler", "linear", "--warmup-steps", "0", "--weight-decay", str(WD),
         "--max-grad-norm", "1", "--loraplus-lr-ratio", str(RATIO), "--lora-dropout", "0", "--fp32-checkpoints",
         "--eval-fraction", "0", "--quiet"] + (["--use-dora"] if dora else []))
    start, expected = torch_steps(init_dir)
    ours = load_file(os.path.join(run_dir, "adapter_model.safetensors"))
    check(set(ours) == set(expected), f"{name}: tensor names differ: {sorted(set(ours) ^ set(expected))[:4]}")
    worst = {}
    for k in sorted(set(ours) & set(expected)):
        moved = (expected[k] - start[k]).norm().item()
        err = (ours[k].float() - expected[k]).norm().item()
        group = "magnitude" if "magnitude" in k else "lora_B" if "lora_B" in k else "lora_A"
        rel = err / max(moved, 1e-30)
        if rel > worst.get(group, (0.0, ""))[0]:
            worst[group] = (rel, k)
        check(rel <= TOL, f"{name}: {k}: |ours - torch| {err:.3g} is {rel:.3g} of the distance moved {moved:.3g}")
    for group, (rel, k) in sorted(worst.items()):
        print(f"{name}: {group}: worst {rel:.3g} of the distance moved ({k})")
    if dora:
        check("magnitude" in worst, f"{name}: no DoRA magnitude was compared")


case("lora", dora=False)
case("dora", dora=True)
finish()
