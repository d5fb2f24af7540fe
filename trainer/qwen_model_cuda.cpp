// QwenModelCuda (trainer/qwen_model_cuda.h): the upload of a QwenModel's weights and the forward pass, op by op
// through the launchers of kernels/, on one stream. The order of the ops is QwenModel's (qwen_model.cpp).
#ifdef QWENQ_HAVE_CUDA

#include "trainer/qwen_model_cuda.h"

#include <algorithm>
#include <array>
#include <iterator>
#include <map>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "kernels/act.h"
#include "kernels/attention_naive.h"
#include "kernels/blas_lt.h"
#include "kernels/convert.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_allocator.h"
#include "kernels/flash_attention.h"
#include "kernels/loss.h"
#include "kernels/moe_combine.h"
#include "kernels/norm.h"
#include "kernels/qgemm.h"
#include "kernels/rope.h"
#include "quant/format/qgemm_layout.h"
#include "trainer/gpu_support.h"
#include "trainer/lora_inference.h"
#include "trainer/moe_block.h"
#include "trainer/qwen_weight_arena.h"

namespace qwenq {

namespace {

// Logits computed at once by next_token_nll: 64 Mi floats (256 MiB), e.g. 441 rows of a 152K vocabulary. The CPU
// takes 16 Mi per chunk to stay in cache; on the GPU larger chunks make each lm_head GEMM (and the host wait
// after each cross-entropy call) cover more rows.
constexpr int64_t kLogitsChunkFloats = int64_t{64} << 20;

bool uses_flash(int64_t D) { return flash_attention_compiled(D); }  // 64 and 128 unless the build dropped one

// One device buffer from the caching allocator (kernels/device_allocator.h), used on `stream`; when the device
// is full, its OutOfMemoryError names `what`, its size and where the device's memory is.
DeviceAllocation allocate(size_t bytes, MemoryTag tag, const std::string& what, CudaStream stream) {
  return cuda_device_allocator().allocate(bytes, stream, tag, "QwenModelCuda: " + what);
}

// The device weights (trainer/qwen_model_cuda.h) under their short local names.
using DevTensor = QwenDeviceTensor;
using DevLinear = QwenDeviceLinear;
using DevLayer = QwenDeviceLayer;

}  // namespace

struct QwenModelCuda::Impl {
  OwnedCudaStream stream;  // first member: destroyed after every buffer below
  QwenConfig cfg;
  std::vector<DeviceAllocation> owned;    // the embedding, final norm, lm_head; weights set by set_linear_weight
  std::map<const void*, DevTensor> uploaded;  // host data -> device copy (a tied lm_head is the embedding)
  int64_t weight_bytes = 0;
  DevTensor embed, final_norm, lm_head;
  std::vector<DevLayer> layers;
  // One decoder layer's weights in one allocation (trainer/qwen_weight_arena.h); layers[l]'s pointers point into
  // stores[l].arena.
  struct LayerStore {
    DeviceAllocation arena;
    QwenLayerArena layout;      // offsets and sizes (its host copies and repacks dropped once uploaded)
    int linears_inside = 0;     // Linears whose weight is still in the arena (set_linear_weight moves them out)
    bool holds_linears = true;  // false once the arena was cut down to the norms and biases (compact_layer)
  };
  std::vector<LayerStore> stores;
  std::vector<bool> released;  // release_layer'd: nothing of the layer is on the device
  // A mixture-of-experts layer's MLP in an arena of its own (qwen_moe_arena): the router, each expert's gate, up and
  // down, the shared expert's (N = 0: none) and its gate. moe[l] is null for a dense layer.
  struct DevMoe : QwenDeviceMoe {
    DeviceAllocation arena;
    std::vector<DeviceAllocation> replaced;  // set_expert_weight's fp32 weights
  };
  std::vector<std::unique_ptr<DevMoe>> moe;
  std::unique_ptr<LoraInferenceCuda> lora;  // the attached adapter (its branches are in `layers`), or null
  uint64_t adapter_generation = 0;  // attach_adapter / detach_adapter calls

  // Activation buffers for batches of up to `capacity` tokens.
  int64_t capacity = 0;
  int64_t act16_cols = 0;
  DeviceAllocation x, n, q, k, v, a, gate, up;  // fp32
  DeviceAllocation act16, q16, k16, v16, a16;   // bf16
  DeviceAllocation tokens, positions, targets, nll;
  DeviceAllocation lora_u;  // [capacity, r] fp32: u = x Aᵀ of the adapter's branch (only with an adapter)
  // A MoE model's: the rows routed to the experts and the experts' outputs [capacity·k, C], the router logits
  // [capacity, E], the shared expert's gate logit [capacity] and output [capacity, C], the gather and combine
  // indices [2·capacity·k] and the combine weights [capacity·k + capacity].
  DeviceAllocation moe_x, moe_y, moe_logits, moe_g, moe_shared, moe_index, moe_weight;
  DeviceAllocation logits;  // [logits_rows, V] fp32
  int64_t logits_rows = 0;
  int64_t hidden_rows = 0;  // rows of x that hold the final hidden states of the last forward_hidden (0: none)

  CudaStream s() const { return stream.get(); }
  // Each layer's experts on the device (null: a dense layer, or released), for the adapter's wiring.
  std::vector<QwenDeviceMoe*> moe_views() {
    std::vector<QwenDeviceMoe*> v(layers.size(), nullptr);
    for (size_t l = 0; l < moe.size() && l < v.size(); ++l) v[l] = moe[l].get();
    return v;
  }

  DevTensor upload(const TensorView& t, const std::string& name) {
    if (t.data == nullptr) return {};
    auto it = uploaded.find(t.data);
    if (it != uploaded.end() && it->second.dtype == t.dtype) return it->second;
    const size_t bytes = t.nbytes();
    DeviceAllocation m = allocate(bytes, MemoryTag::Weights,
                                  "tensor '" + name + "' " + shape_str(t.shape) + " " + dtype_name(t.dtype), s());
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(m.get(), t.data, bytes, cudaMemcpyHostToDevice, s()));
    const DevTensor d{m.get(), t.dtype};
    owned.push_back(std::move(m));
    uploaded[t.data] = d;
    weight_bytes += static_cast<int64_t>(bytes);
    return d;
  }

  // Decoder layer l's weights into one allocation: the layout and the host copies (Q4 repacks) of
  // qwen_layer_arena, every piece copied to its offset, the device pointers of layers[l] set into it.
  void upload_layer(size_t l, const QwenLayerWeights& hl) {
    const std::string name = "model.layers." + std::to_string(l) + ".";
    LayerStore& st = stores[l];
    st.layout = qwen_layer_arena(hl, name);  // throws naming a Linear the Q4 kernels cannot read
    const QwenLayerArena& a = st.layout;
    st.arena = allocate(a.bytes, MemoryTag::Weights,
                        "the weights of layer " + std::to_string(l) + " (" + std::to_string(a.copies.size()) +
                            " tensors in one allocation)", s());
    // cudaMalloc'd blocks (never split by the allocator) are 256-byte aligned, hence every piece (see the layout).
    QWENQ_CHECK(reinterpret_cast<uintptr_t>(st.arena.get()) % kWeightArenaAlignment == 0,
                "QwenModelCuda: the weight arena of layer " << l << " is not " << kWeightArenaAlignment
                                                            << "-byte aligned");
    uint8_t* base = st.arena.as<uint8_t>();
    for (const ArenaCopy& c : a.copies) {
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(base + c.offset, c.src, c.bytes, cudaMemcpyHostToDevice, s()));
    }
    // The copies read the repacks, freed below: wait for them (a pageable copy need not be staged when the call
    // returns), which also surfaces an upload error with the layer.
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s()));
    st.layout.copies = {};
    st.layout.repacked = {};
    weight_bytes += static_cast<int64_t>(a.bytes);
    DevLayer& dl = layers[l];
    const auto tensor = [&](const ArenaTensor& t) { return DevTensor{arena_ptr(base, t), t.dtype}; };
    dl.input_norm = tensor(a.input_norm);
    dl.post_norm = tensor(a.post_norm);
    dl.q_norm = tensor(a.q_norm);
    dl.k_norm = tensor(a.k_norm);
    const std::pair<DevLinear*, const ArenaLinear*> linears[] = {
        {&dl.q, &a.q}, {&dl.k, &a.k}, {&dl.v, &a.v}, {&dl.o, &a.o}, {&dl.gate, &a.gate}, {&dl.up, &a.up},
        {&dl.down, &a.down}};
    for (const auto& [d, al] : linears) {
      d->N = al->N;
      d->K = al->K;
      if (al->is_q4) {
        d->q4 = arena_q4_view(base, *al);
      } else {
        d->dense = tensor(al->dense);
      }
      d->bias = tensor(al->bias);
    }
    st.linears_inside = 0;  // the Linears in the arena: 7, or 4 in a MoE layer (its MLP is the MoE arena)
    for (const auto& [d, al] : linears) st.linears_inside += al->N > 0 ? 1 : 0;
    st.holds_linears = true;
  }

  // Layer l's mixture-of-experts MLP into an arena of its own, laid out by qwen_moe_arena.
  void upload_moe(size_t l, const MoeWeights& hm) {
    const std::string name = "model.layers." + std::to_string(l) + ".";
    QwenMoeArena a = qwen_moe_arena(hm, name);  // throws naming a Linear the Q4 kernels cannot read
    auto d = std::make_unique<DevMoe>();
    d->arena = allocate(a.bytes, MemoryTag::Weights,
                        "the mixture-of-experts MLP of layer " + std::to_string(l) + " (" +
                            std::to_string(a.experts.size()) + " experts in one allocation)", s());
    QWENQ_CHECK(reinterpret_cast<uintptr_t>(d->arena.get()) % kWeightArenaAlignment == 0,
                "QwenModelCuda: the expert arena of layer " << l << " is not " << kWeightArenaAlignment
                                                            << "-byte aligned");
    uint8_t* base = d->arena.as<uint8_t>();
    for (const ArenaCopy& c : a.copies) {
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(base + c.offset, c.src, c.bytes, cudaMemcpyHostToDevice, s()));
    }
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s()));  // the copies read the repacks, freed with `a`
    weight_bytes += static_cast<int64_t>(a.bytes);
    const auto linear_of = [&](const ArenaLinear& al) {
      DevLinear r;
      r.N = al.N;
      r.K = al.K;
      if (al.is_q4) {
        r.q4 = arena_q4_view(base, al);
      } else {
        r.dense = DevTensor{arena_ptr(base, al.dense), al.dense.dtype};
      }
      return r;
    };
    d->router = linear_of(a.router);
    for (const auto& e : a.experts) d->experts.push_back({linear_of(e[0]), linear_of(e[1]), linear_of(e[2])});
    if (a.shared[0].N > 0) {
      d->shared = {linear_of(a.shared[0]), linear_of(a.shared[1]), linear_of(a.shared[2])};
      d->shared_gate = linear_of(a.shared_gate);
    }
    moe[l] = std::move(d);
  }

  // Whether device pointer p lies in layer l's arena.
  bool in_arena(size_t l, const void* p) const {
    const DeviceAllocation& m = stores[l].arena;
    const auto at = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(m.get());
    return m && at >= b && at < b + m.bytes();
  }

  // Every Linear of layer l has left its arena (set_linear_weight): the norms and biases move to a small
  // allocation of their own and the arena goes back to the allocator (stream-ordered: after the copies and every
  // pass already queued on this stream).
  void compact_layer(size_t l) {
    LayerStore& st = stores[l];
    DevLayer& L = layers[l];
    const QwenLayerArena& a = st.layout;
    constexpr size_t kMoved = 7;
    const std::pair<DevTensor*, const ArenaTensor*> moved[kMoved] = {
        {&L.input_norm, &a.input_norm}, {&L.post_norm, &a.post_norm}, {&L.q_norm, &a.q_norm},
        {&L.k_norm, &a.k_norm},         {&L.q.bias, &a.q.bias},       {&L.k.bias, &a.k.bias},
        {&L.v.bias, &a.v.bias}};
    WeightArenaLayout small;
    uint64_t offset[kMoved] = {};
    for (size_t i = 0; i < kMoved; ++i) {
      if (moved[i].second->present()) offset[i] = small.add(moved[i].second->bytes);
    }
    DeviceAllocation fresh;
    if (small.bytes() > 0) {
      fresh = allocate(small.bytes(), MemoryTag::Weights,
                       "the norms and biases of layer " + std::to_string(l) + " (every Linear replaced)", s());
      uint8_t* base = fresh.as<uint8_t>();
      for (size_t i = 0; i < kMoved; ++i) {
        const ArenaTensor& t = *moved[i].second;
        if (!t.present()) continue;
        QWENQ_CUDA_CHECK(
            cudaMemcpyAsync(base + offset[i], moved[i].first->data, t.bytes, cudaMemcpyDeviceToDevice, s()));
        moved[i].first->data = base + offset[i];
      }
    }
    weight_bytes += static_cast<int64_t>(small.bytes()) - static_cast<int64_t>(st.arena.bytes());
    st.arena = std::move(fresh);  // the old arena back to this stream's cache, reused only by later work on it
    st.holds_linears = false;
  }

  void reserve(int64_t T) {
    if (T <= capacity) return;
    const QwenConfig& c = cfg;
    const int64_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), I = mlp_width();
    // Free the old set first: the new one replaces it.
    for (DeviceAllocation* b : {&x, &n, &q, &k, &v, &a, &gate, &up, &act16, &q16, &k16, &v16, &a16, &tokens,
                                &positions, &targets, &nll, &lora_u, &moe_x, &moe_y, &moe_logits, &moe_g, &moe_shared,
                                &moe_index, &moe_weight}) {
      b->reset();
    }
    capacity = 0;
    const std::string batch = " for a batch of " + std::to_string(T) + " tokens";
    const auto buffer = [&](int64_t cols, DType type, const char* what) {
      const std::string dims = " [" + std::to_string(T) + ", " + std::to_string(cols) + "] ";
      return allocate(static_cast<size_t>(T * cols) * dtype_size(type), MemoryTag::Activations,
                      what + dims + dtype_name(type) + batch, s());
    };
    const auto f32 = [&](int64_t cols, const char* what) { return buffer(cols, DType::F32, what); };
    const auto b16 = [&](int64_t cols, const char* what) { return buffer(cols, DType::BF16, what); };
    x = f32(C, "the residual stream");
    n = f32(C, "the normalized activations");
    q = f32(Q, "q");
    k = f32(KV, "k");
    v = f32(KV, "v");
    a = f32(Q, "the attention output");
    gate = f32(I, "the MLP gate");
    up = f32(I, "the MLP up projection");
    act16_cols = std::max({C, Q, I});
    act16 = b16(act16_cols, "the bf16 activations of the 4-bit Linears");
    if (uses_flash(c.head_dim)) {
      q16 = b16(Q, "q for flash attention");
      k16 = b16(KV, "k for flash attention");
      v16 = b16(KV, "v for flash attention");
      a16 = b16(Q, "the flash attention output");
    }
    tokens = buffer(1, DType::I32, "the token ids");
    positions = buffer(1, DType::I32, "the positions");
    targets = buffer(1, DType::I32, "the next-token targets");
    nll = f32(1, "the per-token losses");
    if (lora) lora_u = f32(lora->rank(), "the LoRA branch's x Aᵀ");
    if (c.is_moe()) {
      const int64_t k = c.experts_per_token;
      moe_x = f32(k * C, "the rows routed to the experts");
      moe_y = f32(k * C, "the experts' outputs");
      moe_logits = f32(c.num_experts, "the router logits");
      moe_index = buffer(2 * k, DType::I32, "the experts' gather and combine indices");
      moe_weight = f32(k + 1, "the routing weights");
      if (c.shared_expert_intermediate_size > 0) {
        moe_g = f32(1, "the shared expert's gate logit");
        moe_shared = f32(C, "the shared expert's output");
      }
    }
    capacity = T;
  }

  // The widest SwiGLU of any layer: a dense layer's intermediate_size, a MoE layer's experts and shared expert.
  int64_t mlp_width() const {
    const QwenConfig& c = cfg;
    int64_t w = 0;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      w = std::max(w, c.is_moe_layer(l) ? std::max(c.moe_intermediate_size, c.shared_expert_intermediate_size)
                                        : c.intermediate_size);
    }
    return w;
  }

  void reserve_logits(int64_t rows) {
    if (rows <= logits_rows) return;
    logits.reset();
    logits_rows = 0;
    logits = allocate(static_cast<size_t>(rows * cfg.vocab_size) * sizeof(float), MemoryTag::Logits,
                      "the logits [" + std::to_string(rows) + ", " + std::to_string(cfg.vocab_size) + "] fp32", s());
    logits_rows = rows;
  }

  // y [T, N] fp32 = x [T, K] fp32 · Wᵀ (+ bias) (+ s · (x Aᵀ) Bᵀ with an adapter).
  void linear(const DevLinear& L, const float* x_in, int64_t T, float* y) {
    if (!L.q4) {
      linear_forward_cuda(x_in, T, L.K, L.dense.data, L.dense.dtype, L.N, L.bias.data, L.bias.dtype, y, DType::F32,
                          s());
    } else {
      uint16_t* xb = act16.as<uint16_t>();
      f32_to_bf16_cuda(x_in, T * L.K, xb, s());
      qgemm_int4_cuda(*L.q4, xb, DType::BF16, T, y, s());
      if (L.bias.data != nullptr) add_bias_rows_cuda(y, T, L.N, L.bias.data, L.bias.dtype, s());
    }
    // No-op without an adapter; DoRA scales y and keeps the bias.
    lora_branch_forward_cuda(L.lora, x_in, T, L.K, L.N, lora_u.as<float>(), y, L.bias.data, L.bias.dtype, s());
  }

  void rmsnorm(const float* x_in, int64_t rows, int64_t cols, const DevTensor& w, float* y) {
    rmsnorm_forward_cuda(x_in, rows, cols, w.data, w.dtype, cfg.rms_norm_eps, y, s());
  }

  void attention(const PackedBatch& b, int64_t T) {
    const QwenConfig& c = cfg;
    if (uses_flash(c.head_dim)) {
      f32_to_bf16_cuda(q.as<float>(), T * c.q_dim(), q16.as<uint16_t>(), s());
      f32_to_bf16_cuda(k.as<float>(), T * c.kv_dim(), k16.as<uint16_t>(), s());
      f32_to_bf16_cuda(v.as<float>(), T * c.kv_dim(), v16.as<uint16_t>(), s());
      attention_forward_cuda(q16.get(), k16.get(), v16.get(), b.cu_seqlens.data(), b.num_seqs(), c.num_heads,
                             c.num_kv_heads, c.head_dim, a16.get(), nullptr, DType::BF16, s());
      bf16_to_f32_cuda(a16.as<uint16_t>(), T * c.q_dim(), a.as<float>(), s());
    } else {
      attention_naive_forward_cuda(q.as<float>(), k.as<float>(), v.as<float>(), b.cu_seqlens.data(), b.num_seqs(),
                                   c.num_heads, c.num_kv_heads, c.head_dim, a.as<float>(), nullptr, s());
    }
  }

  // Checks the batch, sizes the buffers for it and uploads its positions (RoPE).
  void begin_batch(const PackedBatch& b) {
    hidden_rows = 0;  // x is about to be overwritten
    const int64_t T = b.num_tokens();
    QWENQ_CHECK(T > 0 && b.positions.size() == b.tokens.size() && b.num_seqs() >= 1 && b.cu_seqlens.back() == T,
                "QwenModelCuda: malformed batch (" << T << " tokens, " << b.cu_seqlens.size() << " offsets)");
    reserve(T);
    // block_forward and the module calls return without waiting: the batch need not outlive the queued copy.
    upload_owned_async(positions.get(), b.positions, s());
  }

  // out [T, C] fp32 = the embeddings of the batch's tokens (after begin_batch).
  void embed_into(const PackedBatch& b, float* out) {
    const int64_t T = b.num_tokens();
    QWENQ_CHECK(embed.data != nullptr, "QwenModelCuda: the input embedding table was left on the host "
                                       "(QwenModelCudaOptions::upload_embedding = false): this model cannot embed");
    upload_owned_async(tokens.get(), b.tokens, s());  // as begin_batch: the batch may go before the copy runs
    // The ids checked on the batch's own copy (no wait for the stream).
    embedding_gather_cuda(embed.data, embed.dtype, cfg.vocab_size, cfg.hidden_size, tokens.as<int32_t>(), T, out, s(),
                          b.tokens.data());
  }

  // Whether the block goes on past Linear group `at` (whose input is `in`): no hook, an empty one, or its answer.
  static bool go_on(const DeviceLinearInputHook* hook, BlockLinear at, const float* in, int64_t T) {
    return hook == nullptr || !*hook || (*hook)(at, in, T);
  }

  // out [T, C] = self_attn(np) = o_proj(attention(q, k, v of np)) for the normalized input np [T, C] (after
  // begin_batch), with the Linears wq, wk, wv (the layer's or replacements) and L's o_proj and q/k norms; the hook
  // sees the attention output before o_proj (false: stop, out unwritten). out may alias np (read only by q, k, v).
  bool attention_sublayer(const DevLayer& L, const DevLinear& wq, const DevLinear& wk, const DevLinear& wv,
                          const PackedBatch& b, const float* np, float* out, const DeviceLinearInputHook* hook) {
    const QwenConfig& c = cfg;
    const int64_t T = b.num_tokens(), D = c.head_dim;
    linear(wq, np, T, q.as<float>());
    linear(wk, np, T, k.as<float>());
    linear(wv, np, T, v.as<float>());
    if (c.qk_norm) {
      rmsnorm(q.as<float>(), T * c.num_heads, D, L.q_norm, q.as<float>());
      rmsnorm(k.as<float>(), T * c.num_kv_heads, D, L.k_norm, k.as<float>());
    }
    rope_forward_cuda(q.as<float>(), T, c.num_heads, D, positions.as<int32_t>(), c.rope, s());
    rope_forward_cuda(k.as<float>(), T, c.num_kv_heads, D, positions.as<int32_t>(), c.rope, s());
    attention(b, T);
    if (!go_on(hook, BlockLinear::O, a.as<float>(), T)) return false;
    linear(L.o, a.as<float>(), T, out);
    return true;
  }

  // out [T, C] = mlp(np) = down(silu(gate(np)) ⊙ up(np)) with the Linears wg, wu (the layer's or replacements) and
  // L's down_proj (after reserve(T)); the hook sees silu(gate)·up before down_proj. out may alias np.
  bool mlp_sublayer(const DevLayer& L, const DevLinear& wg, const DevLinear& wu, const float* np, int64_t T, float* out,
                    const DeviceLinearInputHook* hook) {
    const int64_t I = cfg.intermediate_size;
    linear(wg, np, T, gate.as<float>());
    linear(wu, np, T, up.as<float>());
    swiglu_forward_cuda(gate.as<float>(), up.as<float>(), T * I, gate.as<float>(), s());
    if (!go_on(hook, BlockLinear::Down, gate.as<float>(), T)) return false;
    linear(L.down, gate.as<float>(), T, out);
    return true;
  }

  // out [T, C] = the mixture-of-experts MLP of np [T, C] (trainer/moe_block.h's forward, after begin_batch); out may
  // alias np. The router logits (and the shared expert's gate logit) are computed here and copied to the host, where
  // the CPU's own routing turns them into index arrays (moe_dispatch: the same experts for the same logits); they go
  // back up, the routed rows are gathered into one [T·k, C] buffer grouped
  // by expert, each expert runs its three Linears on its slice, the shared expert on every token, and moe_combine
  // adds each token's weighted rows in the CPU's order. One host round trip a layer (the launchers check the indices
  // on the host's copy); each expert's Linears are their own launches (no grouped GEMM yet).
  // gate_up (may be null): replacement gate/up weights for this call (mlp_forward's layout: expert e's at 2e and
  // 2e + 1, the shared expert's after the routed ones; a null entry keeps the stored weight).
  void moe_mlp(const DevMoe& M, const float* np, int64_t T, float* out, const DeviceExpertInputHook* eh = nullptr,
               const void* const* gate_up = nullptr, DType wdtype = DType::F32) {
    const bool see = eh != nullptr && *eh;
    const QwenConfig& c = cfg;
    const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token, R = T * k;
    const bool shared = M.shared[0].N > 0;
    linear(M.router, np, T, moe_logits.as<float>());
    std::vector<float> logits(static_cast<size_t>(T * E)), g(shared ? static_cast<size_t>(T) : 0);
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(logits.data(), moe_logits.get(), logits.size() * sizeof(float),
                                     cudaMemcpyDeviceToHost, s()));
    if (shared) {
      linear(M.shared_gate, np, T, moe_g.as<float>());
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(g.data(), moe_g.get(), g.size() * sizeof(float), cudaMemcpyDeviceToHost, s()));
    }
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s()));
    MoeDispatch d = moe_dispatch(c, logits.data(), shared ? g.data() : nullptr, T);
    const std::vector<int64_t> start = std::move(d.start);
    // One upload each: moe_index = gather then combine, moe_weight = the weights then σ(g). d keeps the host copies of
    // the indices, which the gather and combine launchers check instead of downloading them (no wait).
    std::vector<int32_t> idx = d.gather;
    idx.insert(idx.end(), d.combine.begin(), d.combine.end());
    std::vector<float> w = std::move(d.weight);
    w.insert(w.end(), d.shared_gate.begin(), d.shared_gate.end());
    upload_owned_async(moe_index.get(), std::move(idx), s());
    upload_owned_async(moe_weight.get(), std::move(w), s());
    embedding_gather_cuda(np, DType::F32, T, C, moe_index.as<int32_t>(), R, moe_x.as<float>(), s(), d.gather.data());
    const int64_t Im = c.moe_intermediate_size;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = start[e], rows = start[e + 1] - r0;
      if (rows == 0) continue;
      const std::array<DevLinear, 3>& X = M.experts[static_cast<size_t>(e)];
      const int32_t* tok = d.gather.data() + r0;  // the batch row of each of its rows
      if (see) (*eh)(BlockLinear::GateUp, e, moe_x.as<float>() + r0 * C, rows, tok);
      linear(replaced(X[0], gate_up, 2 * e, wdtype), moe_x.as<float>() + r0 * C, rows, gate.as<float>());
      linear(replaced(X[1], gate_up, 2 * e + 1, wdtype), moe_x.as<float>() + r0 * C, rows, up.as<float>());
      swiglu_forward_cuda(gate.as<float>(), up.as<float>(), rows * Im, gate.as<float>(), s());
      if (see) (*eh)(BlockLinear::Down, e, gate.as<float>(), rows, tok);
      linear(X[2], gate.as<float>(), rows, moe_y.as<float>() + r0 * C);
    }
    if (shared) {
      if (see) (*eh)(BlockLinear::GateUp, -1, np, T, nullptr);
      linear(replaced(M.shared[0], gate_up, 2 * E, wdtype), np, T, gate.as<float>());
      linear(replaced(M.shared[1], gate_up, 2 * E + 1, wdtype), np, T, up.as<float>());
      swiglu_forward_cuda(gate.as<float>(), up.as<float>(), T * M.shared[0].N, gate.as<float>(), s());
      if (see) (*eh)(BlockLinear::Down, -1, gate.as<float>(), T, nullptr);
      linear(M.shared[2], gate.as<float>(), T, moe_shared.as<float>());
    }
    moe_combine_cuda(moe_y.as<float>(), R, C, moe_index.as<int32_t>() + R, moe_weight.as<float>(), T, k,
                     shared ? moe_shared.as<float>() : nullptr, shared ? moe_weight.as<float>() + R : nullptr, out,
                     s(), d.combine.data());
  }

  // One decoder block on xp [T, C] in place (after begin_batch). `hook` (null or empty: none) sees each Linear
  // group's input before the group runs; when it returns false the block stops there and this returns false.
  bool block(const DevLayer& L, const PackedBatch& b, float* xp, const DeviceLinearInputHook* hook,
             const DeviceExpertInputHook* expert_hook = nullptr) {
    const int64_t T = b.num_tokens(), C = cfg.hidden_size;
    const size_t l = static_cast<size_t>(&L - layers.data());
    check_kept(static_cast<int64_t>(l));  // before anything is queued
    float* np = n.as<float>();
    rmsnorm(xp, T, C, L.input_norm, np);
    if (!go_on(hook, BlockLinear::QKV, np, T)) return false;
    if (!attention_sublayer(L, L.q, L.k, L.v, b, np, np, hook)) return false;
    add_inplace_cuda(xp, np, T * C, s());
    rmsnorm(xp, T, C, L.post_norm, np);
    if (!go_on(hook, BlockLinear::GateUp, np, T)) return false;  // a MoE layer's: the router's and experts' input
    if (cfg.is_moe_layer(static_cast<int64_t>(l))) {
      moe_mlp(*moe[l], np, T, np, expert_hook);  // the dense hook sees no Down: each expert's goes to expert_hook
    } else if (!mlp_sublayer(L, L.gate, L.up, np, T, np, hook)) {
      return false;
    }
    add_inplace_cuda(xp, np, T * C, s());
    return true;
  }

  // The final hidden states (after model.norm) of the batch in x [T, C].
  void forward_hidden(const PackedBatch& b) {
    begin_batch(b);
    float* xp = x.as<float>();
    embed_into(b, xp);
    for (const DevLayer& L : layers) block(L, b, xp, nullptr);
    rmsnorm(xp, b.num_tokens(), cfg.hidden_size, final_norm, xp);
  }

  // The Linear `index` of group `which` in `layer` (QwenModel::linear_weight's numbering).
  DevLinear& linear_at(int64_t layer, BlockLinear which, int index) {
    QWENQ_CHECK(layer >= 0 && layer < static_cast<int64_t>(layers.size()),
                "QwenModelCuda: layer " << layer << " of " << layers.size());
    check_kept(layer);
    // A MoE layer has no dense MLP Linear: its experts' are reached through block_forward's expert hook,
    // mlp_forward's replacements and set_expert_weight.
    QWENQ_CHECK(!cfg.is_moe_layer(layer) || which == BlockLinear::QKV || which == BlockLinear::O,
                "QwenModelCuda: layer " << layer << " is a mixture-of-experts layer; its MLP's Linears are its "
                                        << "experts' (block_forward's expert hook, mlp_forward, set_expert_weight)");
    DevLayer& L = layers[static_cast<size_t>(layer)];
    DevLinear* d = nullptr;
    switch (which) {
      case BlockLinear::QKV: d = index == 0 ? &L.q : index == 1 ? &L.k : index == 2 ? &L.v : nullptr; break;
      case BlockLinear::O: d = index == 0 ? &L.o : nullptr; break;
      case BlockLinear::GateUp: d = index == 0 ? &L.gate : index == 1 ? &L.up : nullptr; break;
      case BlockLinear::Down: d = index == 0 ? &L.down : nullptr; break;
    }
    QWENQ_CHECK(d != nullptr, "QwenModelCuda: layer " << layer << " has no Linear " << index << " in that group");
    return *d;
  }

  // A DoRA adapter's gains m / ‖W + s·B A‖ were computed from the weights at attach: replacing a weight under it
  // would leave them stale (GPTQ's replacements never run with an adapter attached).
  void check_no_gains(const char* fn) const {
    QWENQ_CHECK(!lora || !lora->has_gains(), "QwenModelCuda::" << fn << ": a DoRA adapter is attached (its gains are "
                                                               << "those of the current weights); detach it first");
  }

  const DevLayer& layer_at(int64_t layer, const char* fn) const {
    QWENQ_CHECK(layer >= 0 && layer < static_cast<int64_t>(layers.size()),
                "QwenModelCuda::" << fn << ": layer " << layer << " outside [0, " << layers.size() << ")");
    check_kept(layer);
    return layers[static_cast<size_t>(layer)];
  }
  void check_kept(int64_t layer) const {
    QWENQ_CHECK(!released[static_cast<size_t>(layer)],
                "QwenModelCuda: the weights of layer " << layer << " were released (release_layer)");
  }

  // d, or d with weight W[i] (in dtype) when the replacement array W (may be null) has a non-null entry i: the
  // per-call replacements of the module API below (attention_forward, mlp_forward, a MoE layer's experts in moe_mlp).
  static DevLinear replaced(const DevLinear& d, const void* const* W, int64_t i, DType dtype) {
    return W != nullptr && W[i] != nullptr ? with_weight(d, W[i], dtype) : d;
  }

  // d's shape and bias with the dense weight W [N, K] (device, not owned; F32 or BF16) in place of d's weight: the
  // replacement of one module call, which leaves d itself untouched.
  static DevLinear with_weight(const DevLinear& d, const void* W, DType dtype) {
    QWENQ_CHECK(dtype == DType::F32 || dtype == DType::BF16,
                "QwenModelCuda: a replacement weight is fp32 or bf16, not " << dtype_name(dtype));
    DevLinear r;
    r.N = d.N;
    r.K = d.K;
    r.dense = {W, dtype};
    r.bias = d.bias;
    return r;
  }

  void reserve_rows(int64_t T, const char* fn) {
    hidden_rows = 0;  // the module calls use the batch buffers
    QWENQ_CHECK(T > 0, "QwenModelCuda::" << fn << ": " << T << " tokens");
    reserve(T);
  }

  // Makes `mem` (fp32 [N, K], already filled) the weight of d, Linear of layer l. The old weight is either in
  // the layer's arena (its first replacement: the arena is freed once no Linear is left in it) or an allocation
  // of an earlier replacement, freed here (stream-ordered, after the work already queued). Linear weights are
  // never shared (the upload map shares only the embedding with a tied lm_head).
  void replace_dense(size_t l, DevLinear& d, DeviceAllocation mem, DType dtype) {
    const DevTensor fresh{mem.get(), dtype};
    const int64_t fresh_bytes = static_cast<int64_t>(mem.bytes());
    const void* old = d.q4 ? static_cast<const void*>(d.q4->qweight) : d.dense.data;
    bool placed = false;
    if (stores[l].holds_linears && in_arena(l, old)) {
      --stores[l].linears_inside;
    } else {
      for (DeviceAllocation& o : owned) {
        if (o.get() != old) continue;
        weight_bytes -= static_cast<int64_t>(o.bytes());
        o = std::move(mem);  // frees the old weight
        placed = true;
        break;
      }
    }
    if (!placed) owned.push_back(std::move(mem));
    weight_bytes += fresh_bytes;
    d.q4.reset();
    d.dense = fresh;
    if (stores[l].holds_linears && stores[l].linears_inside == 0) compact_layer(l);
  }

  // logits [rows, V] fp32 of the hidden rows [r0, r0 + rows) of x.
  void lm_head_rows(int64_t r0, int64_t rows, float* out) {
    linear_forward_cuda(x.as<float>() + r0 * cfg.hidden_size, rows, cfg.hidden_size, lm_head.data, lm_head.dtype,
                        cfg.vocab_size, nullptr, DType::F32, out, DType::F32, s());
  }
};

QwenModelCuda::QwenModelCuda(const QwenModel& model, const QwenModelCudaOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.cfg = model.config();
  const QwenConfig& c = m.cfg;
  const std::string shape_refusal = gpu_config_refusal(c, GpuUse::Forward);  // trainer/gpu_support.h
  QWENQ_CHECK(shape_refusal.empty(), "QwenModelCuda: " << shape_refusal);
  const QwenWeights& w = model.weights();
  require_dense_tables(w, "the GPU forward (--device cuda)");
  if (options.upload_embedding || w.embed.data == w.lm_head.data)  // a tied table is the lm_head as well
    m.embed = m.upload(w.embed, "model.embed_tokens.weight");
  m.final_norm = m.upload(w.final_norm, "model.norm.weight");
  m.lm_head = m.upload(w.lm_head, "lm_head.weight");  // the embedding's copy when tied
  m.layers.resize(w.layers.size());
  m.stores.resize(w.layers.size());
  m.moe.resize(w.layers.size());
  m.released.assign(w.layers.size(), false);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    m.upload_layer(l, w.layers[l]);
    if (c.is_moe_layer(static_cast<int64_t>(l))) m.upload_moe(l, w.layers[l].moe);
  }
  // The copies read the host data of the memory map, which lives with the model; waiting here orders them before
  // any other stream reads the weights and surfaces any upload error in the constructor.
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.s()));
}

QwenModelCuda::~QwenModelCuda() = default;

const QwenConfig& QwenModelCuda::config() const { return impl_->cfg; }

int64_t QwenModelCuda::weight_bytes() const { return impl_->weight_bytes; }

const char* QwenModelCuda::attention_kernel() const {
  return uses_flash(impl_->cfg.head_dim) ? "flash (bf16 q/k/v)" : "naive (fp32)";
}

const QwenDeviceLayer& QwenModelCuda::device_layer(int64_t l) const {
  QWENQ_CHECK(l >= 0 && l < static_cast<int64_t>(impl_->layers.size()),
              "QwenModelCuda: layer " << l << " of " << impl_->layers.size());
  impl_->check_kept(l);
  return impl_->layers[static_cast<size_t>(l)];
}
const QwenDeviceMoe& QwenModelCuda::device_moe(int64_t l) const {
  QWENQ_CHECK(impl_->cfg.is_moe_layer(l), "QwenModelCuda: layer " << l << " is not a mixture-of-experts layer");
  QWENQ_CHECK(static_cast<size_t>(l) < impl_->moe.size() && impl_->moe[static_cast<size_t>(l)],
              "QwenModelCuda: the experts of layer " << l << " were released");
  return *impl_->moe[static_cast<size_t>(l)];
}
QwenDeviceTensor QwenModelCuda::device_embed() const { return impl_->embed; }
QwenDeviceTensor QwenModelCuda::device_final_norm() const { return impl_->final_norm; }
QwenDeviceTensor QwenModelCuda::device_lm_head() const { return impl_->lm_head; }

std::vector<float> QwenModelCuda::forward_logits(const PackedBatch& b) {
  Impl& m = *impl_;
  m.forward_hidden(b);
  const int64_t T = b.num_tokens(), V = m.cfg.vocab_size;
  // The whole [T, V] at once, as QwenModel::forward_logits (tests, generation): a temporary buffer.
  DeviceAllocation all = allocate(static_cast<size_t>(T * V) * sizeof(float), MemoryTag::Logits,
                                  "the logits [" + std::to_string(T) + ", " + std::to_string(V) + "] fp32", m.s());
  m.lm_head_rows(0, T, all.as<float>());
  std::vector<float> out(static_cast<size_t>(T * V));
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(out.data(), all.get(), out.size() * sizeof(float), cudaMemcpyDeviceToHost, m.s()));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.s()));
  return out;
}

int64_t QwenModelCuda::next_token_nll(const PackedBatch& b, std::vector<float>* nll) {
  forward_hidden(b);
  const std::vector<int32_t> targets = next_token_targets(b);
  nll->assign(targets.size(), 0.f);
  return hidden_nll(targets.data(), nll->data());
}

void QwenModelCuda::forward_hidden(const PackedBatch& b) {
  Impl& m = *impl_;
  m.forward_hidden(b);
  m.hidden_rows = b.num_tokens();
}

void QwenModelCuda::logits_rows(int64_t r0, int64_t rows, float* out) {
  Impl& m = *impl_;
  QWENQ_CHECK(r0 >= 0 && rows >= 0 && r0 + rows <= m.hidden_rows,
              "QwenModelCuda::logits_rows: rows [" << r0 << ", " << r0 + rows << ") of " << m.hidden_rows
                                                   << " hidden states (forward_hidden runs the batch first)");
  const int64_t V = m.cfg.vocab_size;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(rows, kLogitsChunkFloats / V));
  m.reserve_logits(chunk);
  for (int64_t i = 0; i < rows; i += chunk) {
    const int64_t n = std::min(chunk, rows - i);
    m.lm_head_rows(r0 + i, n, m.logits.as<float>());
    // Stream-ordered: the next chunk's lm_head writes the buffer only after this copy has read it.
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(out + i * V, m.logits.get(), static_cast<size_t>(n * V) * sizeof(float),
                                     cudaMemcpyDeviceToHost, m.s()));
  }
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.s()));
}

const float* QwenModelCuda::logits_device(int64_t r0, int64_t rows) {
  Impl& m = *impl_;
  QWENQ_CHECK(r0 >= 0 && rows > 0 && r0 + rows <= m.hidden_rows,
              "QwenModelCuda::logits_device: rows [" << r0 << ", " << r0 + rows << ") of " << m.hidden_rows
                                                     << " hidden states (forward_hidden runs the batch first)");
  m.reserve_logits(rows);
  m.lm_head_rows(r0, rows, m.logits.as<float>());
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.s()));
  return m.logits.as<float>();
}

int64_t QwenModelCuda::hidden_nll(const int32_t* targets, float* nll) {
  Impl& m = *impl_;
  const int64_t T = m.hidden_rows, V = m.cfg.vocab_size;
  QWENQ_CHECK(T > 0, "QwenModelCuda::hidden_nll: no hidden states (forward_hidden runs the batch first)");
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(m.targets.get(), targets, T * sizeof(int32_t), cudaMemcpyHostToDevice, m.s()));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(T, kLogitsChunkFloats / V));
  m.reserve_logits(chunk);
  int64_t counted = 0;
  for (int64_t r0 = 0; r0 < T; r0 += chunk) {
    const int64_t rows = std::min(chunk, T - r0);
    m.lm_head_rows(r0, rows, m.logits.as<float>());
    counted += cross_entropy_forward_cuda(m.logits.as<float>(), rows, V, m.targets.as<int32_t>() + r0,
                                          m.nll.as<float>() + r0, m.s());
  }
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(nll, m.nll.get(), T * sizeof(float), cudaMemcpyDeviceToHost, m.s()));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.s()));
  return counted;
}

CudaStream QwenModelCuda::stream() const { return impl_->s(); }

void QwenModelCuda::embed_batch(const PackedBatch& b, float* x) {
  QWENQ_CHECK(x != nullptr, "QwenModelCuda::embed_batch: null output");
  impl_->begin_batch(b);
  impl_->embed_into(b, x);
}

void QwenModelCuda::block_forward(int64_t layer, const PackedBatch& b, float* x, const DeviceLinearInputHook& hook,
                                  const DeviceExpertInputHook& expert_hook) {
  Impl& m = *impl_;
  const DevLayer& L = m.layer_at(layer, "block_forward");
  QWENQ_CHECK(x != nullptr, "QwenModelCuda::block_forward: null residual stream");
  m.begin_batch(b);
  m.block(L, b, x, &hook, &expert_hook);
}

void QwenModelCuda::attention_forward(int64_t layer, const PackedBatch& b, const float* n, float* out,
                                      const void* const* qkv, DType wdtype) {
  Impl& m = *impl_;
  const DevLayer& L = m.layer_at(layer, "attention_forward");
  QWENQ_CHECK(n != nullptr && out != nullptr, "QwenModelCuda::attention_forward: null input or output");
  m.begin_batch(b);
  m.attention_sublayer(L, Impl::replaced(L.q, qkv, 0, wdtype), Impl::replaced(L.k, qkv, 1, wdtype),
                       Impl::replaced(L.v, qkv, 2, wdtype), b, n, out, nullptr);
}

void QwenModelCuda::mlp_forward(int64_t layer, const float* n, int64_t T, float* out, const void* const* gate_up,
                                DType wdtype) {
  Impl& m = *impl_;
  const DevLayer& L = m.layer_at(layer, "mlp_forward");
  QWENQ_CHECK(n != nullptr && out != nullptr, "QwenModelCuda::mlp_forward: null input or output");
  m.reserve_rows(T, "mlp_forward");
  if (m.cfg.is_moe_layer(layer)) {  // layer_at refused a released layer: its experts are there
    m.moe_mlp(*m.moe[static_cast<size_t>(layer)], n, T, out, nullptr, gate_up, wdtype);
    return;
  }
  m.mlp_sublayer(L, Impl::replaced(L.gate, gate_up, 0, wdtype), Impl::replaced(L.up, gate_up, 1, wdtype), n, T, out,
                 nullptr);
}

void QwenModelCuda::moe_forward(int64_t layer, const float* n, int64_t T, float* out, CudaStream caller) const {
  Impl& m = *impl_;
  m.layer_at(layer, "moe_forward");
  QWENQ_CHECK(m.cfg.is_moe_layer(layer),
              "QwenModelCuda::moe_forward: layer " << layer << " is not a mixture-of-experts layer");
  QWENQ_CHECK(m.moe[static_cast<size_t>(layer)],
              "QwenModelCuda::moe_forward: the experts of layer " << layer << " were released");
  QWENQ_CHECK(n != nullptr && out != nullptr, "QwenModelCuda::moe_forward: null input or output");
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(caller));  // n is complete
  m.reserve_rows(T, "moe_forward");
  m.moe_mlp(*m.moe[static_cast<size_t>(layer)], n, T, out);
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.s()));  // out is complete for any stream
}

void QwenModelCuda::block_linear_forward(int64_t layer, BlockLinear which, int index, const float* x, int64_t T,
                                         float* out, const void* W, DType wdtype) {
  Impl& m = *impl_;
  const DevLinear& d = m.linear_at(layer, which, index);
  QWENQ_CHECK(x != nullptr && out != nullptr && x != out,
              "QwenModelCuda::block_linear_forward: null or aliased input and output");
  m.reserve_rows(T, "block_linear_forward");
  if (W == nullptr) {
    m.linear(d, x, T, out);
  } else {
    m.linear(Impl::with_weight(d, W, wdtype), x, T, out);
  }
}

namespace {

// A replacement weight W [N, K] (host fp32) in `dtype` (F32 or BF16, rounded to nearest even) in a fresh device
// allocation named `what`, uploaded and waited for.
DeviceAllocation upload_replacement(const float* W, int64_t N, int64_t K, DType dtype, const std::string& what,
                                    CudaStream s) {
  QWENQ_CHECK(dtype == DType::F32 || dtype == DType::BF16,
              what << ": a replaced weight is fp32 or bf16, not " << dtype_name(dtype));
  const size_t n = static_cast<size_t>(N * K);
  std::vector<uint16_t> half;
  const void* src = W;
  if (dtype == DType::BF16) {  // by every thread: a 7B model's GPTQ rounds 6.5G values this way
    half.resize(n);
    parallel_for(static_cast<int64_t>(n), int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) half[static_cast<size_t>(i)] = f32_to_bf16(W[i]);
    });
    src = half.data();
  }
  const size_t bytes = n * dtype_size(dtype);
  DeviceAllocation mem = allocate(bytes, MemoryTag::Weights, what + " " + dtype_name(dtype), s);
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(mem.get(), src, bytes, cudaMemcpyHostToDevice, s));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(s));  // `half` and the caller's W may go
  return mem;
}

}  // namespace

void QwenModelCuda::set_linear_weight(int64_t layer, BlockLinear which, int index, const float* W, int64_t N,
                                      int64_t K, DType dtype) {
  Impl& m = *impl_;
  DevLinear& d = m.linear_at(layer, which, index);
  m.check_no_gains("set_linear_weight");
  QWENQ_CHECK(W != nullptr && N == d.N && K == d.K, "QwenModelCuda::set_linear_weight: layer "
                                                        << layer << " Linear " << index << " is [" << d.N << ", "
                                                        << d.K << "], got [" << N << ", " << K << "]");
  DeviceAllocation mem = upload_replacement(W, N, K, dtype, "the replaced weight of layer " + std::to_string(layer) +
                                                                " [" + std::to_string(N) + ", " + std::to_string(K) + "]",
                                            m.s());
  m.replace_dense(static_cast<size_t>(layer), d, std::move(mem), dtype);
}

void QwenModelCuda::set_expert_weight(int64_t layer, int64_t expert, int which, const float* W, int64_t N,
                                      int64_t K, DType dtype) {
  Impl& m = *impl_;
  const QwenConfig& c = m.cfg;
  QWENQ_CHECK(layer >= 0 && layer < static_cast<int64_t>(m.layers.size()),
              "QwenModelCuda::set_expert_weight: layer " << layer << " outside [0, " << m.layers.size() << ")");
  m.check_kept(layer);
  QWENQ_CHECK(c.is_moe_layer(layer) && static_cast<size_t>(layer) < m.moe.size() && m.moe[static_cast<size_t>(layer)],
              "QwenModelCuda::set_expert_weight: layer " << layer << " has no experts on the device");
  m.check_no_gains("set_expert_weight");
  Impl::DevMoe& M = *m.moe[static_cast<size_t>(layer)];
  QWENQ_CHECK(expert >= -1 && expert < c.num_experts && which >= 0 && which < 3 &&
                  (expert >= 0 || M.shared[0].N > 0),
              "QwenModelCuda::set_expert_weight: layer " << layer << " has no Linear " << which << " of expert "
                                                         << expert);
  DevLinear& d = expert < 0 ? M.shared[static_cast<size_t>(which)]
                            : M.experts[static_cast<size_t>(expert)][static_cast<size_t>(which)];
  QWENQ_CHECK(W != nullptr && N == d.N && K == d.K, "QwenModelCuda::set_expert_weight: layer "
                                                        << layer << " expert " << expert << " Linear " << which
                                                        << " is [" << d.N << ", " << d.K << "], got [" << N << ", "
                                                        << K << "]");
  DeviceAllocation mem = upload_replacement(W, N, K, dtype,
                                            "the replaced weight of layer " + std::to_string(layer) + " expert " +
                                                std::to_string(expert) + " [" + std::to_string(N) + ", " +
                                                std::to_string(K) + "]",
                                            m.s());
  m.weight_bytes += static_cast<int64_t>(mem.bytes());
  d.q4.reset();
  const void* old = d.dense.data;
  d.dense = DevTensor{mem.get(), dtype};
  for (DeviceAllocation& r : M.replaced) {  // replaced before: that copy goes (the arena stays until release)
    if (r.get() != old) continue;
    m.weight_bytes -= static_cast<int64_t>(r.bytes());
    r = std::move(mem);
    return;
  }
  M.replaced.push_back(std::move(mem));
}

void QwenModelCuda::release_layer(int64_t layer) {
  Impl& m = *impl_;
  QWENQ_CHECK(layer >= 0 && layer < static_cast<int64_t>(m.layers.size()),
              "QwenModelCuda::release_layer: layer " << layer << " outside [0, " << m.layers.size() << ")");
  const size_t l = static_cast<size_t>(layer);
  if (m.released[l]) return;
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.s()));  // no queued work reads them any more
  DevLayer& L = m.layers[l];
  for (const DevLinear* d : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {  // set_linear_weight's copies
    for (auto it = m.owned.begin(); it != m.owned.end(); ++it) {
      if (d->dense.data == nullptr || it->get() != d->dense.data) continue;
      m.weight_bytes -= static_cast<int64_t>(it->bytes());
      m.owned.erase(it);
      break;
    }
  }
  m.weight_bytes -= static_cast<int64_t>(m.stores[l].arena.bytes());
  m.stores[l].arena.reset();
  if (l < m.moe.size() && m.moe[l]) {
    m.weight_bytes -= static_cast<int64_t>(m.moe[l]->arena.bytes());
    for (const DeviceAllocation& r : m.moe[l]->replaced) m.weight_bytes -= static_cast<int64_t>(r.bytes());
    m.moe[l].reset();
  }
  L = DevLayer{};
  m.released[l] = true;
}

void QwenModelCuda::attach_adapter(const LoraAdapter& adapter, const std::string& source) {
  Impl& m = *impl_;
  for (size_t l = 0; l < m.layers.size(); ++l) m.check_kept(static_cast<int64_t>(l));
  auto fresh = std::make_unique<LoraInferenceCuda>(lora_inference_layout(adapter, m.cfg, source), source, m.s());
  fresh->attach(m.layers, m.moe_views());  // checks every Linear's shape before it changes any
  // Frees the previous adapter, if any: back to this stream's cache, so work of it still queued finishes first.
  m.lora = std::move(fresh);
  ++m.adapter_generation;
  m.capacity = 0;             // the next batch reallocates its buffers with the branch's scratch
  m.hidden_rows = 0;          // hidden states of the model without this adapter
}

void QwenModelCuda::detach_adapter() {
  Impl& m = *impl_;
  ++m.adapter_generation;
  for (DevLayer& L : m.layers) {
    for (DevLinear* d : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) d->lora = LoraDeviceBranch{};
  }
  for (QwenDeviceMoe* M : m.moe_views()) {
    if (M == nullptr) continue;
    for (auto& e : M->experts) {
      for (DevLinear& d : e) d.lora = LoraDeviceBranch{};
    }
    for (DevLinear& d : M->shared) d.lora = LoraDeviceBranch{};
  }
  m.lora.reset();
  m.hidden_rows = 0;
}

const LoraInferenceCuda* QwenModelCuda::adapter() const { return impl_->lora.get(); }
uint64_t QwenModelCuda::adapter_generation() const { return impl_->adapter_generation; }

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
