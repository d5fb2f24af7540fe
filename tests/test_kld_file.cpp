// llama.cpp's KL-divergence base file (trainer/kld_file.h): a row's encoding against numpy goldens of llama.cpp's
// float32 formulas, its decoding against the exact log-softmax, the file's bytes against a golden made with Python's
// struct from the format's definition, every refusal of the reader, and whole runs (save, then score) against the
// exact-logit KL divergence of kl_divergence.h on the same positions (the second half of each chunk, BOS in each
// chunk's first position). tests/oracle/test_kld_file_oracle.py checks both commands against transformers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <vector>

#include "core/files.h"
#include "core/rng.h"
#include "kernels/loss.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/kld_file.h"

namespace qwenq {
namespace {

float row_float(const std::vector<uint16_t>& row, int k) {
  float f;
  std::memcpy(&f, row.data() + 2 * k, 4);
  return f;
}

TEST(KldFile, RowEncodingEqualsNumpyGolden) {
  // numpy float32, the oracle script's encode(): m = 2, lo = max(-20, 2 - 16) = -14, so -20 reads as lo (code 0).
  const float z[] = {2.0f, -1.0f, 0.5f, -20.0f, 1.25f};
  std::vector<uint16_t> row(kld_row_values(5), 0xffff);
  const double nll = kld_encode_row(z, 5, /*target=*/4, row.data());
  ASSERT_EQ(row.size(), 10u);  // 4 for the two floats, 5 codes, 1 pad
  EXPECT_EQ(row_float(row, 0), 0.00024414435029029846f);  // scale
  EXPECT_EQ(row_float(row, 1), -16.556917190551758f);     // min_log_prob
  const std::vector<uint16_t> codes(row.begin() + 4, row.begin() + 9);
  EXPECT_EQ(codes, (std::vector<uint16_t>{65535, 53247, 59391, 0, 62463}));
  EXPECT_EQ(row[9], 0);  // the pad of an odd vocabulary
  EXPECT_EQ(nll, 1.3069171905517578);  // m + lse - z_t in float
  // Decoded: torch.log_softmax in float64 of the same logits, to within half a step (1.2e-4).
  const double torch_lp[] = {-0.5569171679545031, -3.556917167954503, -2.056917167954503, -22.556917167954502,
                             -1.306917167954503};
  const double half_step = row_float(row, 0) / 2 + 1e-6;
  for (int v : {0, 1, 2, 4}) EXPECT_NEAR(kld_row_log_prob(row.data(), v), torch_lp[v], half_step) << v;
  EXPECT_EQ(kld_row_log_prob(row.data(), 3), row_float(row, 1));  // below lo: min_log_prob, not -22.3
}

TEST(KldFile, DecodingIsWithinHalfAStepOfTheLogSoftmax) {
  Rng rng(7);
  for (float spread : {0.5f, 4.0f, 12.0f}) {  // 12: some logits more than 16 below the top
    SCOPED_TRACE(spread);
    const int64_t V = 1001;
    std::vector<float> z(V);
    for (float& v : z) v = spread * rng.normal();
    std::vector<uint16_t> row(kld_row_values(V));
    kld_encode_row(z.data(), V, 0, row.data());
    double m = z[0], s = 0;
    for (float v : z) m = std::max(m, static_cast<double>(v));
    for (float v : z) s += std::exp(v - m);
    const double lse = m + std::log(s), lo = std::max(*std::min_element(z.begin(), z.end()), static_cast<float>(m) - 16);
    const double half_step = row_float(row, 0) / 2 + 2e-6;  // + float rounding of the decode
    int64_t collapsed = 0;
    for (int64_t v = 0; v < V; ++v) {
      if (z[v] > lo) {
        EXPECT_NEAR(kld_row_log_prob(row.data(), v), z[v] - lse, half_step) << v;
      } else {
        EXPECT_EQ(row[4 + v], 0) << v;
        ++collapsed;
      }
    }
    EXPECT_GE(collapsed, 1);  // the smallest logit (or everything under m - 16) reads as lo
  }
  // All logits equal: scale 0, every code 0, log P = -log V for all.
  const std::vector<float> flat(6, 1.5f);
  std::vector<uint16_t> row(kld_row_values(6), 7);
  kld_encode_row(flat.data(), 6, 2, row.data());
  EXPECT_EQ(row_float(row, 0), 0.0f);
  for (int v = 0; v < 6; ++v) EXPECT_EQ(row[4 + v], 0);
  EXPECT_NEAR(kld_row_log_prob(row.data(), 3), -std::log(6.0), 1e-6);
}

TEST(KldFile, BytesEqualTheFormatsGolden) {
  // Python: b"_logits_" + struct.pack("<3i", 4, 3, 1) + struct.pack("<4i", 1, 2, 0, 1) + the float32 scale and
  // min_log_prob of the logits (0.3, 0.1, -2.7) + their uint16 codes (65535, 61166, 0) + a 0 pad; numpy float32.
  const std::string golden_hex =
      "5f6c6f676974735f04000000030000000100000001000000020000000000000001000000c0004038620268c0ffffeeee00000000";
  const std::string path = test::scratch_dir() + "/tiny.kld";
  const float z[] = {0.3f, 0.1f, -2.7f};
  std::vector<uint16_t> row(kld_row_values(3));
  EXPECT_EQ(kld_encode_row(z, 3, 1, row.data()), 0.8251454830169678);
  KldFileWriter w(path, 4, 3, {1, 2, 0, 1});
  w.append_rows(row.data(), 1);
  w.commit();
  const std::string bytes = read_file(path);
  std::string hex;
  for (unsigned char c : bytes) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", c);
    hex += b;
  }
  EXPECT_EQ(hex, golden_hex);
  EXPECT_EQ(kld_file_bytes({4, 3, 1}), bytes.size());
  EXPECT_TRUE(is_kld_file(path));
  const KldFile f(path);
  EXPECT_EQ(f.header().n_ctx, 4);
  EXPECT_EQ(f.header().n_vocab, 3);
  EXPECT_EQ(f.header().n_chunk, 1);
  EXPECT_EQ(f.tokens(0)[1], 2);
  EXPECT_EQ(std::memcmp(f.rows(0), row.data(), row.size() * 2), 0);
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(KldFile, ReaderRefusesCorruptFilesNamingThem) {
  const std::string dir = test::scratch_dir();
  const std::string good = dir + "/good.kld";
  std::vector<uint16_t> rows(2 * kld_row_values(3), 0);
  KldFileWriter w(good, 4, 3, {1, 2, 0, 1, 2, 2, 1, 0});
  w.append_rows(rows.data(), 2);
  w.commit();
  const std::string bytes = read_file(good);
  KldFile ok(good);
  EXPECT_EQ(ok.header().n_chunk, 2);

  const auto refuse = [&](const std::string& name, const std::string& content, std::vector<std::string> parts) {
    const std::string p = dir + "/" + name;
    write_bytes(p, content);
    parts.insert(parts.begin(), p);
    test::expect_error([&] { KldFile f(p); }, parts);
  };
  refuse("short.kld", bytes.substr(0, 12), {"12 bytes, shorter than the 20-byte header"});
  refuse("magic.kld", "_logitz_" + bytes.substr(8), {"does not start with \"_logits_\""});
  std::string ctx2 = bytes;
  ctx2[8] = 2;
  refuse("ctx.kld", ctx2, {"n_ctx 2", "at least 3 tokens"});
  std::string vocab0 = bytes;
  std::memset(&vocab0[12], 0, 4);
  refuse("vocab.kld", vocab0, {"n_vocab 0"});
  refuse("truncated.kld", bytes.substr(0, bytes.size() - 2),
         {std::to_string(bytes.size() - 2) + " bytes", "needs " + std::to_string(bytes.size()), "truncated"});
  refuse("extra.kld", bytes + "xy", {"bytes after the last chunk"});
  std::string huge = bytes;
  const int32_t big = 0x7fffffff;
  for (int at : {8, 12, 16}) std::memcpy(&huge[at], &big, 4);
  refuse("huge.kld", huge, {"needs more than 2^64"});
  std::string bad_token = bytes;
  const int32_t t = 3;
  std::memcpy(&bad_token[20 + 4 * 6], &t, 4);
  refuse("token.kld", bad_token, {"token 3 at position 2 of chunk 1", "outside its vocabulary of 3"});
  EXPECT_FALSE(is_kld_file(dir + "/magic.kld"));
  EXPECT_FALSE(is_kld_file(dir));
  EXPECT_FALSE(is_kld_file(dir + "/missing.kld"));

  // A writer that is not given every row writes nothing under the final name.
  const std::string partial = dir + "/partial.kld";
  test::expect_error(
      [&] {
        KldFileWriter pw(partial, 4, 3, {1, 2, 0, 1, 2, 2, 1, 0});
        pw.append_rows(rows.data(), 1);
        pw.commit();
      },
      {partial, "1 rows written of 2"});
  EXPECT_FALSE(file_exists(partial));
}

TEST(KldFile, PositionAgainstARowMatchesExactLogits) {
  // Logits within 16 of the top: the row's KL is the exact KL up to the 16-bit encoding.
  const float b[] = {2.0f, 1.0f, 0.5f, -3.0f}, q[] = {1.0f, 1.5f, 0.5f, -2.0f};
  std::vector<uint16_t> row(kld_row_values(4));
  kld_encode_row(b, 4, 1, row.data());
  const KlPosition exact = kl_position(b, q, 4, 1), enc = kl_position_vs_row(row.data(), q, 4, 1);
  constexpr double kEncodingTol = 2.5e-4;  // a log-probability to within 16/65535/2 nats, twice
  EXPECT_NEAR(enc.kld, exact.kld, kEncodingTol);
  EXPECT_NEAR(enc.nll_base, exact.nll_base, kEncodingTol);
  EXPECT_NEAR(enc.nll, exact.nll, 1e-12);  // the model's side is exact
  EXPECT_NEAR(enc.p_base, exact.p_base, kEncodingTol);
  EXPECT_EQ(enc.same_top1, exact.same_top1);
  // A base token e^-20 below the top is left out of the sum (llama.cpp's log P > -16 cutoff): KL = P0 (log P0 - log Q0).
  const float b2[] = {0.0f, -20.0f}, q2[] = {0.0f, -1.0f};
  kld_encode_row(b2, 2, 0, row.data());
  const double lp0 = kld_row_log_prob(row.data(), 0), lq0 = -std::log1p(std::exp(-1.0));
  EXPECT_NEAR(lp0, -std::log1p(std::exp(-20.0)), kEncodingTol);
  // Exactly the one term: the left-out one, e^-16 (−16 − log Q1) ≈ −1.6e-6, is far above this tolerance.
  EXPECT_NEAR(kl_position_vs_row(row.data(), q2, 2, 0).kld, std::exp(lp0) * (lp0 - lq0), 1e-12);
  EXPECT_LE(kld_row_log_prob(row.data(), 1), -16.0f);  // lo - m - lse: -16 - 2e-9, -16 in float
  // Top-1 ties: the first largest code, as llama.cpp's loop.
  const float tie[] = {1.0f, 3.0f, 3.0f}, qt[] = {0.0f, 1.0f, 2.0f};
  kld_encode_row(tie, 3, 0, row.data());
  EXPECT_FALSE(kl_position_vs_row(row.data(), qt, 3, 0).same_top1);  // base 1, model 2
}

// Exact logits on the chunks' second halves (BOS in each first position when >= 0), kl_position in double.
struct Exact {
  KlSample sample;
  double nll = 0, nll_base = 0;
  int64_t n = 0;
};
Exact exact_on_chunks(const QwenModel& m, const QwenModel& base, const std::vector<int32_t>& tokens, int64_t n_ctx,
                      int64_t chunks, int32_t bos) {
  const int64_t V = m.config().vocab_size;
  Exact e;
  for (int64_t c = 0; c < chunks; ++c) {
    std::vector<int32_t> seq(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx);
    if (bos >= 0) seq[0] = bos;
    const PackedBatch b = PackedBatch::from_sequences({seq});
    const std::vector<float> lq = m.forward_logits(b), lb = base.forward_logits(b);
    for (int64_t t = n_ctx / 2; t + 1 < n_ctx; ++t) {
      const KlPosition p = kl_position(lb.data() + t * V, lq.data() + t * V, V, seq[t + 1]);
      e.sample.add(p);
      e.nll += p.nll, e.nll_base += p.nll_base, ++e.n;
    }
  }
  e.nll /= e.n, e.nll_base /= e.n;
  return e;
}

TEST(KldFile, SavedThenScoredEqualsExactLogitsOnTheSecondHalves) {
  const std::string root = test::scratch_dir();
  const std::string base_dir = test::make_random_model(root + "/base", "tiny256", DType::F32, 4, /*layers=*/2);
  test::copy_with_noisy_lm_head(base_dir, root + "/noisy", 17, 0.02f);
  QwenModel m(root + "/noisy"), base(base_dir);
  const int64_t n_ctx = 21, V = m.config().vocab_size;  // odd: 10 scored rows a chunk (positions 10..19)
  const std::vector<int32_t> tokens = test::lcg_tokens(4 * n_ctx + 5, V, 3);
  constexpr double kEncodingTol = 2.5e-4;  // per position, a base log-probability to within 16/65535/2 nats
  constexpr double kModelTol = 1e-5;       // fp32 logits of a packed batch vs one sequence
  // A model against its own file: Σ P δ with δ the encoding error of log P (decoded P need not sum to 1 exactly).
  constexpr double kSelfTol = 1e-5;
  for (int32_t bos : {-1, 7}) {
    SCOPED_TRACE(bos);
    const std::string path = root + "/base" + std::to_string(bos) + ".kld";
    KldRunOptions opt;
    opt.max_chunks = 3;
    opt.chunks_per_batch = 2;  // batches of 2 and 1 chunks
    opt.bos = bos;
    opt.quiet = true;
    const PerplexityResult saved = save_kld_file(base, tokens, n_ctx, opt, path);
    const Exact e = exact_on_chunks(m, base, tokens, n_ctx, 3, bos);
    EXPECT_EQ(saved.windows, 3);
    EXPECT_EQ(saved.scored_tokens, 30);
    EXPECT_NEAR(saved.mean_nll, e.nll_base, kModelTol);
    const KldFile file(path);
    EXPECT_EQ(file.header().n_chunk, 3);
    EXPECT_EQ(std::vector<int32_t>(file.tokens(0), file.tokens(0) + 3 * n_ctx),
              std::vector<int32_t>(tokens.begin(), tokens.begin() + 3 * n_ctx));  // the text's tokens, not BOS
    KlDivergenceResult want;
    e.sample.summarize(&want);
    KlDivergenceResult first;
    for (int64_t rows : {int64_t{0}, int64_t{3}, int64_t{1}}) {  // logits 3 rows at a time: blocks end mid-chunk
      SCOPED_TRACE(rows);
      KldRunOptions o = opt;
      o.logits_chunk_rows = rows;
      o.chunks_per_batch = rows == 3 ? 3 : 1;
      const KlDivergenceResult r = evaluate_kl_divergence_file(m, file, o);
      EXPECT_EQ(r.model.scored_tokens, 30);
      EXPECT_EQ(r.model.windows, 3);
      EXPECT_NEAR(r.model.mean_nll, e.nll, kModelTol);
      EXPECT_NEAR(std::log(r.base_perplexity), e.nll_base, kEncodingTol);
      EXPECT_NEAR(r.kld.mean, want.kld.mean, kEncodingTol);
      EXPECT_NEAR(r.kld.max, want.kld.max, kEncodingTol);
      EXPECT_NEAR(r.ln_ppl_ratio, want.ln_ppl_ratio, kEncodingTol);
      EXPECT_NEAR(r.delta_p.mean, want.delta_p.mean, kEncodingTol);
      EXPECT_EQ(r.same_top1, want.same_top1);
      EXPECT_GT(r.kld.mean, 1e-3);  // two different models
      if (rows == 0) first = r;
      else EXPECT_NEAR(r.kld.mean, first.kld.mean, kModelTol * first.kld.mean);  // blocks, batches: rounding only
    }
    // The base against its own file: only the encoding's error remains.
    opt.max_chunks = 0;
    const KlDivergenceResult self = evaluate_kl_divergence_file(base, file, opt);
    EXPECT_LT(self.kld.max, kSelfTol);
    EXPECT_EQ(self.same_top1, 1.0);
    EXPECT_NEAR(self.model.mean_nll, saved.mean_nll, kEncodingTol);
  }
  // BOS in each chunk's first position changes what the model sees.
  KldRunOptions plain, with_bos;
  plain.quiet = with_bos.quiet = true;
  with_bos.bos = 7;
  EXPECT_NE(save_kld_file(base, tokens, n_ctx, plain, root + "/a.kld").mean_nll,
            save_kld_file(base, tokens, n_ctx, with_bos, root + "/b.kld").mean_nll);
}

TEST(KldFile, RefusesAnotherVocabularyAndTooLittleText) {
  const std::string root = test::scratch_dir();
  QwenModel m(test::make_tiny_model(root + "/tiny", 5));
  KldRunOptions opt;
  opt.quiet = true;
  test::expect_error([&] { save_kld_file(m, test::lcg_tokens(10, 320, 1), 16, opt, root + "/x.kld"); },
                     {"10 tokens", "fewer than one chunk of --seq-len 16"});
  test::expect_error([&] { save_kld_file(m, test::lcg_tokens(10, 320, 1), 2, opt, root + "/x.kld"); },
                     "at least 3 tokens");
  EXPECT_FALSE(file_exists(root + "/x.kld"));
  std::vector<uint16_t> rows(kld_row_values(100), 0);
  KldFileWriter w(root + "/v100.kld", 4, 100, {1, 2, 3, 4});
  w.append_rows(rows.data(), 1);
  w.commit();
  test::expect_error([&] { evaluate_kl_divergence_file(m, KldFile(root + "/v100.kld"), opt); },
                     {root + "/v100.kld", "distributions over 100 tokens", "vocabulary of 320"});
  // A row whose scale is not a number is named, not averaged into NaN statistics.
  const int64_t nv = kld_row_values(320);
  std::vector<uint16_t> bad(nv, 0);
  const float nan = std::nanf("");
  std::memcpy(bad.data(), &nan, 4);
  KldFileWriter wb(root + "/nan.kld", 4, 320, {1, 2, 3, 4});
  wb.append_rows(bad.data(), 1);
  wb.commit();
  test::expect_error([&] { evaluate_kl_divergence_file(m, KldFile(root + "/nan.kld"), opt); },
                     {root + "/nan.kld", "row 0 of chunk 0", "scale nan"});
}

}  // namespace
}  // namespace qwenq
