// Fuzz targets: every reader of a user-supplied file, fed arbitrary bytes. The property they check is the project's
// rule for bad input: a qwenq::Error (one clear message), never a crash, a sanitizer report, another exception or an
// allocation sized by the file. run_fuzz_target returns normally after an Error; anything else escapes.
//
//   safetensors              the bytes as a .safetensors file: open, then read every tensor's bytes
//   model_config:<m>         the bytes as config.json of the tiny model <m> (dense, gptq, awq, nf4, ct: compressed-
//                            tensors pack-quantized, fp8: block-wise FP8): load, forward 3
//                            tokens (quantization_config included: shapes, bits, group sizes, formats)
//   model_header:<m>         the bytes as the JSON header of <m>'s model.safetensors over its real payload: load,
//                            forward 3 tokens (every dtype, shape and offset the packed readers check)
//   tokenizer                the bytes as text: encode (with and without special tokens) and decode back; the bytes
//                            read as token ids: decode
//   tokenizer_features       the bytes as text through the added-token and Metaspace tokenizers of
//                            tests/oracle/test_tokenizer_features_oracle.py: encode (special tokens parsed or split)
//                            and decode
//   sft                      the bytes as .jsonl and .json SFT data, every format, skip_bad on and off
//   classify                 the bytes as labelled texts of every problem type (skip_bad on and off, label names
//                            given or not; their statistics and derivatives), as labels.json and as a classifier's
//                            config.json
//   text                     the bytes as a .txt / .jsonl / .json evaluation or calibration corpus, multiple-choice
//                            items and GSM8K records (their extractions and exact match run on the record's text)
//   adapter_config           the bytes as adapter_config.json of a real adapter for the dense model: load it
//   adapter_header           the bytes as the header of that adapter's adapter_model.safetensors: load it
//   llama2c                  the bytes as a llama2.c checkpoint (the tokenizer fixed): import
//   llama2c_tokenizer        the bytes as a llama2.c tokenizer (a tiny checkpoint fixed): import
//   gguf                     the bytes as a .gguf file: open, dequantize every tensor, load as a model (forward 3
//                            tokens) and its tokenizer (encode, decode)
//   imatrix                  the bytes as an importance matrix (GGUF or legacy .dat): read, export a Q4_K_M GGUF
//   kld                      the bytes as a KL-divergence base file (llama-perplexity's): open, score the dense model
//   generation_config        the bytes as a model's generation_config.json: read, then pick a token with its settings
//
// The fixtures come from QWENQ_FUZZ_DIR, the directory tests/fuzz/make_seeds.sh fills (models/<m>, adapter/,
// tokenizer/, tokenizer_features/, llama2c/); scratch files go to QWENQ_FUZZ_SCRATCH (default /tmp), named by
// process id. Used by tests/fuzz/fuzz_replay.cpp (any compiler: replays files, ctest fuzz.replay) and
// tests/fuzz/fuzz_libfuzzer.cpp (clang's libFuzzer, scripts/fuzz.sh).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qwenq::fuzz {

// The target names above (with each model variant spelled out).
std::vector<std::string> fuzz_target_names();

// Runs one input through `target`: true when the reader accepted it (for sft and text: in at least one format), false
// when it refused it with a qwenq::Error (the expected outcome for bad input). Throws std::runtime_error ("fuzz
// setup: ...") for an unknown target or a missing fixture.
bool run_fuzz_target(const std::string& target, const uint8_t* data, size_t size);

}  // namespace qwenq::fuzz
