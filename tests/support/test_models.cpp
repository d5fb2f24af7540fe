#include "tests/support/test_models.h"

#include "tests/support/test_paths.h"
#include "trainer/llama2c_import.h"
#include "trainer/random_model.h"

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

std::string import_stories260k(const std::string& dir) {
  Llama2cImportOptions io;
  io.checkpoint = shared_data_dir() + "/stories260K/stories260K.bin";
  io.tokenizer = shared_data_dir() + "/stories260K/tok512.bin";
  io.out_dir = dir;
  import_llama2c(io);
  return dir;
}

}  // namespace qwenq::test
