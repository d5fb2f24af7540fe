// The per-layer weight arena's layout (trainer/qwen_weight_arena.h).
#include "trainer/qwen_weight_arena.h"

#include "core/error.h"
#include "core/tensor.h"

namespace qwenq {

uint64_t WeightArenaLayout::add(uint64_t bytes) {
  QWENQ_CHECK(bytes > 0, "WeightArenaLayout: a piece of 0 bytes (an absent tensor takes no piece)");
  const uint64_t at = end_;
  end_ += (bytes + kWeightArenaAlignment - 1) / kWeightArenaAlignment * kWeightArenaAlignment;
  return at;
}

std::string gpu_linear_refusal(const LinearWeight& w) {
  if (w.N == 0 || w.is_dense()) return "";
  if (w.fp8) return "FP8 checkpoints run on the CPU only (--device cpu); for the GPU, `qwen-quant dequantize` one to bf16 first";
  if (!w.packed && !w.nf4) {
    return "GGUF models run on the CPU only (--device cpu); the GPU reads dense, GPTQ, AWQ and bitsandbytes 4-bit "
           "checkpoints";
  }
  try {
    if (w.packed) {
      q4_check_int_linear(*w.packed);
    } else {
      q4_check_nf4(w.nf4->q, w.N, w.K);
    }
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

namespace {

// Lays pieces out and records their copies (and the Q4 repacks they read) into an arena's lists. dry: the layout
// alone (qwen_*_arena_bytes): no copies, a packed Linear's Q4 pieces sized without the repack.
struct Builder {
  std::vector<ArenaCopy>& copies;
  std::vector<Q4Layout>& repacked;
  uint64_t& linear_bytes;
  WeightArenaLayout layout;
  bool dry = false;

  // A piece of `bytes` copied from `src`; returns its offset.
  int64_t piece(const void* src, uint64_t bytes) {
    const uint64_t at = layout.add(bytes);
    if (!dry) copies.push_back({src, bytes, at});
    return static_cast<int64_t>(at);
  }

  ArenaTensor tensor(const TensorView& t) {
    ArenaTensor r;
    if (t.data == nullptr) return r;
    r.bytes = t.nbytes();
    r.dtype = t.dtype;
    r.offset = piece(t.data, r.bytes);
    return r;
  }

  // An absent Linear (N = 0: a MoE layer's dense MLP members, an absent shared expert) takes no piece.
  ArenaLinear linear(const LinearWeight& w, const TensorView& bias, const std::string& name) {
    ArenaLinear r;
    if (w.N == 0) return r;
    r.N = w.N;
    r.K = w.K;
    const uint64_t before = layout.bytes();
    if (w.is_dense()) {
      r.dense = tensor(w.dense);
    } else {
      const auto refuse = [&](const std::string& why) {
        return Error("QwenModelCuda: cannot run '" + name + "' on the GPU, whose dequant-matmul reads 4-bit "
                     "GPTQ/AWQ/NF4/FP4 weights with groups of a multiple of 8 (use --device cpu): " + why);
      };
      const std::string why = gpu_linear_refusal(w);
      if (!why.empty()) throw refuse(why);
      r.is_q4 = true;
      if (dry) {  // the repack's sizes (quant/format/qgemm_layout.h)
        const int64_t group = w.packed ? q4_int_layout_group(w.K, w.packed->group)
                                       : q4_nf4_layout_group(w.K, w.nf4->q.blocksize);
        r.qweight_offset = piece(nullptr, static_cast<uint64_t>(q4_qweight_words(w.N, w.K)) * sizeof(uint32_t));
        r.meta_offset = piece(nullptr, static_cast<uint64_t>(q4_meta_words(w.N, w.K, group)) * sizeof(uint32_t));
        if (w.packed && q4_int_has_perm(*w.packed)) {
          r.perm_offset = piece(nullptr, static_cast<uint64_t>(w.K) * sizeof(int32_t));
        }
      } else {
        try {  // what is left to fail is the data itself (a code or zero point out of range)
          repacked.push_back(w.packed ? q4_from_int_linear(*w.packed) : q4_from_nf4(w.nf4->q, w.N, w.K));
          q4_check(repacked.back().view(), "the Q4 repack");
        } catch (const Error& e) {
          throw refuse(e.what());
        }
        const Q4Layout& q = repacked.back();
        r.q4 = q.view();
        r.q4.qweight = nullptr;
        r.q4.meta = nullptr;
        r.q4.perm = nullptr;
        r.qweight_offset = piece(q.qweight.data(), q.qweight.size() * sizeof(uint32_t));
        r.meta_offset = piece(q.meta.data(), q.meta.size() * sizeof(uint32_t));
        if (!q.perm.empty()) r.perm_offset = piece(q.perm.data(), q.perm.size() * sizeof(int32_t));
      }
    }
    linear_bytes += layout.bytes() - before;
    r.bias = tensor(bias);
    return r;
  }
};

}  // namespace

namespace {

QwenLayerArena layer_arena(const QwenLayerWeights& w, const std::string& prefix, bool dry) {
  QwenLayerArena a;
  // The copies point into the repacks' vectors, whose buffers stay where they are when push_back moves the
  // vectors (a move keeps a vector's buffer); reserving all seven up front makes that obvious.
  a.repacked.reserve(7);
  Builder b{a.copies, a.repacked, a.linear_bytes, {}, dry};
  a.input_norm = b.tensor(w.input_norm);
  a.post_norm = b.tensor(w.post_norm);
  a.q_norm = b.tensor(w.q_norm);
  a.k_norm = b.tensor(w.k_norm);
  a.q = b.linear(w.q, w.q_bias, prefix + "self_attn.q_proj");
  a.k = b.linear(w.k, w.k_bias, prefix + "self_attn.k_proj");
  a.v = b.linear(w.v, w.v_bias, prefix + "self_attn.v_proj");
  a.o = b.linear(w.o, TensorView{}, prefix + "self_attn.o_proj");
  a.gate = b.linear(w.gate, TensorView{}, prefix + "mlp.gate_proj");
  a.up = b.linear(w.up, TensorView{}, prefix + "mlp.up_proj");
  a.down = b.linear(w.down, TensorView{}, prefix + "mlp.down_proj");
  a.bytes = b.layout.bytes();
  return a;
}

QwenMoeArena moe_arena(const MoeWeights& m, const std::string& prefix, bool dry) {
  QwenMoeArena a;
  Builder b{a.copies, a.repacked, a.linear_bytes, {}, dry};
  const auto expert = [&](const MoeExpertWeights& e, const std::string& path) {
    return std::array<ArenaLinear, 3>{b.linear(e.gate, TensorView{}, path + "gate_proj"),
                                      b.linear(e.up, TensorView{}, path + "up_proj"),
                                      b.linear(e.down, TensorView{}, path + "down_proj")};
  };
  a.router = b.linear(m.router, TensorView{}, prefix + "mlp.gate");
  a.experts.reserve(m.experts.size());
  for (size_t e = 0; e < m.experts.size(); ++e) {
    a.experts.push_back(expert(m.experts[e], prefix + moe_expert_path(static_cast<int64_t>(e))));
  }
  if (m.shared.gate.N > 0) {
    a.shared = expert(m.shared, prefix + moe_expert_path(-1));
    a.shared_gate = b.linear(m.shared_gate, TensorView{}, prefix + "mlp.shared_expert_gate");
  }
  a.bytes = b.layout.bytes();
  return a;
}

}  // namespace

QwenLayerArena qwen_layer_arena(const QwenLayerWeights& w, const std::string& prefix) {
  return layer_arena(w, prefix, false);
}

QwenMoeArena qwen_moe_arena(const MoeWeights& m, const std::string& prefix) { return moe_arena(m, prefix, false); }

uint64_t qwen_layer_arena_bytes(const QwenLayerWeights& w, const std::string& prefix) {
  return layer_arena(w, prefix, true).bytes;
}

uint64_t qwen_moe_arena_bytes(const MoeWeights& m, const std::string& prefix) { return moe_arena(m, prefix, true).bytes; }

const void* arena_ptr(const void* base, const ArenaTensor& t) {
  return t.present() ? static_cast<const uint8_t*>(base) + t.offset : nullptr;
}

Q4View arena_q4_view(const void* base, const ArenaLinear& l) {
  QWENQ_CHECK(l.is_q4, "arena_q4_view: the Linear [" << l.N << ", " << l.K << "] is dense");
  const auto* p = static_cast<const uint8_t*>(base);
  Q4View v = l.q4;
  v.qweight = reinterpret_cast<const uint32_t*>(p + l.qweight_offset);
  v.meta = reinterpret_cast<const uint32_t*>(p + l.meta_offset);
  v.perm = l.perm_offset < 0 ? nullptr : reinterpret_cast<const int32_t*>(p + l.perm_offset);
  return v;
}

}  // namespace qwenq
