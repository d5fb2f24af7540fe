// How much memory a LoRA/QLoRA training step needs on its device, before anything is loaded: `qwen-qlora plan`.
//
// Notation (one vocabulary, STYLE.md): L layers, C hidden, I intermediate, H query heads, D head_dim,
// qd = H·D, kvd = Hkv·D, V vocab, r LoRA rank, T = B·S tokens of one micro-batch (B sequences of S tokens,
// packed back to back), g group size, n = N·K weights of a Linear [N out, K in]. Every count is in bytes.
//
// BASE WEIGHTS (frozen), exactly the tensor bytes our writers put in safetensors (tests check it to the byte); the
// whole model's figures and the CPU's (the GPU holds the layout of BASE WEIGHTS, GPU below):
//   bf16        Linear: 2·N·K
//   GPTQ b-bit  qweight I32 [K·b/32, N] + qzeros I32 [G, N·b/32] + scales F16 [G, N] + g_idx I32 [K],
//               G = ceil(K/g) (g = -1: G = 1)  ->  4·(K·b/32)·N + 4·G·(N·b/32) + 2·G·N + 4·K
//   AWQ GEMM    qweight I32 [K, N/8] + qzeros I32 [G, N/8] + scales F16 [G, N]  ->  K·N/2 + G·N/2 + 2·G·N
//   NF4         codes ceil(n/2) + absmax (4·nb, or with double quant nb + 4·ceil(nb/256) + 1024 nested map)
//               + quant_map 64 + the quant_state JSON (its exact text, quant/nf4_checkpoint.h), nb = ceil(n/64).
//               The one thing not known before quantizing is the digits of nested_offset in that JSON; the plan
//               writes kPlanNestedOffset (a 19-character repr), a real tensor differs by a few bytes per Linear.
//   Dense rest, in dense_dtype (bf16): embeddings V·C, lm_head V·C (untied), per layer 2 RMSNorms 2·C, q/k/v
//               biases qd + 2·kvd (Qwen2), q/k norms 2·D (Qwen3), final norm C.
//
// LORA: params P = Σ over the adapted Linears r·(N + K) (DoRA: r·(N + K) + N, the magnitude), each Linear with its
//   own r and only the layers the selection picks (lora/lora_select.h: layers_to_transform, rank_pattern, ...). adapters
//   = 4·P (fp32 masters), gradients = 4·P (fp32), optimizer = 8·P (AdamW m and v, fp32: kernels/optim.h).
//   DoRA also keeps z, v [T, N] and n [N] per adapted Linear in the block's activations and dz, dv [T, N] among
//   that Linear's backward temporaries (the GPU: trainer/lora_cuda_buffers.h's DoRA rows and one array of every
//   adapted Linear's n, every expert's included).
//
// ACTIVATIONS, CPU (trainer/lora_model.cpp exactly as written; fp32, 4 bytes per value):
//   checkpoints   (L+1)·T·C          every block input x_l, plus the final one (kept with or without checkpointing)
//   block         T·(3C + 2qd + 2kvd + H + 3I + Σ r [+ qd + kvd with QK-norm] [+ Σ K with dropout])
//                                    n1, h1, n2, q, a, k, v, lse, gate, up, act, LoRA u (and dropped x): one
//                                    block with checkpointing (recomputed in the backward; each target's buffers
//                                    of the largest r any layer gives it), L blocks of their own adapters without
//   backward      max over the phases of block_bwd of the buffers alive there (each target at the largest r any
//                 layer gives it), always 3·T·I (dact, dgate, dup)
//                 + T·I (linear_bwd's tmp, sized by down_proj first and never shrunk) plus:
//                   down:    LoRA temporaries 2·T·r + T·I
//                   gate/up: dn2 T·C + LoRA 2·T·r + T·C
//                   o:       dn2, dh1 2·T·C + da T·qd + LoRA 2·T·r + T·qd
//                   attn:    2·T·C + da, dq 2·T·qd + dk, dv 2·T·kvd + δ T·H
//                   q/k/v:   2·T·C + 2·T·qd + 2·T·kvd + dn1 T·C + LoRA 2·T·r + T·C
//                   recompute (checkpointing): out, mlp 2·T·C + the LoRA product T·max(N)
//   loss          hidden, dhidden, d: 3·T·C (alive through the backward)
// MIXTURE OF EXPERTS, CPU (qwen3_moe, qwen2_moe; trainer/moe_block.cpp exactly as written). E experts of width Im,
//   top-k, a shared expert of width Is (0: none); R = rows of the busiest expert, taken as its bound T (routing is not
//   known before training: every token could choose one expert); a MoE layer's attention half as above.
//   base          per MoE layer the attention Linears, 3·E expert Linears [Im, C], [Im, C], [C, Im] and the shared
//                 expert's, in the base format; the routers mlp.gate [E, C] and mlp.shared_expert_gate [1, C] in
//                 dense_dtype (never quantized, never adapted; counted with the dense tensors)
//   LoRA          an MLP target adapts every expert's Linear and the shared expert's (PEFT): Σ r·(N + K) over them
//   block         the attention half's buffers, plus MoeBlockActs: probs T·E and weight T·k fp32, chosen and slot
//                 T·k int32, token T·k int64, start (E + 1) int64; gate, up, act T·k·Im, y T·k·C; shared
//                 3·T·Is + T·C + T; with an adapted expert Linear n T·C, xs T·k·C, u 3·T·k·r (+ 3·T·r shared),
//                 dropout T·k·(2C + Im) (+ T·(2C + Is)), DoRA z, v 2·T·k·(2Im + C) and n E·(2Im + C) (+ the
//                 shared expert's). Checkpointed, the one scratch BlockActs holds a dense layer's MLP buffers and a
//                 MoE layer's side by side when the model has both.
//   backward      max of: dn2 T·C + dw T·k + dy, dx 2·R·C held, plus one expert's 3·R·Im + R·C and its largest
//                 adapter backward (2·R·r + R·K, + R·K with dropout or DoRA, + DoRA's 2·R·N); or those held
//                 plus the router's dr T·E and tmp T·C and the shared expert's ds T·C, dg T and temporaries on T
//                 rows; the attention half holding linear_bwd's tmp T·max(qd, C); the recompute: out, mlp,
//                 result 3·T·C, router logits T·E, gathered rows R·C (unadapted), the LoRA product R·max(N)
//   workspace     the largest dequantized Linear and widening buffer over every Linear (experts, routers) too
//   GPU           (trainer/lora_model_cuda.h) per MoE layer the layer arena (norms, biases, q/k/v/o) plus a second
//                 allocation of the router, the experts and the shared expert with its gate (qwen_moe_arena: the
//                 routers as stored, the experts dense or Q4 repacks); the MoE rows of trainer/lora_cuda_buffers.h's
//                 table (k·T routed rows of C and Im, the shared expert's T rows, router logits, indices) on top of
//                 the dense table (whose gate/up/act [T, I] are one word per token without a dense MLP layer).
// WORKSPACE, CPU:
//   dequant       packed bases: the largest Linear dequantized, fp32 4·N·K (apply_linear's per-thread buffer,
//                 kept), plus its tables: GPTQ/AWQ the unpacked zeros G·N, the scales in fp32 4·G·N and each
//                 input's group 4·K (GPTQ 3-bit also its codes, 1 byte per weight); NF4 4·nb absmax; 0 for a bf16 base
//                 (read in place)
//   logits        one chunk of rows = max(1, min(T, 2^24 / V)) rows: (rows·V + rows)·4 (logits, nll)
//   threads       per thread, the widest bf16 -> fp32 widened weight block of kernels/gemm_ref.cpp (forward
//                 nb·K with nb = clamp(2^20/(4K), 64, 512); backward N·kb with kb = clamp(2^20/(4N), 16, 128))
//                 for every weight kept in 16 bits (lm_head; every Linear of a bf16 base)
// With `train --cpu-matmul bf16` the CPU's products allocate other buffers than these (no dequantized copy of a
// GPTQ/AWQ/NF4 Linear, the packed bf16 A of each product instead, up to the lm_head's input gradient: rows·V·2 bytes);
// the plan keeps the fp32 products' figures, which bounded the bf16 step's peak too when measured (0.84 of the plan at
// 512 tokens on one Qwen2.5-0.5B layer, 0.97 at 2048: tests/test_memory_plan.cpp).
// Not counted on the CPU: packed tensors are copied out of the memory map at load; the mapped pages they were
// read from are page cache (clean, reclaimable) and may also show in RSS until the kernel drops them.
//
// GPU: the trainer that exists, LoraModelCuda (trainer/lora_model_cuda.h) on the weights QwenModelCuda uploads
// (trainer/qwen_model_cuda.h), exactly its buffers. Every buffer is one allocation from the caching
// allocator and is counted as the allocator holds it: held(n) = round_size(n) (kernels/device_allocator.h: n
// rounded up to 512 B up to 1 MiB, else to 2 MiB). --no-checkpointing changes nothing here (the GPU trainer
// always checkpoints); lora_dropout adds one scratch tmp (its masks are regenerated, no mask is stored).
// BASE WEIGHTS, GPU (replace the file bytes in DevicePlan; PlanResult's whole-model base_* stay the file bytes):
//   layer         each decoder layer's tensors in ONE allocation, its weight arena (trainer/qwen_weight_arena.h):
//                 held(Σ a(piece)), a(n) = round_up(n, 256) (every piece 256-byte aligned), over the pieces
//                   dense:  the two RMSNorms C·dsz each, the q/k/v biases qd·dsz, kvd·dsz, kvd·dsz (Qwen2),
//                           the q/k norms D·dsz each (Qwen3), in dense_dtype (dsz its bytes)
//                   Linear: dense base N·K·dsz (as stored; the file bytes assume bf16). GPTQ/AWQ/NF4: repacked
//                           to Q4 (quant/format/qgemm_layout.h), 4-bit only, qweight 4·(Kp/8)·Np and meta
//                           4·ceil(Kp/g)·Np, Kp = round_up(K, 8), Np = round_up(N, 4), g the layout group
//                           (q4_int_layout_group / q4_nf4_layout_group); about 4.25 bits per weight at group
//                           128, which is not the file's byte count. A GPTQ act-order g_idx adds a piece of 4·K
//                           per Linear (the permutation), not counted: the plan assumes no act-order.
//                 Reported as base_dense = L·Σ a(dense pieces) and base_linear = the rest of the layers'
//                 bytes (the Linear pieces and the rounding of each arena, under 2 MiB a layer). One allocation
//                 per tensor, as before, cost +28 % on Qwen2.5-0.5B GPTQ g128 (580 MiB instead of 452 MiB).
//   rest          final norm held(C·dsz) and lm_head held(V·C·dsz), one allocation each. The input embedding is
//                 not on the GPU when untied (the trainer gathers a batch's rows on the host and uploads [T, C]
//                 fp32 from pinned host memory, not counted); tied, it is the lm_head's allocation.
// LORA, GPU: A/B, gradients, AdamW m and v are one fp32 array each of max(P, 1) floats: held(4·P) each
//   (adapters, gradients; optimizer = 2·held(4·P)).
// ACTIVATIONS, GPU (trainer/lora_cuda_buffers.h, the table LoraModelCuda allocates from; fp32 unless named):
//   Σ held(T·words·4) over the buffers of the table, by their role:
//   checkpoints   xs: every block input and the final residual, bf16 (bf16_checkpoints, the default):
//                 ceil((L + 1)·C / 2) words per token; fp32: (L + 1)·C
//   forward       xin C (bf16 checkpoints: the block input widened to fp32), n1, qpre, kpre, q, k, v, a, lse, h1,
//                 n2, gate, up, act, u (7·r), tokens, positions, and the bf16 copies act16 ceil(max(C, qd, I)/2),
//                 q16, k16, v16, a16 (flash head dims 64 and 128)
//   backward      d, dn2, dh1, g (r); da, dq, dk, dv (naive attention only); tmp max(C, qd, I) (dropout only)
//   loss          nll, targets
//   shared        no allocation of their own (lifetimes apart): dact, dgate on act, dup on up, dn1, mlp on dn2, hidden
//                 on n1, dhidden on h1, tmp on gate without dropout; flash: da, dq, dk, dv on a, q, k, v, da16 on
//                 act16 (trainer/lora_cuda_buffers.h gives each reason)
// WORKSPACE, GPU:
//   dequant       0: the fused W4A16 kernels (kernels/qgemm.h) read Q4 directly, no weight is dequantized
//   scratch       the largest stream-ordered kernel scratch of one launch (freed in stream order, never two
//                 at once): attention's backward δ T·H·4; cuBLASLt's 16-bit copy of fp32 activations for a 16-bit
//                 weight: the lm_head's dlogits rows·V·dsz (16-bit dense), a 16-bit dense base's
//                 x [T, K] or dy [T, N] (max over the Linears); with DoRA the partial double sums of its row
//                 norms (S·N·8 over S ≤ 64 K slices) and split grad (S·N·8, S = ceil(T / 256) ≤ 64), as
//                 kernels/dora.h's *_scratch_bytes give them; when the T-row products take the dense 4-bit path
//                 (qgemm_dense_for(T), kernels/qgemm.h: T >= 512 by default) a 4-bit base's bf16 Ŵ of one Linear, N·round_up(K, 8)·2, or its two overlap pieces (qgemm_dense_scratch_bytes; max over the
//                 Linears, a MoE layer's experts included; with QWENQ_LORA_FOLD=1 an adapted Linear's copy has
//                 lora_cuda_fold_cols(r) more columns forward, or more rows for the input gradient). Not rounded (cudaMallocAsync's pool). Assumes
//                 T > 64 (the tensor-core qgemm: no staging copy for Qwen's 8-aligned shapes without act-order).
//   logits        held(rows·V·4), rows = lora_cuda_logits_rows(T, V) = max(1, min(T, F / V)), F =
//                 2^24 (kLoraCudaLogitsChunkFloats: 64 MiB, 110 rows at Qwen's V; trainer/lora_cuda_buffers.h says
//                 why) or QWENQ_LOGITS_CHUNK
//   reserve       kCudaContextBytes + kCublasLtWorkspaceBytes (BlasLt::kWorkspaceBytes, cudaMalloc'd once)
//                 + kAllocatorSlackBytes (+ kNcclBytes with > 1 GPU and QWENQ_DP_NCCL=1): a budget, not a count
//
// SEVERAL GPUS (gpus = G > 1): data parallelism, `qwen-qlora train --nproc G` (trainer/train_loop.h). Each of G
// processes holds the whole model, the adapter, its gradients and AdamW state, and the per-batch buffers of its own
// micro-batches, on its GPU: the bytes of one GPU above, the same on each. The gradients are summed through pinned
// host memory (4·P bytes per process, host side, not counted) or, with QWENQ_DP_NCCL=1, by NCCL (the reserve's
// kNcclBytes). Each process also loads the model into host memory (not counted).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "lora/lora_config.h"
#include "trainer/qwen_config.h"

namespace qwenq {

enum class PlanBase { Bf16, Gptq, Awq, Nf4 };
enum class PlanDevice { Cpu, Cuda };

const char* plan_base_name(PlanBase b);  // "bf16", "gptq", "awq", "nf4"
// false when `name` is none of those.
bool plan_base_from_name(const std::string& name, PlanBase* out);

// The named GPU reserve (a budget, not a measurement): a CUDA context with cuBLASLt loaded takes about half a
// GiB on Hopper; cuBLASLt's workspace is BlasLt::kWorkspaceBytes (NVIDIA's 32 MiB for Hopper; lora_model_cuda.cpp
// asserts they agree); the caching allocator's cached-but-idle blocks and NCCL's per-peer buffers get a fixed
// allowance.
constexpr uint64_t kCudaContextBytes = uint64_t{512} << 20;
constexpr uint64_t kCublasLtWorkspaceBytes = uint64_t{32} << 20;
constexpr uint64_t kAllocatorSlackBytes = uint64_t{512} << 20;
constexpr uint64_t kNcclBytes = uint64_t{256} << 20;
// Rows of the CPU's lm_head loss chunk: as many as keep one chunk at about 16M logits (trainer/lora_model.cpp).
// The GPU's chunk is lora_cuda_logits_rows (trainer/lora_cuda_buffers.h), of the same size unless
// QWENQ_LOGITS_CHUNK sets another.
constexpr int64_t kPlanLogitsPerChunk = int64_t{16} << 20;
// nested_offset written into the planned NF4 quant_state JSON (python repr "0.05000000074505806").
constexpr float kPlanNestedOffset = 0.05f;

struct PlanInput {
  std::string model_name;  // for the report: a directory or a preset name
  QwenConfig model;
  PlanBase base = PlanBase::Nf4;
  int bits = 4;              // GPTQ: 2, 3, 4, 8; AWQ: 4
  int64_t group_size = 128;  // GPTQ/AWQ; -1: one group over K
  bool double_quant = true;  // NF4
  int64_t nf4_blocksize = 64;
  DType dense_dtype = DType::BF16;  // embeddings, lm_head, norms, biases (a bf16 base's Linears are bf16 anyway)
  LoraConfig lora;                  // r, the selection (target_modules, PEFT's finer fields), dropout, use_dora
  int64_t batch_size = 1;           // B sequences per micro-batch
  int64_t seq_len = 2048;           // S
  bool checkpointing = true;
  bool bf16_checkpoints = true;  // GPU: the block inputs kept in bf16 (LoraStepOptions::bf16_checkpoints)
  PlanDevice device = PlanDevice::Cuda;
  int gpus = 1;                            // data-parallel processes, one GPU each (train --nproc)
  uint64_t device_bytes = 80'000'000'000;  // per GPU, or the host RAM for the CPU
  int cpu_threads = 1;                     // CPU: threads that each hold a widening buffer
};

// One device's needs (each GPU's, with several). Every field is bytes except where named.
struct DevicePlan {
  std::string name;  // "cpu", "cuda:0", "cuda:0-7 each"

  uint64_t base_linear = 0, base_dense = 0;
  uint64_t base_weights = 0;  // base_linear + base_dense
  int64_t lora_params = 0;
  uint64_t adapters = 0, gradients = 0, optimizer = 0;

  uint64_t act_checkpoints = 0, act_block = 0, act_backward = 0, act_loss = 0;
  uint64_t activations = 0;  // the sum of the act_* fields
  uint64_t ws_dequant = 0, ws_scratch = 0, ws_logits = 0, ws_threads = 0, ws_reserve = 0;  // scratch: GPU only
  uint64_t workspace = 0;  // the sum of the ws_* fields

  uint64_t total = 0;
  uint64_t capacity = 0;
  int64_t headroom = 0;  // capacity - total (negative when it does not fit)
  bool fits = false;
};

struct PlanResult {
  PlanInput input;
  int64_t tokens = 0;             // T = B·S
  int64_t linear_params = 0;      // Σ N·K of the decoder's Linears
  int64_t lora_params = 0;        // whole model (= LoraAdapter::num_parameters())
  int64_t adapted_linears = 0;    // the Linears the adapter adapts (a MoE layer's every expert Linear counted)
  uint64_t base_linear_bytes = 0; // whole model, as written to disk
  uint64_t base_dense_bytes = 0;  // whole model, each tensor once
  uint64_t base_weight_bytes = 0; // the sum: the checkpoint's tensor bytes
  DevicePlan device;              // the CPU, or each GPU
  uint64_t nf4_total = 0;         // a GPU plan of a bf16 base that does not fit: its total with an NF4 base (0: none)
};

// The base format (and bits, group size, double quantization) a model directory was written in, from its
// config.json's quantization_config (bf16 without one); a GPTQ/AWQ/bitsandbytes directory of ours or the Python
// tools'. The dense tensors' dtype from config.json's torch_dtype ("float32", "float16", else bf16).
void plan_base_from_model_dir(const std::string& dir, PlanInput* in);
DType plan_dense_dtype(const std::string& torch_dtype);

// Bytes one Linear [N, K] takes in the base format of `in` (what our writers put in safetensors).
// Throws naming the shape when the layout cannot hold it (K or N not packing into int32 words, AWQ bits != 4).
uint64_t plan_linear_bytes(const PlanInput& in, int64_t N, int64_t K);

// Throws with the offending value for a config the plan cannot describe (non-positive sizes, on the GPU a packed
// base that is not 4-bit or whose Q4 group is not a multiple of 8, an adapter selecting nothing, on the GPU an adapter
// it does not lay out: lora/lora_select.h's lora_plan_gpu_refusal, ...).
PlanResult plan_memory(const PlanInput& in);

// Human-readable: a header, the device's table, the activation/workspace breakdown and the verdict.
std::string format_plan_table(const PlanResult& plan);
// Two-space indented JSON with the input, the whole-model counts and every DevicePlan field ("per_device").
std::string plan_to_json(const PlanResult& plan);

}  // namespace qwenq
