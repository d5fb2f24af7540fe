// LoraModelCuda (trainer/lora_model_cuda.h): lora_model.cpp's Runner, op for op, on the device. The order of
// the ops and of the gradient contributions is the CPU's; where the CPU zero-fills a gradient buffer and adds the
// base's dy W into it, the first base contribution here is written directly (one pass less).
#ifdef QWENQ_HAVE_CUDA

#include "trainer/lora_model_cuda.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/env_switch.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/act.h"
#include "kernels/attention_naive.h"
#include "kernels/blas_lt.h"
#include "kernels/convert.h"
#include "kernels/dropout.h"
#include "kernels/dropout_mask.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_allocator.h"
#include "kernels/dora.h"
#include "kernels/flash_attention.h"
#include "kernels/loss.h"
#include "kernels/moe_combine.h"
#include "kernels/moe_combine_backward.h"
#include "kernels/norm.h"
#include "kernels/optim.h"
#include "core/process_group.h"
#include "kernels/nccl_comm.h"
#include "kernels/pinned_host.h"
#include "kernels/qgemm.h"
#include "kernels/rope.h"
#include "lora/lora_linear.h"
#include "trainer/lora_cuda_buffers.h"
#include "trainer/memory_plan.h"
#include "trainer/moe_block.h"
#include "trainer/step_profile_cuda.h"

namespace qwenq {

namespace {

// `qwen-qlora plan` counts cuBLASLt's workspace by its own constant (trainer/memory_plan.h).
static_assert(BlasLt::kWorkspaceBytes == kCublasLtWorkspaceBytes, "memory_plan.h's cuBLASLt workspace is BlasLt's");

bool uses_flash(int64_t D) { return flash_attention_compiled(D); }  // 64 and 128 unless the build dropped one

// One adapted Linear: where its A and B live in the arenas (in floats). `index`: its place in the adapter's slots()
// (the order of the arenas, of put/get and of gradient clipping); expert: kNoExpert for a layer's own Linear.
struct Slot {
  int64_t layer = 0;
  LoraTarget target = LoraTarget::QProj;
  int64_t expert = kNoExpert;
  size_t index = 0;
  int64_t N = 0, K = 0, r = 0;
  int64_t a_off = 0, b_off = 0;
  int64_t m_off = -1;  // DoRA: the magnitude m [N] in the arenas (its gradient, AdamW's moments); -1 without DoRA
  int64_t n_off = -1;  // DoRA: the row norms n [N] in `norms`
};

}  // namespace

struct LoraModelCuda::Impl {
  Impl(const QwenConfig& c, const LoraAdapter& a, const LoraModelCudaOptions& o)
      : cfg(c), targets_(a.targets()), dims(a.dims()), rank(a.uniform_rank()), options(o) {}
  // Work an exception left queued may still read the pinned staging buffer, which is freed before the stream.
  ~Impl() { cudaStreamSynchronize(stream.get()); }  // nothing to report from a destructor
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  OwnedCudaStream stream;  // first member: destroyed after every buffer below
  std::unique_ptr<QwenModelCuda> base;
  QwenConfig cfg;
  // The uploaded adapter's targets, dimensions and rank (its slots are `slots`); no copy of its values.
  std::vector<LoraTarget> targets_;
  LoraDims dims;
  int64_t rank = 0;
  LoraModelCudaOptions options;
  float s = 1.f;
  double dropout = 0.0;
  float drop_p = 0.f;       // this call's dropout probability: the adapter's in training, else 0
  LoraModelCuda::FoldCounts folds;  // the products QWENQ_LORA_FOLD=1 folded (folded_fwd, folded_bwd)
  uint64_t drop_seed = 0;   // this call's LoraStepOptions::dropout_seed
  std::vector<Slot> slots;
  std::vector<int> slot_of;  // [layer · 7 + target index] -> index into slots, or -1
  // Per layer: empty for a dense one; a MoE layer's [(E + 1) · 3]: (expert + 1) · 3 + which (0 gate, 1 up, 2 down)
  // -> index into slots, or -1 (expert -1: the shared expert).
  std::vector<std::vector<int>> expert_slot_of;
  MoeDispatch disp;  // the routing of the MoE layer last run forward (its backward follows its recomputation)
  int64_t total = 0;         // floats in each arena
  DeviceAllocation params, grads, m, v;
  PinnedHost<float> grads_host;  // data parallelism: the gradients on their way through the host's all-reduce
  bool dp_ready = false;         // the gradient transport is chosen at the first all-reduce (QWENQ_DP_NCCL)
  std::unique_ptr<NcclComm> nccl;
  // DoRA: the adapter's targets (they size the DoRA buffers; empty without DoRA), the column offset of each target's
  // z and v in DoraZ / DoraV (by target index; lora_cuda_dora_shape), and every slot's row norms ‖W + s·B A‖
  // (recomputed at the start of each call from the current A and B: PEFT's norms, detached).
  std::vector<LoraTarget> dora_targets;
  int64_t dora_col[7] = {};
  LoraCudaDoraMoe dora_moe;  // a MoE layer's expert columns (lora_cuda_dora_moe)
  DeviceAllocation norms;
  bool norms_stale = true;   // A or B changed (construction, upload, an AdamW step) since the norms were computed

  // The untied input embedding on the host (null data when the table is on the device: tied, it is the lm_head).
  TensorView host_embed;
  // The rows gathered from host_embed, pinned (kernels/pinned_host.h): [T, C] bf16 for a bf16 table, else [T, C]
  // fp32. Written again only after the previous step's upload from it has run (embed).
  PinnedHost<float> staging;

  int64_t capacity = 0, logits_rows = 0;
  bool ckpt16 = true;  // the buffers hold bf16 checkpoints (xs bf16 + xin) rather than fp32 ones
  DeviceAllocation xs, xin, n1, qpre, kpre, q, k, v_, a, lse, h1, n2, gate, up, act, u, d, dn2, dh1, da, dq, dk, dv,
      tmp, g, nll;
  DeviceAllocation tokens, positions, targets;
  DeviceAllocation act16, q16, k16, v16, a16;
  // Mixture-of-experts layers (trainer/lora_cuda_buffers.h's MoE part).
  DeviceAllocation mx, my, mgate, mup, mact, mu, mdy, mtmp, mlogits, mg, mindex, mweight, mdw, sgate, sup, sact, sy,
      su, ds, dg;
  // DoRA (trainer/lora_cuda_buffers.h's DoRA part).
  DeviceAllocation dora_z, dora_v, dora_dz, dora_dv, dora_tmp;
  DeviceAllocation logits;

  CudaStream st() const { return stream.get(); }

  // --profile (trainer/step_profile.h): the phase the work queued now belongs to. A Phase scope switches to its
  // phase and back to the enclosing one on exit, so a helper's work is its own phase wherever it is called from;
  // marks are recorded only while `profiling` (a training call or AdamW step with a profile).
  std::unique_ptr<StepProfile> prof;
  bool profiling = false;
  StepPhase phase_now = StepPhase::Embed;
  void set_phase(StepPhase p) {
    phase_now = p;
    if (profiling) prof->mark(p);
  }
  // A profiled call starts in `first` (on) and ends with a stop: the host's work between calls is not the device's.
  void begin_profiled(bool on, StepPhase first) {
    profiling = on && prof != nullptr;
    set_phase(first);
  }
  void end_profiled() {
    if (profiling) prof->stop();
    profiling = false;
  }
  // Ends a profiled call however it leaves (an exception too), so that no phase stays open until the next call.
  struct ProfiledCall {
    Impl* m;
    ~ProfiledCall() {
      try {
        m->end_profiled();
      } catch (...) {  // as ~Phase: after a sticky CUDA error the stop's event record throws; the first error counts
        m->profiling = false;
      }
    }
  };
  struct Phase {
    Impl* m;
    StepPhase prev;
    Phase(Impl* impl, StepPhase p) : m(impl), prev(impl->phase_now) { m->set_phase(p); }
    ~Phase() {
      try {
        m->set_phase(prev);
      } catch (...) {  // a failed event record while an error unwinds: the profile is the least of it
      }
    }
    Phase(const Phase&) = delete;
    Phase& operator=(const Phase&) = delete;
  };

  const Slot* slot(int64_t l, int t) const {
    const int i = slot_of[static_cast<size_t>(l * 7 + t)];
    return i < 0 ? nullptr : &slots[static_cast<size_t>(i)];
  }
  // Linear `which` (0 gate, 1 up, 2 down) of expert e (-1: shared) of MoE layer l, or null when not adapted.
  // (The constructor checked the adapter's MoE dimensions against the config: e < E.)
  const Slot* expert_slot(int64_t l, int64_t e, int which) const {
    const std::vector<int>& v = expert_slot_of[static_cast<size_t>(l)];
    if (v.empty()) return nullptr;
    const int i = v[static_cast<size_t>((e + 1) * 3 + which)];
    return i < 0 ? nullptr : &slots[static_cast<size_t>(i)];
  }

  DeviceAllocation& buffer(LoraCudaBufferId id) {
    using Id = LoraCudaBufferId;
    switch (id) {
      case Id::Xs: return xs;
      case Id::Xin: return xin;
      case Id::N1: return n1;
      case Id::Qpre: return qpre;
      case Id::Kpre: return kpre;
      case Id::Q: return q;
      case Id::K: return k;
      case Id::V: return v_;
      case Id::A: return a;
      case Id::Lse: return lse;
      case Id::H1: return h1;
      case Id::N2: return n2;
      case Id::Gate: return gate;
      case Id::Up: return up;
      case Id::Act: return act;
      case Id::U: return u;
      case Id::D: return d;
      case Id::Dn2: return dn2;
      case Id::Dh1: return dh1;
      case Id::Da: return da;
      case Id::Dq: return dq;
      case Id::Dk: return dk;
      case Id::Dv: return dv;
      case Id::Tmp: return tmp;
      case Id::G: return g;
      case Id::Nll: return nll;
      case Id::Tokens: return tokens;
      case Id::Positions: return positions;
      case Id::Targets: return targets;
      case Id::Act16: return act16;
      case Id::Q16: return q16;
      case Id::K16: return k16;
      case Id::V16: return v16;
      case Id::A16: return a16;
      case Id::Mx: return mx;
      case Id::My: return my;
      case Id::Mgate: return mgate;
      case Id::Mup: return mup;
      case Id::Mact: return mact;
      case Id::Mu: return mu;
      case Id::Mdy: return mdy;
      case Id::Mtmp: return mtmp;
      case Id::Mlogits: return mlogits;
      case Id::Mg: return mg;
      case Id::Mindex: return mindex;
      case Id::Mweight: return mweight;
      case Id::Mdw: return mdw;
      case Id::Sgate: return sgate;
      case Id::Sup: return sup;
      case Id::Sact: return sact;
      case Id::Sy: return sy;
      case Id::Su: return su;
      case Id::Ds: return ds;
      case Id::Dg: return dg;
      case Id::DoraZ: return dora_z;
      case Id::DoraV: return dora_v;
      case Id::DoraDz: return dora_dz;
      case Id::DoraDv: return dora_dv;
      case Id::DoraTmp: return dora_tmp;
    }
    QWENQ_FAIL("LoraModelCuda: unknown buffer " << static_cast<int>(id));
  }

  // The buffers of trainer/lora_cuda_buffers.h for T tokens and the checkpoint dtype, in its order, each freed
  // before its replacement is allocated (they hold nothing between steps); re-made when T grows or the checkpoint
  // dtype changes (xin exists with bf16 checkpoints only). A freed block stays in the stream's cache until an
  // allocation that does not fit makes the allocator hand the cache back (kernels/device_allocator.h).
  void reserve(int64_t T, bool bf16_checkpoints) {
    if (T <= capacity && bf16_checkpoints == ckpt16) return;
    const QwenConfig& c = cfg;
    const int64_t need = std::max(T, capacity);
    capacity = 0;
    xin.reset();  // absent from the fp32 table
    for (const LoraCudaBuffer& b : lora_cuda_batch_buffers(c, c.num_layers, rank, uses_flash(c.head_dim),
                                                           bf16_checkpoints, dropout > 0, dora_targets)) {
      DeviceAllocation& slot = buffer(b.id);
      slot.reset();  // the old buffer first (scratch, nothing to keep): old and new are never held together
      slot = cuda_device_allocator().allocate(static_cast<size_t>(b.bytes(need)), st(), MemoryTag::Activations,
                                              std::string("LoraModelCuda: ") + b.what + " [" + std::to_string(need) +
                                                  " tokens x " + std::to_string(b.words) + " 4-byte words]");
    }
    ckpt16 = bf16_checkpoints;
    capacity = need;
  }

  // The buffers on another's storage (trainer/lora_cuda_buffers.h lists them with the reason each is safe).
  bool flash() const { return uses_flash(cfg.head_dim); }
  float* dn1() const { return dn2.as<float>(); }
  float* mlp_out() const { return dn2.as<float>(); }
  float* hidden() const { return n1.as<float>(); }
  float* dhidden() const { return h1.as<float>(); }
  float* dact() const { return act.as<float>(); }
  float* dgate() const { return act.as<float>(); }
  float* dup() const { return up.as<float>(); }
  float* da_() const { return flash() ? a.as<float>() : da.as<float>(); }
  float* dq_() const { return flash() ? q.as<float>() : dq.as<float>(); }
  float* dk_() const { return flash() ? k.as<float>() : dk.as<float>(); }
  float* dv_() const { return flash() ? v_.as<float>() : dv.as<float>(); }
  uint16_t* da16() const { return act16.as<uint16_t>(); }
  // The scratch of linear_bwd's accumulate path and of dropout: tmp with dropout, else gate's storage (only the
  // up/k/v backward use it then, after swiglu_backward: trainer/lora_cuda_buffers.h), or in a MoE model mtmp
  // ([T, C]; gate may be one word per token there, or narrower than C).
  float* scratch() const { return dropout > 0 ? tmp.as<float>() : cfg.is_moe() ? mtmp.as<float>() : gate.as<float>(); }

  // Checkpoint slot i ([T, C], i = 0 .. L; the block inputs and the final residual) <- the fp32 src [T, C]:
  // rounded to bf16 (f32_to_bf16_cuda, round to nearest even: what the CPU trainer's rounding does) or copied.
  void save_slot(int64_t i, const float* src, int64_t T) {
    const Phase ph(this, StepPhase::Checkpoint);
    const int64_t n = T * cfg.hidden_size;
    if (ckpt16) {
      f32_to_bf16_cuda(src, n, xs.as<uint16_t>() + i * n, st());
    } else if (src != xs.as<float>() + i * n) {
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(xs.as<float>() + i * n, src, static_cast<size_t>(n) * sizeof(float),
                                       cudaMemcpyDeviceToDevice, st()));
    }
  }
  // The fp32 view of checkpoint slot i: the slot itself (fp32), or its exact widening into xin (bf16; valid until
  // the next load_slot).
  float* load_slot(int64_t i, int64_t T) {
    const Phase ph(this, StepPhase::Checkpoint);
    const int64_t n = T * cfg.hidden_size;
    if (!ckpt16) return xs.as<float>() + i * n;
    bf16_to_f32_cuda(xs.as<uint16_t>() + i * n, n, xin.as<float>(), st());
    return xin.as<float>();
  }

  // Checkpoint slot 0 <- the embeddings of the batch's tokens (after the tokens were uploaded). An untied table
  // on the host: a bf16 one's rows are copied as they are into pinned memory by all threads, uploaded [T, C] bf16
  // into act16 (free until the first block) and widened on the device (exact, as embedding_gather_ref widens them);
  // another dtype's are gathered by embedding_gather_ref and uploaded fp32. The token-range error is the gathers'
  // (check_token_ids). The GPU waits for the host's gather: half the bytes, on every core, keep that wait short.
  // A table on the device: embedding_gather_cuda.
  // noise_half_width > 0: NEFTune's noise (LoraStepOptions::neftune_half_width) added before the slot is saved.
  void embed(const PackedBatch& b, float noise_half_width = 0.f, uint64_t noise_seed = 0) {
    const QwenConfig& c = cfg;
    const int64_t T = b.num_tokens(), C = c.hidden_size, V = c.vocab_size;
    float* dst = ckpt16 ? xin.as<float>() : xs.as<float>();
    if (host_embed.data != nullptr) {
      // The previous step's upload out of `staging` has finished before the host overwrites it (every call ends
      // synchronized, but an exception may have left one queued).
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(st()));
      if (host_embed.dtype == DType::BF16) {
        check_token_ids(b.tokens.data(), T, V);
        staging.reserve((T * C + 1) / 2);
        auto* rows = reinterpret_cast<uint16_t*>(staging.data());
        const auto* table = static_cast<const uint16_t*>(host_embed.data);
        const int32_t* ids = b.tokens.data();
        parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            std::memcpy(rows + t * C, table + static_cast<int64_t>(ids[t]) * C, static_cast<size_t>(C) * 2);
          }
        });
        uint16_t* rows16 = act16.as<uint16_t>();
        QWENQ_CUDA_CHECK(cudaMemcpyAsync(rows16, rows, static_cast<size_t>(T * C) * sizeof(uint16_t),
                                         cudaMemcpyHostToDevice, st()));
        bf16_to_f32_cuda(rows16, T * C, dst, st());
      } else {
        staging.reserve(T * C);
        embedding_gather_ref(host_embed.data, host_embed.dtype, V, C, b.tokens.data(), T, staging.data());
        QWENQ_CUDA_CHECK(cudaMemcpyAsync(dst, staging.data(), static_cast<size_t>(T * C) * sizeof(float),
                                         cudaMemcpyHostToDevice, st()));
      }
    } else {
      const QwenDeviceTensor emb = base->device_embed();
      embedding_gather_cuda(emb.data, emb.dtype, V, C, tokens.as<int32_t>(), T, dst, st(), b.tokens.data());
    }
    if (noise_half_width > 0.f) uniform_noise_add_cuda(dst, T * C, noise_half_width, noise_key(noise_seed), st());
    save_slot(0, dst, T);
  }

  // y [T, N] = x Wᵀ (+ b unless !bias), fp32 in and out (qwen_model_cuda.cpp's Linear).
  void base_forward(const QwenDeviceLinear& L, const float* x, int64_t T, float* y, bool bias = true) {
    const Phase ph(this, StepPhase::Base);
    const bool add = bias && L.bias.data != nullptr;
    if (!L.q4) {
      linear_forward_cuda(x, T, L.K, L.dense.data, L.dense.dtype, L.N, add ? L.bias.data : nullptr, L.bias.dtype, y,
                          DType::F32, st());
      return;
    }
    uint16_t* xb = act16.as<uint16_t>();
    f32_to_bf16_cuda(x, T * L.K, xb, st());
    qgemm_int4_cuda(*L.q4, xb, DType::BF16, T, y, st());
    if (add) add_bias_rows_cuda(y, T, L.N, L.bias.data, L.bias.dtype, st());
  }

  // dx [T, K] = dy W (written), fp32 in and out.
  void base_backward(const QwenDeviceLinear& L, const float* dy, int64_t T, float* dx) {
    const Phase ph(this, StepPhase::Base);
    if (!L.q4) {
      linear_backward_input_cuda(dy, T, L.N, L.dense.data, L.dense.dtype, L.K, dx, DType::F32, st());
      return;
    }
    uint16_t* db = act16.as<uint16_t>();
    f32_to_bf16_cuda(dy, T * L.N, db, st());
    qgemm_int4_t_cuda(*L.q4, db, DType::BF16, T, dx, st());
  }

  float* u_of(int t, int64_t T) const { return u.as<float>() + t * T * rank; }

  // The loss phase's row indices (at most T) uploaded on the tokens buffer, dead once the batch is embedded; the
  // copy is ordered on the stream after every earlier reader.
  const int32_t* upload_rows(const std::vector<int32_t>& idx) {
    upload_owned_async(tokens.get(), idx, st());
    return tokens.as<int32_t>();
  }

  // One Linear of a pass: its base weight, its adapter slot (null: not adapted), the key of its dropout mask, where
  // its u = x̃ Aᵀ [rows, r] is kept, and the scratch [rows, K] of its backward's accumulate path.
  // A DoRA slot also keeps its z = x̃ Wᵀ and v = s·u Bᵀ [rows, N] from the forward to the backward.
  struct Lin {
    const QwenDeviceLinear* L = nullptr;
    const Slot* sl = nullptr;
    uint64_t key = 0;
    float* u = nullptr;
    float* scratch = nullptr;
    float* z = nullptr;
    float* v = nullptr;
    bool own = false;  // a layer's own Linear (not an expert's): the forward may fold the adapter in (folded_fwd)
  };
  // Linear t of layer l (a layer's own: attention, or a dense MLP).
  Lin layer_lin(int64_t l, int t, int64_t T) {
    Lin f{&layer_linear(base->device_layer(l), t), slot(l, t), dropout_key(drop_seed, l, t), u_of(t, T), scratch()};
    f.own = true;
    if (f.sl != nullptr && f.sl->m_off >= 0) {
      f.z = dora_z.as<float>() + T * dora_col[t];
      f.v = dora_v.as<float>() + T * dora_col[t];
    }
    return f;
  }
  // Linear `which` of expert e (-1: shared) of MoE layer l, W its base weight; u its rows' u (moe_fwd); r0 its first
  // grouped row (routed experts; 0 for the shared expert) of a batch of T tokens, where a DoRA slot keeps its z and v.
  Lin expert_lin(int64_t l, int64_t e, int which, const QwenDeviceLinear& W, float* ut, int64_t T, int64_t r0) {
    Lin f{&W, expert_slot(l, e, which), expert_dropout_key(drop_seed, l, e, which), ut, mtmp.as<float>()};
    if (f.sl != nullptr && f.sl->m_off >= 0) {
      const int64_t at = lora_cuda_dora_expert_offset(dora_moe, which, e, T, r0, W.N);
      f.z = dora_z.as<float>() + at;
      f.v = dora_v.as<float>() + at;
    }
    return f;
  }

  // The dropped LoRA input x̃ [T, K] of a Linear (kernels/dropout.h, the CPU trainer's key), into tmp: no other use
  // of tmp is alive in the forward or around the adapter half of lin_bwd.
  const float* dropped(uint64_t key, const float* x, int64_t T, int64_t K) {
    float* xd = tmp.as<float>();  // drop_p > 0: the adapter has dropout, so tmp is allocated
    dropout_forward_cuda(x, T * K, drop_p, key, xd, st());
    return xd;
  }

  // y = x Wᵀ (+ b) + s · (x̃ Aᵀ) Bᵀ, u = x̃ Aᵀ kept (x̃ = x without dropout). DoRA: dora_fwd.
  void lin_fwd(const Lin& f, const float* x, int64_t T, float* y) {
    if (f.sl != nullptr && f.sl->m_off >= 0) return dora_fwd(f, x, T, y);
    if (folded_fwd(f, x, T, y)) return;
    base_forward(*f.L, x, T, y);
    const Slot* sl = f.sl;
    if (sl == nullptr) return;
    const float* A = params.as<float>() + sl->a_off;
    const float* B = params.as<float>() + sl->b_off;
    const Phase ph(this, StepPhase::Lora);
    const float* xin = drop_p > 0.f ? dropped(f.key, x, T, sl->K) : x;
    lora_forward_cuda(xin, T, sl->K, A, B, sl->r, sl->N, s, y, f.u, st());  // u = x̃ Aᵀ; y += s · u Bᵀ
  }
  void linear_fwd(int64_t l, int t, const float* x, int64_t T, float* y) { lin_fwd(layer_lin(l, t, T), x, T, y); }

  // QWENQ_LORA_FOLD=1 (kernels/qgemm.h; opt-in until it has run on a GPU): an adapted 4-bit Linear whose T-row product
  // takes the dense path, without act-order, gets the adapter's output inside its base product, [x | s·u]·[Ŵ | B]ᵀ
  // over K + ra columns (qgemm_int4_dense_lowrank_cuda), instead of y += s·u Bᵀ reading and writing y once more. u =
  // x̃ Aᵀ stays fp32 (the backward's); s·u and B are rounded to bf16 for the product, as peft's bf16 autocast rounds
  // the branch. x [T, K] and s·u [T, r] go into act16 at row stride K + ra (ra = r rounded up to 8, zeros after s·u):
  // the buffer table gives act16 those columns when the switch is set. False (nothing queued) where it does not
  // apply (fold_cols); also when act16 was sized before the switch was set. The backward's half: folded_bwd.
  bool folded_fwd(const Lin& f, const float* x, int64_t T, float* y) {
    const QwenDeviceLinear& L = *f.L;
    const int64_t ra = fold_cols(f, T, L.K), ld = L.K + ra;
    if (ra == 0) return false;
    const Slot& sl = *f.sl;
    ++folds.forward;
    {
      const Phase ph(this, StepPhase::Lora);
      const float* xin = drop_p > 0.f ? dropped(f.key, x, T, sl.K) : x;
      lora_project_cuda(xin, T, sl.K, params.as<float>() + sl.a_off, sl.r, f.u, st());  // u = x̃ Aᵀ
    }
    const Phase ph(this, StepPhase::Base);
    uint16_t* xa = act16.as<uint16_t>();
    f32_to_bf16_strided_cuda(x, T, L.K, L.K, 1.f, xa, ld, st());
    f32_to_bf16_strided_cuda(f.u, T, sl.r, ra, s, xa + L.K, ld, st());  // s·u, zeros up to ra
    qgemm_int4_dense_lowrank_cuda(*L.q4, xa, Q4LowRank{ra, params.as<float>() + sl.b_off, sl.r}, T, y, st());
    if (L.bias.data != nullptr) add_bias_rows_cuda(y, T, L.N, L.bias.data, L.bias.dtype, st());
    return true;
  }

  // The adapter columns ra of an adapted Linear's folded T-row product whose bf16 input rows are `width` wide (K
  // forward, N backward), 0 where the fold does not apply: QWENQ_LORA_FOLD=1, a layer's own 4-bit Linear whose
  // product takes the dense path, without act-order, Kp == K, and act16 sized with the switch set.
  int64_t fold_cols(const Lin& f, int64_t T, int64_t width) const {
    const QwenDeviceLinear& L = *f.L;
    if (f.sl == nullptr || !f.own || !L.q4 || !qgemm_lora_fold_enabled() || !qgemm_dense_for(T) ||
        L.q4->perm != nullptr || L.q4->Kp != L.K)
      return 0;
    const int64_t ra = lora_cuda_fold_cols(f.sl->r);
    return act16.bytes() >= static_cast<size_t>(T * (width + ra)) * sizeof(uint16_t) ? ra : 0;
  }

  // The backward's half of QWENQ_LORA_FOLD=1, without dropout (with it dx gets m ⊙ (g A), not g A): dx (+)= [dy | g]·
  // [Ŵ ; A] over N + ra rows (qgemm_int4_t_dense_lowrank_cuda), g = s·dy B from adapter_grads, instead of the base
  // product, then dx += g A reading and writing dx once more (and, accumulating, the scratch and its add: the GEMM
  // adds into dx itself). dy and g go into act16 at row stride N + ra as bf16, A is rounded to bf16 for the product,
  // as the forward's s·u and B. False (nothing queued) where it does not apply.
  bool folded_bwd(const Lin& f, const float* dy, int64_t T, float* dx, bool accumulate) {
    const QwenDeviceLinear& L = *f.L;
    const int64_t ra = drop_p > 0.f ? 0 : fold_cols(f, T, L.N), ld = L.N + ra;
    if (ra == 0) return false;
    ++folds.backward;
    const Phase ph(this, StepPhase::Base);
    uint16_t* dya = act16.as<uint16_t>();
    f32_to_bf16_strided_cuda(dy, T, L.N, L.N, 1.f, dya, ld, st());
    f32_to_bf16_strided_cuda(g.as<float>(), T, f.sl->r, ra, 1.f, dya + L.N, ld, st());  // g, zeros up to ra
    qgemm_int4_t_dense_lowrank_cuda(*L.q4, dya, Q4LowRankT{ra, params.as<float>() + f.sl->a_off, f.sl->r}, T, dx,
                                    accumulate, st());
    return true;
  }

  // The recomputation of a Linear whose output nothing reads (the dense MLP's down projection, whose output only
  // fed the residual): u = x̃ Aᵀ alone (lora_project_cuda, the bits lin_fwd keeps), no base product; nothing for an
  // unadapted Linear. DoRA's backward also reads z = x̃ Wᵀ, so a DoRA Linear runs whole into `unread`.
  void lin_recompute(const Lin& f, const float* x, int64_t T, float* unread) {
    const Slot* sl = f.sl;
    if (sl == nullptr) return;
    if (sl->m_off >= 0) return dora_fwd(f, x, T, unread);
    const Phase ph(this, StepPhase::Lora);
    const float* xin = drop_p > 0.f ? dropped(f.key, x, T, sl->K) : x;
    lora_project_cuda(xin, T, sl->K, params.as<float>() + sl->a_off, sl->r, f.u, st());
  }

  // DoRA's forward (trainer/lora_model.h; the CPU Runner's linear_fwd): y = x Wᵀ + b + (g − 1) ⊙ z + g ⊙ v with
  // g = m / n, z = x̃ Wᵀ, v = s·(x̃ Aᵀ) Bᵀ, u = x̃ Aᵀ; z and v kept for the backward. Without dropout z is the base
  // product itself and y = z + b (the CPU takes z = y − b: the same up to the last bit); with it z is the base
  // product of x̃ (in tmp).
  void dora_fwd(const Lin& f, const float* x, int64_t T, float* y) {
    const Phase ph(this, StepPhase::Dora);
    const Slot& sl = *f.sl;
    const QwenDeviceLinear& L = *f.L;
    const int64_t N = sl.N;
    const float* A = params.as<float>() + sl.a_off;
    const float* B = params.as<float>() + sl.b_off;
    const float* xin = x;
    if (drop_p > 0.f) {
      base_forward(L, x, T, y);
      xin = dropped(f.key, x, T, sl.K);
      base_forward(L, xin, T, f.z, /*bias=*/false);
    } else {
      base_forward(L, x, T, f.z, /*bias=*/false);
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(y, f.z, static_cast<size_t>(T * N) * sizeof(float), cudaMemcpyDeviceToDevice,
                                       st()));
      if (L.bias.data != nullptr) add_bias_rows_cuda(y, T, N, L.bias.data, L.bias.dtype, st());
    }
    QWENQ_CUDA_CHECK(cudaMemsetAsync(f.v, 0, static_cast<size_t>(T * N) * sizeof(float), st()));
    {
      const Phase lora(this, StepPhase::Lora);
      lora_forward_cuda(xin, T, sl.K, A, B, sl.r, N, s, f.v, f.u, st());  // u = x̃ Aᵀ; v = s · u Bᵀ
    }
    dora_combine_cuda(params.as<float>() + sl.m_off, norms.as<float>() + sl.n_off, f.z, f.v, T, N, y, st());
  }

  // dx (+)= dy W + s · (dy B) A; dB += s · dyᵀ u, dA += (s · dy B)ᵀ x. accumulate: dx += (else dx is written).
  // With dropout: x̃ regenerated for dA += gᵀ x̃, and dx += m ⊙ (g A) through dropout_backward_cuda.
  // The adapter's gradients come first: they are the only readers of x, so dx may be x's storage (dact on act,
  // da on a with flash attention). Each buffer sees the same ops in the same order as with the base first.
  void lin_bwd(const Lin& f, const float* dy, const float* x, int64_t T, float* dx, bool accumulate) {
    if (f.sl != nullptr && f.sl->m_off >= 0) return dora_bwd(f, dy, x, T, dx, accumulate);
    const bool drop = drop_p > 0.f;
    if (f.sl != nullptr) adapter_grads(f, dy, x, T);
    // x is not read below.
    if (folded_bwd(f, dy, T, dx, accumulate)) return;
    base_input_grad(f, dy, T, dx, accumulate);
    if (f.sl == nullptr) return;
    // dx += g A; with dropout tmp = g A, then dx += m ⊙ tmp (tmp's base dx was added above).
    adapter_input_grad(*f.sl, T, drop ? tmp.as<float>() : dx, !drop);
    const Phase ph(this, StepPhase::Lora);
    if (drop) dropout_backward_cuda(tmp.as<float>(), T * f.sl->K, drop_p, f.key, dx, st());
  }

  // The adapter's gradients of slot f.sl from the gradient dyp [T, N] of its branch's output (dy for LoRA, DoRA's dv):
  // g [T, r] = s · dyp B (kept in `g` for adapter_input_grad), dB += s · dypᵀ u, dA += gᵀ x̃ (x̃ regenerated into tmp
  // with dropout). The last read of x.
  void adapter_grads(const Lin& f, const float* dyp, const float* x, int64_t T) {
    const Phase ph(this, StepPhase::Lora);
    const Slot& sl = *f.sl;
    float* gp = g.as<float>();
    BlasLt& lt = BlasLt::current();
    {  // gᵀ[r, T] = s · (B as r×N, column-major) · dypᵀ(N×T): g [T, r] = s · dyp B.
      LtGemm gm;
      gm.m = sl.r, gm.n = T, gm.k = sl.N;
      gm.lda = sl.r, gm.ldb = sl.N, gm.ldd = sl.r;
      lt.matmul(gm, params.as<float>() + sl.b_off, dyp, gp, nullptr, s, st());
    }
    {  // dBᵀ[r, N] += s · uᵀ(r×T) · dyp(T×N): dB [N, r] += s · dypᵀ u.
      LtGemm gm;
      gm.m = sl.r, gm.n = sl.N, gm.k = T;
      gm.trans_b = true;
      gm.lda = sl.r, gm.ldb = sl.N, gm.ldd = sl.r;
      gm.accumulate = true;
      lt.matmul(gm, f.u, dyp, grads.as<float>() + sl.b_off, nullptr, s, st());
    }
    const float* xin = drop_p > 0.f ? dropped(f.key, x, T, sl.K) : x;  // x̃ in tmp, dead after dA's product
    linear_backward_weight_cuda(gp, xin, T, sl.r, sl.K, grads.as<float>() + sl.a_off, st());  // dA [r, K] += gᵀ x̃
  }

  // dst [T, K] (+)= g A, g from adapter_grads: written, or added when accumulate.
  void adapter_input_grad(const Slot& sl, int64_t T, float* dst, bool accumulate) {
    const Phase ph(this, StepPhase::Lora);
    LtGemm gm;  // dstᵀ[K, T] (+)= (A as K×r) · gᵀ(r×T)
    gm.m = sl.K, gm.n = T, gm.k = sl.r;
    gm.lda = sl.K, gm.ldb = sl.r, gm.ldd = sl.K;
    gm.accumulate = accumulate;
    BlasLt::current().matmul(gm, params.as<float>() + sl.a_off, g.as<float>(), dst, nullptr, 1.f, st());
  }

  // dx (+)= dy W of the base: written, or (accumulate) through the Linear's scratch and added.
  void base_input_grad(const Lin& f, const float* dy, int64_t T, float* dx, bool accumulate) {
    if (!accumulate) return base_backward(*f.L, dy, T, dx);
    base_backward(*f.L, dy, T, f.scratch);
    const Phase ph(this, StepPhase::Residual);
    add_inplace_cuda(dx, f.scratch, T * f.L->K, st());
  }

  void linear_bwd(int64_t l, int t, const float* dy, const float* x, int64_t T, float* dx, bool accumulate) {
    lin_bwd(layer_lin(l, t, T), dy, x, T, dx, accumulate);
  }

  // DoRA's backward (the CPU Runner's linear_bwd + dora_bwd, in its order of contributions): dm += Σ_t dy·(z + v) / n,
  // dz = (g − 1)·dy, dv = g·dy (dora_split_grad_cuda); the LoRA gradients of v: G = s·dv B, dB += s·dvᵀ u,
  // dA += Gᵀ x̃ (x's last read: dx may be its storage); dx (+)= dy W; then t = dz W + G A and dx += t (with dropout
  // dx += mask ⊙ t / (1 − p), dropout_backward_cuda).
  void dora_bwd(const Lin& f, const float* dy, const float* x, int64_t T, float* dx, bool accumulate) {
    const Phase ph(this, StepPhase::Dora);
    const Slot& sl = *f.sl;
    float* dz = dora_dz.as<float>();
    float* dv = dora_dv.as<float>();
    float* t = dora_tmp.as<float>();
    dora_split_grad_cuda(params.as<float>() + sl.m_off, norms.as<float>() + sl.n_off, f.z, f.v, dy, T, sl.N,
                         grads.as<float>() + sl.m_off, dz, dv, st());
    adapter_grads(f, dv, x, T);
    // x is not read below.
    base_input_grad(f, dy, T, dx, accumulate);
    base_backward(*f.L, dz, T, t);  // t = dz W
    adapter_input_grad(sl, T, t, /*accumulate=*/true);  // t += G A
    if (drop_p > 0.f) {
      dropout_backward_cuda(t, T * sl.K, drop_p, f.key, dx, st());
    } else {
      add_inplace_cuda(dx, t, T * sl.K, st());
    }
  }


  // The base Linear of slot sl: a layer's own, or an expert's (-1: the shared expert's) of a MoE layer.
  const QwenDeviceLinear& slot_base(const Slot& sl) const {
    if (sl.expert == kNoExpert) return layer_linear(base->device_layer(sl.layer), static_cast<int>(sl.target));
    const QwenDeviceMoe& M = base->device_moe(sl.layer);
    const size_t which = static_cast<size_t>(moe_expert_index(sl.target));
    return sl.expert < 0 ? M.shared[which] : M.experts[static_cast<size_t>(sl.expert)][which];
  }

  // Every DoRA slot's row norms n = ‖W + s·B A‖ from the current A and B (kernels/dora.h; the base as uploaded: dense,
  // or the Q4 codes the dequant-matmul reads). Queued on the stream before the call's first use.
  void dora_norms() {
    if (dora_targets.empty()) {  // no DoRA slot: no phase either (a profile would show an empty "dora" mark)
      norms_stale = false;
      return;
    }
    const Phase ph(this, StepPhase::Dora);
    for (const Slot& sl : slots) {
      if (sl.m_off < 0) continue;
      dora_row_norms_cuda(dora_base_weight(slot_base(sl)), sl.N, sl.K, params.as<float>() + sl.a_off,
                          params.as<float>() + sl.b_off, sl.r, s, norms.as<float>() + sl.n_off, st());
    }
    norms_stale = false;  // only once every launch was queued (an error leaves them stale)
  }

  void rmsnorm(const float* x, int64_t rows, int64_t cols, const QwenDeviceTensor& w, float* y) {
    const Phase ph(this, StepPhase::Norm);
    rmsnorm_forward_cuda(x, rows, cols, w.data, w.dtype, cfg.rms_norm_eps, y, st());
  }
  void rmsnorm_bwd(const float* dy, const float* x, int64_t rows, int64_t cols, const QwenDeviceTensor& w,
                   float* dx) {
    const Phase ph(this, StepPhase::Norm);
    rmsnorm_backward_cuda(dy, x, rows, cols, w.data, w.dtype, cfg.rms_norm_eps, dx, st());
  }

  void swiglu_fwd(const float* g, const float* u, int64_t n, float* out) {
    const Phase ph(this, StepPhase::Activation);
    swiglu_forward_cuda(g, u, n, out, st());
  }
  void swiglu_bwd(const float* dout, const float* g, const float* u, int64_t n, float* dg, float* du) {
    const Phase ph(this, StepPhase::Activation);
    swiglu_backward_cuda(dout, g, u, n, dg, du, st());
  }
  // a += b over n floats (a residual, or an accumulate path's sum).
  void add(float* a, const float* b, int64_t n) {
    const Phase ph(this, StepPhase::Residual);
    add_inplace_cuda(a, b, n, st());
  }

  // Expert e's rows of the MoE buffers under disp (rows == 0: no token chose it): its routed inputs, gate, up and
  // SwiGLU rows (the backward's dact, dgate and dup live on act and up).
  struct ExpertRows {
    int64_t r0 = 0, rows = 0;
    const float* x = nullptr;
    float *gate = nullptr, *up = nullptr, *act = nullptr;
  };
  ExpertRows expert_rows(int64_t e) const {
    const int64_t C = cfg.hidden_size, Im = cfg.moe_intermediate_size;
    ExpertRows x;
    x.r0 = disp.start[static_cast<size_t>(e)];
    x.rows = disp.start[static_cast<size_t>(e + 1)] - x.r0;
    x.x = mx.as<float>() + x.r0 * C;
    x.gate = mgate.as<float>() + x.r0 * Im;
    x.up = mup.as<float>() + x.r0 * Im;
    x.act = mact.as<float>() + x.r0 * Im;
    return x;
  }

  // The mixture-of-experts MLP of layer l on n [T, C] (trainer/moe_block.h's forward with the experts' adapters):
  // the router logits (and the shared expert's gate logit) go to the host, where moe_dispatch routes them as the CPU
  // block does and keeps what the backward needs (disp); the routed rows are gathered into mx grouped by expert, each
  // expert runs its three Linears (with their adapters, dropout keyed by expert_dropout_key) on its slice, keeping
  // gate, up, act and y per row, the shared expert the same on every token; out [T, C] = moe_combine of the rows
  // (out null: the recomputation of the backward, which needs the intermediates only).
  void moe_fwd(int64_t l, const float* n, int64_t T, float* out) {
    const Phase ph(this, StepPhase::Moe);
    const QwenConfig& c = cfg;
    const QwenDeviceMoe& M = base->device_moe(l);
    const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token, R = T * k,
                  Im = c.moe_intermediate_size, r = rank;
    const bool shared = M.shared[0].N > 0;
    base_forward(M.router, n, T, mlogits.as<float>());
    std::vector<float> lg(static_cast<size_t>(T * E)), gl(shared ? static_cast<size_t>(T) : 0);
    QWENQ_CUDA_CHECK(
        cudaMemcpyAsync(lg.data(), mlogits.get(), lg.size() * sizeof(float), cudaMemcpyDeviceToHost, st()));
    if (shared) {
      base_forward(M.shared_gate, n, T, mg.as<float>());
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(gl.data(), mg.get(), gl.size() * sizeof(float), cudaMemcpyDeviceToHost, st()));
    }
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(st()));
    disp = moe_dispatch(c, lg.data(), shared ? gl.data() : nullptr, T, /*for_backward=*/true);
    std::vector<int32_t> idx = disp.gather;  // mindex = gather then combine, mweight = the weights then σ(g)
    idx.insert(idx.end(), disp.combine.begin(), disp.combine.end());
    std::vector<float> w = disp.weight;
    w.insert(w.end(), disp.shared_gate.begin(), disp.shared_gate.end());
    upload_owned_async(mindex.get(), std::move(idx), st());
    upload_owned_async(mweight.get(), std::move(w), st());
    // The launchers check the indices on disp's host copies (no wait for the stream).
    embedding_gather_cuda(n, DType::F32, T, C, mindex.as<int32_t>(), R, mx.as<float>(), st(), disp.gather.data());
    float* U = mu.as<float>();
    for (int64_t e = 0; e < E; ++e) {
      const ExpertRows x = expert_rows(e);
      if (x.rows == 0) continue;
      const std::array<QwenDeviceLinear, 3>& X = M.experts[static_cast<size_t>(e)];
      lin_fwd(expert_lin(l, e, 0, X[0], U + x.r0 * r, T, x.r0), x.x, x.rows, x.gate);
      lin_fwd(expert_lin(l, e, 1, X[1], U + (R + x.r0) * r, T, x.r0), x.x, x.rows, x.up);
      swiglu_fwd(x.gate, x.up, x.rows * Im, x.act);
      lin_fwd(expert_lin(l, e, 2, X[2], U + (2 * R + x.r0) * r, T, x.r0), x.act, x.rows, my.as<float>() + x.r0 * C);
    }
    if (shared) {
      const int64_t Is = M.shared[0].N;
      float* SU = su.as<float>();
      lin_fwd(expert_lin(l, -1, 0, M.shared[0], SU, T, 0), n, T, sgate.as<float>());
      lin_fwd(expert_lin(l, -1, 1, M.shared[1], SU + T * r, T, 0), n, T, sup.as<float>());
      swiglu_fwd(sgate.as<float>(), sup.as<float>(), T * Is, sact.as<float>());
      lin_fwd(expert_lin(l, -1, 2, M.shared[2], SU + 2 * T * r, T, 0), sact.as<float>(), T, sy.as<float>());
    }
    if (out == nullptr) return;
    moe_combine_cuda(my.as<float>(), R, C, mindex.as<int32_t>() + R, mweight.as<float>(), T, k,
                     shared ? sy.as<float>() : nullptr, shared ? mweight.as<float>() + R : nullptr, out, st(),
                     disp.combine.data());
  }

  // dn [T, C] (written) = ∂L/∂n of layer l's MoE MLP given dout [T, C], after moe_fwd on the same n (moe_block.h's
  // backward): moe_combine_backward gives each row's dy = w · dout, ∂L/∂w (to the host: the routing's softmax
  // backward there, moe_router_backward, whose ∂L/∂logits come back into mlogits) and the shared expert's dy and
  // ∂L/∂g; each expert's Linears backward on its slice (dx rows on my's storage: y is dead once read), the rows added
  // back per token in ascending expert order (moe_scatter_add), then the router's dr W, the shared expert's dx and
  // its gate's dg w_sg, in moe_block_backward's order.
  void moe_bwd(int64_t l, const float* dout, const float* n, int64_t T, float* dn) {
    const Phase ph(this, StepPhase::Moe);
    const QwenConfig& c = cfg;
    const QwenDeviceMoe& M = base->device_moe(l);
    const int64_t C = c.hidden_size, E = c.num_experts, k = c.experts_per_token, R = T * k,
                  Im = c.moe_intermediate_size, r = rank;
    const bool shared = M.shared[0].N > 0;
    QWENQ_CHECK(static_cast<int64_t>(disp.choice.size()) == R,
                "LoraModelCuda: the backward of MoE layer " << l << " without its forward's routing");
    const int32_t* combine = mindex.as<int32_t>() + R;
    moe_combine_backward_cuda(dout, my.as<float>(), R, C, combine, mweight.as<float>(), T, k,
                              shared ? sy.as<float>() : nullptr, shared ? mweight.as<float>() + R : nullptr,
                              mdy.as<float>(), mdw.as<float>(), shared ? ds.as<float>() : nullptr,
                              shared ? dg.as<float>() : nullptr, st(), disp.combine.data());
    std::vector<float> dw_combine(static_cast<size_t>(R)), dw(static_cast<size_t>(R));
    QWENQ_CUDA_CHECK(
        cudaMemcpyAsync(dw_combine.data(), mdw.get(), R * sizeof(float), cudaMemcpyDeviceToHost, st()));
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(st()));
    for (int64_t i = 0; i < R; ++i) dw[static_cast<size_t>(disp.choice[i])] = dw_combine[static_cast<size_t>(i)];
    std::vector<float> dr(static_cast<size_t>(T * E));
    moe_router_backward(c, disp.probs.data(), disp.chosen.data(), disp.routed.data(), dw.data(), T, dr.data());
    upload_owned_async(mlogits.get(), std::move(dr), st());  // the logits are dead since the routing
    QWENQ_CUDA_CHECK(cudaMemsetAsync(dn, 0, static_cast<size_t>(T * C) * sizeof(float), st()));
    float* U = mu.as<float>();
    float* dx = my.as<float>();  // the experts' dx rows: y was last read by moe_combine_backward
    for (int64_t e = 0; e < E; ++e) {
      const ExpertRows x = expert_rows(e);  // act then holds dact, then dgate (as the dense MLP's act); up dup
      if (x.rows == 0) continue;
      const std::array<QwenDeviceLinear, 3>& X = M.experts[static_cast<size_t>(e)];
      const Lin down = expert_lin(l, e, 2, X[2], U + (2 * R + x.r0) * r, T, x.r0);
      lin_bwd(down, mdy.as<float>() + x.r0 * C, x.act, x.rows, x.act, false);
      swiglu_bwd(x.act, x.gate, x.up, x.rows * Im, x.act, x.up);  // in place
      lin_bwd(expert_lin(l, e, 0, X[0], U + x.r0 * r, T, x.r0), x.act, x.x, x.rows, dx + x.r0 * C, false);
      lin_bwd(expert_lin(l, e, 1, X[1], U + (R + x.r0) * r, T, x.r0), x.up, x.x, x.rows, dx + x.r0 * C, true);
    }
    moe_scatter_add_cuda(dx, R, C, combine, T, k, dn, st(), disp.combine.data());
    float* tmp_c = mtmp.as<float>();
    base_backward(M.router, mlogits.as<float>(), T, tmp_c);
    add(dn, tmp_c, T * C);
    if (!shared) return;
    const int64_t Is = M.shared[0].N;
    float* SU = su.as<float>();
    float* sa = sact.as<float>();
    lin_bwd(expert_lin(l, -1, 2, M.shared[2], SU + 2 * T * r, T, 0), ds.as<float>(), sa, T, sa, false);
    swiglu_bwd(sa, sgate.as<float>(), sup.as<float>(), T * Is, sa, sup.as<float>());
    float* sdx = ds.as<float>();  // dead once the down projection's backward read it
    lin_bwd(expert_lin(l, -1, 0, M.shared[0], SU, T, 0), sa, n, T, sdx, false);
    lin_bwd(expert_lin(l, -1, 1, M.shared[1], SU + T * r, T, 0), sup.as<float>(), n, T, sdx, true);
    add(dn, sdx, T * C);
    base_backward(M.shared_gate, dg.as<float>(), T, tmp_c);
    add(dn, tmp_c, T * C);
  }

  // Block l on x [T, C] (fp32); its output into checkpoint slot out_slot (save_slot; -1: intermediates only, the
  // recomputation of the backward, where a dense MLP's down projection computes only its u: lin_recompute).
  void block_fwd(int64_t l, const PackedBatch& b, const float* x, int64_t out_slot) {
    const QwenConfig& c = cfg;
    const QwenDeviceLayer& L = base->device_layer(l);
    const int64_t T = b.num_tokens(), C = c.hidden_size, I = c.intermediate_size, H = c.num_heads,
                  Hkv = c.num_kv_heads, D = c.head_dim;
    rmsnorm(x, T, C, L.input_norm, n1.as<float>());
    float* qp = q.as<float>();
    float* kp = k.as<float>();
    float* vp = v_.as<float>();
    linear_fwd(l, 0, n1.as<float>(), T, c.qk_norm ? qpre.as<float>() : qp);
    linear_fwd(l, 1, n1.as<float>(), T, c.qk_norm ? kpre.as<float>() : kp);
    linear_fwd(l, 2, n1.as<float>(), T, vp);
    if (c.qk_norm) {
      rmsnorm(qpre.as<float>(), T * H, D, L.q_norm, qp);
      rmsnorm(kpre.as<float>(), T * Hkv, D, L.k_norm, kp);
    }
    {
      const Phase ph(this, StepPhase::Rope);
      rope_forward_cuda(qp, T, H, D, positions.as<int32_t>(), c.rope, st());
      rope_forward_cuda(kp, T, Hkv, D, positions.as<int32_t>(), c.rope, st());
    }
    if (const Phase ph(this, StepPhase::Attention); uses_flash(D)) {
      f32_to_bf16_cuda(qp, T * H * D, q16.as<uint16_t>(), st());
      f32_to_bf16_cuda(kp, T * Hkv * D, k16.as<uint16_t>(), st());
      f32_to_bf16_cuda(vp, T * Hkv * D, v16.as<uint16_t>(), st());
      attention_forward_cuda(q16.get(), k16.get(), v16.get(), b.cu_seqlens.data(), b.num_seqs(), H, Hkv, D,
                             a16.get(), lse.as<float>(), DType::BF16, st());
      bf16_to_f32_cuda(a16.as<uint16_t>(), T * H * D, a.as<float>(), st());
    } else {
      attention_naive_forward_cuda(qp, kp, vp, b.cu_seqlens.data(), b.num_seqs(), H, Hkv, D, a.as<float>(),
                                   lse.as<float>(), st());
    }
    linear_fwd(l, 3, a.as<float>(), T, h1.as<float>());
    add(h1.as<float>(), x, T * C);
    rmsnorm(h1.as<float>(), T, C, L.post_norm, n2.as<float>());
    float* mlp = mlp_out();
    if (c.is_moe_layer(l)) {
      moe_fwd(l, n2.as<float>(), T, out_slot < 0 ? nullptr : mlp);
    } else {
      linear_fwd(l, 4, n2.as<float>(), T, gate.as<float>());
      linear_fwd(l, 5, n2.as<float>(), T, up.as<float>());
      swiglu_fwd(gate.as<float>(), up.as<float>(), T * I, act.as<float>());
      if (out_slot < 0) return lin_recompute(layer_lin(l, 6, T), act.as<float>(), T, mlp);
      linear_fwd(l, 6, act.as<float>(), T, mlp);
    }
    if (out_slot < 0) return;
    add(mlp, h1.as<float>(), T * C);  // = h1 + mlp (fp32 addition commutes)
    save_slot(out_slot, mlp, T);
  }

  // dx = ∂L/∂x of block l given d (in place: d holds dout on entry, dx on return). The gradients on another
  // buffer's storage (dact, dgate on act; dup on up; dn1 on dn2; with flash attention da, dq, dk, dv on a, q, k, v
  // and da16 on act16) are each written after that buffer's last read: trainer/lora_cuda_buffers.h.
  void block_bwd(int64_t l, const PackedBatch& b, const float* x, float* dd) {
    const QwenConfig& c = cfg;
    const QwenDeviceLayer& L = base->device_layer(l);
    const int64_t T = b.num_tokens(), C = c.hidden_size, I = c.intermediate_size, H = c.num_heads,
                  Hkv = c.num_kv_heads, D = c.head_dim;
    if (c.is_moe_layer(l)) {
      moe_bwd(l, dd, n2.as<float>(), T, dn2.as<float>());
    } else {
      linear_bwd(l, 6, dd, act.as<float>(), T, dact(), false);  // dact over act: its x, read first
      swiglu_bwd(dact(), gate.as<float>(), up.as<float>(), T * I, dgate(), dup());  // in place
      linear_bwd(l, 4, dgate(), n2.as<float>(), T, dn2.as<float>(), false);
      linear_bwd(l, 5, dup(), n2.as<float>(), T, dn2.as<float>(), true);
    }
    rmsnorm_bwd(dn2.as<float>(), h1.as<float>(), T, C, L.post_norm, dh1.as<float>());
    add(dh1.as<float>(), dd, T * C);
    float* dap = da_();
    float* dqp = dq_();
    float* dkp = dk_();
    float* dvp = dv_();
    linear_bwd(l, 3, dh1.as<float>(), a.as<float>(), T, dap, false);  // flash: da over a, its x, read first
    if (const Phase ph(this, StepPhase::Attention); flash()) {
      f32_to_bf16_cuda(dap, T * H * D, da16(), st());
      attention_backward_cuda(da16(), q16.get(), k16.get(), v16.get(), a16.get(), lse.as<float>(),
                              b.cu_seqlens.data(), b.num_seqs(), H, Hkv, D, dqp, dkp, dvp, DType::BF16, st());
    } else {
      attention_naive_backward_cuda(dap, q.as<float>(), k.as<float>(), v_.as<float>(), a.as<float>(),
                                    lse.as<float>(), b.cu_seqlens.data(), b.num_seqs(), H, Hkv, D, dqp, dkp, dvp,
                                    st());
    }
    {
      const Phase ph(this, StepPhase::Rope);
      rope_backward_cuda(dqp, T, H, D, positions.as<int32_t>(), c.rope, st());
      rope_backward_cuda(dkp, T, Hkv, D, positions.as<int32_t>(), c.rope, st());
    }
    if (c.qk_norm) {
      rmsnorm_bwd(dqp, qpre.as<float>(), T * H, D, L.q_norm, dqp);
      rmsnorm_bwd(dkp, kpre.as<float>(), T * Hkv, D, L.k_norm, dkp);
    }
    linear_bwd(l, 0, dqp, n1.as<float>(), T, dn1(), false);  // dn1 on dn2: dead since dh1 was computed
    linear_bwd(l, 1, dkp, n1.as<float>(), T, dn1(), true);
    linear_bwd(l, 2, dvp, n1.as<float>(), T, dn1(), true);
    rmsnorm_bwd(dn1(), x, T, C, L.input_norm, dd);
    add(dd, dh1.as<float>(), T * C);
  }

  // opt: training (loss and gradients); null: evaluation, with eval's checkpoint dtype.
  LoraStepResult run(const PackedBatch& b, const std::vector<int32_t>& tg, const LoraStepOptions* opt,
                     const LoraStepOptions& eval = LoraStepOptions{}) {
    const QwenConfig& c = cfg;
    const int64_t T = b.num_tokens(), C = c.hidden_size, V = c.vocab_size, Lc = c.num_layers;
    const bool train = opt != nullptr;
    QWENQ_CHECK(T > 0, "LoraModelCuda: empty batch");
    QWENQ_CHECK(b.positions.size() == b.tokens.size() && b.num_seqs() >= 1 && b.cu_seqlens.back() == T,
                "LoraModelCuda: malformed batch (" << T << " tokens, " << b.cu_seqlens.size() << " offsets)");
    QWENQ_CHECK(static_cast<int64_t>(tg.size()) == T,
                "lora_loss_and_grad: " << tg.size() << " targets for " << T << " tokens");
    // Before anything is queued, as the CPU trainer: a bad target's error names its batch row (the launchers' own
    // check sees a chunk, of gathered rows on the compact head).
    cross_entropy_count_targets("lora_loss_and_grad (GPU)", T, V, tg.data());
    drop_p = train && opt->train ? static_cast<float>(dropout) : 0.f;  // as the CPU Runner's p_
    drop_seed = train ? opt->dropout_seed : 0;
    QWENQ_CHECK((train ? opt : &eval)->dora_norms_from == nullptr,
                "LoraModelCuda: LoraStepOptions::dora_norms_from (a CPU test hook) is not supported on the GPU");
    reserve(T, train ? opt->bf16_checkpoints : eval.bf16_checkpoints);
    begin_profiled(train, StepPhase::Embed);  // evaluation calls are not profiled
    const ProfiledCall closes{this};
    // Copies the stream owns (upload_owned_async): an error before the step's first wait leaves nothing queued that
    // reads the caller's batch.
    upload_owned_async(tokens.get(), b.tokens, st());
    upload_owned_async(positions.get(), b.positions, st());
    upload_owned_async(targets.get(), tg, st());
    if (norms_stale) dora_norms();  // no-op without DoRA; A and B change only between calls
    embed(b, train && opt->train ? opt->neftune_half_width : 0.f, drop_seed);
    set_phase(StepPhase::Gaps);  // every op of the blocks has its own phase (Phase scopes)
    // Forward: every block input kept in training; in evaluation two alternating slots suffice. Each block reads
    // its input back from its slot (load_slot), so the forward sees the bf16-rounded inputs the recomputation
    // will see.
    for (int64_t l = 0; l < Lc; ++l) {
      const int64_t in = train ? l : (l % 2), outi = train ? l + 1 : ((l + 1) % 2);
      block_fwd(l, b, load_slot(in, T), outi);
    }
    const float* xL = load_slot(train ? Lc : (Lc % 2), T);  // stays in xin (bf16) until the first recompute
    const QwenDeviceTensor fn = base->device_final_norm(), head = base->device_lm_head();
    float* hid = hidden();  // n1's storage: no block is in flight until the first recomputation
    float* dhid = dhidden();
    rmsnorm(xL, T, C, fn, hid);
    const int64_t chunk = lora_cuda_logits_rows(T, V, options.logits_chunk_rows);  // trainer/lora_cuda_buffers.h
    if (chunk > logits_rows) {
      logits.reset();
      logits_rows = 0;
      logits = cuda_device_allocator().allocate(static_cast<size_t>(chunk * V) * sizeof(float), st(), MemoryTag::Logits,
                                                "LoraModelCuda: the logits [" + std::to_string(chunk) + ", " +
                                                    std::to_string(V) + "] fp32");
      logits_rows = chunk;
    }
    LoraStepResult res;
    set_phase(StepPhase::Head);
    // Only the rows with a target get logits (an SFT batch's masked prompt and each sequence's last token get none),
    // as on the CPU: when enough rows have none (below), the R rows that have one are gathered (rows[i], on tokens, dead since
    // the embedding) into n2, their targets into targets, and their dhidden rows come back from dn2 (both dead until
    // the first recomputation), a row without a target getting dn2's zero row R. Every row's logits depend on
    // that row alone: the loss and gradients are the full head's up to the GEMMs' summation order.
    std::vector<int32_t> rows;
    for (int64_t t = 0; t < T; ++t) {
      if (tg[static_cast<size_t>(t)] != kIgnoreIndex) rows.push_back(static_cast<int32_t>(t));
    }
    const int64_t R = static_cast<int64_t>(rows.size());
    // A batch with only a few rows without a target (plain text packs: each sequence's last token) keeps the direct
    // path: the gather and scatter move 4·T·C floats, about what a dozen rows of a 7B head cost (2·2·C·V FLOP each).
    const bool compact = (T - R) * 16 >= T;
    const int64_t scored = compact ? R : T;  // the head's rows: the gathered ones, or every row (-100 counts nothing)
    // Compact: the scored rows live on n2 and their dhidden rows on dn2, even for R = 0 (every target masked), so
    // that the zero row and the gather back never alias dhidden.
    const float* hrows = compact ? n2.as<float>() : hid;
    float* drows = compact ? dn2.as<float>() : dhid;
    std::vector<int32_t> kept;  // the gathered rows' targets
    if (compact && R > 0) {
      kept.resize(static_cast<size_t>(R));
      for (int64_t i = 0; i < R; ++i) kept[static_cast<size_t>(i)] = tg[static_cast<size_t>(rows[static_cast<size_t>(i)])];
      embedding_gather_cuda(hid, DType::F32, T, C, upload_rows(rows), R, n2.as<float>(), st(), rows.data());
      upload_owned_async(targets.get(), kept, st());
    }
    // The host's copy of what targets holds for the scored rows: the cross-entropy launchers check and count it
    // without waiting for the stream, so the chunks' GEMMs queue back to back.
    const int32_t* host_targets = compact ? kept.data() : tg.data();
    // The scored rows' token indices (sequence sums and a sequence objective's row weights).
    std::vector<int64_t> scored_rows(static_cast<size_t>(scored));
    for (int64_t i = 0; i < scored; ++i) scored_rows[static_cast<size_t>(i)] = compact ? rows[static_cast<size_t>(i)] : i;
    // A sequence objective (LoraStepOptions::sequence_objective, DPO): a first pass of the head for the NLL sums, the
    // objective's ∂L/∂S_j as per-row weights (on the tokens buffer: its row indices were read by the gather queued
    // above, and the slots after the loop are queued after the loss kernels that read the weights), then the
    // gradient pass.
    const float* row_scale = nullptr;
    if (train && opt->sequence_objective) {
      for (int64_t r0 = 0; r0 < scored; r0 += chunk) {
        const int64_t n = std::min(chunk, scored - r0);
        float* lg = logits.as<float>();
        linear_forward_cuda(hrows + r0 * C, n, C, head.data, head.dtype, V, nullptr, DType::F32, lg, DType::F32, st());
        cross_entropy_forward_cuda(lg, n, V, targets.as<int32_t>() + r0, nll.as<float>() + r0, st(), host_targets + r0);
      }
      std::vector<float> first(static_cast<size_t>(scored));
      if (scored > 0) {
        QWENQ_CUDA_CHECK(cudaMemcpyAsync(first.data(), nll.get(), scored * sizeof(float), cudaMemcpyDeviceToHost, st()));
      }
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(st()));
      const std::vector<double> sums = sequence_nll_sums(first.data(), b.cu_seqlens, scored_rows);
      upload_owned_async(tokens.get(), sequence_row_scales(opt->sequence_objective(sums), b.cu_seqlens, scored_rows),
                         st());
      row_scale = tokens.as<float>();
    }
    for (int64_t r0 = 0; r0 < scored; r0 += chunk) {
      const int64_t n = std::min(chunk, scored - r0);
      float* lg = logits.as<float>();
      linear_forward_cuda(hrows + r0 * C, n, C, head.data, head.dtype, V, nullptr, DType::F32, lg, DType::F32,
                          st());
      if (!train) {
        res.counted += cross_entropy_forward_cuda(lg, n, V, targets.as<int32_t>() + r0, nll.as<float>() + r0, st(),
                                                  host_targets + r0);
        continue;
      }
      res.counted += cross_entropy_fused_cuda(lg, n, V, targets.as<int32_t>() + r0,
                                              static_cast<float>(opt->grad_scale), nll.as<float>() + r0, st(),
                                              host_targets + r0, row_scale ? row_scale + r0 : nullptr);
      linear_backward_input_cuda(lg, n, V, head.data, head.dtype, C, drows + r0 * C, DType::F32, st());
    }
    if (train && compact) {  // dhidden [T, C]: row t = drows[slot of t], slot R (zeros) for a row without a target
      QWENQ_CUDA_CHECK(cudaMemsetAsync(drows + R * C, 0, static_cast<size_t>(C) * sizeof(float), st()));
      std::vector<int32_t> slot(static_cast<size_t>(T), static_cast<int32_t>(R));
      for (int64_t i = 0; i < R; ++i) slot[static_cast<size_t>(rows[static_cast<size_t>(i)])] = static_cast<int32_t>(i);
      embedding_gather_cuda(drows, DType::F32, R + 1, C, upload_rows(slot), T, dhid, st(), slot.data());
    }
    std::vector<float> host_nll(static_cast<size_t>(scored));
    if (scored > 0) {
      QWENQ_CUDA_CHECK(
          cudaMemcpyAsync(host_nll.data(), nll.get(), scored * sizeof(float), cudaMemcpyDeviceToHost, st()));
    }
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(st()));
    for (float f : host_nll) res.nll_sum += f;
    QWENQ_CHECK(std::isfinite(res.nll_sum), "lora_loss_and_grad (GPU): the loss is not finite");
    res.seq_nll = sequence_nll_sums(host_nll.data(), b.cu_seqlens, scored_rows);
    if (!train) return res;
    float* dd = d.as<float>();
    set_phase(StepPhase::Gaps);
    rmsnorm_bwd(dhid, xL, T, C, fn, dd);
    for (int64_t l = Lc - 1; l >= 0; --l) {
      const float* x = load_slot(l, T);
      block_fwd(l, b, x, -1);  // recompute the intermediates
      block_bwd(l, b, x, dd);
    }
    end_profiled();
    // Surface an asynchronous fault here, with the step, rather than at the next call.
    QWENQ_CUDA_CHECK(cudaStreamSynchronize(st()));
    return res;
  }

  // `a` has the uploaded adapter's targets, dimensions (the MoE ones included) and, slot by slot, its Linears.
  void check_same(const LoraAdapter& a, const char* what) const {
    const LoraDims& d = a.dims();
    bool same = a.targets() == targets_ && a.uniform_rank() == rank && a.slots().size() == slots.size() &&
                d.num_layers == dims.num_layers && d.hidden_size == dims.hidden_size &&
                d.intermediate_size == dims.intermediate_size && d.q_dim == dims.q_dim && d.kv_dim == dims.kv_dim &&
                d.moe_layer == dims.moe_layer && d.num_experts == dims.num_experts &&
                d.moe_intermediate_size == dims.moe_intermediate_size &&
                d.shared_expert_intermediate_size == dims.shared_expert_intermediate_size;
    for (size_t i = 0; same && i < slots.size(); ++i) {
      const LoraSlot& ls = a.slots()[i];
      const LoraWeights& w = a.weights(i);
      const Slot& sl = slots[i];
      same = ls.layer == sl.layer && ls.target == sl.target && ls.expert == sl.expert && w.N == sl.N &&
             w.K == sl.K && w.r == sl.r && static_cast<int64_t>(w.A.size()) == sl.r * sl.K &&
             static_cast<int64_t>(w.B.size()) == sl.N * sl.r &&
             static_cast<int64_t>(w.m.size()) == (sl.m_off >= 0 ? sl.N : 0);
    }
    QWENQ_CHECK(same, "LoraModelCuda: " << what << " has other shapes or targets than the uploaded adapter (r "
                                        << a.config().r << " vs " << rank << ", " << a.targets().size() << " vs "
                                        << targets_.size() << " targets, " << a.slots().size() << " vs "
                                        << slots.size() << " adapted Linears)");
  }

  // Host <-> device through one staging buffer (lora_arena_put / get: the arenas are the slots' A then B (then DoRA's
  // m) in order, a_off, b_off, m_off), so a large adapter has no second whole host copy.
  static constexpr int64_t kStageFloats = int64_t{16} << 20;

  void put(const DeviceAllocation& arena, const LoraAdapter& a, const char* what) {
    check_same(a, what);
    if (&arena == &params) norms_stale = true;
    lora_arena_put(a, kStageFloats, [&](const float* data, int64_t offset, int64_t n) {
      QWENQ_CHECK(offset + n <= total, "LoraModelCuda: " << what << " overflows the arena of " << total << " floats");
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(arena.as<float>() + offset, data, static_cast<size_t>(n) * sizeof(float),
                                       cudaMemcpyHostToDevice, st()));
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(st()));  // the stage is refilled next
    });
  }

  void get(const DeviceAllocation& arena, LoraAdapter* a, const char* what) const {
    check_same(*a, what);
    lora_arena_get(a, kStageFloats, [&](float* data, int64_t offset, int64_t n) {
      QWENQ_CHECK(offset + n <= total, "LoraModelCuda: " << what << " overflows the arena of " << total << " floats");
      QWENQ_CUDA_CHECK(cudaMemcpyAsync(data, arena.as<float>() + offset, static_cast<size_t>(n) * sizeof(float),
                                       cudaMemcpyDeviceToHost, st()));
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(st()));
    });
  }
};

LoraModelCuda::LoraModelCuda(const QwenModel& model, const LoraAdapter& adapter, const LoraModelCudaOptions& options)
    : impl_(std::make_unique<Impl>(model.config(), adapter, options)) {
  Impl& m = *impl_;
  const QwenConfig& c = m.cfg;
  QWENQ_CHECK(!adapter.config().seq_cls(), "the GPU trainer has no score head (a reward model's adapter, task_type "
                                           "SEQ_CLS): train it on the CPU");
  QWENQ_CHECK(adapter.gpu_refusal().empty(), "LoraModelCuda: " << adapter.gpu_refusal() << " (train on the CPU)");
  QWENQ_CHECK(options.logits_chunk_rows >= 0,
              "LoraModelCuda: logits_chunk_rows must be 0 (the default chunk) or positive, got "
                  << options.logits_chunk_rows);
  const LoraDims& d = adapter.dims();
  QWENQ_CHECK(d.hidden_size == c.hidden_size && d.intermediate_size == c.intermediate_size && d.q_dim == c.q_dim() &&
                  d.kv_dim == c.kv_dim() && d.num_layers == c.num_layers,
              "the adapter was made for another base model (hidden " << d.hidden_size << ", intermediate "
                  << d.intermediate_size << ", " << d.num_layers << " layers; the model has " << c.hidden_size << ", "
                  << c.intermediate_size << ", " << c.num_layers << ")");
  const LoraDims want = lora_dims_of(c);
  QWENQ_CHECK(d.moe_layer == want.moe_layer && d.num_experts == want.num_experts &&
                  d.moe_intermediate_size == want.moe_intermediate_size &&
                  d.shared_expert_intermediate_size == want.shared_expert_intermediate_size,
              "the adapter was made for another base model (" << d.num_experts << " experts of width "
                  << d.moe_intermediate_size << ", shared expert " << d.shared_expert_intermediate_size
                  << "; the model has " << want.num_experts << ", " << want.moe_intermediate_size << ", "
                  << want.shared_expert_intermediate_size << ")");
  QwenModelCudaOptions up;
  up.upload_embedding = false;  // an untied table stays on the host: only a batch's rows are uploaded (embed)
  m.base = std::make_unique<QwenModelCuda>(model, up);
  if (m.base->device_embed().data == nullptr) m.host_embed = model.weights().embed;
  m.s = static_cast<float>(adapter.uniform_scaling());
  m.dropout = adapter.config().dropout;
  m.slot_of.assign(static_cast<size_t>(c.num_layers * 7), -1);
  int64_t norm_floats = 0;
  if (adapter.use_dora()) {
    m.dora_targets = adapter.targets();
    for (LoraTarget t : m.dora_targets)
      m.dora_col[static_cast<int>(t)] = lora_cuda_dora_shape(c, m.dora_targets, t).offset;
    if (c.is_moe()) m.dora_moe = lora_cuda_dora_moe(c, m.dora_targets);
  }
  m.expert_slot_of.assign(static_cast<size_t>(c.num_layers), {});
  for (size_t i = 0; i < adapter.slots().size(); ++i) {
    const LoraSlot& ls = adapter.slots()[i];
    const LoraWeights& w = adapter.weights(i);
    Slot sl;
    sl.layer = ls.layer;
    sl.target = ls.target;
    sl.expert = ls.expert;
    sl.index = i;
    sl.N = w.N, sl.K = w.K, sl.r = w.r;
    sl.a_off = m.total;
    sl.b_off = m.total + w.r * w.K;
    m.total += w.r * (w.K + w.N);
    if (adapter.use_dora()) {  // m after B (lora_arena_put's order); its row norms at n_off of `norms`
      QWENQ_CHECK(static_cast<int64_t>(w.m.size()) == w.N,
                  "LoraModelCuda: the DoRA magnitude of adapted Linear " << i << " has " << w.m.size()
                                                                         << " values, not " << w.N);
      sl.m_off = m.total;
      m.total += w.N;
      sl.n_off = norm_floats;
      norm_floats += w.N;
    }
    const int at = static_cast<int>(m.slots.size());
    if (ls.expert == kNoExpert) {
      m.slot_of[static_cast<size_t>(ls.layer * 7 + static_cast<int>(ls.target))] = at;
    } else {
      std::vector<int>& v = m.expert_slot_of[static_cast<size_t>(ls.layer)];
      if (v.empty()) v.assign(static_cast<size_t>((c.num_experts + 1) * 3), -1);
      v[static_cast<size_t>((ls.expert + 1) * 3 + moe_expert_index(ls.target))] = at;
    }
    m.slots.push_back(sl);
  }
  // The clip order of the CPU loop (the adapter's slots: layer, targets in table order, a MoE layer's MLP targets
  // expert by expert then the shared expert; A then B) is the slots' order.
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(m.total, 1)) * sizeof(float);
  const std::string floats =
      " [" + std::to_string(m.total) + " floats, " + std::to_string(m.slots.size()) + " Linears]";
  DeviceAllocator& alloc = cuda_device_allocator();
  m.params = alloc.allocate(bytes, m.st(), MemoryTag::Adapter, "LoraModelCuda: the adapter A and B" + floats);
  m.grads = alloc.allocate(bytes, m.st(), MemoryTag::Gradients, "LoraModelCuda: the adapter gradients" + floats);
  m.m = alloc.allocate(bytes, m.st(), MemoryTag::Optimizer, "LoraModelCuda: AdamW's m" + floats);
  m.v = alloc.allocate(bytes, m.st(), MemoryTag::Optimizer, "LoraModelCuda: AdamW's v" + floats);
  if (norm_floats > 0) {
    m.norms = alloc.allocate(static_cast<size_t>(norm_floats) * sizeof(float), m.st(), MemoryTag::Adapter,
                             "LoraModelCuda: DoRA's row norms [" + std::to_string(norm_floats) + " floats]");
  }
  m.put(m.params, adapter, "the adapter");
  QWENQ_CUDA_CHECK(cudaMemsetAsync(m.grads.get(), 0, bytes, m.st()));
  QWENQ_CUDA_CHECK(cudaMemsetAsync(m.m.get(), 0, bytes, m.st()));
  QWENQ_CUDA_CHECK(cudaMemsetAsync(m.v.get(), 0, bytes, m.st()));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.st()));
}

LoraModelCuda::~LoraModelCuda() = default;

StepProfile* LoraModelCuda::enable_profile() {
  if (!impl_->prof) impl_->prof = std::make_unique<StepProfile>(make_cuda_step_clock(impl_->st()));
  return impl_->prof.get();
}

StepProfile* LoraModelCuda::profile() const { return impl_->prof.get(); }
LoraModelCuda::FoldCounts LoraModelCuda::fold_counts() const { return impl_->folds; }

LoraStepResult LoraModelCuda::loss_and_grad(const PackedBatch& batch, const std::vector<int32_t>& targets,
                                            const LoraStepOptions& opt) {
  QWENQ_CHECK(opt.logit_scale == 1.0 && !opt.token_objective && opt.score_rows.empty(),
              "the GPU trainer has no logit scale, token objective (GRPO's) or score head (a reward model's): train on "
              "the CPU");
  return impl_->run(batch, targets, &opt);
}

LoraStepResult LoraModelCuda::loss(const PackedBatch& batch, const std::vector<int32_t>& targets,
                                   const LoraStepOptions& opt) {
  QWENQ_CHECK(opt.logit_scale == 1.0 && opt.score_rows.empty(),
              "the GPU trainer has no logit scale (GRPO's sampling temperature) or score head: train on the CPU");
  return impl_->run(batch, targets, nullptr, opt);
}

float LoraModelCuda::adamw_step(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                                double max_grad_norm, double loraplus_lr_ratio) {
  Impl& m = *impl_;
  std::vector<float*> ptr;
  std::vector<int64_t> size;
  for (const Slot& sl : m.slots) {  // the CPU loop's order: A, B (and DoRA's m) per slot
    ptr.push_back(m.grads.as<float>() + sl.a_off);
    size.push_back(sl.r * sl.K);
    ptr.push_back(m.grads.as<float>() + sl.b_off);
    size.push_back(sl.N * sl.r);
    if (sl.m_off < 0) continue;
    ptr.push_back(m.grads.as<float>() + sl.m_off);
    size.push_back(sl.N);
  }
  m.begin_profiled(true, StepPhase::Optimizer);
  const Impl::ProfiledCall closes{&m};
  const float norm = clip_grad_norm_cuda(ptr.data(), size.data(), static_cast<int>(ptr.size()),
                                         static_cast<float>(max_grad_norm > 0 ? max_grad_norm : INFINITY), m.st());
  if (!std::isfinite(norm)) {
    m.end_profiled();
    return norm;
  }
  // AdamW is elementwise: one launch over the whole arena is the per-tensor update of the CPU loop. With LoRA+ a
  // slot's A [r, K] runs at lr and the B [N, r] and m [N] that follow it in the arena at ratio · lr: two launches.
  const auto update = [&](int64_t off, int64_t n, double rate) {
    adamw_step_cuda(m.params.as<float>() + off, m.grads.as<float>() + off, m.m.as<float>() + off,
                    m.v.as<float>() + off, n, rate, beta1, beta2, eps, weight_decay, step, m.st());
  };
  if (m.total > 0) {
    m.norms_stale = true;
    if (loraplus_lr_ratio == 1.0) {
      update(0, m.total, lr);
    } else {
      for (const Slot& sl : m.slots) {
        update(sl.a_off, sl.b_off - sl.a_off, lr);
        update(sl.b_off, sl.N * sl.r + (sl.m_off >= 0 ? sl.N : 0), lr * loraplus_lr_ratio);
      }
    }
  }
  m.end_profiled();
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.st()));
  return norm;
}

void LoraModelCuda::all_reduce_grads(ProcessGroup& group) {
  Impl& m = *impl_;
  // The first call chooses the transport on every rank together: QWENQ_DP_NCCL comes to the started ranks from rank
  // 0's environment, and the ranks check that they agree before any of them sets NCCL up.
  if (!m.dp_ready) {
    m.dp_ready = true;
    const bool want = nccl_requested();
    group.check_same(want ? 1 : 0, "QWENQ_DP_NCCL (the gradients' transport)");
    std::string why;
    // Ranks on one GPU (QWENQ_DP_SHARE_GPU=1, inherited from rank 0's environment): NCCL refuses a communicator
    // with two ranks on one device (ncclInvalidUsage, "Duplicate GPU detected"), so they keep the host path.
    const bool shared_gpu = want && group.world() > 1 && env_switch("QWENQ_DP_SHARE_GPU") == 1;
    if (shared_gpu) why = "the ranks share one GPU (QWENQ_DP_SHARE_GPU=1), which NCCL refuses";
    if (want && !shared_gpu) {
      // ncclCommInitRank takes its buffers with cudaMalloc, past this allocator: give back what the step's peak
      // left cached first (a tight plan's first step has just reached it).
      QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.st()));
      cuda_device_allocator().empty_cache();
      m.nccl = NcclComm::create(group, &why);
    }
    if (want && group.rank() == 0) {
      if (m.nccl) std::fprintf(stderr, "data parallel: the gradients are summed by NCCL (QWENQ_DP_NCCL=1)\n");
      else std::fprintf(stderr, "data parallel: QWENQ_DP_NCCL=1, but %s: the gradients go through host memory\n", why.c_str());
    }
  }
  if (m.nccl) {
    m.nccl->all_reduce_sum(m.grads.as<float>(), m.total, m.st(), &group);  // returns when the stream has run it
    return;
  }
  if (m.total == 0) {  // still a call: every rank makes the same ones
    group.all_reduce_sum(static_cast<float*>(nullptr), 0);
    return;
  }
  const size_t bytes = static_cast<size_t>(m.total) * sizeof(float);
  m.grads_host.reserve(m.total);
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(m.grads_host.data(), m.grads.get(), bytes, cudaMemcpyDeviceToHost, m.st()));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.st()));
  group.all_reduce_sum(m.grads_host.data(), m.total);
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(m.grads.get(), m.grads_host.data(), bytes, cudaMemcpyHostToDevice, m.st()));
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(m.st()));  // the host buffer is written again by the next call
}

void LoraModelCuda::zero_grads() {
  QWENQ_CUDA_CHECK(cudaMemsetAsync(impl_->grads.get(), 0, impl_->grads.bytes(), impl_->st()));
}

void LoraModelCuda::download(LoraAdapter* adapter) const { impl_->get(impl_->params, adapter, "the adapter"); }
void LoraModelCuda::upload(const LoraAdapter& adapter) { impl_->put(impl_->params, adapter, "the adapter"); }
void LoraModelCuda::download_grads(LoraAdapter* grads) const { impl_->get(impl_->grads, grads, "the gradients"); }
void LoraModelCuda::download_optimizer(LoraAdapter* m, LoraAdapter* v) const {
  impl_->get(impl_->m, m, "AdamW's m");
  impl_->get(impl_->v, v, "AdamW's v");
}
void LoraModelCuda::upload_optimizer(const LoraAdapter& m, const LoraAdapter& v) {
  impl_->put(impl_->m, m, "AdamW's m");
  impl_->put(impl_->v, v, "AdamW's v");
}

QwenModelCuda& LoraModelCuda::base() { return *impl_->base; }

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
