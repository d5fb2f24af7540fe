// The CUDA twins of quant/quantize_step.h against their CPU twins, byte for byte (the contract is bit identity:
// each code is a per-element decision made from the same float operations), and quantize_model on the GPU against
// the CPU, file for file. Inputs: tests/support/quantize_step_cases.h's seeded weights, whose first 8 rows are the
// awkward cases (zeros, a repeated value, signed zeros, ±3e38, subnormals, an fp16-underflowing range, all
// negative, exact ties). Shapes: awkward ones (N = 1, K = the group size, K not a multiple of the group, a single
// element, partial and odd last NF4 blocks) and real Qwen2.5 ones (K, N in {896, 4864, 3584, 18944}, full size;
// 8192 and 29568 as row slices so the test stays a few seconds). Device outputs carry guard bytes no kernel may
// touch. Every test skips without a device; the stories260K test also without the shared data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/files.h"
#include "core/rng.h"
#include "quant/format/nf4_pack.h"
#include "quant/quantize_step.h"
#include "tests/gpu/gpu_test.h"
#include "tests/support/quantize_step_cases.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/quantize_model.h"

namespace qwenq {
namespace {

using test::error_of;

constexpr uint64_t kSeed = 20261130;
constexpr size_t kGuardBytes = 64;
constexpr unsigned char kGuardByte = 0xA5;

// A device buffer of `bytes` plus guard bytes, all set to kGuardByte.
struct Guarded {
  explicit Guarded(size_t bytes) : n(bytes), buf(bytes + kGuardBytes) {
    EXPECT_EQ(cudaMemset(buf.get(), kGuardByte, bytes + kGuardBytes), cudaSuccess);
  }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(buf.get());
  }
  // The first n bytes; flags a touched guard.
  std::vector<uint8_t> download(const std::string& ctx) const {
    std::vector<uint8_t> all = buf.download();
    for (size_t i = n; i < n + kGuardBytes; ++i)
      if (all[i] != kGuardByte) {
        ADD_FAILURE() << ctx << ": guard byte " << i - n << " past the output was written";
        break;
      }
    all.resize(n);
    return all;
  }
  size_t n;
  test::DeviceBuffer<uint8_t> buf;
};

template <typename T>
std::vector<uint8_t> as_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Index of the first differing byte, or -1.
int64_t first_difference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  return -1;
}

// ---- weight_to_f32 ----------------------------------------------------------------------------------------------

TEST(QuantizeStepCuda, WeightToF32BitIdentical) {
  QWENQ_REQUIRE_GPU();
  struct Shape {
    int64_t N0, K0, N, K;
  };
  const Shape shapes[] = {{1, 1, 1, 1}, {172, 64, 192, 64}, {64, 172, 64, 192}, {3, 5, 8, 16}, {896, 4864, 896, 4864}};
  Rng rng(kSeed);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (const Shape& s : shapes) {
      const size_t es = dtype_size(dt), n0 = static_cast<size_t>(s.N0 * s.K0), n = static_cast<size_t>(s.N * s.K);
      std::vector<uint8_t> src(n0 * es);
      for (auto& b : src) b = static_cast<uint8_t>(rng.next_u64());  // every bit pattern: NaN payloads, subnormals
      std::vector<float> want(n);
      weight_to_f32_ref(dt, src.data(), s.N0, s.K0, s.N, s.K, want.data());
      test::DeviceBuffer<uint8_t> dsrc(src);
      Guarded out(n * sizeof(float));
      weight_to_f32_cuda(dt, dsrc.get(), s.N0, s.K0, s.N, s.K, out.as<float>());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::string ctx = std::string(dtype_name(dt)) + " [" + std::to_string(s.N0) + ", " +
                              std::to_string(s.K0) + "] -> [" + std::to_string(s.N) + ", " + std::to_string(s.K) + "]";
      EXPECT_EQ(first_difference(out.download(ctx), as_bytes(want)), -1) << ctx;
    }
  }
}

// ---- rtn_quantize -----------------------------------------------------------------------------------------------

struct RtnCase {
  int64_t N, K;
  int bits;
  int64_t group;
  bool sym;
  GridRule rule;
};

std::string describe(const RtnCase& c) {
  return "N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) + " bits=" + std::to_string(c.bits) +
         " G=" + std::to_string(c.group) + (c.sym ? " sym" : " asym") + (c.rule == GridRule::Awq ? " awq" : " gptq");
}

void expect_rtn_identical(const RtnCase& c, uint64_t seed) {
  const std::string ctx = describe(c);
  const std::vector<float> W = test::awkward_weights(c.N, c.K, seed);
  const int64_t G = c.group == -1 ? c.K : c.group, cells = (c.K + G - 1) / G * c.N;
  std::vector<float> scale(cells);
  std::vector<uint8_t> zero(cells), codes(c.N * c.K);
  rtn_quantize_ref(W.data(), c.N, c.K, c.bits, c.group, c.sym, c.rule, scale.data(), zero.data(), codes.data());
  test::DeviceBuffer<float> dW(W);
  Guarded dscale(cells * sizeof(float)), dzero(cells), dcodes(c.N * c.K);
  rtn_quantize_cuda(dW.get(), c.N, c.K, c.bits, c.group, c.sym, c.rule, dscale.as<float>(), dzero.as<uint8_t>(),
                    dcodes.as<uint8_t>());
  EXPECT_EQ(first_difference(dscale.download(ctx + " scale"), as_bytes(scale)), -1) << ctx << " scale";
  EXPECT_EQ(first_difference(dzero.download(ctx + " zero"), zero), -1) << ctx << " zero";
  const int64_t d = first_difference(dcodes.download(ctx + " codes"), codes);
  EXPECT_EQ(d, -1) << ctx << " codes: first difference at k=" << d / c.N << " n=" << d % c.N;
}

TEST(QuantizeStepCuda, RtnAwkwardShapesBitIdentical) {
  QWENQ_REQUIRE_GPU();
  const std::pair<int64_t, int64_t> shapes[] = {{1, 128}, {3, 100}, {37, 64}, {33, 65}, {9, 257}, {1, 1}, {40, 33}};
  const int64_t groups[] = {128, 32, 64, -1, 16, 128, 32};
  int i = 0;
  for (const auto& [N, K] : shapes) {
    for (int bits : {2, 3, 4, 8})
      for (bool sym : {true, false})
        for (GridRule rule : {GridRule::Gptq, GridRule::Awq}) {
          expect_rtn_identical({N, K, bits, groups[i], sym, rule}, kSeed + i);
        }
    ++i;
  }
}

TEST(QuantizeStepCuda, RtnQwenShapesBitIdentical) {
  QWENQ_REQUIRE_GPU();
  const RtnCase cases[] = {
      {896, 896, 4, 128, true, GridRule::Gptq},      // 0.5B q_proj / o_proj
      {4864, 896, 4, 128, false, GridRule::Awq},     // 0.5B gate/up, AWQ
      {896, 4864, 3, -1, false, GridRule::Gptq},     // 0.5B down_proj, one group per column
      {3584, 18944, 4, 128, true, GridRule::Gptq},   // 7B down_proj (68M weights)
      {18944, 3584, 8, 64, false, GridRule::Gptq},   // 7B gate/up
      {64, 29568, 4, 128, false, GridRule::Awq},     // rows of the 72B down_proj (K = 29568)
      {29568, 256, 2, 128, true, GridRule::Gptq},    // columns of the 72B gate/up (N = 29568)
      {72, 8192, 4, 128, true, GridRule::Awq},       // rows of the 72B q_proj (K = 8192)
  };
  int i = 0;
  for (const RtnCase& c : cases) expect_rtn_identical(c, kSeed + 100 + i++);
}

TEST(QuantizeStepCuda, RtnRefusalsMatchTheCpu) {
  QWENQ_REQUIRE_GPU();
  std::vector<float> W(5 * 40, 0.25f);
  W[3 * 40 + 17] = -INFINITY;
  std::vector<float> scale(10);
  std::vector<uint8_t> zero(10), codes(200);
  const std::string cpu = error_of([&] {
    rtn_quantize_ref(W.data(), 5, 40, 4, 32, true, GridRule::Gptq, scale.data(), zero.data(), codes.data());
  });
  test::DeviceBuffer<float> dW(W);
  test::DeviceBuffer<float> dscale(10);
  test::DeviceBuffer<uint8_t> dzero(10), dcodes(200);
  const std::string gpu = error_of([&] {
    rtn_quantize_cuda(dW.get(), 5, 40, 4, 32, true, GridRule::Gptq, dscale.get(), dzero.get(), dcodes.get());
  });
  EXPECT_NE(cpu.find("weight [3, 17] is -inf"), std::string::npos) << cpu;
  EXPECT_EQ(gpu, cpu);
  const std::string bad_bits = error_of([&] {
    rtn_quantize_cuda(dW.get(), 5, 40, 1, 32, true, GridRule::Gptq, dscale.get(), dzero.get(), dcodes.get());
  });
  EXPECT_NE(bad_bits.find("bits must be in 2..8, got 1"), std::string::npos) << bad_bits;
}

// ---- nf4_quantize_blocks ----------------------------------------------------------------------------------------

void expect_nf4_identical(int64_t rows, int64_t cols, int64_t extra, int64_t B, bool fp4, uint64_t seed) {
  std::vector<float> w = test::awkward_weights(rows, cols, seed);
  Rng rng(seed + 1);
  for (int64_t i = 0; i < extra; ++i) w.push_back(static_cast<float>(rng.normal()) * 0.03f);
  const int64_t n = static_cast<int64_t>(w.size()), nb = (n + B - 1) / B;
  const std::string ctx = "n=" + std::to_string(n) + " B=" + std::to_string(B) + (fp4 ? " fp4" : " nf4");
  std::vector<uint8_t> packed(nf4_packed_bytes(n));
  std::vector<float> absmax(nb);
  nf4_quantize_blocks_ref(w.data(), n, B, fp4, packed.data(), absmax.data());
  test::DeviceBuffer<float> dw(w);
  Guarded dpacked(packed.size()), dabsmax(nb * sizeof(float));
  nf4_quantize_blocks_cuda(dw.get(), n, B, fp4, dpacked.as<uint8_t>(), dabsmax.as<float>());
  EXPECT_EQ(first_difference(dabsmax.download(ctx + " absmax"), as_bytes(absmax)), -1) << ctx << " absmax";
  const int64_t d = first_difference(dpacked.download(ctx + " packed"), packed);
  EXPECT_EQ(d, -1) << ctx << " packed: first difference at byte " << d << " (block " << 2 * d / B << ")";
}

TEST(QuantizeStepCuda, Nf4AwkwardSizesBitIdentical) {
  QWENQ_REQUIRE_GPU();
  for (bool fp4 : {false, true}) {
    expect_nf4_identical(1, 32, 0, 32, fp4, kSeed);         // one block
    expect_nf4_identical(1, 33, 0, 32, fp4, kSeed + 1);     // a partial last block of one element, odd n
    expect_nf4_identical(8, 97, 5, 64, fp4, kSeed + 2);     // every awkward row, odd n
    expect_nf4_identical(8, 64, 0, 64, fp4, kSeed + 3);     // one awkward row per block
    expect_nf4_identical(8, 128, 3, 256, fp4, kSeed + 4);
    expect_nf4_identical(8, 1000, 1, 4096, fp4, kSeed + 5); // the largest block, partial
    expect_nf4_identical(1, 1, 0, 32, fp4, kSeed + 6);      // a single weight
  }
}

TEST(QuantizeStepCuda, Nf4QwenShapesBitIdentical) {
  QWENQ_REQUIRE_GPU();
  expect_nf4_identical(896, 896, 0, 64, false, kSeed + 10);
  expect_nf4_identical(4864, 896, 0, 64, true, kSeed + 11);
  expect_nf4_identical(896, 4864, 0, 128, false, kSeed + 12);
  expect_nf4_identical(3584, 18944, 0, 64, false, kSeed + 13);
  expect_nf4_identical(64, 29568, 0, 64, true, kSeed + 14);
  expect_nf4_identical(72, 8192, 0, 32, false, kSeed + 15);
}

TEST(QuantizeStepCuda, Nf4RefusalsMatchTheCpu) {
  QWENQ_REQUIRE_GPU();
  std::vector<float> w(300, 0.5f);
  w[201] = NAN;
  w[250] = INFINITY;
  std::vector<uint8_t> packed(150);
  std::vector<float> absmax(5);
  const std::string cpu = error_of([&] { nf4_quantize_blocks_ref(w.data(), 300, 64, false, packed.data(), absmax.data()); });
  test::DeviceBuffer<float> dw(w);
  test::DeviceBuffer<uint8_t> dpacked(150);
  test::DeviceBuffer<float> dabsmax(5);
  const std::string gpu = error_of([&] { nf4_quantize_blocks_cuda(dw.get(), 300, 64, false, dpacked.get(), dabsmax.get()); });
  EXPECT_NE(cpu.find("weight 201 is nan"), std::string::npos) << cpu;
  EXPECT_EQ(gpu, cpu);
  const std::string bad = error_of([&] { nf4_quantize_blocks_cuda(dw.get(), 300, 100, false, dpacked.get(), dabsmax.get()); });
  EXPECT_NE(bad.find("blocksize 100 is not a power of two"), std::string::npos) << bad;
}

// ---- quantize_model end to end ----------------------------------------------------------------------------------

// Every file of the two directories, byte for byte.
void expect_same_directories(const std::string& a, const std::string& b, const std::string& ctx) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(a)) names.push_back(e.path().filename().string());
  size_t nb = 0;
  for (const auto& e : std::filesystem::directory_iterator(b)) nb += e.is_regular_file() ? 1 : 0;
  EXPECT_EQ(names.size(), nb) << ctx << ": file counts differ";
  for (const auto& name : names) {
    const std::string fb = b + "/" + name;
    ASSERT_TRUE(file_exists(fb)) << ctx << ": " << name << " missing on the GPU side";
    EXPECT_TRUE(read_file(a + "/" + name) == read_file(fb)) << ctx << ": " << name << " differs";
  }
}

void expect_cpu_gpu_same(QuantizeOptions o, const std::string& ctx) {
  const std::string base = o.out_dir;
  o.quiet = true;
  o.device = Device::Cpu;
  o.out_dir = base + "-cpu";
  const QuantizeReport rc = quantize_model(o);
  o.device = Device::Cuda;
  o.out_dir = base + "-gpu";
  const QuantizeReport rg = quantize_model(o);
  EXPECT_EQ(rg.linears, rc.linears) << ctx;
  EXPECT_EQ(rg.shards, rc.shards) << ctx;
  EXPECT_EQ(rg.bytes_written, rc.bytes_written) << ctx;
  expect_same_directories(base + "-cpu", base + "-gpu", ctx);
}

QuantizeOptions rtn(const std::string& model, const std::string& out, int bits, int64_t group, bool sym, IntLayout l) {
  QuantizeOptions o;
  o.method = QuantizeOptions::Method::Rtn;
  o.model_dir = model;
  o.out_dir = out;
  o.bits = bits;
  o.group_size = group;
  o.sym = sym;
  o.layout = l;
  return o;
}

QuantizeOptions four_bit(const std::string& model, const std::string& out, bool fp4, bool dq, int64_t blocksize) {
  QuantizeOptions o;
  o.method = fp4 ? QuantizeOptions::Method::Fp4 : QuantizeOptions::Method::Nf4;
  o.model_dir = model;
  o.out_dir = out;
  o.double_quant = dq;
  o.blocksize = blocksize;
  return o;
}

TEST(QuantizeModelCuda, TinyModelsLikeTheCpu) {
  QWENQ_REQUIRE_GPU();
  const std::string root = test::scratch_dir();
  int seed = 0;
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    const std::string d = dtype_name(dt);
    const std::string m = test::make_random_model(root + "/tiny-" + d, "tiny", dt, 41 + seed++);
    expect_cpu_gpu_same(rtn(m, root + "/v1-" + d, 4, 32, true, IntLayout::GptqV1), d + " rtn gptq 4-bit g32");
    expect_cpu_gpu_same(rtn(m, root + "/v2-" + d, 3, 64, false, IntLayout::GptqV2), d + " rtn gptq_v2 asym 3-bit");
    expect_cpu_gpu_same(rtn(m, root + "/v2c-" + d, 2, -1, false, IntLayout::GptqV2), d + " rtn gptq_v2 2-bit g-1");
    expect_cpu_gpu_same(rtn(m, root + "/v1b-" + d, 8, 16, true, IntLayout::GptqV1), d + " rtn gptq 8-bit g16");
    expect_cpu_gpu_same(rtn(m, root + "/awq-" + d, 4, 32, false, IntLayout::AwqGemm), d + " rtn awq");
    expect_cpu_gpu_same(four_bit(m, root + "/nf4-" + d, false, true, 64), d + " nf4");
    expect_cpu_gpu_same(four_bit(m, root + "/fp4-" + d, true, false, 128), d + " fp4");
  }
}

// Mixtures of experts (tiny-moe: Qwen3-MoE, routed experts only; tiny-moe-shared: Qwen2-MoE, a shared expert and its
// gate): every expert and the shared one quantized on the device like any Linear, the routers kept dense.
TEST(QuantizeModelCuda, MixtureOfExpertsLikeTheCpu) {
  QWENQ_REQUIRE_GPU();
  const std::string root = test::scratch_dir();
  int seed = 0;
  for (const char* preset : {"tiny-moe", "tiny-moe-shared"}) {
    const std::string p = preset;
    const std::string m = test::make_random_model(root + "/" + p, p, DType::BF16, 71 + seed++);
    expect_cpu_gpu_same(rtn(m, root + "/v1-" + p, 4, 32, true, IntLayout::GptqV1), p + " rtn gptq 4-bit g32");
    expect_cpu_gpu_same(rtn(m, root + "/awq-" + p, 4, 32, false, IntLayout::AwqGemm), p + " rtn awq");
    expect_cpu_gpu_same(four_bit(m, root + "/nf4-" + p, false, true, 64), p + " nf4");
    expect_cpu_gpu_same(four_bit(m, root + "/fp4-" + p, true, false, 64), p + " fp4");
  }
}

TEST(QuantizeModelCuda, Stories260KLikeTheCpu) {
  QWENQ_REQUIRE_GPU();
  QWENQ_REQUIRE_SHARED_DATA();
  const std::string root = test::scratch_dir();
  const std::string m = test::import_stories260k(root + "/fp32");
  QuantizeOptions o = rtn(m, root + "/rtn", 4, 32, true, IntLayout::GptqV1);
  o.pad_intermediate = true;  // 172 -> 192: padding on the device
  expect_cpu_gpu_same(o, "stories260K rtn gptq padded");
  o = rtn(m, root + "/awq", 4, 32, false, IntLayout::AwqGemm);
  o.pad_intermediate = true;
  expect_cpu_gpu_same(o, "stories260K rtn awq padded");
  o = four_bit(m, root + "/nf4", false, true, 64);
  o.max_shard_bytes = 200000;  // several shards: uploads run ahead across shard boundaries
  expect_cpu_gpu_same(o, "stories260K nf4 sharded");
  expect_cpu_gpu_same(four_bit(m, root + "/fp4", true, true, 32), "stories260K fp4");
}

}  // namespace
}  // namespace qwenq
