// Tokenizer throughput on real text: Qwen2 byte-level BPE on WikiText-2 test (whole file and line by line,
// each line with its CRLF, as the oracle test feeds it), stories260K's SentencePiece-style BPE on
// TinyStories, decoding, and the cost of loading the Qwen2 tokenizer. Bytes/s via SetBytesProcessed,
// tokens/s as a counter. Hugging Face in the same run: benchmarks/bench_tokenizer_vs_hf.py.
//
//   build/bench_tokenizer [benchmark flags]        (needs ../shared/data; skips with a message without it)
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "core/files.h"
#include "trainer/tokenizer.h"

namespace {

std::string data_dir() { return std::string(QWENQ_SHARED_DIR) + "/data"; }

bool have_data(benchmark::State& state) {
  if (qwenq::dir_exists(data_dir())) return true;
  state.SkipWithError(("shared data not found at " + data_dir() + "; skipping").c_str());
  for (auto _ : state) {
  }
  return false;
}

const qwenq::Tokenizer& qwen() {
  static const qwenq::Tokenizer t = qwenq::Tokenizer::from_dir(data_dir() + "/qwen2-tokenizer");
  return t;
}

const qwenq::Tokenizer& stories() {
  static const qwenq::Tokenizer t = qwenq::Tokenizer::from_llama2c(data_dir() + "/stories260K/tok512.bin");
  return t;
}

const std::string& wikitext() {
  static const std::string s = qwenq::read_file(data_dir() + "/wikitext2/wiki.test.raw");
  return s;
}

const std::string& tinystories() {
  static const std::string s = qwenq::read_file(data_dir() + "/tinystories/tinystories_val.txt");
  return s;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    end = end == std::string::npos ? text.size() : end + 1;
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

void report(benchmark::State& state, size_t bytes, size_t tokens) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(state.iterations() * tokens),
                                                  benchmark::Counter::kIsRate);
  state.counters["tokens"] = static_cast<double>(tokens);
}

void BM_QwenEncodeWikiTextWhole(benchmark::State& state) {
  if (!have_data(state)) return;
  const std::string& text = wikitext();
  qwen();
  size_t tokens = 0;
  for (auto _ : state) {
    std::vector<int32_t> ids = qwen().encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  report(state, text.size(), tokens);
}
BENCHMARK(BM_QwenEncodeWikiTextWhole)->Unit(benchmark::kMillisecond);

void BM_QwenEncodeWikiTextLines(benchmark::State& state) {
  if (!have_data(state)) return;
  const std::vector<std::string> lines = lines_of(wikitext());
  qwen();
  size_t tokens = 0;
  for (auto _ : state) {
    tokens = 0;
    for (const std::string& l : lines) {
      std::vector<int32_t> ids = qwen().encode(l);
      tokens += ids.size();
      benchmark::DoNotOptimize(ids.data());
    }
  }
  report(state, wikitext().size(), tokens);
}
BENCHMARK(BM_QwenEncodeWikiTextLines)->Unit(benchmark::kMillisecond);

// The same text seen once by a fresh tokenizer instance: no word-cache hits from earlier iterations.
void BM_QwenEncodeWikiTextColdCache(benchmark::State& state) {
  if (!have_data(state)) return;
  const std::string& text = wikitext();
  const std::string dir = data_dir() + "/qwen2-tokenizer";
  size_t tokens = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const qwenq::Tokenizer fresh = qwenq::Tokenizer::from_dir(dir);
    state.ResumeTiming();
    std::vector<int32_t> ids = fresh.encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  report(state, text.size(), tokens);
}
BENCHMARK(BM_QwenEncodeWikiTextColdCache)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_QwenDecodeWikiText(benchmark::State& state) {
  if (!have_data(state)) return;
  const std::vector<int32_t> ids = qwen().encode(wikitext());
  for (auto _ : state) {
    std::string text = qwen().decode(ids);
    benchmark::DoNotOptimize(text.data());
  }
  report(state, wikitext().size(), ids.size());
}
BENCHMARK(BM_QwenDecodeWikiText)->Unit(benchmark::kMillisecond);

void BM_StoriesEncodeTinyStoriesWhole(benchmark::State& state) {
  if (!have_data(state)) return;
  const std::string& text = tinystories();
  stories();
  size_t tokens = 0;
  for (auto _ : state) {
    std::vector<int32_t> ids = stories().encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  report(state, text.size(), tokens);
}
BENCHMARK(BM_StoriesEncodeTinyStoriesWhole)->Unit(benchmark::kMillisecond);

void BM_StoriesEncodeTinyStoriesLines(benchmark::State& state) {
  if (!have_data(state)) return;
  const std::vector<std::string> lines = lines_of(tinystories());
  stories();
  size_t tokens = 0;
  for (auto _ : state) {
    tokens = 0;
    for (const std::string& l : lines) {
      std::vector<int32_t> ids = stories().encode(l);
      tokens += ids.size();
      benchmark::DoNotOptimize(ids.data());
    }
  }
  report(state, tinystories().size(), tokens);
}
BENCHMARK(BM_StoriesEncodeTinyStoriesLines)->Unit(benchmark::kMillisecond);

void BM_QwenLoad(benchmark::State& state) {
  if (!have_data(state)) return;
  for (auto _ : state) {
    qwenq::Tokenizer t = qwenq::Tokenizer::from_dir(data_dir() + "/qwen2-tokenizer");
    benchmark::DoNotOptimize(t.vocab_size());
  }
}
BENCHMARK(BM_QwenLoad)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
