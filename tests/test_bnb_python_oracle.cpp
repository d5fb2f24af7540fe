// The C++ half of tests/oracle/test_bnb_python_oracle.py: 4-bit checkpoints written by bitsandbytes itself (NF4
// with and without double quantization), loaded by qwenq; logits against bitsandbytes' own forward. Skipped
// unless the script points QWENQ_ORACLE_BNB_DIRS at its fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>

#include "core/files.h"
#include "core/safetensors.h"
#include "tests/support/oracle_logits.h"
#include "trainer/qwen_model.h"

namespace qwenq {
namespace {

// Both sides dequantize to the same fp32 weights (bit-exact, tests/oracle/test_nf4_oracle.py) and compute in fp32;
// only summation orders differ.
constexpr double kLogitRelTol = 1e-5;

TEST(BnbPythonOracle, CheckpointsMadeByBitsandbytesGiveItsLogits) {
  const char* dirs = std::getenv("QWENQ_ORACLE_BNB_DIRS");
  if (!dirs) GTEST_SKIP() << "QWENQ_ORACLE_BNB_DIRS not set (run tests/oracle/test_bnb_python_oracle.py)";
  std::stringstream ss(dirs);
  int cases = 0;
  for (std::string dir; std::getline(ss, dir, ':');) {
    SCOPED_TRACE(dir);
    QwenModel model(dir);
    ASSERT_NE(model.quant_config().method, QuantConfig::Method::None) << "the checkpoint should load as 4-bit";
    const test::LogitGap g = test::logits_against_expected(model, dir);
    std::printf("%s: max |ours - bitsandbytes| = %.3g, max |logit| = %.3g\n", dir.c_str(), g.worst, g.scale);
    EXPECT_LE(g.worst, kLogitRelTol * g.scale);
    ++cases;
  }
  EXPECT_EQ(cases, 2);
}

}  // namespace
}  // namespace qwenq
