// The C++ half of tests/oracle/test_compressed_tensors_oracle.py: checkpoints the compressed-tensors library wrote
// (pack-quantized int2/int4/int8 with g_idx, packed zero points and per-channel scales; int-quantized W8A8;
// float-quantized FP8 per channel and per tensor), and those qwen-quant wrote with --format compressed-tensors (the
// "ours_*" directories), load in qwenq with every Linear's ŵ bit for bit what the library's decompression gives with
// fp32 scales, and the logits of the dense transformers model holding those ŵ. Skipped
// unless the script points QWENQ_ORACLE_CT_DIR at its fixture.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/safetensors.h"
#include "tests/support/oracle_logits.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// ŵ is the same fp32 product on both sides; the logits differ only by summation order.
constexpr double kLogitRelTol = 1e-5;

enum class Want { Packed, Fp8, Fp32 };

struct Case {
  const char* name;
  Want form;  // how qwenq holds the quantized Linears
};

TEST(CompressedTensorsOracle, LibraryCheckpointsLoadWithItsWeightsAndLogits) {
  const char* root = std::getenv("QWENQ_ORACLE_CT_DIR");
  if (!root) GTEST_SKIP() << "QWENQ_ORACLE_CT_DIR not set (run tests/oracle/test_compressed_tensors_oracle.py)";
  for (const Case& c : {Case{"w4_g32_actorder", Want::Packed}, Case{"w4_g32_asym", Want::Packed},
                        Case{"w2_g16", Want::Packed}, Case{"w8_channel_pack", Want::Packed},
                        Case{"w8a8_int", Want::Packed}, Case{"fp8_dynamic", Want::Fp8}, Case{"fp8_tensor", Want::Fp8},
                        Case{"w4_channel_f32", Want::Fp32}, Case{"ours_rtn_w4_g32", Want::Packed},
                        Case{"ours_rtn_w4_g32_asym", Want::Packed}, Case{"ours_rtn_w8_channel", Want::Packed},
                        Case{"ours_rtn_w2_g16", Want::Packed}, Case{"ours_gptq_actorder", Want::Packed},
                        Case{"ours_awq", Want::Packed}, Case{"ours_fp8_dynamic", Want::Fp8}}) {
    SCOPED_TRACE(c.name);
    const std::string dir = path_join(root, c.name);
    QwenModel model(dir);
    ASSERT_EQ(model.quant_config().method, QuantConfig::Method::CompressedTensors);
    SafetensorsFile expected(path_join(dir, "expected.safetensors"));
    const QwenWeights& w = model.weights();
    int64_t linears = 0;
    for (int64_t l = 0; l < model.config().num_layers; ++l) {
      for (const LayerLinear& ll : layer_linears(model.config(), l)) {
        const std::string prefix = "model.layers." + std::to_string(l) + "." + ll.name;
        const LinearWeight& lw = layer_linear(w.layers[l], ll.decoder_index);
        switch (c.form) {
          case Want::Packed: EXPECT_TRUE(lw.packed) << prefix; break;
          case Want::Fp8: EXPECT_TRUE(lw.fp8) << prefix; break;
          case Want::Fp32: EXPECT_TRUE(lw.is_dense() && lw.dense.dtype == DType::F32) << prefix; break;
        }
        const TensorView& want = expected.get(prefix);
        const std::vector<float> got = lw.dequantize();
        ASSERT_EQ(static_cast<int64_t>(got.size()), want.numel()) << prefix;
        int64_t differ = 0;
        for (int64_t i = 0; i < want.numel(); ++i) differ += got[i] != want.as<float>()[i];
        EXPECT_EQ(differ, 0) << prefix << ": values of ŵ not bit-equal to compressed-tensors' decompression";
        ++linears;
      }
    }
    EXPECT_EQ(linears, 14);
    const test::LogitGap g = test::logits_against_expected(model, dir);
    std::printf("%s: max |ours - compressed-tensors' ŵ in transformers| = %.3g, max |logit| = %.3g\n", c.name,
                g.worst, g.scale);
    EXPECT_LE(g.worst, kLogitRelTol * g.scale);
  }
}

}  // namespace
}  // namespace qwenq
