// Importance matrices: llama.cpp's two file formats (quant/ggml_imatrix.h), `qwen-quant imatrix`'s statistics
// (trainer/imatrix_model.h) and the importance-weighted quantizers' objective (quant/ggml_kquants.h). Byte equality
// with ggml's quantizers is tests/test_gguf_kquants.cpp's FilesWithImatrixEqualGgmls; the statistics against
// transformers' forward are tests/oracle/test_imatrix_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/files.h"
#include "core/gguf.h"
#include "core/rng.h"
#include "kernels/norm.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_imatrix.h"
#include "tests/support/test_models.h"
#include "tests/support/test_paths.h"
#include "trainer/gguf_model.h"
#include "trainer/imatrix_model.h"
#include "trainer/qwen_model.h"
#include "trainer/tokenizer.h"

namespace qwenq {
namespace {

Imatrix two_entries() {
  Imatrix m;
  m.datasets = {"a.txt", "b.jsonl"};
  m.chunk_count = 3;
  m.chunk_size = 512;
  ImatrixEntry a;
  a.sum2 = {1536.0f, 768.0f, 0.0f, 3072.0f};
  a.sum = {-3.0f, 2.5f, 0.0f, 1.0f};
  a.counts = {1536.0f};
  m.entries["blk.0.attn_q.weight"] = a;
  ImatrixEntry b;  // two matrices (merged experts), one never counted
  b.sum2 = {10.0f, 20.0f, 5.0f, 5.0f};
  b.counts = {10.0f, 0.0f};
  m.entries["blk.0.ffn_down_exps.weight"] = b;
  return m;
}

TEST(GgufImatrix, GgufFileRoundTripsAndGivesMeanSquares) {
  const std::string dir = test::scratch_dir();
  const Imatrix m = two_entries();
  write_imatrix_gguf(m, dir + "/i.gguf");
  const Imatrix r = read_imatrix(dir + "/i.gguf");
  EXPECT_FALSE(r.legacy);
  EXPECT_EQ(r.datasets, m.datasets);
  EXPECT_EQ(r.chunk_count, 3u);
  EXPECT_EQ(r.chunk_size, 512u);
  ASSERT_EQ(r.entries.size(), 2u);
  EXPECT_EQ(r.entries.at("blk.0.attn_q.weight").sum, m.entries.at("blk.0.attn_q.weight").sum);
  EXPECT_EQ(r.entries.at("blk.0.ffn_down_exps.weight").columns(), 2);
  // llama-quantize's values: in_sum2 / counts, a matrix never counted 1.0.
  EXPECT_EQ(r.importance("blk.0.attn_q.weight"), (std::vector<float>{1.0f, 0.5f, 0.0f, 2.0f}));
  EXPECT_EQ(r.importance("blk.0.ffn_down_exps.weight"), (std::vector<float>{1.0f, 2.0f, 1.0f, 1.0f}));
  EXPECT_TRUE(r.importance("blk.1.attn_q.weight").empty());
  // The layout llama-imatrix writes: <name>.in_sum2 [K, n_mat], .counts [1, n_mat], .in_sum, general.type.
  const GgufFile f(dir + "/i.gguf");
  EXPECT_EQ(f.get_string("general.type"), "imatrix");
  EXPECT_EQ(f.tensor("blk.0.ffn_down_exps.weight.in_sum2").ne, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(f.tensor("blk.0.ffn_down_exps.weight.counts").ne, (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(f.has_tensor("blk.0.attn_q.weight.in_sum"));
  EXPECT_FALSE(f.has_tensor("blk.0.ffn_down_exps.weight.in_sum"));
}

// The legacy layout, bytes put together here as llama-imatrix's save_imatrix_legacy writes them: values E[x²]·ncall.
TEST(GgufImatrix, LegacyDatFileReadAsLlamaQuantizeReadsIt) {
  const std::string dir = test::scratch_dir();
  std::string b;
  auto i32 = [&b](int32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  auto f32 = [&b](float v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  i32(2);
  i32(19), b += "blk.0.attn_k.weight", i32(4), i32(3), f32(4.0f), f32(8.0f), f32(0.0f);
  i32(13), b += "output.weight", i32(0), i32(2), f32(3.0f), f32(5.0f);  // ncall 0: the raw values
  i32(4), i32(8), b += "wiki.txt";
  write_file_atomic(dir + "/i.dat", b);
  const Imatrix r = read_imatrix(dir + "/i.dat");
  EXPECT_TRUE(r.legacy);
  EXPECT_EQ(r.chunk_count, 4u);
  EXPECT_EQ(r.datasets, (std::vector<std::string>{"wiki.txt"}));
  EXPECT_EQ(r.importance("blk.0.attn_k.weight"), (std::vector<float>{1.0f, 2.0f, 0.0f}));
  EXPECT_EQ(r.importance("output.weight"), (std::vector<float>{3.0f, 5.0f}));

  // Our .dat writer gives llama-imatrix's layout: ncall = ⌈count / chunk_size⌉ = 3, values E[x²]·3; read back.
  Imatrix m = two_entries();
  m.entries.erase("blk.0.ffn_down_exps.weight");
  write_imatrix_dat(m, dir + "/w.dat");
  const std::string w = read_file(dir + "/w.dat");
  int32_t ncall;
  std::memcpy(&ncall, w.data() + 4 + 4 + 19, 4);
  EXPECT_EQ(ncall, 3);
  const Imatrix back = read_imatrix(dir + "/w.dat");
  EXPECT_EQ(back.importance("blk.0.attn_q.weight"), m.importance("blk.0.attn_q.weight"));
  EXPECT_EQ(back.chunk_count, 3u);
  EXPECT_EQ(back.datasets, (std::vector<std::string>{"b.jsonl"}));
  // Merged experts, as save_imatrix_legacy writes them: one ncall = ⌈10 / 512⌉ = 1 for the entry, the expert no
  // token reached stored as 1·ncall; read back, the same importance as the GGUF form gives ({1, 2} and 1.0). An
  // entry no token reached at all is left out.
  Imatrix moe = two_entries();
  ImatrixEntry never;
  never.sum2 = {0.0f, 0.0f};
  never.counts = {0.0f};
  moe.entries["blk.1.ffn_up_exps.weight"] = never;
  write_imatrix_dat(moe, dir + "/moe.dat");
  const Imatrix moe_back = read_imatrix(dir + "/moe.dat");
  EXPECT_EQ(moe_back.entries.size(), 2u);
  EXPECT_EQ(moe_back.entries.count("blk.1.ffn_up_exps.weight"), 0u);
  EXPECT_EQ(moe_back.entries.at("blk.0.ffn_down_exps.weight").counts, (std::vector<float>{1.0f}));
  EXPECT_EQ(moe_back.importance("blk.0.ffn_down_exps.weight"), (std::vector<float>{1.0f, 2.0f, 1.0f, 1.0f}));
  EXPECT_EQ(moe_back.importance("blk.0.ffn_down_exps.weight"), moe.importance("blk.0.ffn_down_exps.weight"));

  // Every truncation of the entries is refused with the file's name (the trailing chunk count and dataset name are
  // optional, as llama.cpp reads them).
  for (size_t cut : {size_t(0), size_t(3), size_t(10), size_t(30), size_t(40)}) {
    write_file_atomic(dir + "/cut.dat", b.substr(0, cut));
    test::expect_error([&] { read_imatrix(dir + "/cut.dat"); }, {dir + "/cut.dat"});
  }
}

// --in-file: sums and counts add; a legacy file's values become sums over its chunks of the destination's chunk size
// (llama-imatrix's reading of one); in_sum survives only where both sides have it; another width is refused.
TEST(GgufImatrix, MergeAddsSumsAsLlamaImatrixDoes) {
  Imatrix into;
  into.chunk_size = 512;
  merge_imatrix(&into, two_entries(), "a.gguf");  // into an empty one: a copy
  EXPECT_EQ(into.entries.at("blk.0.attn_q.weight").sum2, two_entries().entries.at("blk.0.attn_q.weight").sum2);
  EXPECT_EQ(into.chunk_count, 3u);
  merge_imatrix(&into, two_entries(), "b.gguf");
  const ImatrixEntry& q = into.entries.at("blk.0.attn_q.weight");
  EXPECT_EQ(q.sum2, (std::vector<float>{3072.0f, 1536.0f, 0.0f, 6144.0f}));
  EXPECT_EQ(q.sum, (std::vector<float>{-6.0f, 5.0f, 0.0f, 2.0f}));
  EXPECT_EQ(q.counts, (std::vector<float>{3072.0f}));
  EXPECT_EQ(into.chunk_count, 6u);
  EXPECT_EQ(into.datasets.size(), 4u);
  EXPECT_EQ(into.importance("blk.0.attn_q.weight"), (std::vector<float>{1.0f, 0.5f, 0.0f, 2.0f}));
  Imatrix legacy;  // E[x²] = {2, 4, 6, 8} over ncall = 2 chunks: stored values E[x²]·2
  legacy.legacy = true;
  legacy.chunk_count = 2;
  ImatrixEntry l;
  l.sum2 = {4.0f, 8.0f, 12.0f, 16.0f};
  l.counts = {2.0f};
  legacy.entries["blk.0.attn_q.weight"] = l;
  merge_imatrix(&into, legacy, "old.dat");
  EXPECT_EQ(q.counts, (std::vector<float>{3072.0f + 1024.0f}));
  EXPECT_EQ(q.sum2, (std::vector<float>{3072.0f + 2048.0f, 1536.0f + 4096.0f, 6144.0f, 6144.0f + 8192.0f}));
  EXPECT_TRUE(q.sum.empty());
  // A legacy entry of merged experts (one ncall for both) into one with a count per expert: broadcast to each.
  ImatrixEntry lm;
  lm.sum2 = {2.0f, 2.0f, 4.0f, 4.0f};
  lm.counts = {2.0f};
  legacy.entries.clear();
  legacy.entries["blk.0.ffn_down_exps.weight"] = lm;
  merge_imatrix(&into, legacy, "old.dat");
  const ImatrixEntry& x = into.entries.at("blk.0.ffn_down_exps.weight");
  EXPECT_EQ(x.counts, (std::vector<float>{20.0f + 1024.0f, 0.0f + 1024.0f}));
  EXPECT_EQ(x.sum2, (std::vector<float>{20.0f + 1024.0f, 40.0f + 1024.0f, 10.0f + 2048.0f, 10.0f + 2048.0f}));
  ImatrixEntry wide;
  wide.sum2.assign(8, 1.0f);
  wide.counts = {1.0f};
  Imatrix other;
  other.entries["blk.0.attn_q.weight"] = wide;
  test::expect_error([&] { merge_imatrix(&into, other, "other.gguf"); },
                     {"other.gguf", "blk.0.attn_q.weight", "8 values", "another model"});
}

TEST(GgufImatrix, BadFilesAreRefusedNamingTheProblem) {
  const std::string dir = test::scratch_dir();
  test::expect_error([&] { read_imatrix(dir + "/none.gguf"); }, {"none.gguf", "no such imatrix file"});
  // A model file is not an imatrix.
  GgufWriter model;
  model.set("general.type", GgufValue::str("model"));
  model.add_tensor("blk.0.attn_q.weight", GgmlType::F32, {4, 1}, [] { return std::vector<uint8_t>(16, 0); });
  model.write(dir + "/model.gguf");
  test::expect_error([&] { read_imatrix(dir + "/model.gguf"); }, {"model.gguf", "not an imatrix file"});
  // in_sum2 without its counts.
  GgufWriter half;
  half.set("general.type", GgufValue::str("imatrix"));
  half.set("imatrix.chunk_count", GgufValue::u32(1));
  half.add_tensor("blk.0.attn_q.weight.in_sum2", GgmlType::F32, {4, 1}, [] { return std::vector<uint8_t>(16, 0); });
  half.write(dir + "/half.gguf");
  test::expect_error([&] { read_imatrix(dir + "/half.gguf"); }, {"half.gguf", "blk.0.attn_q.weight", "counts"});
  // A negative sum of squares.
  Imatrix m = two_entries();
  m.entries.begin()->second.sum2[1] = -1.0f;
  write_imatrix_gguf(m, dir + "/neg.gguf");
  test::expect_error([&] { read_imatrix(dir + "/neg.gguf"); }, {"neg.gguf", "blk.0.attn_q.weight", "-1"});
}

// What the importance buys: the quantizers minimise Σ_j imp_j·(x̂_j − x_j)² (scaled per row and block), so on a row
// whose importance sits on a few columns, the importance-weighted error with the matrix is below the error without it,
// for every type that uses it (by a clear margin: the measured ratios are 0.28 (Q5_1) to 0.53 (Q4_0); the bound is 0.9).
TEST(GgufImatrix, WeightedQuantizationLowersTheWeightedError) {
  Rng rng(5);
  const int64_t n = 1024, rows = 16;
  std::vector<float> x(rows * n), imp(n);
  for (auto& v : x) v = 0.02f * static_cast<float>(rng.normal());
  for (int64_t j = 0; j < n; ++j) imp[j] = (j % 13 == 0) ? 50.0f : 0.2f + static_cast<float>(rng.uniform());
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q5_K,
                     GgmlType::Q6_K}) {
    auto weighted_error = [&](const float* importance) {
      const std::vector<uint8_t> q = quantize_ggml(t, x.data(), rows, n, importance);
      std::vector<float> y(n);
      double e = 0;
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_ggml_row(t, q.data() + r * ggml_row_bytes(t, n), n, y.data());
        for (int64_t j = 0; j < n; ++j) e += imp[j] * double(y[j] - x[r * n + j]) * (y[j] - x[r * n + j]);
      }
      return e;
    };
    const double with = weighted_error(imp.data()), without = weighted_error(nullptr);
    EXPECT_LT(with, 0.9 * without) << ggml_type_info(uint32_t(t))->name;
  }
  // Q8_0 ignores it (as ggml): the same bytes.
  EXPECT_EQ(quantize_ggml(GgmlType::Q8_0, x.data(), rows, n, imp.data()), quantize_ggml(GgmlType::Q8_0, x.data(), rows, n));
}

// `qwen-quant imatrix` on the tiny random model: one entry per decoder Linear, the three attention projections (and
// gate/up) sharing their input's statistics, every chunk's tokens counted; layer 0's q input is RMSNorm(embedding)·w,
// computed here from the table directly.
TEST(GgufImatrix, StatisticsOfTheTinyModel) {
  const std::string dir = test::scratch_dir();
  const std::string model = test::make_tiny_model(dir + "/m", 3);
  ImatrixOptions o;
  o.model = model;
  o.calib_path = test::write_random_words(dir + "/words.txt", 6000, 1);
  o.ctx = 64;
  o.chunks = 5;
  o.batch_tokens = 128;  // three forwards: 2 + 2 + 1 chunks
  o.quiet = true;
  ImatrixReport rep;
  const Imatrix m = compute_imatrix(o, &rep);
  const QwenModel qm(model);
  const QwenConfig& c = qm.config();
  EXPECT_EQ(rep.chunks, 5);
  EXPECT_EQ(rep.tokens, 320);
  EXPECT_EQ(static_cast<int64_t>(m.entries.size()), 7 * c.num_layers);
  EXPECT_EQ(m.chunk_count, 5u);
  EXPECT_EQ(m.chunk_size, 64u);
  for (const auto& [name, e] : m.entries) {
    EXPECT_EQ(e.counts, (std::vector<float>{320.0f})) << name;
    EXPECT_EQ(e.columns(), name.find("ffn_down") != std::string::npos ? c.intermediate_size
                           : name.find("attn_output") != std::string::npos ? c.q_dim()
                                                                           : c.hidden_size)
        << name;
  }
  EXPECT_EQ(m.entries.at("blk.1.attn_q.weight").sum2, m.entries.at("blk.1.attn_v.weight").sum2);
  EXPECT_EQ(m.entries.at("blk.1.ffn_gate.weight").sum2, m.entries.at("blk.1.ffn_up.weight").sum2);

  // Layer 0's q input, independently: the first 5 windows of 64 tokens, embedded and normalized.
  const Tokenizer tok = Tokenizer::from_model(model);
  std::vector<int32_t> ids = tok.encode(read_file(o.calib_path), true, false);
  ASSERT_GE(ids.size(), 320u);
  const QwenWeights& w = qm.weights();
  const int64_t C = c.hidden_size;
  std::vector<double> want(static_cast<size_t>(C), 0.0);
  std::vector<float> e(static_cast<size_t>(C)), nrm(static_cast<size_t>(C));
  for (int64_t t = 0; t < 320; ++t) {
    int32_t id = ids[static_cast<size_t>(t)];
    if (t % 64 == 0 && tok.adds_bos()) id = tok.bos_id();
    to_f32(w.embed.dtype, static_cast<const char*>(w.embed.data) + id * C * dtype_size(w.embed.dtype), e.data(),
           static_cast<size_t>(C));
    const TensorView& in = w.layers[0].input_norm;
    rmsnorm_forward_ref(e.data(), 1, C, in.data, in.dtype, static_cast<float>(c.rms_norm_eps), nrm.data());
    for (int64_t j = 0; j < C; ++j) want[j] += double(nrm[j]) * nrm[j];
  }
  const std::vector<float>& got = m.entries.at("blk.0.attn_q.weight").sum2;
  for (int64_t j = 0; j < C; ++j) EXPECT_NEAR(got[j], want[j], 1e-5 * want[j] + 1e-6) << j;

  // The perplexity estimate: `eval`'s next-token NLL (checked against transformers elsewhere) of the same 5 chunks,
  // averaged over positions 32..62 of each (llama-imatrix's second halves).
  std::vector<std::vector<int32_t>> chunks;
  for (int64_t ch = 0; ch < 5; ++ch) {
    chunks.emplace_back(ids.begin() + ch * 64, ids.begin() + (ch + 1) * 64);
    if (tok.adds_bos()) chunks.back()[0] = tok.bos_id();
  }
  std::vector<float> nll;
  qm.next_token_nll(PackedBatch::from_sequences(chunks), &nll);
  double sum = 0, sq = 0;
  for (int64_t ch = 0; ch < 5; ++ch)
    for (int64_t t = 32; t < 63; ++t) sum += nll[ch * 64 + t], sq += double(nll[ch * 64 + t]) * nll[ch * 64 + t];
  const double mean = sum / 155, ppl = std::exp(mean);
  EXPECT_EQ(rep.ppl_tokens, 155);
  EXPECT_NEAR(rep.ppl, ppl, 1e-5 * ppl);
  EXPECT_NEAR(rep.ppl_err, std::sqrt((sq / 155 - mean * mean) / 154) * ppl, 1e-4 * ppl);

  // Too little text for one chunk is refused, naming the file.
  o.ctx = c.max_position_embeddings;
  o.chunks = -1;
  test::expect_error([&] { compute_imatrix(o); }, {"words.txt", "fewer than one chunk"});
}

// Chat records as calibration: rendered with the model's chat template, their special tokens parsed, the same
// statistics as the pre-rendered text under --parse-special; without it the same text spells <|im_start|> in bytes.
TEST(GgufImatrix, ChatRecordsAreTheRenderedTextWithSpecialTokens) {
  const std::string dir = test::scratch_dir() + "/imatrix-chat";
  const std::string model = test::make_tiny_model(dir + "/m", 6);
  const std::string cfg_path = path_join(model, "tokenizer_config.json");
  nlohmann::json cfg = nlohmann::json::parse(read_file(cfg_path));
  cfg["chat_template"] = read_file(test::source_dir() + "/tests/data/chat_templates/qwen2.5.jinja");
  write_file_atomic(cfg_path, cfg.dump());
  const Tokenizer tok = Tokenizer::from_model(model);
  std::string jsonl, rendered;
  for (int i = 0; i < 12; ++i) {
    const std::vector<ChatMessage> m = {{"user", "question number " + std::to_string(i) + " about the cat"},
                                        {"assistant", "an answer that runs for a while, number " + std::to_string(i)}};
    jsonl += nlohmann::json({{"messages", {{{"role", "user"}, {"content", m[0].content}},
                                           {{"role", "assistant"}, {"content", m[1].content}}}}}).dump() + "\n";
    rendered += (i ? "\n\n" : "") + tok.render_chat(m, ChatOptions()).text;
  }
  write_file_atomic(dir + "/chat.jsonl", jsonl);
  write_file_atomic(dir + "/rendered.txt", rendered);
  ImatrixOptions o;
  o.model = model;
  o.ctx = 64;
  o.quiet = true;
  o.calib_path = dir + "/chat.jsonl";
  ImatrixReport chat_rep;
  const Imatrix from_chat = compute_imatrix(o, &chat_rep);
  EXPECT_TRUE(chat_rep.chat_records);
  o.calib_path = dir + "/rendered.txt";
  o.parse_special = true;
  ImatrixReport text_rep;
  const Imatrix from_text = compute_imatrix(o, &text_rep);
  EXPECT_FALSE(text_rep.chat_records);
  EXPECT_EQ(chat_rep.text_tokens, text_rep.text_tokens);
  EXPECT_EQ(chat_rep.text_tokens, static_cast<int64_t>(tok.encode(rendered, true, true).size()));
  ASSERT_EQ(from_chat.entries.size(), from_text.entries.size());
  for (const auto& [name, e] : from_chat.entries) EXPECT_EQ(e.sum2, from_text.entries.at(name).sum2) << name;
  o.parse_special = false;  // llama-imatrix's default: "<|im_start|>" as its 12 bytes
  ImatrixReport bytes_rep;
  (void)compute_imatrix(o, &bytes_rep);
  EXPECT_GT(bytes_rep.text_tokens, text_rep.text_tokens + 12 * 5 * 10);
}

// `gguf --imatrix`: an entry of another width (an imatrix of another model) is refused before anything is written;
// the file records llama-quantize's quantize.imatrix.* keys; tensors the imatrix lacks are quantized without it.
TEST(GgufImatrix, ExportUsesTheEntriesAndRefusesAnotherModels) {
  const std::string dir = test::scratch_dir();
  const std::string model = test::make_tiny_model(dir + "/m", 4);
  const QwenConfig c = QwenModel(model).config();
  Imatrix m;
  m.datasets = {"calib.txt"};
  m.chunk_count = 7;
  m.chunk_size = 64;
  ImatrixEntry e;
  e.sum2.assign(static_cast<size_t>(c.hidden_size), 2.0f);
  e.counts = {1.0f};
  m.entries["blk.0.attn_q.weight"] = e;
  write_imatrix_gguf(m, dir + "/ok.gguf");
  GgufExportOptions o;
  o.type = "q4_0";
  o.quiet = true;
  o.imatrix_path = dir + "/ok.gguf";
  const GgufExportReport r = export_gguf(model, dir + "/with.gguf", o);
  EXPECT_EQ(r.imatrix_tensors, 1);
  const GgufFile f(dir + "/with.gguf");
  EXPECT_EQ(f.get_string("quantize.imatrix.file"), dir + "/ok.gguf");
  EXPECT_EQ(f.get_string("quantize.imatrix.dataset"), "calib.txt");
  EXPECT_EQ(f.get_int("quantize.imatrix.entries_count"), 1);
  EXPECT_EQ(f.get_int("quantize.imatrix.chunks_count"), 7);
  o.imatrix_path.clear();
  export_gguf(model, dir + "/without.gguf", o);
  const GgufFile g(dir + "/without.gguf");
  EXPECT_FALSE(g.has("quantize.imatrix.file"));
  for (const GgufTensor& t : f.tensors()) {
    const GgufTensor& u = g.tensor(t.name);
    const bool same = t.bytes == u.bytes && std::memcmp(t.data, u.data, t.bytes) == 0;
    EXPECT_EQ(same, t.name != "blk.0.attn_q.weight") << t.name;
  }

  m.entries["blk.1.ffn_down.weight"] = e;  // hidden_size values for an input of intermediate_size
  write_imatrix_gguf(m, dir + "/bad.gguf");
  o.imatrix_path = dir + "/bad.gguf";
  test::expect_error([&] { export_gguf(model, dir + "/bad-out.gguf", o); },
                     {"bad.gguf", "blk.1.ffn_down.weight", std::to_string(c.intermediate_size) + " columns"});
  EXPECT_FALSE(file_exists(dir + "/bad-out.gguf"));
}

}  // namespace
}  // namespace qwenq
