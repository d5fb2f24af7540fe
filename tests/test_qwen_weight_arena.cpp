// The per-layer weight arena of the GPU model (trainer/qwen_weight_arena.h), on the CPU: a layer that mixes every
// format QwenModelCuda stores (BF16 / F16 / F32 dense tensors of awkward byte counts, GPTQ v1 with act-order, GPTQ
// v2 with one group, AutoAWQ GEMM, NF4 with double quantization, FP4, present and absent biases and q/k norms) is
// laid out, its copies are made into a host buffer as QwenModelCuda makes them into device memory, and every tensor
// is read back through arena_ptr / arena_q4_view:
//   - offsets multiples of 256, pieces in order and disjoint, the arena's size Σ round_up(piece, 256);
//   - dense tensors bit for bit equal to their source, absent ones null;
//   - each Q4 Linear unpacked from the arena (q4_unpack) equal, bit for bit, to what the source format's own reader
//     computes (LinearWeight::dequantize: dequantize_int_linear / nf4_dequantize): the oracle for offsets, sizes
//     and the repack;
//   - the bytes around the pieces (alignment gaps, guard after the end) untouched;
//   - refusals: a Linear the Q4 kernels cannot read names the Linear; a zero-byte piece.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_weight_arena.h"

namespace qwenq {
namespace {

constexpr uint8_t kGuard = 0xA5;
constexpr size_t kGuardBytes = 512;

// Host storage behind TensorViews: seeded random bytes of a dtype and shape.
struct Store {
  std::vector<std::unique_ptr<std::vector<uint8_t>>> blobs;
  Rng rng{31};
  TensorView make(DType dtype, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> f(static_cast<size_t>(n));
    for (float& x : f) x = static_cast<float>(rng.normal());
    auto bytes = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(n) * dtype_size(dtype));
    from_f32(dtype, f.data(), bytes->data(), f.size());
    TensorView t;
    t.data = bytes->data();
    t.dtype = dtype;
    t.shape = std::move(shape);
    blobs.push_back(std::move(bytes));
    return t;
  }
  LinearWeight dense(DType dtype, int64_t N, int64_t K) {
    LinearWeight w;
    w.N = N;
    w.K = K;
    w.dense = make(dtype, {N, K});
    return w;
  }
};

LinearWeight int_linear(IntLayout layout, int64_t N, int64_t K, int64_t group, bool act_order, uint64_t seed) {
  LinearWeight w;
  w.N = N;
  w.K = K;
  w.packed = std::make_shared<PackedIntLinear>(q4_synthetic_int_linear(layout, K, N, group, act_order, seed));
  return w;
}

LinearWeight nf4_linear(int64_t N, int64_t K, bool fp4, bool double_quant, uint64_t seed) {
  LinearWeight w;
  w.N = N;
  w.K = K;
  auto q = std::make_shared<Nf4Linear>();
  q->q = q4_synthetic_nf4(N, K, fp4, 64, double_quant, seed);
  q->shape = {N, K};
  q->dtype = "bfloat16";
  w.nf4 = q;
  return w;
}

// Every format in one layer, with sizes that are not multiples of 256 B.
QwenLayerWeights mixed_layer(Store& st) {
  QwenLayerWeights w;
  w.input_norm = st.make(DType::BF16, {24});   // 48 B
  w.post_norm = st.make(DType::F32, {24});     // 96 B
  w.q_norm = st.make(DType::F16, {8});         // 16 B
  w.k_norm = st.make(DType::BF16, {8});
  w.q = st.dense(DType::BF16, 40, 24);         // 1920 B
  w.q_bias = st.make(DType::BF16, {40});
  w.k = int_linear(IntLayout::GptqV1, 16, 64, 16, true, 1);  // act-order: a perm piece
  w.k_bias = st.make(DType::F32, {16});
  w.v = nf4_linear(12, 64, false, true, 2);  // v_bias absent
  w.o = int_linear(IntLayout::AwqGemm, 16, 48, 16, false, 3);
  w.gate = nf4_linear(20, 128, true, false, 4);  // FP4
  w.up = st.dense(DType::F32, 7, 5);             // 140 B
  w.down = int_linear(IntLayout::GptqV2, 24, 200, -1, false, 5);  // one group over K = 200
  return w;
}

uint64_t round_up(uint64_t n) {
  return (n + kWeightArenaAlignment - 1) / kWeightArenaAlignment * kWeightArenaAlignment;
}

TEST(QwenWeightArena, LayoutOfAlignedDisjointPieces) {
  WeightArenaLayout l;
  EXPECT_EQ(l.add(1), 0u);
  EXPECT_EQ(l.add(256), 256u);
  EXPECT_EQ(l.add(257), 512u);
  EXPECT_EQ(l.add(3), 1024u);
  EXPECT_EQ(l.bytes(), 1280u);
  EXPECT_NE(test::error_of([&] { l.add(0); }).find("a piece of 0 bytes"), std::string::npos);

  Store st;
  const QwenLayerWeights w = mixed_layer(st);
  const QwenLayerArena a = qwen_layer_arena(w, "model.layers.3.");
  // 4 norms, q + bias, k (qweight, meta, perm) + bias, v (qweight, meta), o (2), gate (2), up, down (2).
  ASSERT_EQ(a.copies.size(), 4u + 2 + 4 + 2 + 2 + 2 + 1 + 2);
  uint64_t sum = 0, end = 0;
  for (const ArenaCopy& c : a.copies) {
    EXPECT_EQ(c.offset % kWeightArenaAlignment, 0u);
    EXPECT_GE(c.offset, end) << "pieces overlap";
    EXPECT_GT(c.bytes, 0u);
    end = c.offset + c.bytes;
    sum += round_up(c.bytes);
  }
  EXPECT_EQ(a.bytes, sum);
  EXPECT_LE(end, a.bytes);
  // The Linears' share: every piece but the 4 norms and the 2 biases.
  uint64_t small = 0;
  for (const TensorView* t : {&w.input_norm, &w.post_norm, &w.q_norm, &w.k_norm, &w.q_bias, &w.k_bias})
    small += round_up(t->nbytes());
  EXPECT_EQ(a.linear_bytes, a.bytes - small);
}

TEST(QwenWeightArena, EveryTensorReadsBackAsItsSource) {
  Store st;
  const QwenLayerWeights w = mixed_layer(st);
  const QwenLayerArena a = qwen_layer_arena(w, "model.layers.3.");
  // The "device": one buffer of the arena's size, guard bytes everywhere, the copies made as QwenModelCuda makes them.
  std::vector<uint8_t> buf(a.bytes + kGuardBytes, kGuard);
  for (const ArenaCopy& c : a.copies) std::memcpy(buf.data() + c.offset, c.src, c.bytes);
  const void* base = buf.data();

  const auto same = [&](const ArenaTensor& at, const TensorView& src, const char* what) {
    SCOPED_TRACE(what);
    if (src.data == nullptr) {
      EXPECT_FALSE(at.present());
      EXPECT_EQ(arena_ptr(base, at), nullptr);
      return;
    }
    ASSERT_TRUE(at.present());
    EXPECT_EQ(at.dtype, src.dtype);
    ASSERT_EQ(at.bytes, src.nbytes());
    EXPECT_EQ(std::memcmp(arena_ptr(base, at), src.data, at.bytes), 0);
  };
  same(a.input_norm, w.input_norm, "input_norm");
  same(a.post_norm, w.post_norm, "post_norm");
  same(a.q_norm, w.q_norm, "q_norm");
  same(a.k_norm, w.k_norm, "k_norm");
  same(a.q.bias, w.q_bias, "q bias");
  same(a.k.bias, w.k_bias, "k bias");
  same(a.v.bias, w.v_bias, "v bias (absent)");
  for (const ArenaLinear* l : {&a.o, &a.gate, &a.up, &a.down}) EXPECT_FALSE(l->bias.present());

  const std::pair<const ArenaLinear*, const LinearWeight*> linears[] = {
      {&a.q, &w.q}, {&a.k, &w.k}, {&a.v, &w.v}, {&a.o, &w.o}, {&a.gate, &w.gate}, {&a.up, &w.up}, {&a.down, &w.down}};
  for (const auto& [al, lw] : linears) {
    SCOPED_TRACE(std::to_string(lw->N) + "x" + std::to_string(lw->K));
    EXPECT_EQ(al->N, lw->N);
    EXPECT_EQ(al->K, lw->K);
    if (lw->is_dense()) {
      EXPECT_FALSE(al->is_q4);
      same(al->dense, lw->dense, "dense weight");
      continue;
    }
    ASSERT_TRUE(al->is_q4);
    EXPECT_FALSE(al->dense.present());
    const Q4View v = arena_q4_view(base, *al);
    EXPECT_EQ(reinterpret_cast<const uint8_t*>(v.qweight) - buf.data(), al->qweight_offset);
    EXPECT_EQ(reinterpret_cast<const uint8_t*>(v.meta) - buf.data(), al->meta_offset);
    EXPECT_EQ(v.perm != nullptr, al->perm_offset >= 0);
    const std::vector<float> got = q4_unpack(v), want = lw->dequantize();
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "not the format's reader";
  }
  EXPECT_GE(a.k.perm_offset, 0) << "the act-order Linear has a permutation piece";
  EXPECT_EQ(a.o.perm_offset, -1);
  EXPECT_NE(test::error_of([&] { arena_q4_view(base, a.q); }).find("is dense"), std::string::npos);

  // Nothing written outside the pieces: the alignment gaps and the guard after the arena keep their bytes.
  std::vector<bool> covered(buf.size(), false);
  for (const ArenaCopy& c : a.copies) std::fill(covered.begin() + c.offset, covered.begin() + c.offset + c.bytes, true);
  size_t gap_bytes = 0, touched = 0;
  for (size_t i = 0; i < buf.size(); ++i) {
    if (covered[i]) continue;
    ++gap_bytes;
    touched += buf[i] != kGuard;
  }
  EXPECT_GT(gap_bytes, kGuardBytes) << "the awkward sizes leave gaps";
  EXPECT_EQ(touched, 0u);
}

TEST(QwenWeightArena, RefusesWhatTheQ4KernelsCannotRead) {
  Store st;
  QwenLayerWeights w = mixed_layer(st);
  PackedIntLinear three = q4_synthetic_int_linear(IntLayout::GptqV1, 64, 32, 32, false, 6);
  three.bits = 3;  // the Q4 repack reads 4-bit codes only
  w.k.packed = std::make_shared<PackedIntLinear>(three);
  const std::string e = test::error_of([&] { qwen_layer_arena(w, "model.layers.3."); });
  EXPECT_NE(e.find("QwenModelCuda: cannot run 'model.layers.3.self_attn.k_proj' on the GPU"), std::string::npos) << e;
  EXPECT_NE(e.find("use --device cpu"), std::string::npos) << e;
}

// A mixture-of-experts MLP (qwen_moe_arena): a BF16 router, three experts in different formats, a shared expert
// and its gate; every Linear reads back as its source, the pieces in order and disjoint; a bad expert is named.
MoeWeights mixed_moe(Store& st) {
  MoeWeights m;
  m.router = st.dense(DType::BF16, 3, 64);
  MoeExpertWeights e0{int_linear(IntLayout::GptqV1, 16, 64, 16, true, 7), int_linear(IntLayout::GptqV1, 16, 64, 16, true, 8),
                      int_linear(IntLayout::GptqV1, 64, 16, 16, false, 9)};
  MoeExpertWeights e1{nf4_linear(16, 64, false, true, 10), nf4_linear(16, 64, false, true, 11),
                      nf4_linear(64, 16, false, true, 12)};
  MoeExpertWeights e2{st.dense(DType::F32, 16, 64), st.dense(DType::F16, 16, 64), st.dense(DType::BF16, 64, 16)};
  m.experts = {e0, e1, e2};
  m.shared = {int_linear(IntLayout::AwqGemm, 24, 64, 16, false, 13), int_linear(IntLayout::AwqGemm, 24, 64, 16, false, 14),
              st.dense(DType::BF16, 64, 24)};
  m.shared_gate = st.dense(DType::BF16, 1, 64);
  return m;
}

TEST(QwenWeightArena, MixtureOfExpertsLayerReadsBackAsItsSource) {
  Store st;
  const MoeWeights m = mixed_moe(st);
  const QwenMoeArena a = qwen_moe_arena(m, "model.layers.1.");
  ASSERT_EQ(a.experts.size(), 3u);
  uint64_t sum = 0, end = 0;
  for (const ArenaCopy& c : a.copies) {
    EXPECT_EQ(c.offset % kWeightArenaAlignment, 0u);
    EXPECT_GE(c.offset, end) << "pieces overlap";
    end = c.offset + c.bytes;
    sum += round_up(c.bytes);
  }
  EXPECT_EQ(a.bytes, sum);
  EXPECT_EQ(a.linear_bytes, a.bytes);
  std::vector<uint8_t> buf(a.bytes + kGuardBytes, kGuard);
  for (const ArenaCopy& c : a.copies) std::memcpy(buf.data() + c.offset, c.src, c.bytes);
  const auto check = [&](const ArenaLinear& al, const LinearWeight& lw, const std::string& what) {
    SCOPED_TRACE(what);
    EXPECT_EQ(al.N, lw.N);
    EXPECT_EQ(al.K, lw.K);
    EXPECT_FALSE(al.bias.present());
    if (lw.is_dense()) {
      ASSERT_FALSE(al.is_q4);
      ASSERT_EQ(al.dense.bytes, lw.dense.nbytes());
      EXPECT_EQ(std::memcmp(arena_ptr(buf.data(), al.dense), lw.dense.data, al.dense.bytes), 0);
      return;
    }
    ASSERT_TRUE(al.is_q4);
    const std::vector<float> got = q4_unpack(arena_q4_view(buf.data(), al)), want = lw.dequantize();
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "not the format's reader";
  };
  check(a.router, m.router, "router");
  for (size_t e = 0; e < 3; ++e) {
    check(a.experts[e][0], m.experts[e].gate, "expert gate " + std::to_string(e));
    check(a.experts[e][1], m.experts[e].up, "expert up " + std::to_string(e));
    check(a.experts[e][2], m.experts[e].down, "expert down " + std::to_string(e));
  }
  check(a.shared[0], m.shared.gate, "shared gate_proj");
  check(a.shared[1], m.shared.up, "shared up_proj");
  check(a.shared[2], m.shared.down, "shared down_proj");
  check(a.shared_gate, m.shared_gate, "shared_expert_gate");
  EXPECT_TRUE(std::all_of(buf.end() - kGuardBytes, buf.end(), [](uint8_t b) { return b == kGuard; }));

  // Without a shared expert: its Linears absent (N = 0), no pieces for them.
  MoeWeights plain = m;
  plain.shared = {};
  plain.shared_gate = {};
  const QwenMoeArena p = qwen_moe_arena(plain, "model.layers.1.");
  EXPECT_EQ(p.shared[0].N, 0);
  EXPECT_EQ(p.shared_gate.N, 0);
  EXPECT_LT(p.bytes, a.bytes);

  // The upload's host half on whole MoE checkpoints (Qwen3-MoE with a dense layer, Qwen2-MoE with the shared expert):
  // every layer's arena lays out, a MoE layer's without MLP pieces (its dense gate/up/down are absent), and its
  // experts' arena with the router, E experts' three Linears and the shared expert's.
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    SCOPED_TRACE(preset);
    const QwenModel model(test::make_random_model(test::scratch_dir() + "/arena-" + preset, preset, DType::BF16, 3));
    const QwenConfig& c = model.config();
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const QwenLayerWeights& lw = model.weights().layers[l];
      const QwenLayerArena la = qwen_layer_arena(lw, "model.layers." + std::to_string(l) + ".");
      EXPECT_EQ(la.gate.N > 0, !c.is_moe_layer(l)) << "layer " << l;
      EXPECT_EQ(la.down.dense.present(), !c.is_moe_layer(l)) << "layer " << l;
      EXPECT_TRUE(la.q.dense.present() && la.o.dense.present());
      if (!c.is_moe_layer(l)) continue;
      const QwenMoeArena ma = qwen_moe_arena(lw.moe, "model.layers." + std::to_string(l) + ".");
      EXPECT_EQ(static_cast<int64_t>(ma.experts.size()), c.num_experts);
      EXPECT_EQ(ma.router.N, c.num_experts);
      EXPECT_EQ(ma.shared[0].N, c.shared_expert_intermediate_size);
      EXPECT_EQ(ma.copies.size(), 1 + 3 * static_cast<size_t>(c.num_experts) +
                                      (c.shared_expert_intermediate_size > 0 ? 4 : 0));
    }
  }

  MoeWeights bad = m;
  PackedIntLinear three = q4_synthetic_int_linear(IntLayout::GptqV1, 64, 16, 16, false, 15);
  three.bits = 3;
  bad.experts[2].down.packed = std::make_shared<PackedIntLinear>(three);
  bad.experts[2].down.dense = {};
  const std::string e = test::error_of([&] { qwen_moe_arena(bad, "model.layers.1."); });
  EXPECT_NE(e.find("cannot run 'model.layers.1.mlp.experts.2.down_proj' on the GPU"), std::string::npos) << e;
}

}  // namespace
}  // namespace qwenq
