// Models the tests make: a seeded tiny random one (any machine) and the real stories260K (needs ../shared).
#pragma once

#include <cstdint>
#include <string>

namespace qwenq::test {

// The "tiny" preset (trainer/random_model.h) with fp32 weights from `seed`; layers / kv_heads 0 keep the preset's.
// Returns dir.
std::string make_tiny_model(const std::string& dir, uint64_t seed, int64_t kv_heads = 0, int64_t layers = 0);

// stories260K imported from ../shared/data into dir as an fp32 Hugging Face directory (call
// QWENQ_REQUIRE_SHARED_DATA first). Returns dir.
std::string import_stories260k(const std::string& dir);

}  // namespace qwenq::test
