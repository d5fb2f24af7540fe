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
#include "quant/fp8.h"
#include "quant/ggml_blocks.h"
#include "quant/int_checkpoint.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/gpu_support.h"
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
  // Its size without the repacks (the host's sizing before an upload) is the same.
  EXPECT_EQ(qwen_layer_arena_bytes(w, "model.layers.3."), a.bytes);
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
  EXPECT_EQ(qwen_moe_arena_bytes(m, "model.layers.1."), a.bytes);
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
      EXPECT_EQ(qwen_moe_arena_bytes(lw.moe, "model.layers." + std::to_string(l) + "."), ma.bytes);
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

// --device auto's question before an upload (trainer/gpu_support.h): gpu_linear_refusal is the arenas' verdict,
// Linear by Linear. Every format the arena holds passes; each one it refuses gives the reason the arena then throws.
TEST(GpuSupport, LinearRefusalIsTheArenasVerdict) {
  Store st;
  struct Case {
    std::string what;
    LinearWeight w;
    std::string refusal;  // "": the arena holds it
  };
  std::vector<Case> cases;
  cases.push_back({"dense BF16", st.dense(DType::BF16, 16, 64), ""});
  cases.push_back({"GPTQ v1 act-order", int_linear(IntLayout::GptqV1, 16, 64, 16, true, 21), ""});
  cases.push_back({"GPTQ v2, one group over K = 200", int_linear(IntLayout::GptqV2, 24, 200, -1, false, 22), ""});
  cases.push_back({"AutoAWQ GEMM", int_linear(IntLayout::AwqGemm, 16, 48, 16, false, 23), ""});
  cases.push_back({"NF4 with double quantization", nf4_linear(12, 64, false, true, 24), ""});
  cases.push_back({"FP4", nf4_linear(20, 128, true, false, 25), ""});
  {
    PackedIntLinear three = q4_synthetic_int_linear(IntLayout::GptqV1, 64, 32, 32, false, 26);
    three.bits = 3;
    LinearWeight w;
    w.N = 32;
    w.K = 64;
    w.packed = std::make_shared<PackedIntLinear>(three);
    cases.push_back({"3-bit GPTQ", w, "only 4-bit codes have a Q4 layout, this weight is 3-bit"});
  }
  cases.push_back({"GPTQ group 4", int_linear(IntLayout::GptqV1, 16, 64, 4, false, 27), "group size 4 is not a multiple of 8"});
  {
    LinearWeight w = int_linear(IntLayout::GptqV1, 16, 64, 16, true, 28);
    PackedIntLinear p = *w.packed;
    const auto first0 = std::find(p.g_idx.begin(), p.g_idx.end(), 0);
    ASSERT_NE(first0, p.g_idx.end());
    *first0 = 1;  // group 0 now has 15 rows, group 1 17
    w.packed = std::make_shared<PackedIntLinear>(p);
    cases.push_back({"act-order groups of unequal sizes", w, "g_idx does not put exactly 16 rows in group"});
  }
  cases.push_back({"NF4 with gcd(K, blocksize) = 4", nf4_linear(16, 36, false, true, 29), "gcd(K=36, blocksize=64) = 4"});
  {
    LinearWeight w;
    w.N = 16;
    w.K = 64;
    auto f = std::make_shared<Fp8Linear>();
    f->N = 16;
    f->K = 64;
    w.fp8 = f;
    cases.push_back({"FP8", w, "FP8 checkpoints run on the CPU only"});
  }
  {
    LinearWeight w;
    w.N = 16;
    w.K = 256;
    w.ggml = std::make_shared<GgmlLinear>(GgmlLinear{GgmlType::Q4_K, nullptr, 16, 256, 0});
    cases.push_back({"GGUF Q4_K", w, "GGUF models run on the CPU only"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string why = gpu_linear_refusal(c.w);
    QwenLayerWeights layer = mixed_layer(st);
    layer.k = c.w;
    const std::string arena_error = test::error_of([&] { qwen_layer_arena(layer, "model.layers.3."); });
    const std::string sizing_error = test::error_of([&] { qwen_layer_arena_bytes(layer, "model.layers.3."); });
    EXPECT_EQ(sizing_error, arena_error) << "the sizing refuses as the arena does";
    if (c.refusal.empty()) {
      EXPECT_EQ(why, "");
      EXPECT_EQ(arena_error, "<no error>");
      EXPECT_EQ(qwen_layer_arena_bytes(layer, "model.layers.3."), qwen_layer_arena(layer, "model.layers.3.").bytes);
    } else {
      EXPECT_NE(why.find(c.refusal), std::string::npos) << why;
      EXPECT_NE(arena_error.find("QwenModelCuda: cannot run 'model.layers.3.self_attn.k_proj' on the GPU"),
                std::string::npos) << arena_error;
      EXPECT_NE(arena_error.find(why), std::string::npos) << "the arena's reason is another: " << arena_error;
    }
  }
  EXPECT_EQ(gpu_linear_refusal(LinearWeight{}), "") << "an absent Linear (N = 0) takes no piece";
}

// A whole model's weights: the first refusal in upload order (head_dim, the tables, then each layer's Linears: the
// attention and dense MLP, the router, the routed experts, the shared expert, its gate), named by its path.
TEST(GpuSupport, WeightsRefusalNamesTheFirstLinearInUploadOrder) {
  Store st;
  QwenConfig c;
  c.head_dim = 8;
  QwenWeights w;
  w.layers.push_back(mixed_layer(st));
  QwenLayerWeights moe_layer = mixed_layer(st);
  moe_layer.gate = moe_layer.up = moe_layer.down = LinearWeight{};  // a MoE layer has no dense MLP
  moe_layer.moe = mixed_moe(st);
  w.layers.push_back(moe_layer);
  EXPECT_EQ(gpu_weights_refusal(c, w, GpuUse::Forward), "");
  EXPECT_EQ(gpu_weights_refusal(c, w, GpuUse::Decode), "");

  const auto three_bit = [](int64_t N, int64_t K, uint64_t seed) {
    PackedIntLinear p = q4_synthetic_int_linear(IntLayout::GptqV1, K, N, 16, false, seed);
    p.bits = 3;
    LinearWeight l;
    l.N = N;
    l.K = K;
    l.packed = std::make_shared<PackedIntLinear>(p);
    return l;
  };
  QwenWeights bad = w;
  bad.layers[1].moe.shared.down = three_bit(64, 24, 31);
  std::string why = gpu_weights_refusal(c, bad, GpuUse::Forward);
  EXPECT_EQ(why.rfind("'model.layers.1.mlp.shared_expert.down_proj': ", 0), 0u) << why;
  EXPECT_NE(why.find("this weight is 3-bit"), std::string::npos) << why;
  // The arena refuses the same Linear.
  EXPECT_NE(test::error_of([&] { qwen_moe_arena(bad.layers[1].moe, "model.layers.1."); })
                .find("cannot run 'model.layers.1.mlp.shared_expert.down_proj' on the GPU"),
            std::string::npos);
  bad.layers[1].moe.experts[2].down = three_bit(64, 16, 32);  // a routed expert comes before the shared one
  why = gpu_weights_refusal(c, bad, GpuUse::Forward);
  EXPECT_EQ(why.rfind("'model.layers.1.mlp.experts.2.down_proj': ", 0), 0u) << why;
  bad.layers[1].moe.router = three_bit(8, 64, 33);  // the router first
  EXPECT_EQ(gpu_weights_refusal(c, bad, GpuUse::Forward).rfind("'model.layers.1.mlp.gate': ", 0), 0u);
  bad.layers[1].o = three_bit(16, 48, 34);  // the attention before the MLP
  EXPECT_EQ(gpu_weights_refusal(c, bad, GpuUse::Forward).rfind("'model.layers.1.self_attn.o_proj': ", 0), 0u);
  bad.layers[0].down = three_bit(24, 208, 35);  // layer 0 before layer 1
  EXPECT_EQ(gpu_weights_refusal(c, bad, GpuUse::Forward).rfind("'model.layers.0.mlp.down_proj': ", 0), 0u);

  // A GGUF model's tables held quantized come before the Linears; its shape before everything.
  QwenWeights gguf = bad;
  gguf.lm_head_q = std::make_shared<GgmlLinear>(GgmlLinear{GgmlType::Q6_K, nullptr, 320, 256, 0});
  why = gpu_weights_refusal(c, gguf, GpuUse::Forward);
  EXPECT_NE(why.find("holds its embedding or output table quantized"), std::string::npos) << why;
  QwenConfig odd = c;
  odd.head_dim = 7;
  why = gpu_weights_refusal(odd, gguf, GpuUse::Forward);
  EXPECT_EQ(why, "head_dim 7: the GPU's RoPE and attention kernels need an even head_dim of at most 512");
}

// The shapes the GPU kernels take: an even head_dim of at most 512 for the forward, at most 256 for decoding.
TEST(GpuSupport, ConfigRefusalIsTheKernelsHeadDimLimits) {
  QwenConfig c;
  for (int64_t D : {2, 64, 80, 128, 256}) {
    c.head_dim = D;
    EXPECT_EQ(gpu_config_refusal(c, GpuUse::Forward), "") << D;
    EXPECT_EQ(gpu_config_refusal(c, GpuUse::Decode), "") << D;
  }
  c.head_dim = 384;
  EXPECT_EQ(gpu_config_refusal(c, GpuUse::Forward), "");
  EXPECT_EQ(gpu_config_refusal(c, GpuUse::Decode), "head_dim 384 exceeds the GPU decode attention's limit 256");
  for (int64_t D : {63, 514, 1024}) {
    c.head_dim = D;
    EXPECT_NE(gpu_config_refusal(c, GpuUse::Forward).find("need an even head_dim of at most 512"), std::string::npos) << D;
    EXPECT_EQ(gpu_config_refusal(c, GpuUse::Decode), gpu_config_refusal(c, GpuUse::Forward)) << D;
  }
}

}  // namespace
}  // namespace qwenq
