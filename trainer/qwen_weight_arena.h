// One decoder layer's weights in one device allocation: the layout of QwenModelCuda's per-layer weight arena
// (trainer/qwen_model_cuda.h), in plain C++ so that the CPU tests check it byte for byte and `qwen-qlora plan`
// (trainer/memory_plan.h) sums the same pieces. No CUDA here.
//
// Why: the caching allocator (kernels/device_allocator.h) rounds a request over 1 MiB up to a multiple of 2 MiB
// and one of at most 1 MiB up to 512 B. With every stored tensor its own allocation, a Qwen2.5-0.5B layer in GPTQ
// g128 (14 Q4 arrays of 3.5 KB to 2.2 MB, 5 norms and biases) held 13.97 MB for its 7.93 MB (each 2.18 MB qweight
// of gate/up/down took 4 MiB), the whole model on the GPU 580 MiB for 441 MiB of tensors. One allocation per
// layer pays the 2 MiB rounding once: 8 MiB a layer, 452 MiB in all (`qwen-qlora plan` counts exactly this).
//
// Layout: the layer's pieces back to back, each starting at a multiple of kWeightArenaAlignment = 256 B from the
// arena's base, in this order:
//   input_norm, post_norm, q_norm, k_norm (Qwen3 only),
//   then for q, k, v, o, gate, up, down: the dense weight as stored (BF16/F16/F32 [N, K]), or for a packed
//   GPTQ/AWQ/NF4/FP4 Linear its Q4 repack (quant/format/qgemm_layout.h: qweight, meta, and perm with act-order),
//   then the Linear's bias when it has one (q/k/v, Qwen2).
// An absent tensor takes no piece, nor does an absent Linear (N = 0: the dense MLP of a mixture-of-experts layer,
// whose experts are qwen_moe_arena's). bytes = Σ over the pieces of round_up(piece bytes, 256); the allocator then
// holds round_size(bytes). The base of an allocator block is cudaMalloc's (blocks are never split), aligned to
// at least 256 B, so every piece is 256-byte aligned in device memory: the Q4 GEMMs' 128-bit loads of qweight
// and meta need 16 B (kernels/qgemm.cu checks it), cuBLASLt's algorithms for the dense weights are chosen for the
// pointers' alignment and its defaults assume 256 B (kernels/blas_lt.cu), the norm / bias / rope kernels read
// 4-byte elements.
//
// qwen_layer_arena builds the host half of one layer's upload: the offset of every tensor and the list of copies
// (source pointer, bytes, offset), the Q4 repacks owned by the result until the caller's copies are done;
// qwen_moe_arena the same for a mixture-of-experts layer's MLP (its router and experts), a second arena of the layer.
// arena_ptr / arena_q4_view turn offsets into pointers for an arena at `base` (device memory in QwenModelCuda,
// a host buffer in the tests).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "quant/format/qgemm_layout.h"
#include "trainer/qwen_weights.h"

namespace qwenq {

constexpr uint64_t kWeightArenaAlignment = 256;

// Pieces laid back to back, each at a multiple of kWeightArenaAlignment.
class WeightArenaLayout {
 public:
  // The offset of a new piece of `bytes` (> 0; throws otherwise).
  uint64_t add(uint64_t bytes);
  // Σ round_up(piece, kWeightArenaAlignment): the arena's size.
  uint64_t bytes() const { return end_; }

 private:
  uint64_t end_ = 0;
};

// A tensor's place in an arena.
struct ArenaTensor {
  int64_t offset = -1;  // -1: absent
  uint64_t bytes = 0;
  DType dtype = DType::F32;
  bool present() const { return offset >= 0; }
};

// A Linear [N, K] in an arena: a dense weight, or a Q4 weight (q4: the layout's kind and sizes, null pointers).
struct ArenaLinear {
  int64_t N = 0, K = 0;
  ArenaTensor dense;
  bool is_q4 = false;
  Q4View q4;
  int64_t qweight_offset = -1, meta_offset = -1, perm_offset = -1;  // perm -1: no act-order
  ArenaTensor bias;
};

struct ArenaCopy {
  const void* src = nullptr;  // host
  uint64_t bytes = 0, offset = 0;
};

struct QwenLayerArena {
  ArenaTensor input_norm, post_norm, q_norm, k_norm;
  ArenaLinear q, k, v, o, gate, up, down;
  std::vector<ArenaCopy> copies;  // every piece, in layout order
  std::vector<Q4Layout> repacked;  // the host arrays the Q4 copies read (keep until the copies are done)
  uint64_t bytes = 0;              // the arena's size (WeightArenaLayout::bytes)
  // Σ of the aligned pieces of the seven Linears (weights and Q4 arrays, not the biases).
  uint64_t linear_bytes = 0;
};

// Why an arena cannot hold the Linear w, "" when it can: a dense weight uploads as stored, a GPTQ/AWQ/bitsandbytes
// one as its Q4 repack when it has one (q4_check_int_linear / q4_check_nf4: 4-bit codes, groups of whole Q4 words);
// FP8 and GGUF weights stay on the CPU. The arenas below throw it, naming the Linear; trainer/gpu_support.h asks it
// before an upload (`--device auto`).
std::string gpu_linear_refusal(const LinearWeight& w);

// The arena of one layer's weights (`prefix`: "model.layers.3."). Packed Linears are repacked to Q4 here; one the
// Q4 GEMMs cannot read (not 4-bit, a group that is not a multiple of 8) throws naming the Linear:
// "QwenModelCuda: cannot run 'model.layers.3.self_attn.q_proj' on the GPU, ...".
QwenLayerArena qwen_layer_arena(const QwenLayerWeights& w, const std::string& prefix);

// A mixture-of-experts layer's MLP (qwen2_moe / qwen3_moe) in an arena of its own, laid out as above: the router
// (`mlp.gate`), then each expert's gate_proj, up_proj, down_proj in expert order, then the shared expert's three and
// its gate (Qwen2-MoE) when present (N = 0 otherwise). Refusals as qwen_layer_arena's, naming the expert's Linear.
struct QwenMoeArena {
  ArenaLinear router;
  std::vector<std::array<ArenaLinear, 3>> experts;  // gate, up, down
  std::array<ArenaLinear, 3> shared;
  ArenaLinear shared_gate;
  std::vector<ArenaCopy> copies;
  std::vector<Q4Layout> repacked;
  uint64_t bytes = 0;
  uint64_t linear_bytes = 0;  // every piece here is a Linear's
};
QwenMoeArena qwen_moe_arena(const MoeWeights& m, const std::string& prefix);

// The bytes of qwen_layer_arena(w, prefix) / qwen_moe_arena(m, prefix) without making them: the same layout, a
// packed Linear's Q4 pieces sized by the repack's formulas (no repack, no copies), the same refusals. For a host to
// size an upload before it (trainer/gpu_support.h).
uint64_t qwen_layer_arena_bytes(const QwenLayerWeights& w, const std::string& prefix);
uint64_t qwen_moe_arena_bytes(const MoeWeights& m, const std::string& prefix);

// Where a tensor of an arena at `base` lives: null when absent.
const void* arena_ptr(const void* base, const ArenaTensor& t);
// The Q4 view of a Q4 Linear of an arena at `base` (qweight, meta, perm pointers into it).
Q4View arena_q4_view(const void* base, const ArenaLinear& l);

}  // namespace qwenq
