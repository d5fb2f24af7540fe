#include "tests/support/test_models.h"

#include "core/files.h"
#include "core/rng.h"
#include "tests/support/test_paths.h"
#include "trainer/llama2c_import.h"
#include "trainer/random_model.h"
#include "trainer/tokenizer.h"

namespace qwenq::test {

std::string make_tiny_model(const std::string& dir, uint64_t seed, int64_t kv_heads, int64_t layers) {
  RandomModelOptions o;
  o.out_dir = dir;
  o.dtype = DType::F32;
  o.seed = seed;
  o.kv_heads = kv_heads;
  o.layers = layers;
  write_random_model(o);
  return dir;
}

std::string make_random_model(const std::string& dir, const std::string& preset, DType dtype, uint64_t seed,
                              int64_t layers) {
  RandomModelOptions o;
  o.preset = preset;
  o.layers = layers;
  o.out_dir = dir;
  o.dtype = dtype;
  o.seed = seed;
  write_random_model(o);
  return dir;
}

std::string import_stories260k(const std::string& dir) {
  Llama2cImportOptions io;
  io.checkpoint = shared_data_dir() + "/stories260K/stories260K.bin";
  io.tokenizer = shared_data_dir() + "/stories260K/tok512.bin";
  io.out_dir = dir;
  import_llama2c(io);
  return dir;
}

std::vector<int32_t> tinystories_tokens(const std::string& model_dir) {
  return Tokenizer::from_dir(model_dir).encode(read_file(shared_data_dir() + "/tinystories/tinystories_val.txt"));
}

PackedBatch random_batch(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t len : lengths) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& t : s) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    seqs.push_back(std::move(s));
  }
  return PackedBatch::from_sequences(seqs);
}

std::string write_random_words(const std::string& path, size_t bytes, uint64_t seed) {
  Rng rng(seed);
  std::string text;
  while (text.size() < bytes) {
    const int len = 1 + static_cast<int>(rng.below(8));
    for (int i = 0; i < len; ++i) text += static_cast<char>('a' + rng.below(26));
    text += rng.below(10) == 0 ? ".\n" : " ";
  }
  write_file_atomic(path, text);
  return path;
}

}  // namespace qwenq::test
