// llama.cpp's KL-divergence base file: what `llama-perplexity --kl-divergence-base FILE` writes while the original
// model runs over a text, and reads back with `--kl-divergence` while a quantized one runs over the same tokens.
// `qwen-quant eval --save-kld FILE` writes it and `eval --kl-base FILE` reads it, byte for byte the same layout, so
// a base file made by either tool scores models of both (a GGUF quant in llama.cpp, a GPTQ/AWQ checkpoint here):
//
//   char[8] "_logits_";  int32 n_ctx, n_vocab, n_chunk           (little-endian, 20 bytes)
//   int32 tokens[n_chunk · n_ctx]                                 the text's tokens, chunk after chunk
//   per chunk, one row for each position i = n_ctx/2 .. n_ctx − 2 (row i predicts token i + 1; the first half of
//   each chunk is context only): float32 scale, float32 min_log_prob, uint16 q[n_vocab], one uint16 0 more when
//   n_vocab is odd; nv = 2·⌈n_vocab/2⌉ + 4 uint16 a row, n_ctx − 1 − n_ctx/2 rows a chunk.
//
// A row of logits z (float32; the arithmetic is llama.cpp's, in float; kernels/kld_rows.h computes it, both devices):
//   m = max z,  lo = max(min z, m − 16),  lse = log Σ_v exp(z_v − m)
//   scale = (m − lo)/65535,  min_log_prob = lo − m − lse
//   q_v = round((z_v − lo)/scale) for z_v > lo, else 0                (round half to even; every q 0 if scale = 0)
// so that log P_v ≈ scale·q_v + min_log_prob to within scale/2 ≤ 1.3e-4 nats; logits more than 16 below the top
// all read as lo.
//
// A position of the evaluated model (logits z', true next token t) against a row, as llama.cpp scores it:
//   log P_v = scale·q_v + min_log_prob,  log Q_v = z'_v − logsumexp(z')
//   KLD = Σ_{v : log P_v > −16} P_v (log P_v − log Q_v)    (the tail below e^−16 left out)
//   nll_base = −log P_t,  nll = −log Q_t,  Δp = Q_t − P_t,  top-1 agreement: argmax z' = the first v of largest q_v
// kl_divergence.h's statistics then summarise the positions.
//
// When the tokenizer adds BOS, llama.cpp puts BOS in each chunk's first position for the forward (the file keeps the
// text's token); KldRunOptions::bos does the same.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/files.h"
#include "trainer/kl_divergence.h"
#include "trainer/logits_source.h"
#include "trainer/perplexity.h"
#include "trainer/qwen_model.h"

namespace qwenq {

struct KldFileHeader {
  int32_t n_ctx = 0, n_vocab = 0, n_chunk = 0;
};
constexpr char kKldFileMagic[8] = {'_', 'l', 'o', 'g', 'i', 't', 's', '_'};
constexpr int64_t kKldHeaderBytes = 20;
int64_t kld_row_values(int64_t n_vocab);     // nv: uint16 values per row
int64_t kld_rows_per_chunk(int64_t n_ctx);   // n_ctx − 1 − n_ctx/2
int64_t kld_first_scored(int64_t n_ctx);     // n_ctx/2: the position of a chunk's first row
uint64_t kld_file_bytes(const KldFileHeader& h);

// One row as above from V logits; returns −log softmax(z)_target as llama.cpp computes it (float: m + lse − z_t).
double kld_encode_row(const float* logits, int64_t V, int32_t target, uint16_t* row);
// log P_v of a row (float, as llama.cpp decodes it).
float kld_row_log_prob(const uint16_t* row, int64_t v);
// One position of a model against a row, llama.cpp's formulas above (target must be a token of the vocabulary).
KlPosition kl_position_vs_row(const uint16_t* base_row, const float* logits, int64_t V, int32_t target);

// True when `path` is a regular file that starts with the magic (eval --kl-base tells a base file from a model by it).
bool is_kld_file(const std::string& path);

// A base file read in place (mapped). The constructor checks the magic, n_ctx >= 4 (one scored row at least),
// n_vocab and n_chunk positive, the file's size against the header, and every token against the vocabulary; each
// failure names the file.
class KldFile {
 public:
  explicit KldFile(const std::string& path);
  const std::string& path() const { return path_; }
  const KldFileHeader& header() const { return h_; }
  const int32_t* tokens(int64_t chunk) const;   // n_ctx tokens
  const uint16_t* rows(int64_t chunk) const;    // kld_rows_per_chunk · nv values

 private:
  std::string path_;
  std::unique_ptr<MappedFile> map_;
  KldFileHeader h_;
};

// Writes a base file under a temporary name; commit() checks that every chunk's rows came and renames it.
class KldFileWriter {
 public:
  // tokens: n_chunk · n_ctx of them.
  KldFileWriter(const std::string& path, int32_t n_ctx, int32_t n_vocab, const std::vector<int32_t>& tokens);
  void append_rows(const uint16_t* rows, int64_t n);
  void commit();

 private:
  std::string path_;
  AtomicFileWriter out_;
  KldFileHeader h_;
  int64_t rows_written_ = 0;
};

struct KldRunOptions {
  int64_t max_chunks = 0;         // 0: all (llama-perplexity's --chunks)
  int64_t chunks_per_batch = 1;   // chunks forwarded together (packed)
  int32_t bos = -1;               // >= 0: the token put in each chunk's first position for the forward
  bool quiet = false;
  int64_t logits_chunk_rows = 0;  // > 0: rows of logits at a time (tests); else about 2^24 values
};

// llama-perplexity's run with --kl-divergence-base: ⌊tokens / n_ctx⌋ chunks (at most max_chunks) of the model,
// their second halves encoded into `path`. Returns the perplexity over the scored positions, llama.cpp's
// "Final estimate" (windows = chunks, seq_len = n_ctx). Refuses, before any work, a file larger than the free space
// of its file system.
// Any LogitsSource (trainer/logits_source.h): the CPU forward with the encoding on the host (kld_encode_rows_ref),
// or a GPU source with the encoding on the device (kld_encode_rows_cuda: only the 16-bit rows cross PCIe); the
// QwenModel overloads run on the CPU.
PerplexityResult save_kld_file(LogitsSource& base, const std::vector<int32_t>& tokens, int64_t n_ctx,
                               const KldRunOptions& opt, const std::string& path);
PerplexityResult save_kld_file(const QwenModel& base, const std::vector<int32_t>& tokens, int64_t n_ctx,
                               const KldRunOptions& opt, const std::string& path);

// llama-perplexity --kl-divergence: the model over the file's chunks (at most max_chunks), every scored position
// against its row (kernels/kld_rows.h: on the host, or on the device for a GPU source, the rows uploaded). The
// model's vocabulary must be the file's.
KlDivergenceResult evaluate_kl_divergence_file(LogitsSource& model, const KldFile& file, const KldRunOptions& opt);
KlDivergenceResult evaluate_kl_divergence_file(const QwenModel& model, const KldFile& file, const KldRunOptions& opt);

}  // namespace qwenq
