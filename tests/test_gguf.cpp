// GGUF files (core/gguf.h) and ggml block formats (quant/ggml_blocks.h): round trips, hand-worked blocks, and every
// kind of damaged file refused with one error naming it. Bit-exactness against gguf-py's quantizers and readers is
// tests/oracle/test_gguf_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/files.h"
#include "core/gguf.h"
#include "core/rng.h"
#include "quant/ggml_blocks.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

using test::error_of;
using test::expect_error;

std::vector<float> seeded(int64_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = scale * static_cast<float>(rng.normal());
  return x;
}

std::vector<uint8_t> as_bytes(const std::vector<float>& v) {
  return std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                              reinterpret_cast<const uint8_t*>(v.data() + v.size()));
}

// A small file with every metadata kind and three tensors; returns its path.
std::string write_sample(const std::string& dir) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("qwen2"));
  w.set("a.u32", GgufValue::u32(4000000000u));
  w.set("a.i32", GgufValue::i32(-7));
  w.set("a.u64", GgufValue::u64(1ull << 40));
  w.set("a.f32", GgufValue::f32(0.25f));
  w.set("a.bool", GgufValue::boolean(true));
  w.set("a.strs", GgufValue::str_array({"x", "", "Ġthe"}));
  w.set("a.ints", GgufValue::i32_array({1, -2, 3}));
  w.set("a.floats", GgufValue::f32_array({0.5, -1.5}));
  w.set("a.i32", GgufValue::i32(-8));  // replaced in place
  const std::vector<float> v = seeded(5, 1);
  w.add_tensor("v", GgmlType::F32, {5}, [v] { return as_bytes(v); });
  const std::vector<float> m = seeded(64 * 3, 2);
  w.add_tensor("m.q8", GgmlType::Q8_0, {64, 3}, [m] { return quantize_ggml(GgmlType::Q8_0, m.data(), 3, 64); });
  w.add_tensor("m.f16", GgmlType::F16, {64, 3}, [m] { return quantize_ggml(GgmlType::F16, m.data(), 3, 64); });
  const std::string path = path_join(dir, "sample.gguf");
  w.write(path);
  return path;
}

TEST(Gguf, RoundTripsMetadataAndTensors) {
  const std::string path = write_sample(test::scratch_dir());
  EXPECT_TRUE(is_gguf_file(path));
  GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.keys().front(), "general.architecture");
  EXPECT_EQ(f.keys()[2], "a.i32");  // kept its first position when set again
  EXPECT_EQ(f.get_string("general.architecture"), "qwen2");
  EXPECT_EQ(f.get_int("a.u32"), 4000000000ll);
  EXPECT_EQ(f.get_int("a.i32"), -8);
  EXPECT_EQ(f.get_int("a.u64"), 1ll << 40);
  EXPECT_EQ(f.get_float("a.f32"), 0.25);
  EXPECT_EQ(f.get_int("a.bool"), 1);
  EXPECT_EQ(f.get("a.strs").strs, (std::vector<std::string>{"x", "", "Ġthe"}));
  EXPECT_EQ(f.get("a.ints").ints, (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.get("a.ints").elem, GgufType::I32);
  EXPECT_EQ(f.get("a.floats").floats, (std::vector<double>{0.5, -1.5}));
  ASSERT_EQ(f.tensors().size(), 3u);
  const GgufTensor& v = f.tensor("v");
  EXPECT_EQ(v.ne, (std::vector<int64_t>{5}));
  EXPECT_EQ(std::memcmp(v.data, seeded(5, 1).data(), 20), 0);
  const GgufTensor& q = f.tensor("m.q8");
  EXPECT_EQ(q.type, GgmlType::Q8_0);
  EXPECT_EQ(q.bytes, 3u * 2 * 34);
  EXPECT_EQ(q.rows(), 3);
  for (const GgufTensor& t : f.tensors()) EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u) << t.name;
  const std::vector<float> m = seeded(64 * 3, 2);
  const std::vector<float> back = dequantize_ggml(f.tensor("m.f16"));
  for (size_t i = 0; i < m.size(); ++i) EXPECT_EQ(back[i], f16_to_f32(f32_to_f16(m[i])));
  // The file is the header, padded, then each tensor padded to 32 bytes (also the last one).
  uint64_t data = 0;
  for (const GgufTensor& t : f.tensors()) data += (t.bytes + 31) / 32 * 32;
  EXPECT_EQ(read_file(path).size() % 32, 0u);
  EXPECT_GE(read_file(path).size(), data);
  expect_error([&] { f.get_int("general.architecture"); }, {path, "general.architecture", "expected an integer"});
  expect_error([&] { f.get("missing.key"); }, {path, "missing.key", "missing"});
  expect_error([&] { f.tensor("nope"); }, {path, "nope", "not found"});
}

TEST(Gguf, EveryTruncationIsOneClearError) {
  const std::string path = write_sample(test::scratch_dir());
  const std::string bytes = read_file(path);
  const std::string cut = path + ".cut";
  // Every prefix short of the last tensor's data fails; the padding after it is not needed to read.
  GgufFile whole(path);
  const GgufTensor& last = whole.tensors().back();
  int refused = 0;
  for (size_t n = 0; n < bytes.size(); n += (n < 600 ? 1 : 7)) {
    write_file_atomic(cut, bytes.data(), n);
    const std::string e = error_of([&] { GgufFile g(cut); });
    if (e == "<no error>") continue;  // only prefixes that keep every tensor whole may load
    ++refused;
    EXPECT_NE(e.find(cut), std::string::npos) << "at " << n << " bytes: " << e;
  }
  EXPECT_GT(refused, 500);
  // Loading succeeds only once the last tensor's bytes are all there.
  const size_t end_of_data = bytes.size() - ((last.bytes + 31) / 32 * 32 - last.bytes);
  write_file_atomic(cut, bytes.data(), end_of_data - 1);
  expect_error([&] { GgufFile g(cut); }, {cut, "truncated", "m.f16"});
  write_file_atomic(cut, bytes.data(), end_of_data);
  EXPECT_EQ(error_of([&] { GgufFile g(cut); }), "<no error>");
}

// Patches bytes of the sample file at `at` and returns the error of reading it.
std::string error_after_patch(const std::string& path, size_t at, const std::string& with) {
  std::string b = read_file(path);
  b.replace(at, with.size(), with);
  const std::string p = path + ".bad";
  write_file_atomic(p, b.data(), b.size());
  return error_of([&] { GgufFile g(p); });
}

std::string u32le(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
std::string u64le(uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }

TEST(Gguf, CorruptHeadersAreRefusedByName) {
  const std::string path = write_sample(test::scratch_dir());
  const std::string bad = path + ".bad";
  EXPECT_NE(error_after_patch(path, 0, "GGML").find("not a GGUF file"), std::string::npos);
  EXPECT_NE(error_after_patch(path, 4, u32le(1)).find("GGUF version 1 is not supported"), std::string::npos);
  EXPECT_NE(error_after_patch(path, 8, u64le(1ull << 50)).find("more than a"), std::string::npos);
  EXPECT_NE(error_after_patch(path, 16, u64le(1ull << 50)).find("more than a"), std::string::npos);
  // The first key's length: 2^40 bytes.
  EXPECT_NE(error_after_patch(path, 24, u64le(1ull << 40)).find("claims a string"), std::string::npos);
  // The first value's type (after the 20-byte key "general.architecture").
  const std::string e = error_after_patch(path, 24 + 8 + 20, u32le(99));
  EXPECT_NE(e.find("unknown value type 99"), std::string::npos) << e;
  EXPECT_NE(e.find(bad), std::string::npos) << e;
  // A tensor type we do not know, and a misaligned / overlapping offset: found through the tensor infos.
  const std::string bytes = read_file(path);
  const size_t at_v = bytes.find(std::string("\x01\0\0\0\0\0\0\0v", 9));  // name length 1, "v"
  ASSERT_NE(at_v, std::string::npos);
  const size_t v_type = at_v + 9 + 4 + 8, v_off = v_type + 4;
  EXPECT_NE(error_after_patch(path, v_type, u32le(77)).find("ggml type 77"), std::string::npos);
  EXPECT_NE(error_after_patch(path, v_off, u64le(4)).find("not a multiple of the alignment"), std::string::npos);
  EXPECT_NE(error_after_patch(path, v_off, u64le(32)).find("overlap"), std::string::npos);
  EXPECT_NE(error_after_patch(path, at_v + 9, u32le(5)).find("5 dimensions"), std::string::npos);
  EXPECT_NE(error_after_patch(path, v_type, u32le(2)).find("not a multiple of its block 32"), std::string::npos);
  // A key or a tensor name twice (the writer never does it; a hand-edited or corrupt file may): "a.u64" renamed to
  // "a.u32", tensor "m.q8" renamed to "m.f16".
  const size_t at_u64 = bytes.find("a.u64");
  ASSERT_NE(at_u64, std::string::npos);
  const std::string dup = error_after_patch(path, at_u64, "a.u32");
  EXPECT_NE(dup.find("metadata key 'a.u32' appears twice"), std::string::npos) << dup;
  GgufWriter two;
  two.set("general.architecture", GgufValue::str("qwen2"));
  for (const char* name : {"t.a", "t.b"}) two.add_tensor(name, GgmlType::F32, {4}, [] { return as_bytes(seeded(4, 3)); });
  const std::string two_path = path_join(test::scratch_dir(), "two.gguf");
  two.write(two_path);
  const size_t at_b = read_file(two_path).find("t.b");
  ASSERT_NE(at_b, std::string::npos);
  const std::string dup_t = error_after_patch(two_path, at_b, "t.a");
  EXPECT_NE(dup_t.find("tensor 't.a' appears twice"), std::string::npos) << dup_t;
}

// Split files as gguf-split writes them: the metadata in the first, split.no / split.count (u16) and
// split.tensors.count (i32, the total) in every one; the first file opens them all.
TEST(Gguf, SplitFilesOpenAsOne) {
  const std::string dir = test::scratch_dir();
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("qwen2"));
  std::vector<std::vector<float>> values;
  for (int i = 0; i < 5; ++i) values.push_back(seeded(64, 10 + i));
  for (int i = 0; i < 5; ++i)
    w.add_tensor("t" + std::to_string(i), GgmlType::F32, {64}, [&values, i] { return as_bytes(values[i]); });
  // 256 bytes each: at most 600 bytes a file -> 2 + 2 + 1 tensors.
  const std::vector<std::string> files = w.write_split(dir + "/m.gguf", 600);
  ASSERT_EQ(files, (std::vector<std::string>{dir + "/m-00001-of-00003.gguf", dir + "/m-00002-of-00003.gguf",
                                             dir + "/m-00003-of-00003.gguf"}));
  GgufFile f(files[0]);
  EXPECT_EQ(f.split_count(), 3);
  ASSERT_EQ(f.tensors().size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(std::memcmp(f.tensor("t" + std::to_string(i)).data, values[i].data(), 256), 0);
  EXPECT_EQ(f.get("split.count").type, GgufType::U16);
  EXPECT_EQ(f.get("split.tensors.count").type, GgufType::I32);
  EXPECT_EQ(f.get_int("split.tensors.count"), 5);
  EXPECT_EQ(f.get_string("general.architecture"), "qwen2");
  expect_error([&] { GgufFile g(files[1]); }, {files[1], "split 2 of 3", "open the first file"});
  std::remove(files[2].c_str());
  expect_error([&] { GgufFile g(files[0]); }, {files[0], "split 3 of 3", "is missing"});
  // One file when everything fits: no split keys.
  EXPECT_EQ(w.write_split(dir + "/one.gguf", 1 << 20), std::vector<std::string>{dir + "/one.gguf"});
  EXPECT_FALSE(GgufFile(dir + "/one.gguf").has("split.count"));
}

TEST(Gguf, WriterRefusesWrongSizesAndLeavesNoFile) {
  const std::string dir = test::scratch_dir();
  GgufWriter w;
  expect_error([&] { w.add_tensor("x", GgmlType::Q4_0, {48, 2}, [] { return std::vector<uint8_t>(); }); },
               {"Q4_0", "48"});
  w.add_tensor("y", GgmlType::F32, {4}, [] { return std::vector<uint8_t>(3); });
  const std::string path = path_join(dir, "short.gguf");
  expect_error([&] { w.write(path); }, {"'y'", "produced 3 bytes, expected 16"});
  EXPECT_FALSE(file_exists(path));
}

// Hand-worked blocks: values on each format's grid come back exactly; the rounding rules are ggml's.
TEST(GgmlBlocks, HandWorkedBlocks) {
  std::vector<float> x(32);
  // Q8_0: max |x| = 127 gives d = 1; 2.5 rounds away from zero to 3 (roundf), -2.5 to -3.
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j * 4 - 63);
  x[0] = 127.0f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  uint8_t q8[34];
  quantize_ggml_row(GgmlType::Q8_0, x.data(), 32, q8);
  EXPECT_EQ(f16_to_f32(static_cast<uint16_t>(q8[0] | q8[1] << 8)), 1.0f);
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 1]), 3);
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 2]), -3);
  std::vector<float> y(32);
  dequantize_ggml_row(GgmlType::Q8_0, q8, 32, y.data());
  for (int j = 3; j < 32; ++j) EXPECT_EQ(y[j], x[j]);
  // Q4_0: the value of largest magnitude -8 gives d = 1 and codes x + 8, value j in the low nibble of byte j,
  // value j + 16 in the high one; 0.5 becomes code trunc(8.5 + 0.5) = 9 (rounds half up).
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j < 16 ? j - 8 : 7 - (j - 16));
  x[5] = 0.5f;
  uint8_t q4[18];
  quantize_ggml_row(GgmlType::Q4_0, x.data(), 32, q4);
  EXPECT_EQ(f16_to_f32(static_cast<uint16_t>(q4[0] | q4[1] << 8)), 1.0f);
  EXPECT_EQ(q4[2 + 5] & 0xF, 9);
  EXPECT_EQ(q4[2 + 3], 3 | (12 << 4));  // value 3 (-5: code 3) low, value 19 (4: code 12) high
  dequantize_ggml_row(GgmlType::Q4_0, q4, 32, y.data());
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], j == 5 ? 1.0f : x[j]) << j;
  // Q4_0 with a positive extreme: d = max / -8 is negative, so 8 maps to code 0 and -7 to 15.
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(8 - (j % 16));
  quantize_ggml_row(GgmlType::Q4_0, x.data(), 32, q4);
  dequantize_ggml_row(GgmlType::Q4_0, q4, 32, y.data());
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], x[j]) << j;
  // Q4_1: 0..15 plus an offset gives d = 1, min = offset; codes trunc(x - min + 0.5).
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j % 16) + 3.0f;
  uint8_t q41[20];
  quantize_ggml_row(GgmlType::Q4_1, x.data(), 32, q41);
  dequantize_ggml_row(GgmlType::Q4_1, q41, 32, y.data());
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], x[j]) << j;
  // An all-zero block: d = 0, every value back to 0 (1/d taken as 0, no NaN).
  std::fill(x.begin(), x.end(), 0.0f);
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1}) {
    std::vector<uint8_t> b(ggml_row_bytes(t, 32));
    quantize_ggml_row(t, x.data(), 32, b.data());
    dequantize_ggml_row(t, b.data(), 32, y.data());
    for (float v : y) EXPECT_EQ(v, 0.0f);
  }
}

// The error each block format leaves on seeded normal weights stays within its step: Q8_0 half a step of
// max|x|/127, Q4_0 a step of max|x|/8 (truncation of x/d + 8.5 is rounding), Q4_1 half a step of range/15, plus the
// fp16 rounding of the scales.
TEST(GgmlBlocks, ErrorWithinOneStepOnRealisticRows) {
  const int64_t n = 4864;  // a Qwen2.5-0.5B MLP width
  const std::vector<float> x = seeded(n, 7, 0.02f);
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1}) {
    std::vector<uint8_t> b(ggml_row_bytes(t, n));
    quantize_ggml_row(t, x.data(), n, b.data());
    std::vector<float> y(n);
    dequantize_ggml_row(t, b.data(), n, y.data());
    for (int64_t blk = 0; blk < n / 32; ++blk) {
      float lo = x[blk * 32], hi = lo, amax = 0;
      for (int j = 0; j < 32; ++j) {
        lo = std::min(lo, x[blk * 32 + j]);
        hi = std::max(hi, x[blk * 32 + j]);
        amax = std::max(amax, std::fabs(x[blk * 32 + j]));
      }
      const float step = t == GgmlType::Q8_0 ? amax / 127 : t == GgmlType::Q4_0 ? amax / 8 : (hi - lo) / 15;
      const float bound = (t == GgmlType::Q4_0 ? 1.0f : 0.5f) * step * 1.002f + 1e-3f * amax;
      for (int j = 0; j < 32; ++j)
        ASSERT_LE(std::fabs(y[blk * 32 + j] - x[blk * 32 + j]), bound) << ggml_type_info(uint32_t(t))->name << " " << blk;
    }
  }
}

TEST(GgmlBlocks, RefusesTypesItDoesNotHandle) {
  std::vector<float> x(256, 1.0f);
  std::vector<uint8_t> b(292);
  expect_error([&] { quantize_ggml_row(GgmlType::Q8_K, x.data(), 256, b.data()); }, "Q8_K");
  expect_error([&] { dequantize_ggml_row(GgmlType::Q8_1, b.data(), 256, x.data()); }, "Q8_1");
}

// ---- oracle half (tests/oracle/test_gguf_oracle.py, section 3) ------------------------------------------------

// GGUF's value types as gguf-py numbers them (GGUFValueType), for the JSON both halves exchange.
int type_id(GgufType t) { return static_cast<int>(t); }

// One metadata value as JSON: {"type", "value"} for a scalar, {"type": 9, "elem", "values"} for an array, an array of
// arrays as {"type": 9, "elem": 9, "nested": true}. Unsigned 64-bit values travel as unsigned.
nlohmann::json value_json(const GgufValue& v) {
  nlohmann::json j = {{"type", type_id(v.type)}};
  if (v.type == GgufType::ARRAY) {
    j["elem"] = type_id(v.elem);
    if (v.nested) j["nested"] = true;
    else if (v.elem == GgufType::STRING) j["values"] = v.strs;
    else if (v.elem == GgufType::F32 || v.elem == GgufType::F64) j["values"] = v.floats;
    else if (v.elem == GgufType::U64) {
      j["values"] = nlohmann::json::array();
      for (int64_t i : v.ints) j["values"].push_back(static_cast<uint64_t>(i));
    } else {
      j["values"] = v.ints;
    }
  } else if (v.type == GgufType::STRING) {
    j["value"] = v.s;
  } else if (v.is_float()) {
    j["value"] = v.f;
  } else if (v.type == GgufType::U64) {
    j["value"] = static_cast<uint64_t>(v.i);
  } else if (v.type == GgufType::BOOL) {
    j["value"] = v.i != 0;
  } else {
    j["value"] = v.i;
  }
  return j;
}

GgufValue scalar(GgufType t, int64_t i) {
  GgufValue v;
  v.type = t;
  v.i = i;
  return v;
}
GgufValue int_array(GgufType elem, std::vector<int64_t> ints) {
  GgufValue v;
  v.type = GgufType::ARRAY;
  v.elem = elem;
  v.ints = std::move(ints);
  return v;
}

// Reads $QWENQ_ORACLE_GGUF_TYPES_DIR/ggufpy.gguf, which gguf-py's GGUFWriter wrote with every value type (each
// scalar at its range's edges, an array of each, an array of arrays), general.alignment 64 and two F32 tensors, and
// checks every key and tensor against expected.json (gguf-py's values). Then writes ours.gguf the other way (every
// type, alignment 64, a tensor) with ours.json, for gguf-py's GGUFReader to read.
TEST(GgufOracle, EveryValueTypeBothWays) {
  const char* env = std::getenv("QWENQ_ORACLE_GGUF_TYPES_DIR");
  if (!env || !*env) GTEST_SKIP() << "QWENQ_ORACLE_GGUF_TYPES_DIR not set (run tests/oracle/test_gguf_oracle.py)";
  const std::string dir = env;
  const nlohmann::json want = nlohmann::json::parse(read_file(dir + "/expected.json"));
  {
    const GgufFile f(dir + "/ggufpy.gguf");
    EXPECT_EQ(f.alignment(), 64u);
    for (const auto& [key, e] : want.at("kv").items()) {
      ASSERT_TRUE(f.has(key)) << key;
      EXPECT_EQ(value_json(f.get(key)), e) << key;
    }
    for (const auto& t : want.at("tensors")) {
      const GgufTensor& x = f.tensor(t.at("name").get<std::string>());
      EXPECT_EQ(x.ne, t.at("ne").get<std::vector<int64_t>>()) << x.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data) % 64, 0u) << x.name << " is not on the file's 64-byte alignment";
      const std::vector<float> values = t.at("values").get<std::vector<float>>();
      ASSERT_EQ(x.bytes, values.size() * 4) << x.name;
      EXPECT_EQ(std::memcmp(x.data, values.data(), x.bytes), 0) << x.name;
    }
  }
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("qwen2"));
  w.set("general.alignment", GgufValue::u32(64));
  w.set("t.u8", scalar(GgufType::U8, 255));
  w.set("t.i8", scalar(GgufType::I8, -128));
  w.set("t.u16", GgufValue::u16(65535));
  w.set("t.i16", scalar(GgufType::I16, -32768));
  w.set("t.u32", GgufValue::u32(4294967295u));
  w.set("t.i32", GgufValue::i32(-2147483647 - 1));
  w.set("t.u64", GgufValue::u64(18446744073709551615ull));
  w.set("t.i64", scalar(GgufType::I64, INT64_MIN));
  w.set("t.f32", GgufValue::f32(-0.15625f));
  GgufValue f64;
  f64.type = GgufType::F64;
  f64.f = 0.1;  // not a float: must travel as 8 bytes
  w.set("t.f64", f64);
  w.set("t.bool", GgufValue::boolean(false));
  w.set("t.str", GgufValue::str("Ġthe \xe4\xbd\xa0 \"q\"\n"));
  w.set("t.arr.u8", int_array(GgufType::U8, {0, 7, 255}));
  w.set("t.arr.i16", int_array(GgufType::I16, {-32768, 1, 32767}));
  w.set("t.arr.u64", int_array(GgufType::U64, {0, static_cast<int64_t>(1ull << 63)}));
  w.set("t.arr.i64", int_array(GgufType::I64, {INT64_MIN, -1, INT64_MAX}));
  w.set("t.arr.bool", int_array(GgufType::BOOL, {1, 0, 1}));
  w.set("t.arr.i32", GgufValue::i32_array({-5, 0, 5}));
  w.set("t.arr.f32", GgufValue::f32_array({0.5, -2.25}));
  GgufValue f64s;
  f64s.type = GgufType::ARRAY;
  f64s.elem = GgufType::F64;
  f64s.floats = {0.1, -1e300};
  w.set("t.arr.f64", f64s);
  w.set("t.arr.str", GgufValue::str_array({"", "a b", "\xe2\x96\x81x"}));
  const std::vector<float> t = seeded(40, 9);
  w.add_tensor("ours.t", GgmlType::F32, {8, 5}, [t] { return as_bytes(t); });
  nlohmann::json ours = {{"kv", nlohmann::json::object()},
                         {"tensors", {{{"name", "ours.t"}, {"ne", {8, 5}}, {"values", t}}}}};
  const std::string path = dir + "/ours.gguf";
  w.write(path);
  const GgufFile back(path);  // what we wrote, as we read it: the JSON for gguf-py to compare with
  for (const std::string& key : back.keys()) ours["kv"][key] = value_json(back.get(key));
  write_file_atomic(dir + "/ours.json", ours.dump(1));
}

}  // namespace
}  // namespace qwenq
