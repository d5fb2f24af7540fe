#include "trainer/kld_file.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/progress.h"
#include "kernels/kld_rows.h"

namespace qwenq {

int64_t kld_row_values(int64_t n_vocab) { return kld_row_width(n_vocab); }
int64_t kld_rows_per_chunk(int64_t n_ctx) { return n_ctx - 1 - n_ctx / 2; }
int64_t kld_first_scored(int64_t n_ctx) { return n_ctx / 2; }

namespace {

// kld_file_bytes in 128 bits: a corrupt header's product of three int32s may pass 2^64.
unsigned __int128 file_bytes_wide(const KldFileHeader& h) {
  const unsigned __int128 chunks = static_cast<uint32_t>(h.n_chunk);
  return kKldHeaderBytes + 4 * chunks * static_cast<uint32_t>(h.n_ctx) +
         2 * chunks * static_cast<uint64_t>(kld_rows_per_chunk(h.n_ctx)) *
             static_cast<uint64_t>(kld_row_values(h.n_vocab));
}

float row_float(const uint16_t* row, int k) {
  float f;
  std::memcpy(&f, row + 2 * k, sizeof f);
  return f;
}

}  // namespace

uint64_t kld_file_bytes(const KldFileHeader& h) { return static_cast<uint64_t>(file_bytes_wide(h)); }

double kld_encode_row(const float* z, int64_t V, int32_t target, uint16_t* row) {
  float nll = 0;
  kld_encode_rows_ref(z, 1, V, &target, row, &nll);
  return nll;
}

float kld_row_log_prob(const uint16_t* row, int64_t v) { return kld_row_log_prob_ref(row, v); }

KlPosition kl_position_vs_row(const uint16_t* base_row, const float* logits, int64_t V, int32_t target) {
  KlRow row;
  kld_score_rows_ref(base_row, logits, 1, V, &target, &row);
  return kl_position_of(row, target);
}

bool is_kld_file(const std::string& path) {
  if (!file_exists(path) || dir_exists(path)) return false;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char magic[sizeof kKldFileMagic];
  const bool ok = std::fread(magic, 1, sizeof magic, f) == sizeof magic &&
                  std::memcmp(magic, kKldFileMagic, sizeof magic) == 0;
  std::fclose(f);
  return ok;
}

KldFile::KldFile(const std::string& path) : path_(path), map_(std::make_unique<MappedFile>(path)) {
  const uint8_t* d = map_->data();
  const size_t size = map_->size();
  QWENQ_CHECK(size >= static_cast<size_t>(kKldHeaderBytes),
              path << ": " << size << " bytes, shorter than the 20-byte header of a llama.cpp KL-divergence base file");
  QWENQ_CHECK(std::memcmp(d, kKldFileMagic, sizeof kKldFileMagic) == 0,
              path << " does not start with \"_logits_\": not a KL-divergence base file (llama-perplexity "
                      "--kl-divergence-base, qwen-quant eval --save-kld)");
  std::memcpy(&h_.n_ctx, d + 8, 4);
  std::memcpy(&h_.n_vocab, d + 12, 4);
  std::memcpy(&h_.n_chunk, d + 16, 4);
  QWENQ_CHECK(h_.n_ctx >= 3, path << ": n_ctx " << h_.n_ctx << " in its header; a chunk needs at least 3 tokens");
  QWENQ_CHECK(h_.n_vocab >= 1, path << ": n_vocab " << h_.n_vocab << " in its header");
  QWENQ_CHECK(h_.n_chunk >= 1, path << ": n_chunk " << h_.n_chunk << " in its header");
  const unsigned __int128 want = file_bytes_wide(h_);
  QWENQ_CHECK(want == static_cast<unsigned __int128>(size),
              path << " is " << size << " bytes; its header (n_ctx " << h_.n_ctx << ", n_vocab " << h_.n_vocab
                   << ", n_chunk " << h_.n_chunk << ") needs "
                   << (want >> 64 == 0 ? std::to_string(static_cast<uint64_t>(want)) : std::string("more than 2^64"))
                   << " (" << (want > size ? "truncated" : "bytes after the last chunk") << ")");
  const int32_t* tok = reinterpret_cast<const int32_t*>(d + kKldHeaderBytes);
  const int64_t n_tok = static_cast<int64_t>(h_.n_chunk) * h_.n_ctx;
  for (int64_t i = 0; i < n_tok; ++i) {
    int32_t t;
    std::memcpy(&t, tok + i, 4);
    QWENQ_CHECK(t >= 0 && t < h_.n_vocab, path << ": token " << t << " at position " << i % h_.n_ctx << " of chunk "
                                                << i / h_.n_ctx << " is outside its vocabulary of " << h_.n_vocab);
  }
}

const int32_t* KldFile::tokens(int64_t chunk) const {
  return reinterpret_cast<const int32_t*>(map_->data() + kKldHeaderBytes) + chunk * h_.n_ctx;
}

const uint16_t* KldFile::rows(int64_t chunk) const {
  const uint8_t* first_row = map_->data() + kKldHeaderBytes + 4 * static_cast<size_t>(h_.n_chunk) * h_.n_ctx;
  return reinterpret_cast<const uint16_t*>(first_row) +
         static_cast<size_t>(chunk) * kld_rows_per_chunk(h_.n_ctx) * kld_row_values(h_.n_vocab);
}

KldFileWriter::KldFileWriter(const std::string& path, int32_t n_ctx, int32_t n_vocab,
                             const std::vector<int32_t>& tokens)
    : path_(path), out_(path) {
  QWENQ_CHECK(n_ctx >= 3 && n_vocab >= 1 && !tokens.empty() && tokens.size() % n_ctx == 0 &&
                  tokens.size() / n_ctx <= INT32_MAX,
              path << ": a KL-divergence base file needs n_ctx >= 3 and whole chunks of tokens (n_ctx " << n_ctx
                   << ", " << tokens.size() << " tokens)");
  h_ = {n_ctx, n_vocab, static_cast<int32_t>(tokens.size() / n_ctx)};
  out_.append(kKldFileMagic, sizeof kKldFileMagic);
  out_.append(&h_.n_ctx, 4);
  out_.append(&h_.n_vocab, 4);
  out_.append(&h_.n_chunk, 4);
  out_.append(tokens.data(), tokens.size() * sizeof(int32_t));
}

void KldFileWriter::append_rows(const uint16_t* rows, int64_t n) {
  out_.append(rows, static_cast<size_t>(n * kld_row_values(h_.n_vocab)) * sizeof(uint16_t));
  rows_written_ += n;
}

void KldFileWriter::commit() {
  const int64_t want = static_cast<int64_t>(h_.n_chunk) * kld_rows_per_chunk(h_.n_ctx);
  QWENQ_CHECK(rows_written_ == want, path_ << ": " << rows_written_ << " rows written of " << want);
  out_.commit();
}

namespace {

// Chunks [c0, c0 + n) of n_ctx tokens as one packed batch, BOS (when >= 0) in each one's first position.
PackedBatch chunk_batch(const int32_t* tokens, int64_t n_ctx, int64_t c0, int64_t n, int32_t bos) {
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t c = c0; c < c0 + n; ++c) {
    seqs.emplace_back(tokens + c * n_ctx, tokens + (c + 1) * n_ctx);
    if (bos >= 0) seqs.back()[0] = bos;
  }
  return PackedBatch::from_sequences(seqs);
}

int64_t logits_rows_cap(const KldRunOptions& opt, int64_t V) {
  return opt.logits_chunk_rows > 0 ? opt.logits_chunk_rows : logits_block_rows(V);
}

void check_run_options(const KldRunOptions& opt) {
  QWENQ_CHECK(opt.chunks_per_batch >= 1, "--batch must be at least 1, got " << opt.chunks_per_batch);
  QWENQ_CHECK(opt.max_chunks >= 0, "--max-windows must be at least 0, got " << opt.max_chunks);
}

}  // namespace

PerplexityResult save_kld_file(LogitsSource& base, const std::vector<int32_t>& tokens, int64_t n_ctx,
                               const KldRunOptions& opt, const std::string& path) {
  check_run_options(opt);
  const int64_t V = base.vocab_size;
  QWENQ_CHECK(n_ctx >= 3 && n_ctx <= INT32_MAX, "--seq-len " << n_ctx << ": a KL-divergence base file's chunks "
                                                             << "need at least 3 tokens");
  int64_t n_chunk = static_cast<int64_t>(tokens.size()) / n_ctx;
  QWENQ_CHECK(n_chunk >= 1, "the text has " << tokens.size() << " tokens, fewer than one chunk of --seq-len "
                                            << n_ctx << "; give more text or a smaller --seq-len");
  if (opt.max_chunks > 0) n_chunk = std::min(n_chunk, opt.max_chunks);
  QWENQ_CHECK(n_chunk <= INT32_MAX, "more than 2^31 chunks");
  const KldFileHeader h{static_cast<int32_t>(n_ctx), static_cast<int32_t>(V), static_cast<int32_t>(n_chunk)};
  const uint64_t bytes = kld_file_bytes(h), free_bytes = free_bytes_for(path);
  QWENQ_CHECK(bytes <= free_bytes, path << " would take " << format_bytes(bytes) << " (" << n_chunk << " chunks x "
                                        << kld_rows_per_chunk(n_ctx) << " positions x " << V << " log-probabilities"
                                        << " in 16 bits), more than the " << format_bytes(free_bytes)
                                        << " free there; score fewer chunks (--max-windows)");
  const int32_t* tok = tokens.data();
  KldFileWriter writer(path, h.n_ctx, h.n_vocab, std::vector<int32_t>(tok, tok + n_chunk * n_ctx));

  const int64_t R = kld_rows_per_chunk(n_ctx), first = kld_first_scored(n_ctx), nv = kld_row_values(V);
  const int64_t cap = std::min(logits_rows_cap(opt, V), R);
  // A GPU source encodes on the device (logits_source.h's device_kld_encode_rows): only the 16-bit rows come back.
  const bool on_device = static_cast<bool>(base.device_logits);  // empty in builds without CUDA
  std::vector<float> lg(on_device ? 0 : static_cast<size_t>(cap * V));
  std::vector<uint16_t> enc(static_cast<size_t>(cap * nv));
  std::vector<float> nll(static_cast<size_t>(cap));
  PerplexityResult r;
  r.corpus_tokens = static_cast<int64_t>(tokens.size());
  r.windows = n_chunk;
  double nll_sum = 0;
  Progress bar("save-kld", n_chunk * n_ctx, "tok", opt.quiet);
  for (int64_t c0 = 0; c0 < n_chunk; c0 += opt.chunks_per_batch) {
    const int64_t nc = std::min(opt.chunks_per_batch, n_chunk - c0);
    base.forward(chunk_batch(tok, n_ctx, c0, nc, opt.bos));
    for (int64_t k = 0; k < nc; ++k) {
      const int32_t* chunk_tok = tok + (c0 + k) * n_ctx;
      for (int64_t r0 = 0; r0 < R; r0 += cap) {
        const int64_t n = std::min(cap, R - r0);
        const int32_t* targets = chunk_tok + first + r0 + 1;  // row i predicts the token after it
        if (on_device) {
#ifdef QWENQ_HAVE_CUDA
          device_kld_encode_rows(base, k * n_ctx + first + r0, n, targets, enc.data(), nll.data());
#endif
        } else {
          base.logits(k * n_ctx + first + r0, n, lg.data());
          kld_encode_rows_ref(lg.data(), n, V, targets, enc.data(), nll.data());
        }
        writer.append_rows(enc.data(), n);
        for (int64_t i = 0; i < n; ++i) nll_sum += nll[i];
        r.scored_tokens += n;
      }
    }
    char extra[64];
    std::snprintf(extra, sizeof extra, "ppl %.4f", std::exp(nll_sum / r.scored_tokens));
    bar.update((c0 + nc) * n_ctx, extra);
  }
  writer.commit();
  r.mean_nll = nll_sum / r.scored_tokens;
  r.perplexity = std::exp(r.mean_nll);
  r.seconds = bar.elapsed_s();
  r.tokens_per_s = r.seconds > 0 ? n_chunk * n_ctx / r.seconds : 0;
  char extra[64];
  std::snprintf(extra, sizeof extra, "ppl %.4f", r.perplexity);
  bar.finish(extra);
  return r;
}

KlDivergenceResult evaluate_kl_divergence_file(LogitsSource& model, const KldFile& file, const KldRunOptions& opt) {
  check_run_options(opt);
  const KldFileHeader& h = file.header();
  const int64_t V = model.vocab_size;
  QWENQ_CHECK(h.n_vocab == V, file.path() << " holds distributions over " << h.n_vocab << " tokens, the model "
                                          << model.name << " has a vocabulary of " << V
                                          << ": KL divergence needs the same vocabulary");
  const int64_t n_ctx = h.n_ctx, R = kld_rows_per_chunk(n_ctx), first = kld_first_scored(n_ctx);
  const int64_t nv = kld_row_values(V);
  const int64_t n_chunk = opt.max_chunks > 0 ? std::min<int64_t>(h.n_chunk, opt.max_chunks) : h.n_chunk;
  const int64_t cap = std::min(logits_rows_cap(opt, V), R);
  // A GPU source scores on the device (device_kld_score_rows): the rows go up, KlRows come back.
  const bool on_device = static_cast<bool>(model.device_logits);  // empty in builds without CUDA
  std::vector<float> lg(on_device ? 0 : static_cast<size_t>(cap * V));
  std::vector<KlRow> scored(static_cast<size_t>(cap));
  KlDivergenceResult r;
  r.model.corpus_tokens = static_cast<int64_t>(h.n_chunk) * n_ctx;
  r.model.windows = n_chunk;
  KlSample sample;
  double nll_sum = 0, nll_base_sum = 0;
  Progress bar("kl-divergence", n_chunk * n_ctx, "tok", opt.quiet);
  for (int64_t c0 = 0; c0 < n_chunk; c0 += opt.chunks_per_batch) {
    const int64_t nc = std::min(opt.chunks_per_batch, n_chunk - c0);
    model.forward(chunk_batch(file.tokens(0), n_ctx, c0, nc, opt.bos));
    for (int64_t k = 0; k < nc; ++k) {
      const int32_t* chunk_tok = file.tokens(c0 + k);
      const uint16_t* rows = file.rows(c0 + k);
      for (int64_t r0 = 0; r0 < R; r0 += cap) {
        const int64_t n = std::min(cap, R - r0);
        for (int64_t i = 0; i < n; ++i) {  // a corrupt row would otherwise turn every statistic into NaN
          const uint16_t* row = rows + (r0 + i) * nv;
          const float scale = row_float(row, 0), lo = row_float(row, 1);
          QWENQ_CHECK(std::isfinite(scale) && scale >= 0 && std::isfinite(lo) && lo <= 0,
                      file.path() << ": row " << r0 + i << " of chunk " << c0 + k << " has scale " << scale
                                  << " and min_log_prob " << lo << "; a row's scale is finite and >= 0, its "
                                  << "min_log_prob finite and <= 0");
        }
        const int32_t* targets = chunk_tok + first + r0 + 1;
        if (on_device) {
#ifdef QWENQ_HAVE_CUDA
          device_kld_score_rows(model, rows + r0 * nv, k * n_ctx + first + r0, n, targets, scored.data());
#endif
        } else {
          model.logits(k * n_ctx + first + r0, n, lg.data());
          kld_score_rows_ref(rows + r0 * nv, lg.data(), n, V, targets, scored.data());
        }
        for (int64_t i = 0; i < n; ++i) {
          const KlPosition p = kl_position_of(scored[static_cast<size_t>(i)], targets[i]);
          nll_sum += p.nll;
          nll_base_sum += p.nll_base;
          sample.add(p);
        }
        r.model.scored_tokens += n;
      }
      // Done with the chunk's rows (a Qwen chunk of 512 tokens holds 74 MiB of them): out of the resident set.
      release_mapped_pages(rows, static_cast<size_t>(R * nv) * sizeof(uint16_t));
    }
    char extra[96];
    std::snprintf(extra, sizeof extra, "ppl %.4f kld %.5f", std::exp(nll_sum / r.model.scored_tokens),
                  sample.kld_mean());
    bar.update((c0 + nc) * n_ctx, extra);
  }
  r.model.mean_nll = nll_sum / r.model.scored_tokens;
  r.model.perplexity = std::exp(r.model.mean_nll);
  r.base_perplexity = std::exp(nll_base_sum / r.model.scored_tokens);
  r.model.seconds = bar.elapsed_s();
  r.model.tokens_per_s = r.model.seconds > 0 ? n_chunk * n_ctx / r.model.seconds : 0;
  sample.summarize(&r);
  char extra[96];
  std::snprintf(extra, sizeof extra, "ppl %.4f kld %.5f", r.model.perplexity, r.kld.mean);
  bar.finish(extra);
  return r;
}

PerplexityResult save_kld_file(const QwenModel& base, const std::vector<int32_t>& tokens, int64_t n_ctx,
                               const KldRunOptions& opt, const std::string& path) {
  LogitsSource src = cpu_logits_source(base);
  return save_kld_file(src, tokens, n_ctx, opt, path);
}

KlDivergenceResult evaluate_kl_divergence_file(const QwenModel& model, const KldFile& file, const KldRunOptions& opt) {
  LogitsSource src = cpu_logits_source(model);
  return evaluate_kl_divergence_file(src, file, opt);
}

}  // namespace qwenq
