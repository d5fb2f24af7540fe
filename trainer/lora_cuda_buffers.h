// The device buffers of the GPU LoRA trainer (trainer/lora_model_cuda.h), as one plain-C++ table: LoraModelCuda
// allocates exactly these, and `qwen-qlora plan` (trainer/memory_plan.h) sums exactly these, so the two cannot
// drift apart. No CUDA here: the plan runs on any build.
//
// Per batch of T tokens (LoraModelCuda's reserve(T), one allocation each from the caching allocator, tag
// activations; re-made only when a larger batch comes or the checkpoint dtype changes). Every buffer is [T, words] of 4-byte words, i.e.
// T·words·4 bytes before the allocator's rounding (kernels/device_allocator.h: 512 B up to 1 MiB, else 2 MiB);
// a bf16 buffer of `cols` values per token takes words = ceil(cols / 2). C hidden, I intermediate, H heads,
// Q = H·D, KV = Hkv·D, r LoRA rank (0 without adapters), W = max(C, Q, I), L the layers the device runs.
//
// Listed by role (lora_cuda_batch_buffers returns them in allocation order, xs first):
//   role         buffer     words per token             what
//   checkpoints  xs         ceil((L + 1)·C / 2)         every block input and the final residual, bf16 (the
//                                                       default, LoraStepOptions::bf16_checkpoints), slot l at
//                           (L + 1)·C                   element l·T·C; or fp32 (bf16_checkpoints = false)
//   forward      xin        C (bf16 checkpoints only)   the block input widened to fp32 (the block reads it)
//                n1         C                           input RMSNorm output
//                qpre, kpre Q, KV (1 each without QK-norm) q, k before their norm (Qwen3)
//                q, k, v    Q, KV, KV                   projections (RoPE in place)
//                a          Q                           attention output
//                lse        H                           attention log-sum-exp
//                h1, n2     C, C                        residual after attention, post-attention RMSNorm
//                gate, up   I, I                        MLP projections
//                act        I                           SwiGLU output
//                u          7·r                         LoRA u = x Aᵀ of the seven Linears
//                tokens     1                           token ids (int32)
//                positions  1                           positions (int32)
//                act16      ceil((W + F) / 2)           bf16 input of a 4-bit Linear (and bf16 dy of its backward); F =
//                                                       lora_cuda_fold_cols(r): QWENQ_LORA_FOLD=1's s·u / g columns
//                q16, k16   ceil(Q / 2), ceil(KV / 2)   bf16 copies for flash attention (flash head dims only)
//                v16, a16   ceil(KV / 2), ceil(Q / 2)
//   backward     d          C                           residual-stream gradient
//                dn2, dh1   C, C
//                da, dq     Q, Q                        (naive attention only; see the shared storage below)
//                dk, dv     KV, KV                      (naive attention only)
//                tmp        W (lora_dropout > 0 only)   the dropped LoRA input x̃, and the base input gradient
//                g          r                           LoRA g = s·dy B
//   loss         nll        1                           per-token losses
//                targets    1                           targets (int32)
// Buffers without an allocation of their own, on the storage of one whose lifetime does not overlap theirs (the
// block's forward, or its recomputation, runs before its backward; the loss phase between the last forward and the
// first recomputation; every op on the trainer's one stream):
//   dact   on act     down_proj's input gradient over its input: linear_bwd reads x (dA) before it writes dx
//   dgate  on act     swiglu_backward_cuda in place: each output may alias any input (kernels/act.h)
//   dup    on up
//   tmp    on gate    without dropout tmp only takes the base dx of up/k/v before it is added (accumulate), all
//                     after swiglu_backward, when gate is dead until the next recomputation
//   dn1    on dn2     dn2 is dead once rmsnorm_backward has made dh1 of it; dn1 is made after that
//   mlp    on dn2     the down projection's output, forward only (dn2 lives in the backward only)
//   hidden on n1      the final RMSNorm output and its gradient: the loss phase, when no block is in flight
//   dhidden on h1
//   the loss rows   when a 16th of the rows or more have no target, only those with one are scored: their hidden rows gathered on
//                   n2, their dhidden rows (and a zero row) on dn2, their indices and targets on tokens and targets
//                   (tokens is dead once the batch is embedded)
//   flash attention (q, k, v fp32 are dead once q16, k16, v16 exist; its backward reads the bf16 ones and a16):
//   dq, dk, dv on q, k, v;  da on a (o_proj's input gradient over its input, as dact);  da16 on act16 (the bf16
//   dy of a 4-bit o_proj is dead once da is computed)
// Mixture-of-experts models (qwen2_moe, qwen3_moe) add, for their MoE layers' MLPs (k experts per token, Im each
// routed expert's width, Is the shared expert's, E experts; W above then also covers Im and Is), per token:
//   forward      mx         k·C                         the rows routed to the experts (n2 gathered), grouped by expert
//                my         k·C (and the experts' dx)   the experts' output rows
//                mgate, mup k·Im, k·Im (and dgate, dup) each row's gate and up projections
//                mact       k·Im (and dact)             each row's SwiGLU output
//                mu         3·k·r                       the experts' LoRA u, per Linear (gate, up, down)
//                mlogits    E (and dr)                  the router logits; in the backward ∂L/∂logits from the host
//                mindex     2·k (int32)                 the gather and combine indices (trainer/moe_block.h, MoeDispatch)
//                mweight    k + 1                       the routing weights, then the shared expert's σ(g)
//                sgate, sup Is, Is (and dgate, dup)     the shared expert's (Qwen2-MoE; 1 word each without one)
//                sact, sy   Is, C (and dact)            its SwiGLU and down outputs
//                su         3·r                         its LoRA u
//                mg         1                           its gate logit
//   backward     mdy        k·C                         each row's gradient w · dout
//                mdw        k                           ∂L/∂w per (token, choice), copied to the host
//                ds, dg     C, 1                        the shared expert's dy (and its dx) and ∂L/∂g
//                mtmp       C                           the base dx of a Linear that accumulates (every input
//                                                       gradient that accumulates has width C: k/v, up, an expert's
//                                                       up), the router's and the shared gate's before they are added
// The experts' Linears run on row slices of these (at most T rows each: a token picks an expert once), with the
// dense tmp / g / act16 buffers as their scratch (W also covers E: a 4-bit router's bf16 dr); a dense layer of a MoE
// model (qwen2_moe's mlp_only_layers) uses gate, up, act as any dense model does, and without one (qwen3_moe) they
// are one word per token. In a MoE model mtmp, not gate, is the accumulate scratch of every Linear.
// The input embedding is not a device buffer: an untied table stays on the host, the batch's rows are gathered
// there into pinned memory and uploaded into xin (bf16 checkpoints) or slot 0 of xs (fp32) (a bf16 table's rows as
// they are, through act16, widened on the device), tied ones are gathered on the device (trainer/lora_model_cuda.h). Pinned host memory is not counted here.
// Logits: one chunk [rows, V] fp32, rows = max(1, min(T, lora_cuda_logits_chunk_floats() / V)) (tag logits): 2^24
// logits = 64 MiB, 110 rows at V = 151936 or 152064. The lm_head's forward, the fused cross-entropy and dlogits·W
// run chunk by chunk over the scored rows (the last chunk partial; one chunk when they are fewer than rows), each
// chunk's rows of dhidden written at once. The scored rows are all T, or, when a 16th or more have no target, the R
// that have one, gathered into n2 (their dhidden rows come back through dn2 and a zero row R). Why 2^24 and not the 2^26 of before: 192 MiB less of logits and, for a 16-bit lm_head, 96 MiB
// less of cuBLASLt's bf16 copy of dlogits (kernel scratch). The price: each chunk's GEMM (M = rows, N = V, K = C)
// reads the whole lm_head, and at M = 110 it is bound by that read (a GEMM of M rows does M FLOP per byte of a
// bf16 weight; the H100/H200 bf16 ridge is ~200), so a step reads it 2·ceil(T/110) times instead of
// 2·ceil(T/441): at 7B and T = 2048, 38 reads of 1.09 GB (~8.7 ms at 4.8 TB/s) instead of 10 compute-bound chunks
// (~4.9 ms), a few ms of a step of some hundred ms (the cross-entropy launcher counts the targets from the trainer's
// host copy, so the chunks do not wait for each other). Tests force smaller chunks
// (LoraModelCudaOptions::logits_chunk_rows) to cover several on their small vocabularies.
// DoRA adapters (use_dora) add, for the adapted Linears t of the block in flight (N_t, K_t their output rows and input
// columns; the sums and maxima over the adapter's targets, a MoE layer's experts' and shared expert's shapes
// included):
//   forward      DoraZ      Σ N_t                       z = x̃ Wᵀ of each adapted Linear, [T, N_t] at T·offset_t; a
//                                                       MoE model: the larger of that and the attention's Σ N_t plus
//                                                       the MoE region (lora_cuda_dora_moe: k·N_e + N_s per MLP target)
//                DoraV      as DoraZ                    v = s·u Bᵀ, likewise
//   backward     DoraDz     max N_t                     dz = (g − 1)·dy of the Linear in its backward
//                DoraDv     max N_t                     dv = g·dy
//                DoraTmp    max K_t                     dz W + (s·dv B) A before it is added into dx
// Adapter: four fp32 arrays of P floats each, P = Σ r·(N + K) over the adapted Linears of every layer (+ Σ N for a
// DoRA adapter's magnitudes) (A/B (m), their gradients, AdamW m, v; one allocation each, max(P, 1) floats); DoRA adds
// the row norms n of every adapted Linear, Σ N floats (computed once a step).
// Base weights: trainer/qwen_model_cuda.h's upload, one allocation per decoder layer (trainer/qwen_weight_arena.h).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lora/lora_adapter.h"
#include "trainer/qwen_config.h"

namespace qwenq {

// The columns QWENQ_LORA_FOLD=1 (kernels/qgemm.h) adds to act16 (s·u after x, g after dy) and to a folded Linear's
// dense copy of Ŵ (B's columns, or A's rows): the rank rounded up to a multiple of 8 (0 without the switch).
int64_t lora_cuda_fold_cols(int64_t rank);

// Logits per lm_head chunk of LoraModelCuda: 16 Mi floats (64 MiB; the CPU trainer's chunk too), unless
// QWENQ_LOGITS_CHUNK sets another count (a tuning knob, 1..2^30, for measuring the trade above:
// benchmarks/bench_qlora_step.sh's VARIANTS; the memory plan reads it too).
constexpr int64_t kLoraCudaLogitsChunkFloats = int64_t{16} << 20;
int64_t lora_cuda_logits_chunk_floats();
// Rows of one logits chunk for a batch of T tokens and a vocabulary of V: max(1, min(T, chunk_floats / V)), or
// min(T, max_rows) when max_rows > 0 (LoraModelCudaOptions::logits_chunk_rows, for tests).
int64_t lora_cuda_logits_rows(int64_t T, int64_t V, int64_t max_rows = 0);

enum class LoraCudaRole { Checkpoints, Forward, Backward, Loss };

// The buffers with an allocation of their own (the shared ones above have none).
enum class LoraCudaBufferId {
  Xs, Xin, N1, Qpre, Kpre, Q, K, V, A, Lse, H1, N2, Gate, Up, Act, U, D, Dn2, Dh1, Da, Dq, Dk, Dv, Tmp, G, Nll,
  Tokens, Positions, Targets, Act16, Q16, K16, V16, A16,
  // mixture-of-experts layers (the table's MoE part below)
  Mx, My, Mgate, Mup, Mact, Mu, Mdy, Mtmp, Mlogits, Mg, Mindex, Mweight, Mdw, Sgate, Sup, Sact, Sy, Su, Ds, Dg,
  // DoRA adapters (the table's DoRA part below)
  DoraZ, DoraV, DoraDz, DoraDv, DoraTmp
};

struct LoraCudaBuffer {
  LoraCudaBufferId id;
  LoraCudaRole role;
  const char* what;  // for the out-of-memory message
  int64_t words;     // 4-byte words per token
  uint64_t bytes(int64_t T) const { return static_cast<uint64_t>(T * words) * 4; }
};

// The adapter arenas hold every adapted Linear's A then B (then a DoRA adapter's magnitude m), slot after slot in the
// adapter's slots() order (Σ r·(N + K) floats, + Σ N with DoRA). These walk an adapter's values in that order through
// a staging buffer of at most stage_floats (> 0): lora_arena_put hands `write` each full stage (its floats and their
// offset in the arena), lora_arena_get asks `read` to fill each stage from its offset and copies it into the adapter.
// So a large adapter (Qwen3-30B-A3B's experts at r = 16: 844 M floats) never needs a second whole host copy.
void lora_arena_put(const LoraAdapter& a, int64_t stage_floats,
                    const std::function<void(const float* data, int64_t offset, int64_t n)>& write);
void lora_arena_get(LoraAdapter* a, int64_t stage_floats,
                    const std::function<void(float* data, int64_t offset, int64_t n)>& read);

// The per-batch buffers in LoraModelCuda's allocation order (xs first: the largest). `layers`: the decoder
// layers whose block inputs are kept (the model's); `rank`: the adapter's r;
// `flash`: the head dim runs flash attention (bf16 q/k/v copies; dq, dk, dv, da shared); `bf16_checkpoints`: xs
// in bf16 plus xin; `dropout`: the adapter's lora_dropout > 0 (tmp allocated); `dora_targets`: a DoRA adapter's
// targets (empty: no DoRA), which size the DoRA rows.
std::vector<LoraCudaBuffer> lora_cuda_batch_buffers(const QwenConfig& c, int64_t layers, int64_t rank, bool flash,
                                                    bool bf16_checkpoints, bool dropout,
                                                    const std::vector<LoraTarget>& dora_targets = {});
// A DoRA adapter's target t in a dense layer: its Linear's output rows N and input columns K (q: Q x C, k/v: KV x C,
// o: C x Q, gate/up: I x C, down: C x I), and the column offset of its z and v in DoraZ / DoraV: the sum of the N
// of the targets before it in table order (each Linear's [T, N] block at element T·offset).
struct LoraCudaDoraShape {
  int64_t N = 0, K = 0, offset = 0;
};
LoraCudaDoraShape lora_cuda_dora_shape(const QwenConfig& c, const std::vector<LoraTarget>& dora_targets, LoraTarget t);
// A mixture-of-experts layer's DoRA columns in DoraZ / DoraV, after the attention targets' (which keep their
// lora_cuda_dora_shape offsets): for each adapted MLP target in the order gate, up, down (which = 0, 1, 2), the routed
// experts' rows [T·k, N_e] (expert e's at its grouped rows) at routed[which], then the shared expert's [T, N_s] at
// shared[which] (-1: not adapted, or no shared expert); offsets in words per token (a block at element T·offset).
// words: the end of the region.
struct LoraCudaDoraMoe {
  int64_t routed[3] = {-1, -1, -1};
  int64_t shared[3] = {-1, -1, -1};
  int64_t words = 0;
};
LoraCudaDoraMoe lora_cuda_dora_moe(const QwenConfig& c, const std::vector<LoraTarget>& dora_targets);
// Where LoraModelCuda keeps one expert Linear's z (and v) in DoraZ (DoraV), in floats from the buffer's start, for a
// batch of T tokens: Linear `which` of routed expert `expert` at T·routed[which] + r0·N (r0 its first grouped row, N
// its output rows), the shared expert's (expert -1) at T·shared[which]. Throws when that Linear has no column.
int64_t lora_cuda_dora_expert_offset(const LoraCudaDoraMoe& m, int which, int64_t expert, int64_t T, int64_t r0,
                                     int64_t N);

}  // namespace qwenq
