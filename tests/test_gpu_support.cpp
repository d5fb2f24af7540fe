// trainer/gpu_support.h on whole model directories: what `--device auto` asks before an upload, on the CPU. The
// models are the tiny random one and what the quantizers and exporters make of it; the oracle for each verdict is
// the upload's own rule (tests/test_qwen_weight_arena.cpp checks gpu_linear_refusal against the arenas Linear by
// Linear; the 8-bit case is the one tests/gpu/test_model_cuda.cpp sees QwenModelCuda refuse on a GPU).
#include <gtest/gtest.h>

#include <string>

#include "core/safetensors.h"
#include "kernels/device_allocator.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/gpu_support.h"
#include "trainer/quantize_model.h"
#include "trainer/qwen_model.h"
#include "trainer/qwen_weight_arena.h"

namespace qwenq {
namespace {

QuantizeOptions quantize_options(const std::string& src, const std::string& out, QuantizeOptions::Method method) {
  QuantizeOptions o;
  o.method = method;
  o.model_dir = src;
  o.out_dir = out;
  o.group_size = 32;
  o.quiet = true;
  return o;
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

TEST(GpuSupport, ModelsTheGpuRunsAndModelsItRefuses) {
  const std::string root = test::scratch_dir() + "/gpu-support";
  const std::string src = test::make_tiny_model(root + "/tiny", 11);
  for (GpuUse use : {GpuUse::Forward, GpuUse::Decode}) EXPECT_EQ(gpu_model_refusal(QwenModel(src), use), "");
  EXPECT_EQ(gpu_source_refusal(src), "");

  // What the GPU reads: 4-bit GPTQ (RTN's codes) and bitsandbytes NF4.
  quantize_model(quantize_options(src, root + "/rtn4", QuantizeOptions::Method::Rtn));
  EXPECT_EQ(gpu_model_refusal(QwenModel(root + "/rtn4"), GpuUse::Forward), "");
  quantize_model(quantize_options(src, root + "/nf4", QuantizeOptions::Method::Nf4));
  EXPECT_EQ(gpu_model_refusal(QwenModel(root + "/nf4"), GpuUse::Decode), "");

  // 8-bit GPTQ has no Q4 form: the first Linear uploaded is named.
  QuantizeOptions int8 = quantize_options(src, root + "/rtn8", QuantizeOptions::Method::Rtn);
  int8.bits = 8;
  quantize_model(int8);
  std::string why = gpu_model_refusal(QwenModel(root + "/rtn8"), GpuUse::Forward);
  EXPECT_TRUE(starts_with(why, "'model.layers.0.self_attn.q_proj': ")) << why;
  EXPECT_NE(why.find("this weight is 8-bit"), std::string::npos) << why;

  // FP8 weights are decoded on the CPU only: as a model to run, and as a quantizer's source.
  QuantizeOptions fp8 = quantize_options(src, root + "/fp8", QuantizeOptions::Method::Fp8);
  fp8.fp8_block = 32;
  quantize_model(fp8);
  why = gpu_model_refusal(QwenModel(root + "/fp8"), GpuUse::Forward);
  EXPECT_TRUE(starts_with(why, "'model.layers.0.self_attn.q_proj': FP8 checkpoints run on the CPU only")) << why;
  EXPECT_EQ(gpu_source_refusal(root + "/fp8"), root + "/fp8 is an FP8 model, whose weights are decoded on the CPU "
                                                          "only (`qwen-quant dequantize` it first for the GPU)");

  // A GGUF file: its quantized tables (or Linears) stay on the CPU.
  why = gpu_model_refusal(QwenModel(test::export_gguf_to(src, root + "/tiny.gguf", "q8_0")), GpuUse::Decode);
  EXPECT_NE(why.find("GGUF"), std::string::npos) << why;
}

// quantize_model's own CPU-only cases: fp8 output, an FP8 source, LoftQ with iterations.
TEST(GpuSupport, QuantizeRefusals) {
  const std::string root = test::scratch_dir() + "/gpu-support-quantize";
  const std::string src = test::make_tiny_model(root + "/tiny", 12);
  QuantizeOptions o = quantize_options(src, root + "/out", QuantizeOptions::Method::Rtn);
  EXPECT_EQ(quantize_gpu_refusal(o), "");
  o.method = QuantizeOptions::Method::Nf4;
  EXPECT_EQ(quantize_gpu_refusal(o), "");
  o.loftq.r = 4;
  EXPECT_EQ(quantize_gpu_refusal(o), "") << "one-shot LoftQ runs after either device";
  o.loftq_iters = 3;
  EXPECT_EQ(quantize_gpu_refusal(o), "--loftq-iter 3 re-quantizes W - L R on the CPU at each iteration");
  o.loftq.r = 0;
  o.method = QuantizeOptions::Method::Fp8;
  EXPECT_EQ(quantize_gpu_refusal(o), "fp8 quantizes on the CPU");
  QuantizeOptions fp8 = quantize_options(src, root + "/fp8", QuantizeOptions::Method::Fp8);
  quantize_model(fp8);
  const QuantizeOptions from_fp8 = quantize_options(root + "/fp8", root + "/out2", QuantizeOptions::Method::Rtn);
  EXPECT_EQ(quantize_gpu_refusal(from_fp8), root + "/fp8 is an FP8 model, whose weights are decoded on the CPU");
}

// The device bytes of a model's weights (gpu_weight_bytes) against the upload's own arenas and tables, each as the
// allocator rounds it: dense and 4-bit, tied and untied tables, with and without the input table (the trainer's).
TEST(GpuSupport, WeightBytesAreTheUploadsAllocations) {
  const std::string root = test::scratch_dir() + "/gpu-support-bytes";
  const std::string src = test::make_tiny_model(root + "/tiny", 13);
  quantize_model(quantize_options(src, root + "/rtn4", QuantizeOptions::Method::Rtn));
  const std::string moe = test::make_random_model(root + "/moe", "tiny-moe-shared", DType::BF16, 14);
  for (const std::string& dir : {src, root + "/rtn4", moe}) {
    SCOPED_TRACE(dir);
    const QwenModel m(dir);
    const QwenWeights& w = m.weights();
    const auto round = [](uint64_t b) { return static_cast<uint64_t>(DeviceAllocator::round_size(b)); };
    uint64_t layers = 0;
    for (size_t l = 0; l < w.layers.size(); ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      layers += round(qwen_layer_arena(w.layers[l], p).bytes);
      if (m.config().is_moe_layer(static_cast<int64_t>(l))) layers += round(qwen_moe_arena(w.layers[l].moe, p).bytes);
    }
    const bool tied = w.embed.data == w.lm_head.data;
    const uint64_t tables = round(w.final_norm.nbytes()) + round(w.lm_head.nbytes());
    const uint64_t embed = tied ? 0 : round(w.embed.nbytes());
    EXPECT_EQ(gpu_weight_bytes(m.config(), w, GpuUse::Forward), layers + tables + embed);
    EXPECT_EQ(gpu_weight_bytes(m.config(), w, GpuUse::Decode), layers + tables + embed);
    EXPECT_EQ(gpu_weight_bytes(m.config(), w, GpuUse::Train), layers + tables) << "the trainer keeps an untied "
                                                                                  "input table on the host";
  }
  // A quantizer's source: every tensor of its checkpoint, each rounded.
  uint64_t sum = 0;
  const Checkpoint ckpt(src);
  for (const std::string& name : ckpt.names()) sum += DeviceAllocator::round_size(ckpt.get(name).nbytes());
  EXPECT_EQ(gpu_source_weight_bytes(src), sum);
  EXPECT_GT(sum, 0u);
}

// `--device auto`'s room check: the weights plus kGpuAutoHeadroomBytes must fit the free memory.
TEST(GpuSupport, FitRefusalKeepsRoomForTheWork) {
  const uint64_t GiB = uint64_t{1} << 30;
  EXPECT_EQ(gpu_fit_refusal(10 * GiB, 11 * GiB), "");
  EXPECT_EQ(gpu_fit_refusal(10 * GiB, 10 * GiB + kGpuAutoHeadroomBytes), "");
  EXPECT_EQ(gpu_fit_refusal(10 * GiB, 10 * GiB + kGpuAutoHeadroomBytes - 1),
            "the weights take 10.00 GiB on the GPU, which has 11.00 GiB free (1.00 GiB is kept for the work)");
  EXPECT_NE(gpu_fit_refusal(20 * GiB, 11 * GiB).find("the weights take 20.00 GiB"), std::string::npos);
}

}  // namespace
}  // namespace qwenq
