// trainer/logits_source.h's CPU source: the logits of any rows of the last batch and the NLLs of chosen targets,
// against QwenModel's whole-batch forward_logits and next_token_nll (the GPU source is checked against this one in
// tests/gpu/test_eval_sources_cuda.cpp), and its refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/loss.h"
#include "tests/support/test_errors.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/logits_source.h"

namespace qwenq {
namespace {

constexpr double kRowTol = 1e-5;  // fp32 logits of a block of rows vs the whole batch's GEMM (another blocking)

TEST(LogitsSource, CpuRowsAndChosenNllsAreTheWholeBatchs) {
  const QwenModel m(test::make_tiny_model(test::scratch_dir() + "/logits-src", 23));
  LogitsSource s = cpu_logits_source(m);
  EXPECT_EQ(s.name, m.dir());
  EXPECT_EQ(s.vocab_size, m.config().vocab_size);
  EXPECT_EQ(s.max_positions, m.config().max_position_embeddings);
  const int64_t V = m.config().vocab_size;
  test::expect_error([&] { s.logits(0, 1, nullptr); }, {"rows [0, 1) of 0 hidden states"});
  test::expect_error([&] { s.nll(nullptr, nullptr); }, {"no hidden states (forward runs the batch first)"});
  const PackedBatch b = test::random_batch({5, 12, 9}, V, 4);
  const int64_t T = b.num_tokens();
  const std::vector<float> all = m.forward_logits(b);
  s.forward(b);
  for (const auto& [r0, n] : std::vector<std::pair<int64_t, int64_t>>{{0, T}, {4, 3}, {T - 1, 1}, {9, 0}}) {
    std::vector<float> rows(static_cast<size_t>(n * V));
    s.logits(r0, n, rows.data());
    double worst = 0;
    for (int64_t i = 0; i < n * V; ++i) worst = std::max(worst, std::fabs(double(rows[i]) - all[r0 * V + i]));
    EXPECT_LE(worst, kRowTol) << r0 << " " << n;
  }
  test::expect_error([&] { std::vector<float> out(2 * V); s.logits(T - 1, 2, out.data()); },
                     {"rows [" + std::to_string(T - 1) + ", " + std::to_string(T + 1) + ") of " + std::to_string(T)});
  // Next-token targets: the NLLs of next_token_nll; then every third row a chosen token, the rest ignored.
  std::vector<float> want, got(static_cast<size_t>(T));
  const int64_t counted = m.next_token_nll(b, &want);
  const std::vector<int32_t> next = next_token_targets(b);
  EXPECT_EQ(s.nll(next.data(), got.data()), counted);
  for (int64_t t = 0; t < T; ++t) EXPECT_NEAR(got[t], want[t], 1e-6) << t;
  std::vector<int32_t> chosen(static_cast<size_t>(T), kIgnoreIndex);
  for (int64_t t = 0; t < T; t += 3) chosen[t] = static_cast<int32_t>((t * 37) % V);
  EXPECT_EQ(s.nll(chosen.data(), got.data()), (T + 2) / 3);
  for (int64_t t = 0; t < T; ++t) {
    if (chosen[t] == kIgnoreIndex) {
      EXPECT_EQ(got[t], 0.f) << t;
      continue;
    }
    const float* z = all.data() + t * V;  // −log softmax(z)[chosen] in double from the whole batch's logits
    double mx = z[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(z[v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(z[v]) - mx);
    EXPECT_NEAR(got[t], mx + std::log(sum) - z[chosen[t]], 1e-4) << t;
  }
}

}  // namespace
}  // namespace qwenq
