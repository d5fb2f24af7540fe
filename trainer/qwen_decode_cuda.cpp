// QwenDecodeCuda and generate_cuda (trainer/qwen_decode_cuda.h): prefill and step over the device weights of a
// QwenModelCuda, op by op through the launchers of kernels/, on a stream of its own. The order of the ops is
// QwenModel::forward_step's (qwen_model.cpp).
#ifdef QWENQ_HAVE_CUDA

#include "trainer/qwen_decode_cuda.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "core/env_switch.h"
#include "core/error.h"
#include "kernels/act.h"
#include "kernels/attention_decode.h"
#include "kernels/attention_naive.h"
#include "kernels/blas_lt.h"
#include "kernels/convert.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_allocator.h"
#include "kernels/flash_attention.h"
#include "kernels/norm.h"
#include "kernels/pinned_host.h"
#include "kernels/qgemm.h"
#include "kernels/rope.h"
#include "trainer/gpu_support.h"

namespace qwenq {

namespace {

// Through the caching allocator (kernels/device_allocator.h): its out-of-memory message names the buffer, the
// device's free/total memory and the live bytes per kind.
DeviceAllocation allocate(size_t bytes, MemoryTag tag, const std::string& what, CudaStream stream) {
  return cuda_device_allocator().allocate(bytes, stream, tag, "QwenDecodeCuda: " + what);
}

}  // namespace

struct QwenDecodeCuda::Impl {
  OwnedCudaStream stream;  // first member: destroyed after every buffer below
  const QwenModelCuda& model;
  QwenConfig cfg;
  int64_t capacity = 0, length = 0;
  KvCacheDType kv = KvCacheDType::F32;
  bool bf16_act = false;  // Q4 products of <= 64 rows on bf16 activations (the tensor-core decode kernel)
  DeviceAllocation k_cache, v_cache;  // [layers, capacity, Hkv, D] fp32, or bf16 bits (kv == BF16)
  // Activations for up to `rows` tokens (a prompt; a step uses row 0).
  int64_t rows = 0;
  DeviceAllocation x, n, q, a, gate, up, act16;  // fp32, act16 bf16 [rows, max(C, Q, I)]
  DeviceAllocation q16, k16, v16, a16;           // bf16, flash attention in the prefill (k16, v16: F32 cache only)
  DeviceAllocation kf, vf;                       // fp32 [rows, KV], BF16 cache only: k, v before rounding; the
                                                 // naive prefill's copies widened from the cache
  DeviceAllocation ids;                          // int32 [rows + 2]: tokens; a step's {token, position, length}
  PinnedHost<int32_t> step_ids;                  // a step's {token, position, length} on the host, pinned
  DeviceAllocation positions;                    // int32 [rows]
  DeviceAllocation lora_u;                       // fp32 [rows, lora_rank]: the adapter branch's x Aᵀ
  int64_t lora_rank = 0;                         // r that lora_u was sized for (0: none)
  DeviceAllocation logits;                       // fp32 [V]
  // QWENQ_DECODE_GRAPH=1 (opt-in until it has run on a GPU) and no mixture-of-experts layer: a step is one launch of
  // a CUDA graph captured from the first step after an eager one (the k/v rows stored at the position the device holds, the decode
  // attention sized for the whole cache), re-captured when the buffers or the attached adapter change. A capture
  // the runtime refuses falls back, once and with one line, to the launches one by one.
  bool graph_on = false, graph_failed = false;
  cudaGraphExec_t graph = nullptr;
  uint64_t graph_adapter = 0;  // the model's adapter_generation when the graph was captured
  int64_t captures = 0;        // graphs captured so far
  // A capture waits for one step launched eagerly (a prefill, or a one-token prompt's first step): what a process
  // sets up on its first use (cuBLASLt's kernels for these shapes, lazily loaded modules, attributes, occupancy
  // queries) then happens outside the capture, where some of it could invalidate it.
  bool ran_eager = false;

  Impl(const QwenModelCuda& m, int64_t cap, KvCacheDType kv_dtype, bool bf16_activations)
      : model(m), cfg(m.config()), capacity(cap), kv(kv_dtype), bf16_act(bf16_activations) {
    graph_on = env_switch("QWENQ_DECODE_GRAPH") == 1 && cfg.num_moe_layers() == 0;
  }
  ~Impl() {
    // A step that threw may have left work queued that reads step_ids or the buffers: wait for it before they go
    // (errors are not reported from a destructor).
    cudaStreamSynchronize(stream.get());
    drop_graph();
  }

  void drop_graph() {
    if (graph) cudaGraphExecDestroy(graph);
    graph = nullptr;
  }

  CudaStream s() const { return stream.get(); }
  bool bf16_cache() const { return kv == KvCacheDType::BF16; }
  int64_t layer_stride() const { return capacity * cfg.kv_dim(); }
  float* k_layer(int64_t l) const { return k_cache.as<float>() + l * layer_stride(); }  // F32 cache
  float* v_layer(int64_t l) const { return v_cache.as<float>() + l * layer_stride(); }
  uint16_t* k_layer16(int64_t l) const { return k_cache.as<uint16_t>() + l * layer_stride(); }  // BF16 cache
  uint16_t* v_layer16(int64_t l) const { return v_cache.as<uint16_t>() + l * layer_stride(); }
  bool flash() const { return flash_attention_compiled(cfg.head_dim); }

  // r of the model's attached adapter (trainer/lora_inference_cuda.h), 0 without one.
  int64_t adapter_rank() const { return model.adapter() ? model.adapter()->rank() : 0; }

  void reserve(int64_t T) {
    const int64_t r = adapter_rank();
    if (T <= rows && r <= lora_rank) return;
    T = std::max(T, rows);  // an adapter attached since the last call: same rows, a scratch for the branch
    drop_graph();           // it holds the buffers' addresses
    for (DeviceAllocation* b :
         {&x, &n, &q, &a, &gate, &up, &act16, &q16, &k16, &v16, &a16, &kf, &vf, &ids, &positions, &lora_u})
      *b = DeviceAllocation();
    rows = 0;
    lora_rank = 0;
    const QwenConfig& c = cfg;
    const int64_t C = c.hidden_size, Q = c.q_dim(), KV = c.kv_dim(), I = c.intermediate_size;
    const auto buffer = [&](int64_t n_rows, int64_t cols, DType type, const char* what) {
      return allocate(static_cast<size_t>(n_rows * cols) * dtype_size(type), MemoryTag::Activations,
                      std::string(what) + " [" + std::to_string(n_rows) + ", " + std::to_string(cols) + "] " +
                          dtype_name(type),
                      s());
    };
    x = buffer(T, C, DType::F32, "the residual stream");
    n = buffer(T, C, DType::F32, "the normalized activations");
    q = buffer(T, Q, DType::F32, "q");
    a = buffer(T, Q, DType::F32, "the attention output");
    gate = buffer(T, I, DType::F32, "the MLP gate");
    up = buffer(T, I, DType::F32, "the MLP up projection");
    if (T > kQgemmDecodeMaxM || bf16_act) act16 = buffer(T, std::max({C, Q, I}), DType::BF16, "the bf16 activations");
    if (flash() && T > 1) {
      q16 = buffer(T, Q, DType::BF16, "q for flash attention");
      if (!bf16_cache()) {  // a bf16 cache is read by flash attention in place
        k16 = buffer(T, KV, DType::BF16, "k for flash attention");
        v16 = buffer(T, KV, DType::BF16, "v for flash attention");
      }
      a16 = buffer(T, Q, DType::BF16, "the flash attention output");
    }
    if (bf16_cache() || graph_on) {  // graph steps store the rows at the device's position (store_row_cuda)
      const int64_t kv_rows = bf16_cache() ? T : 1;  // an F32 cache takes the prefill's rows directly
      kf = buffer(kv_rows, KV, DType::F32, "k before its store into the cache");
      vf = buffer(kv_rows, KV, DType::F32, "v before its store into the cache");
    }
    ids = buffer(T + 2, 1, DType::I32, "the token ids");
    positions = buffer(T, 1, DType::I32, "the positions");
    if (r > 0) lora_u = buffer(T, r, DType::F32, "the LoRA branch's x Aᵀ");
    rows = T;
    lora_rank = r;
  }

  // y [T, N] fp32 = x [T, K] fp32 · Wᵀ (+ bias) (+ s · (x Aᵀ) Bᵀ with an adapter). Q4: up to 64 rows the fp32
  // product, by the fp32 GEMV kernel or with QWENQ_DECODE_MMA_F32=1 by the tensor-core decode kernel on x split into
  // three bf16 pieces (the dispatcher's choice; both exact up to summation order); bf16_act: x rounded to bf16 for
  // every M, the dispatcher's tensor-core decode kernel; bf16 tensor cores beyond 64 rows.
  void linear(const QwenDeviceLinear& L, const float* x_in, int64_t T, float* y) {
    if (!L.q4) {
      linear_forward_cuda(x_in, T, L.K, L.dense.data, L.dense.dtype, L.N, L.bias.data, L.bias.dtype, y, DType::F32,
                          s());
    } else {
      if (T <= kQgemmDecodeMaxM && !bf16_act) {
        qgemm_int4_cuda(*L.q4, x_in, DType::F32, T, y, s());  // the FMA GEMV, or the split tensor-core product
      } else {
        uint16_t* xb = act16.as<uint16_t>();
        f32_to_bf16_cuda(x_in, T * L.K, xb, s());
        qgemm_int4_cuda(*L.q4, xb, DType::BF16, T, y, s());
      }
      if (L.bias.data != nullptr) add_bias_rows_cuda(y, T, L.N, L.bias.data, L.bias.dtype, s());
    }
    // The adapter's branch (no-op without one): two fp32 matmuls, for a step two GEMVs of r·(N + K) terms.
    lora_branch_forward_cuda(L.lora, x_in, T, L.K, L.N, lora_u.as<float>(), y, L.bias.data, L.bias.dtype, s());
  }

  void rmsnorm(const float* x_in, int64_t n_rows, int64_t cols, const QwenDeviceTensor& w, float* y) {
    rmsnorm_forward_cuda(x_in, n_rows, cols, w.data, w.dtype, cfg.rms_norm_eps, y, s());
  }

  // Causal attention of the T prompt rows (q, and k/v in rows 0..T-1 of the layer's cache) into a.
  void prefill_attention(int64_t l, int64_t T) {
    const QwenConfig& c = cfg;
    const int32_t cu[2] = {0, static_cast<int32_t>(T)};
    const int64_t KV = c.kv_dim();
    if (flash()) {
      f32_to_bf16_cuda(q.as<float>(), T * c.q_dim(), q16.as<uint16_t>(), s());
      const uint16_t *kb = k_layer16(l), *vb = v_layer16(l);  // rows 0..T-1: [T, Hkv, D] bf16
      if (!bf16_cache()) {
        f32_to_bf16_cuda(k_layer(l), T * KV, k16.as<uint16_t>(), s());
        f32_to_bf16_cuda(v_layer(l), T * KV, v16.as<uint16_t>(), s());
        kb = k16.as<uint16_t>();
        vb = v16.as<uint16_t>();
      }
      attention_forward_cuda(q16.get(), kb, vb, cu, 1, c.num_heads, c.num_kv_heads, c.head_dim, a16.get(), nullptr,
                             DType::BF16, s());
      bf16_to_f32_cuda(a16.as<uint16_t>(), T * c.q_dim(), a.as<float>(), s());
    } else if (bf16_cache()) {  // the rounded rows, widened: what the CPU's attention over a bf16 cache reads
      bf16_to_f32_cuda(k_layer16(l), T * KV, kf.as<float>(), s());
      bf16_to_f32_cuda(v_layer16(l), T * KV, vf.as<float>(), s());
      attention_naive_forward_cuda(q.as<float>(), kf.as<float>(), vf.as<float>(), cu, 1, c.num_heads,
                                   c.num_kv_heads, c.head_dim, a.as<float>(), nullptr, s());
    } else {
      attention_naive_forward_cuda(q.as<float>(), k_layer(l), v_layer(l), cu, 1, c.num_heads, c.num_kv_heads,
                                   c.head_dim, a.as<float>(), nullptr, s());
    }
  }

  // T tokens (ids in `ids`, positions p0.. in `pos`) through every layer; k and v go to cache rows p0..p0+T-1.
  // T == 1 with p0 >= 0 attends over the cache with the decode kernel (lens at `len_dev`); T > 1 needs p0 == 0.
  // host_ids: the host's copy of the T ids (checked by the gather instead of a download: no wait before the end).
  std::vector<float> run(int64_t T, int64_t p0, const int32_t* pos, const int32_t* len_dev, const int32_t* host_ids) {
    queue(T, p0, pos, len_dev, host_ids);
    std::vector<float> out = download_logits();
    ran_eager = true;
    return out;
  }

  std::vector<float> download_logits() {
    std::vector<float> out(static_cast<size_t>(cfg.vocab_size));
    QWENQ_CUDA_CHECK(
        cudaMemcpyAsync(out.data(), logits.get(), out.size() * sizeof(float), cudaMemcpyDeviceToHost, s()));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s()));
    return out;
  }

  // run's work, queued on the stream up to the logits. p0 < 0 (a graph step, T == 1): the position is pos[0] on the
  // device: the k and v rows go through kf/vf into cache row pos[0] (store_row_cuda), and the decode attention is
  // sized for the whole cache: its grid has the cache's splits, and each split takes a share of the len_dev[0] keys
  // (kernels/attention_decode_split.h), the splits past them empty.
  void queue(int64_t T, int64_t p0, const int32_t* pos, const int32_t* len_dev, const int32_t* host_ids) {
    const bool device_pos = p0 < 0;
    const QwenConfig& c = cfg;
    const int64_t C = c.hidden_size, D = c.head_dim, KV = c.kv_dim(), I = c.intermediate_size;
    const QwenDeviceTensor embed = model.device_embed();
    float* xp = x.as<float>();
    float* np = n.as<float>();
    float* qp = q.as<float>();
    embedding_gather_cuda(embed.data, embed.dtype, c.vocab_size, C, ids.as<int32_t>(), T, xp, s(), host_ids);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const QwenDeviceLayer& L = model.device_layer(l);
      // fp32 k, v rows: straight into an F32 cache; into kf/vf for a BF16 one, rounded into it after RoPE (a graph
      // step: into kf/vf for either, stored at the device's position).
      float* kp = bf16_cache() || device_pos ? kf.as<float>() : k_layer(l) + p0 * KV;
      float* vp = bf16_cache() || device_pos ? vf.as<float>() : v_layer(l) + p0 * KV;
      rmsnorm(xp, T, C, L.input_norm, np);
      linear(L.q, np, T, qp);
      linear(L.k, np, T, kp);
      linear(L.v, np, T, vp);
      if (c.qk_norm) {
        rmsnorm(qp, T * c.num_heads, D, L.q_norm, qp);
        rmsnorm(kp, T * c.num_kv_heads, D, L.k_norm, kp);
      }
      rope_forward_cuda(qp, T, c.num_heads, D, pos, c.rope, s());
      rope_forward_cuda(kp, T, c.num_kv_heads, D, pos, c.rope, s());
      if (device_pos) {
        const DType cd = bf16_cache() ? DType::BF16 : DType::F32;
        store_row_cuda(kp, KV, pos, capacity, bf16_cache() ? static_cast<void*>(k_layer16(l)) : k_layer(l), cd, s());
        store_row_cuda(vp, KV, pos, capacity, bf16_cache() ? static_cast<void*>(v_layer16(l)) : v_layer(l), cd, s());
      } else if (bf16_cache()) {
        f32_to_bf16_cuda(kp, T * KV, k_layer16(l) + p0 * KV, s());
        f32_to_bf16_cuda(vp, T * KV, v_layer16(l) + p0 * KV, s());
      }
      const int64_t keys = device_pos ? capacity : p0 + 1;  // the decode attention's max_len
      if (T == 1 && bf16_cache()) {
        attention_decode_bf16_cuda(qp, k_layer16(l), v_layer16(l), len_dev, 1, c.num_heads, c.num_kv_heads, D,
                                   capacity, keys, a.as<float>(), s());
      } else if (T == 1) {
        attention_decode_cuda(qp, k_layer(l), v_layer(l), len_dev, 1, c.num_heads, c.num_kv_heads, D, capacity,
                              keys, a.as<float>(), s());
      } else {
        prefill_attention(l, T);
      }
      linear(L.o, a.as<float>(), T, np);
      add_inplace_cuda(xp, np, T * C, s());
      rmsnorm(xp, T, C, L.post_norm, np);
      if (cfg.is_moe_layer(l)) {
        model.moe_forward(l, np, T, np, s());  // the forward's MoE MLP, on the model's stream and buffers
      } else {
        linear(L.gate, np, T, gate.as<float>());
        linear(L.up, np, T, up.as<float>());
        swiglu_forward_cuda(gate.as<float>(), up.as<float>(), T * I, gate.as<float>(), s());
        linear(L.down, gate.as<float>(), T, np);
      }
      add_inplace_cuda(xp, np, T * C, s());
    }
    // The final norm and the lm_head of the last row only.
    float* last = np + (T - 1) * C;
    rmsnorm(xp + (T - 1) * C, 1, C, model.device_final_norm(), last);
    const QwenDeviceTensor head = model.device_lm_head();
    linear_forward_cuda(last, 1, C, head.data, head.dtype, c.vocab_size, nullptr, DType::F32, logits.get(),
                        DType::F32, s());
  }

  // The step's graph, captured now (on success `graph` is set; on a refusal graph_failed, with one line).
  void capture(const int32_t* dev, int32_t token) {
    cudaGraph_t g = nullptr;
    // cuBLASLt's handle and workspace exist before the capture (the first matmul of a process would make them in it).
    BlasLt::current().reserve_workspace();
    QWENQ_CUDA_CHECK(cudaStreamBeginCapture(s(), cudaStreamCaptureModeRelaxed));
    std::string why;
    try {
      queue(1, -1, dev + 1, dev + 2, &token);
    } catch (const std::exception& e) {
      why = e.what();
    }
    cudaError_t err = cudaStreamEndCapture(s(), &g);
    if (why.empty() && err == cudaSuccess) err = cudaGraphInstantiate(&graph, g, 0);
    if (g) cudaGraphDestroy(g);
    if (why.empty() && err != cudaSuccess) why = cudaGetErrorString(err);
    if (!why.empty()) {
      cudaGetLastError();  // a capture error is not sticky: clear it
      graph = nullptr;
      graph_failed = true;
      std::fprintf(stderr, "QWENQ_DECODE_GRAPH: the step could not be captured as a CUDA graph (%s); launching its "
                   "kernels one by one\n", why.c_str());
      return;
    }
    graph_adapter = model.adapter_generation();
    ++captures;
  }

  // One token at position p: ids holds {token, p, p + 1} (id, RoPE position, keys to attend).
  std::vector<float> run_token(int32_t token, int64_t p) {
    reserve(1);
    // From pinned memory: a plain asynchronous copy, no host function in the stream between two steps (a graph
    // launch would wait for it). Every step ends waiting for its stream (download_logits), so the previous step's
    // copy has read the buffer; the synchronization here (an idle stream: cheap) covers a step that threw.
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(s()));
    step_ids.reserve(3);
    int32_t* h = step_ids.data();
    h[0] = token;
    h[1] = static_cast<int32_t>(p);
    h[2] = static_cast<int32_t>(p + 1);
    QWENQ_CUDA_CHECK(cudaMemcpyAsync(ids.get(), h, 3 * sizeof(int32_t), cudaMemcpyHostToDevice, s()));
    const int32_t* dev = ids.as<int32_t>();
    if (graph_on && !graph_failed) {
      if (graph && graph_adapter != model.adapter_generation()) drop_graph();
      if (!graph && ran_eager) capture(dev, token);
      if (graph) {
        BlasLt& lt = BlasLt::current();  // the graph's matmuls share cuBLASLt's workspace (kernels/blas_lt.h)
        lt.wait_for_workspace(s());
        QWENQ_CUDA_CHECK(cudaGraphLaunch(graph, s()));
        lt.mark_workspace_used(s());
        return download_logits();
      }
    }
    return run(1, p, dev + 1, dev + 2, &token);
  }

  void check_token(int32_t id, int64_t position) const {
    QWENQ_CHECK(id >= 0 && id < cfg.vocab_size, "token id " << id << " at position " << position
                                                            << " is outside the vocabulary [0, " << cfg.vocab_size
                                                            << ")");
  }
};

QwenDecodeCuda::QwenDecodeCuda(const QwenModelCuda& model, int64_t capacity, KvCacheDType kv, bool bf16_activations)
    : impl_(std::make_unique<Impl>(model, capacity, kv, bf16_activations)) {
  Impl& m = *impl_;
  const QwenConfig& c = m.cfg;
  QWENQ_CHECK(capacity >= 1, "QwenDecodeCuda: the KV cache capacity must be at least 1 token, got " << capacity);
  const std::string shape_refusal = gpu_config_refusal(c, GpuUse::Decode);  // trainer/gpu_support.h
  QWENQ_CHECK(shape_refusal.empty(), "QwenDecodeCuda: " << shape_refusal);
  QWENQ_CHECK(!m.bf16_cache() || c.head_dim % 2 == 0,
              "QwenDecodeCuda: a bf16 KV cache needs an even head_dim, the model's is " << c.head_dim
                                                                                        << "; use the f32 cache");
  const size_t elem = m.bf16_cache() ? sizeof(uint16_t) : sizeof(float);
  const size_t cache = static_cast<size_t>(c.num_layers * capacity * c.kv_dim()) * elem;
  const std::string dims = " [" + std::to_string(c.num_layers) + ", " + std::to_string(capacity) + ", " +
                           std::to_string(c.num_kv_heads) + ", " + std::to_string(c.head_dim) + "] " +
                           (m.bf16_cache() ? "bf16" : "fp32");
  m.k_cache = allocate(cache, MemoryTag::Activations, "the key cache" + dims + " (" + std::to_string(capacity) + " tokens)", m.s());
  m.v_cache = allocate(cache, MemoryTag::Activations, "the value cache" + dims + " (" + std::to_string(capacity) + " tokens)", m.s());
  m.logits = allocate(static_cast<size_t>(c.vocab_size) * sizeof(float), MemoryTag::Logits, "the logits", m.s());
}

QwenDecodeCuda::~QwenDecodeCuda() = default;

int64_t QwenDecodeCuda::capacity() const { return impl_->capacity; }
int64_t QwenDecodeCuda::length() const { return impl_->length; }
int64_t QwenDecodeCuda::cache_bytes() const {
  return static_cast<int64_t>(impl_->k_cache.bytes() + impl_->v_cache.bytes());
}
KvCacheDType QwenDecodeCuda::kv_cache_dtype() const { return impl_->kv; }
int64_t QwenDecodeCuda::graph_captures() const { return impl_->captures; }

std::vector<float> QwenDecodeCuda::prefill(const std::vector<int32_t>& prompt) {
  Impl& m = *impl_;
  const int64_t T = static_cast<int64_t>(prompt.size());
  QWENQ_CHECK(T > 0, "QwenDecodeCuda::prefill: no tokens");
  QWENQ_CHECK(T <= m.capacity,
              "sequence of " << T << " tokens exceeds the KV cache capacity of " << m.capacity);
  for (int64_t t = 0; t < T; ++t) m.check_token(prompt[t], t);
  m.length = 0;
  if (T == 1) {  // one token: the step's path (decode attention over a cache of one row)
    std::vector<float> out = m.run_token(prompt[0], 0);
    m.length = 1;
    return out;
  }
  m.reserve(T);
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(t);
  // Copies the stream owns (nothing waits for them before run()'s end; a pageable source need not be staged when
  // cudaMemcpyAsync returns).
  upload_owned_async(m.ids.get(), prompt, m.s());
  upload_owned_async(m.positions.get(), std::move(pos), m.s());
  std::vector<float> out = m.run(T, 0, m.positions.as<int32_t>(), nullptr, prompt.data());
  m.length = T;
  return out;
}

std::vector<float> QwenDecodeCuda::step(int32_t token) {
  Impl& m = *impl_;
  const int64_t p = m.length;
  QWENQ_CHECK(p >= 1, "QwenDecodeCuda::step: prefill a prompt first");
  QWENQ_CHECK(p < m.capacity, "sequence of " << p + 1 << " tokens exceeds the KV cache capacity of " << m.capacity);
  m.check_token(token, p);
  std::vector<float> out = m.run_token(token, p);
  m.length = p + 1;
  return out;
}

std::vector<int32_t> generate_cuda(const QwenModelCuda& model, const std::vector<int32_t>& prompt,
                                   const SamplingOptions& opt, const std::function<void(int32_t)>& on_token) {
  std::unique_ptr<QwenDecodeCuda> decoder;
  DecodeFns fns;
  fns.prefill = [&](const std::vector<int32_t>& p, int64_t capacity) {
    decoder = std::make_unique<QwenDecodeCuda>(model, capacity, opt.kv_cache, opt.bf16_activations);
    return decoder->prefill(p);
  };
  fns.step = [&](int32_t id) { return decoder->step(id); };
  return generate_with(model.config().max_position_embeddings, prompt, opt, fns, on_token);
}

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
