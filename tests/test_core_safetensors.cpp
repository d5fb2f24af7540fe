// safetensors reader/writer, sharded checkpoints, atomic writes and staged output directories.
//
// Round trips, the header layout the reference writer produces (8-byte padding, metadata first), one test per
// malformed input (each message must name the file and the problem), and the C++ half of the Python oracle
// tests/oracle/test_safetensors_oracle.py (SafetensorsOracle.*, skipped unless QWENQ_ORACLE_ST_DIR is set).
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "tests/support/test_paths.h"

namespace qwenq {
namespace {

using test::error_of;

// Names in `dir`, sorted, without "." and "..".
std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string u64_le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A hand-made safetensors file: length prefix, header text as given, then `data`.
std::string write_raw(const std::string& path, const std::string& header, const std::string& data) {
  write_file_atomic(path, u64_le(header.size()) + header + data);
  return path;
}

// Expects opening `path` to fail with a message naming the file and containing `problem`.
void expect_bad(const std::string& path, const std::string& problem) {
  const std::string err = error_of([&] { SafetensorsFile f(path); });
  EXPECT_NE(err.find(path), std::string::npos) << "message does not name the file: " << err;
  EXPECT_NE(err.find(problem), std::string::npos) << "message does not say '" << problem << "': " << err;
}

// ---- round trips --------------------------------------------------------------------------------------------

TEST(SafetensorsRoundTrip, SeveralDtypesScalarEmptyAndMetadata) {
  const std::string path = test::scratch_dir() + "/rt.safetensors";
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
  std::vector<uint16_t> bf16 = {0x3f80, 0xbf80, 0x7f80, 0x0001};
  std::vector<uint16_t> f16 = {0x3c00, 0xfc00, 0x0001};
  std::vector<int32_t> i32 = {-2147483647 - 1, 0, 7, 2147483647, -5};
  std::vector<uint8_t> u8 = {0, 1, 2, 253, 254, 255, 128};
  float scalar = 42.5f;
  SafetensorsWriter w;
  w.add("f32", DType::F32, {2, 3}, f32.data());
  w.add("bf16", DType::BF16, {4}, bf16.data());
  w.add("f16", DType::F16, {3, 1}, f16.data());
  w.add_owned("i32", DType::I32, {5}, bytes_of(i32));
  w.add("u8", DType::U8, {7}, u8.data());
  w.add("scalar", DType::F32, {}, &scalar);
  w.add("empty", DType::F32, {0, 4}, nullptr);
  w.set_metadata("format", "pt");
  w.set_metadata("note", "caf\xc3\xa9 \"quoted\"");
  EXPECT_EQ(w.payload_bytes(), 24u + 8u + 6u + 20u + 7u + 4u);
  w.write(path);

  SafetensorsFile f(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"bf16", "empty", "f16", "f32", "i32", "scalar", "u8"}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "caf\xc3\xa9 \"quoted\"");
  auto same = [&](const std::string& name, DType t, std::vector<int64_t> shape, const void* want) {
    const TensorView& v = f.get(name);
    EXPECT_EQ(v.dtype, t) << name;
    EXPECT_EQ(v.shape, shape) << name;
    if (v.nbytes()) {
      EXPECT_EQ(std::memcmp(v.data, want, v.nbytes()), 0) << name;
    }
  };
  same("f32", DType::F32, {2, 3}, f32.data());
  same("bf16", DType::BF16, {4}, bf16.data());
  same("f16", DType::F16, {3, 1}, f16.data());
  same("i32", DType::I32, {5}, i32.data());
  same("u8", DType::U8, {7}, u8.data());
  same("scalar", DType::F32, {}, &scalar);
  same("empty", DType::F32, {0, 4}, nullptr);
  EXPECT_EQ(f.get("scalar").rank(), 0);
  EXPECT_EQ(f.get("scalar").numel(), 1);
  EXPECT_EQ(f.get("empty").numel(), 0);
}

TEST(SafetensorsRoundTrip, HeaderPaddedTo8MetadataFirstTensorsByName) {
  const std::string dir = test::scratch_dir();
  const std::vector<uint8_t> payload = {1, 2, 3};
  for (int len = 1; len <= 17; ++len) {
    const std::string path = dir + "/pad" + std::to_string(len) + ".safetensors";
    SafetensorsWriter w;
    w.add("zeta" + std::string(len, 'x'), DType::U8, {3}, payload.data());
    w.add("alpha", DType::U8, {2}, payload.data());
    w.set_metadata("format", "pt");
    w.write(path);
    const std::string raw = read_file(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
    EXPECT_EQ(n % 8, 0u) << "header length " << n << " for name length " << len;
    EXPECT_EQ(raw.size(), 8 + n + 5);
    const std::string header = raw.substr(8, n);
    EXPECT_EQ(header.find("{\"__metadata__\""), 0u) << header;
    const auto meta = nlohmann::ordered_json::parse(header);
    std::vector<std::string> keys;
    for (auto it = meta.begin(); it != meta.end(); ++it) keys.push_back(it.key());
    // One dtype: by name, whatever the order of add().
    EXPECT_EQ(keys, (std::vector<std::string>{"__metadata__", "alpha", "zeta" + std::string(len, 'x')}));
    EXPECT_EQ(meta["alpha"]["data_offsets"], nlohmann::ordered_json({0, 2}));
    EXPECT_EQ(meta["zeta" + std::string(len, 'x')]["data_offsets"], nlohmann::ordered_json({2, 5}));
    EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}')) << "padding must be spaces only";
    SafetensorsFile f(path);
    EXPECT_EQ(f.get("alpha").as<uint8_t>()[1], 2);
  }
}

// The reference writer's layout: wider dtypes first (I64, F64, F32, I32, BF16, F16, I16, I8, U8, BOOL), names
// within a dtype, so that odd-sized byte tensors added first no longer push the 16/32/64-bit ones off their
// alignment (the NF4 writer's U8 codes before its F32/BF16 tensors once did).
TEST(SafetensorsRoundTrip, WriterAlignsEveryTensorLikeTheReferenceWriter) {
  const std::string path = test::scratch_dir() + "/aligned.safetensors";
  const std::vector<uint8_t> bytes(64, 7);
  struct T {
    const char* name;
    DType dtype;
    int64_t n;
  };
  const T added[] = {{"u8_odd", DType::U8, 3}, {"bf16", DType::BF16, 3}, {"bool", DType::BOOL, 1},
                     {"f32", DType::F32, 1},   {"i8", DType::I8, 5},     {"f16", DType::F16, 1},
                     {"i64", DType::I64, 1},   {"i32", DType::I32, 2},   {"f64", DType::F64, 1},
                     {"i16", DType::I16, 3},   {"a_u8", DType::U8, 1}};
  SafetensorsWriter w;
  for (const T& t : added) w.add(t.name, t.dtype, {t.n}, bytes.data());
  w.write(path);
  const std::string raw = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  const auto header = nlohmann::ordered_json::parse(raw.substr(8, n));
  std::vector<std::string> keys;
  for (auto it = header.begin(); it != header.end(); ++it) keys.push_back(it.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"i64", "f64", "f32", "i32", "bf16", "f16", "i16", "i8", "a_u8", "u8_odd",
                                            "bool"}));
  SafetensorsFile f(path);
  for (const T& t : added) {
    const TensorView& v = f.get(t.name);
    const uint64_t begin = header[t.name]["data_offsets"][0].get<uint64_t>();
    EXPECT_EQ(begin % dtype_size(t.dtype), 0u) << t.name << " starts at data offset " << begin;
    EXPECT_EQ((8 + n + begin) % dtype_size(t.dtype), 0u) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % dtype_size(t.dtype), 0u) << t.name;
    EXPECT_EQ(std::memcmp(v.data, bytes.data(), v.nbytes()), 0) << t.name;
  }
}

// A file whose F32 tensor follows a 3-byte one (data offset 3, as qwenq's writer once produced): the view is an
// aligned copy with the file's bytes, so it can be read as floats.
TEST(SafetensorsRoundTrip, ReaderCopiesMisalignedTensorsIntoAlignedMemory) {
  const std::string path = test::scratch_dir() + "/misaligned.safetensors";
  const float values[2] = {1.5f, -2.25f};
  std::string data = "abc";
  data.append(reinterpret_cast<const char*>(values), sizeof values);
  std::string header =
      R"({"b":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"f":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})";
  header.append((8 - header.size() % 8) % 8, ' ');  // the data section 8-aligned in the mapping: "f" at +3 is not
  write_raw(path, header, data);
  SafetensorsFile f(path);
  const TensorView& v = f.get("f");
  ASSERT_EQ(reinterpret_cast<uintptr_t>(v.data) % 4, 0u);
  EXPECT_EQ(v.as<float>()[0], 1.5f);
  EXPECT_EQ(v.as<float>()[1], -2.25f);
  EXPECT_EQ(std::string(f.get("b").as<char>(), 3), "abc");
}

TEST(SafetensorsWriter, RejectsDuplicatesAndWrongSizes) {
  const std::string path = test::scratch_dir() + "/dup.safetensors";
  std::vector<float> x(4);
  SafetensorsWriter w;
  w.add("a", DType::F32, {4}, x.data());
  w.add("a", DType::F32, {4}, x.data());
  std::string err = error_of([&] { w.write(path); });
  EXPECT_NE(err.find(path), std::string::npos) << err;
  EXPECT_NE(err.find("tensor 'a' added twice"), std::string::npos) << err;
  EXPECT_FALSE(file_exists(path));
  err = error_of([&] { SafetensorsWriter().add_owned("b", DType::BF16, {3}, std::vector<uint8_t>(4)); });
  EXPECT_NE(err.find("tensor 'b' of shape [3] and dtype BF16 needs 6 bytes, got 4"), std::string::npos) << err;
  err = error_of([&] { SafetensorsWriter().add("c", DType::F32, {2, -1}, x.data()); });
  EXPECT_NE(err.find("tensor 'c' has negative dimension"), std::string::npos) << err;
}

TEST(SafetensorsFile, MissingTensorAndMissingFileAreNamed) {
  const std::string dir = test::scratch_dir();
  float v = 1;
  SafetensorsWriter w;
  w.add("x", DType::F32, {1}, &v);
  w.write(dir + "/a.safetensors");
  SafetensorsFile f(dir + "/a.safetensors");
  EXPECT_TRUE(f.has("x"));
  EXPECT_FALSE(f.has("y"));
  std::string err = error_of([&] { f.get("y"); });
  EXPECT_NE(err.find(dir + "/a.safetensors: tensor 'y' not found"), std::string::npos) << err;
  err = error_of([&] { SafetensorsFile g(dir + "/nope.safetensors"); });
  EXPECT_NE(err.find(dir + "/nope.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("No such file or directory"), std::string::npos) << err;
}

// ---- malformed files ----------------------------------------------------------------------------------------

const char* kOneTensor = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST(SafetensorsBad, EmptyAndShorterThan8Bytes) {
  const std::string dir = test::scratch_dir();
  write_file_atomic(dir + "/empty.safetensors", std::string());
  expect_bad(dir + "/empty.safetensors", "truncated: file is 0 bytes");
  write_file_atomic(dir + "/five.safetensors", std::string("\x10\0\0\0\0", 5));
  expect_bad(dir + "/five.safetensors", "truncated: file is 5 bytes, too short to hold the 8-byte header length");
}

TEST(SafetensorsBad, ShorterThanHeader) {
  const std::string path = test::scratch_dir() + "/cut_header.safetensors";
  const std::string header = kOneTensor;
  write_file_atomic(path, u64_le(header.size()) + header.substr(0, 20));
  expect_bad(path, "truncated: header length " + std::to_string(header.size()) + " points past the end of the file");
}

TEST(SafetensorsBad, HeaderLengthPastTheEnd) {
  const std::string path = test::scratch_dir() + "/len.safetensors";
  write_file_atomic(path, u64_le(4096) + std::string(kOneTensor) + std::string(8, '\0'));
  expect_bad(path, "header length 4096 points past the end of the file");
  write_file_atomic(path, u64_le(uint64_t{1} << 40) + std::string(kOneTensor));
  expect_bad(path, "header length 1099511627776 exceeds the 100000000-byte limit");
}

TEST(SafetensorsBad, DataSectionCut) {
  const std::string path = test::scratch_dir() + "/cut_data.safetensors";
  std::vector<float> x(10, 1.0f);
  SafetensorsWriter w;
  w.add("a", DType::F32, {2}, x.data());
  w.add("b", DType::F32, {8}, x.data());
  w.write(path);
  const std::string raw = read_file(path);
  write_file_atomic(path, raw.substr(0, raw.size() - 3));
  expect_bad(path, "truncated: tensor 'b' ends at byte 40 of the data section, which has only 37 bytes");
}

TEST(SafetensorsBad, HeaderNotJson) {
  const std::string dir = test::scratch_dir();
  write_raw(dir + "/a.safetensors", R"({"t":{"dtype":"F32",)", std::string(8, '\0'));
  expect_bad(dir + "/a.safetensors", "header is not valid JSON: ");
  write_raw(dir + "/b.safetensors", "[1, 2, 3]", "");
  expect_bad(dir + "/b.safetensors", "header is not a JSON object");
  write_raw(dir + "/c.safetensors", std::string("{\"t\xff\":1}"), "");
  expect_bad(dir + "/c.safetensors", "header is not valid JSON: ");
}

TEST(SafetensorsBad, UnsupportedDtype) {
  const std::string path = write_raw(test::scratch_dir() + "/f8.safetensors",
                                     R"({"w":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[0,4]}})",
                                     std::string(4, '\0'));
  expect_bad(path, "tensor 'w' has dtype F8_E5M2, which qwenq does not support");
}

TEST(SafetensorsBad, OffsetsDoNotMatchShape) {
  const std::string path = write_raw(test::scratch_dir() + "/size.safetensors",
                                     R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}})",
                                     std::string(10, '\0'));
  expect_bad(path, "tensor 'w' has shape [2, 3] and dtype BF16 (12 bytes) but its data_offsets [0, 10] span 10 bytes");
}

TEST(SafetensorsBad, MalformedEntries) {
  const std::string dir = test::scratch_dir();
  const std::string zeros(8, '\0');
  expect_bad(write_raw(dir + "/a.safetensors", R"({"w":[1,2]})", ""), "header entry for tensor 'w' is not a JSON object");
  expect_bad(write_raw(dir + "/b.safetensors", R"({"w":{"shape":[2],"data_offsets":[0,8]}})", zeros),
             "tensor 'w' has no string 'dtype'");
  expect_bad(write_raw(dir + "/c.safetensors", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", zeros),
             "dimensions must be non-negative integers");
  expect_bad(write_raw(dir + "/d.safetensors", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", zeros),
             "tensor 'w' has data_offsets [8,0]; expected [begin, end] with 0 <= begin <= end");
  expect_bad(write_raw(dir + "/e.safetensors", R"({"w":{"dtype":"F32","shape":[2]}})", zeros),
             "tensor 'w' has data_offsets (missing)");
  expect_bad(write_raw(dir + "/f.safetensors",
                       R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", zeros),
             "whose size overflows 64 bits");
}

TEST(SafetensorsBad, OverlappingTensors) {
  const std::string path = write_raw(test::scratch_dir() + "/overlap.safetensors",
                                     R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                     std::string(12, '\0'));
  expect_bad(path, "tensors 'a' [0, 8) and 'b' [4, 12) overlap");
}

TEST(SafetensorsBad, HoleAndTrailingBytes) {
  const std::string dir = test::scratch_dir();
  expect_bad(write_raw(dir + "/hole.safetensors",
                       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                       std::string(12, '\0')),
             "data section bytes [4, 8) before tensor 'b' belong to no tensor");
  expect_bad(write_raw(dir + "/tail.safetensors", kOneTensor, std::string(11, '\0')),
             "data section is 11 bytes but the tensors end at byte 8 (3 trailing bytes belong to no tensor)");
}

TEST(SafetensorsBad, DuplicateTensorName) {
  const std::string path = write_raw(test::scratch_dir() + "/dup.safetensors",
                                     R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                     R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                     std::string(8, '\0'));
  expect_bad(path, "header lists 'a' more than once");
}

TEST(SafetensorsBad, MetadataWithNonStringValue) {
  const std::string dir = test::scratch_dir();
  expect_bad(write_raw(dir + "/m1.safetensors", R"({"__metadata__":{"format":"pt","step":5}})", ""),
             "__metadata__ value for key 'step' is not a string");
  expect_bad(write_raw(dir + "/m2.safetensors", R"({"__metadata__":["pt"]})", ""),
             "__metadata__ must be an object of strings");
  SafetensorsFile ok(write_raw(dir + "/m3.safetensors", R"({"__metadata__":{"format":"pt"}}   )", ""));
  EXPECT_EQ(ok.metadata().at("format"), "pt");
  EXPECT_TRUE(ok.names().empty());
}

// ---- checkpoints --------------------------------------------------------------------------------------------

TEST(Checkpoint, SingleFile) {
  const std::string dir = test::scratch_dir();
  std::vector<float> x = {1, 2, 3};
  SafetensorsWriter w;
  w.add("model.norm.weight", DType::F32, {3}, x.data());
  w.write(dir + "/model.safetensors");
  Checkpoint c(dir);
  EXPECT_EQ(c.names(), std::vector<std::string>{"model.norm.weight"});
  EXPECT_EQ(c.get("model.norm.weight").as<float>()[2], 3.0f);
  EXPECT_EQ(c.file_of("model.norm.weight"), "model.safetensors");
  const std::string err = error_of([&] { c.get("lm_head.weight"); });
  EXPECT_NE(err.find("tensor 'lm_head.weight' not found in checkpoint " + dir), std::string::npos) << err;
}

TEST(Checkpoint, ShardedThroughIndex) {
  const std::string dir = test::scratch_dir();
  std::vector<uint16_t> a = {1, 2, 3, 4}, b = {5, 6};
  std::vector<float> n = {0.5f};
  SafetensorsWriter s1, s2;
  s1.add("model.embed_tokens.weight", DType::BF16, {2, 2}, a.data());
  s2.add("model.layers.0.mlp.up_proj.weight", DType::BF16, {1, 2}, b.data());
  s2.add("model.norm.weight", DType::F32, {1}, n.data());
  s1.write(dir + "/model-00001-of-00002.safetensors");
  s2.write(dir + "/model-00002-of-00002.safetensors");
  std::map<std::string, std::string> wm = {{"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
                                           {"model.layers.0.mlp.up_proj.weight", "model-00002-of-00002.safetensors"},
                                           {"model.norm.weight", "model-00002-of-00002.safetensors"}};
  write_safetensors_index(dir + "/model.safetensors.index.json", wm, s1.payload_bytes() + s2.payload_bytes());
  const std::string text = read_file(dir + "/model.safetensors.index.json");
  EXPECT_EQ(text.find("{\n  \"metadata\": {\n    \"total_size\": 16\n  },\n  \"weight_map\": {\n"
                      "    \"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\",\n"),
            0u)
      << text;
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(nlohmann::json::parse(text)["weight_map"]["model.norm.weight"], "model-00002-of-00002.safetensors");

  Checkpoint c(dir);
  EXPECT_EQ(c.names().size(), 3u);
  EXPECT_TRUE(c.has("model.norm.weight"));
  EXPECT_EQ(c.get("model.norm.weight").as<float>()[0], 0.5f);
  EXPECT_EQ(c.get("model.embed_tokens.weight").as<uint16_t>()[3], 4);
  EXPECT_EQ(c.get("model.layers.0.mlp.up_proj.weight").shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(c.file_of("model.embed_tokens.weight"), "model-00001-of-00002.safetensors");
  EXPECT_NE(error_of([&] { c.get("model.norm.bias"); }).find("tensor 'model.norm.bias' not found in checkpoint " + dir),
            std::string::npos);
}

TEST(Checkpoint, IndexProblemsAreNamed) {
  const std::string dir = test::scratch_dir();
  float v = 1;
  SafetensorsWriter w;
  w.add("a", DType::F32, {1}, &v);
  w.write(dir + "/model-00001-of-00002.safetensors");
  const std::string index = dir + "/model.safetensors.index.json";

  write_safetensors_index(index, {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}},
                          8);
  std::string err = error_of([&] { Checkpoint c(dir); });
  EXPECT_NE(err.find(index + " lists shard model-00002-of-00002.safetensors, which is missing from " + dir),
            std::string::npos)
      << err;

  write_safetensors_index(index, {{"a", "model-00001-of-00002.safetensors"}, {"z", "model-00001-of-00002.safetensors"}},
                          8);
  Checkpoint c(dir);
  err = error_of([&] { c.get("z"); });
  EXPECT_NE(err.find("model-00001-of-00002.safetensors: tensor 'z' is listed in model.safetensors.index.json but "
                     "missing from this shard"),
            std::string::npos)
      << err;

  write_file_atomic(index, std::string("{\"weight_map\": {\"a\": "));
  err = error_of([&] { Checkpoint c2(dir); });
  EXPECT_NE(err.find(index + ": not valid JSON"), std::string::npos) << err;
  write_file_atomic(index, std::string("{\"metadata\": {}}"));
  err = error_of([&] { Checkpoint c2(dir); });
  EXPECT_NE(err.find(index + ": no \"weight_map\" object"), std::string::npos) << err;
}

TEST(Checkpoint, MissingDirectoryOrFiles) {
  const std::string dir = test::scratch_dir();
  std::string err = error_of([&] { Checkpoint c(dir + "/absent"); });
  EXPECT_NE(err.find("checkpoint directory " + dir + "/absent does not exist"), std::string::npos) << err;
  err = error_of([&] { Checkpoint c(dir); });
  EXPECT_NE(err.find("checkpoint directory " + dir +
                     " has neither model.safetensors nor model.safetensors.index.json"),
            std::string::npos)
      << err;
}

// ---- atomic files and staged directories -------------------------------------------------------------------

TEST(AtomicWrite, NonexistentDirectoryThrowsNamingPathAndLeavesNoTemp) {
  const std::string dir = test::scratch_dir();
  const std::string path = dir + "/no/such/dir/out.json";
  std::string err = error_of([&] { write_file_atomic(path, std::string("{}")); });
  EXPECT_NE(err.find("cannot write " + path), std::string::npos) << err;
  EXPECT_NE(err.find("No such file or directory"), std::string::npos) << err;
  float v = 0;
  SafetensorsWriter w;
  w.add("v", DType::F32, {1}, &v);
  err = error_of([&] { w.write(dir + "/missing/model.safetensors"); });
  EXPECT_NE(err.find("cannot write " + dir + "/missing/model.safetensors"), std::string::npos) << err;
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{});
}

// A writer killed mid-file leaves "<path>.tmp.<pid>"; the next write of that path removes it once that pid is gone
// (and keeps a live process's).
TEST(AtomicWrite, RemovesADeadWritersTemporary) {
  const std::string dir = test::scratch_dir();
  pid_t dead = 4000000;
  while (dead > 2 && (kill(dead, 0) == 0 || errno != ESRCH)) --dead;
  write_file_atomic(dir + "/m.gguf.tmp." + std::to_string(dead), std::string("half a file"));
  write_file_atomic(dir + "/m.gguf.tmp." + std::to_string(getppid()), std::string("a live writer's"));
  write_file_atomic(dir + "/m.gguf", std::string("whole"));
  EXPECT_EQ(list_dir(dir), (std::vector<std::string>{"m.gguf", "m.gguf.tmp." + std::to_string(getppid())}));
}

TEST(AtomicWrite, ReplacesExistingFile) {
  const std::string dir = test::scratch_dir();
  write_file_atomic(dir + "/f.txt", std::string("first version, longer"));
  write_file_atomic(dir + "/f.txt", std::string("second"));
  EXPECT_EQ(read_file(dir + "/f.txt"), "second");
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"f.txt"});
}

// A write that fails half way (here: the file-size limit, EFBIG) reports errno and removes the temporary.
TEST(AtomicWrite, FailedWriteReportsErrnoAndCleansUp) {
  const std::string dir = test::scratch_dir();
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  if (old.rlim_max != RLIM_INFINITY && old.rlim_max < 4096) GTEST_SKIP() << "file size limit already tiny";
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::vector<uint8_t> big(1 << 20, 7);
  std::string err1 = error_of([&] { write_file_atomic(dir + "/big.bin", big.data(), big.size()); });
  SafetensorsWriter w;
  w.add("big", DType::U8, {static_cast<int64_t>(big.size())}, big.data());
  std::string err2 = error_of([&] { w.write(dir + "/big.safetensors"); });
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, old_handler);
  EXPECT_NE(err1.find("cannot write " + dir + "/big.bin (write failed): File too large"), std::string::npos) << err1;
  EXPECT_NE(err2.find("cannot write " + dir + "/big.safetensors (write failed): File too large"), std::string::npos)
      << err2;
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{});
}

TEST(Files, ReadMapJoin) {
  const std::string dir = test::scratch_dir();
  std::string err = error_of([&] { read_file(dir + "/absent.txt"); });
  EXPECT_NE(err.find("cannot open " + dir + "/absent.txt: No such file or directory"), std::string::npos) << err;
  write_file_atomic(dir + "/empty", std::string());
  MappedFile empty(dir + "/empty");
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_EQ(empty.data(), nullptr);
  write_file_atomic(dir + "/abc", std::string("abc"));
  MappedFile abc(dir + "/abc");
  ASSERT_EQ(abc.size(), 3u);
  EXPECT_EQ(abc.data()[2], 'c');
  EXPECT_TRUE(file_exists(dir + "/abc"));
  EXPECT_FALSE(file_exists(dir));
  EXPECT_TRUE(dir_exists(dir));
  EXPECT_FALSE(dir_exists(dir + "/abc"));
  EXPECT_EQ(path_join("a", "b"), "a/b");
  EXPECT_EQ(path_join("a/", "b"), "a/b");
  EXPECT_EQ(path_join("", "b"), "b");
  EXPECT_EQ(path_join("a", "/abs"), "/abs");
  err = error_of([&] { MappedFile m(dir); });
  EXPECT_NE(err.find("cannot map " + dir + ": not a regular file"), std::string::npos) << err;
}

TEST(StagedDir, WithoutCommitLeavesNothing) {
  const std::string dir = test::scratch_dir();
  {
    StagedDir out(dir + "/out", false);
    EXPECT_TRUE(dir_exists(out.path()));
    write_file_atomic(path_join(out.path(), "config.json"), std::string("{}"));
    ASSERT_EQ(std::system(("mkdir -p " + out.path() + "/sub/deeper && touch " + out.path() + "/sub/deeper/x").c_str()), 0);
  }
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{});
  try {  // the same through an exception
    StagedDir out(dir + "/out", false);
    write_file_atomic(path_join(out.path(), "a"), std::string("1"));
    QWENQ_FAIL("simulated failure");
  } catch (const Error&) {
  }
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{});
}

TEST(StagedDir, CommitPublishesAndCreatesParents) {
  const std::string dir = test::scratch_dir();
  StagedDir out(dir + "/runs/q4/", false);
  write_file_atomic(path_join(out.path(), "config.json"), std::string("{}"));
  EXPECT_FALSE(dir_exists(dir + "/runs/q4"));
  out.commit();
  EXPECT_EQ(read_file(dir + "/runs/q4/config.json"), "{}");
  EXPECT_EQ(list_dir(dir + "/runs"), std::vector<std::string>{"q4"});
}

TEST(StagedDir, RefusesExistingUnlessOverwrite) {
  const std::string dir = test::scratch_dir();
  {
    StagedDir first(dir + "/out", false);
    write_file_atomic(path_join(first.path(), "old.txt"), std::string("old"));
    first.commit();
  }
  std::string err = error_of([&] { StagedDir again(dir + "/out", false); });
  EXPECT_NE(err.find("output directory " + dir + "/out exists (pass --overwrite to replace it)"), std::string::npos)
      << err;
  EXPECT_EQ(read_file(dir + "/out/old.txt"), "old");

  StagedDir replace(dir + "/out", true);
  write_file_atomic(path_join(replace.path(), "new.txt"), std::string("new"));
  EXPECT_EQ(read_file(dir + "/out/old.txt"), "old") << "the old output stays until commit()";
  replace.commit();
  EXPECT_EQ(list_dir(dir + "/out"), std::vector<std::string>{"new.txt"});
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"out"}) << "no .partial or .old directories left";

  write_file_atomic(dir + "/plain", std::string("x"));
  err = error_of([&] { StagedDir bad(dir + "/plain", true); });
  EXPECT_NE(err.find(dir + "/plain exists and is not a directory"), std::string::npos) << err;
}

// ---- C++ half of tests/oracle/test_safetensors_oracle.py ----------------------------------------------------

// Both sides compute the same values from the flat index.
float oracle_float(int64_t i) { return static_cast<float>(i % 251) * 0.25f - 31.0f; }
int32_t oracle_i32(int64_t i) { return static_cast<int32_t>((i * 7919) % 100003) - 50000; }
uint8_t oracle_u8(int64_t i) { return static_cast<uint8_t>((i * 31) % 256); }
int64_t oracle_i64(int64_t i) { return i * 1000000007LL - 5000000000LL; }
// Pseudo-random fp32 bit patterns; every 4th one is an F16 tie, a BF16 tie, or a value in the F16 range.
uint32_t oracle_bits(int64_t i) {
  const uint32_t h = static_cast<uint32_t>(static_cast<uint64_t>(i) * 2654435761ull + 12345u);
  switch (i % 4) {
    case 1: return (h & ~0x1fffu) | 0x1000u;
    case 2: return (h & ~0xffffu) | 0x8000u;
    case 3: return (h & 0x807fffffu) | ((100u + (h >> 23) % 45u) << 23);
    default: return h;
  }
}
const char* kOracleNote = "h\xc3\xa9llo \xe2\x9c\x93";  // "héllo ✓"

template <typename T, typename F>
void expect_tensor(const SafetensorsFile& f, const std::string& name, DType dtype, std::vector<int64_t> shape, F value) {
  ASSERT_TRUE(f.has(name)) << f.path() << " lacks " << name;
  const TensorView& v = f.get(name);
  EXPECT_EQ(v.dtype, dtype) << name;
  ASSERT_EQ(v.shape, shape) << name;
  int bad = 0;
  for (int64_t i = 0; i < v.numel() && bad < 5; ++i) {
    T want = value(i), got;
    std::memcpy(&got, static_cast<const uint8_t*>(v.data) + i * sizeof(T), sizeof(T));
    if (std::memcmp(&got, &want, sizeof(T)) != 0) {
      ++bad;
      ADD_FAILURE() << name << "[" << i << "] differs";
    }
  }
}

TEST(SafetensorsOracle, ReadPythonFilesWriteCppFiles) {
  const char* env = std::getenv("QWENQ_ORACLE_ST_DIR");
  if (!env || !*env) GTEST_SKIP() << "QWENQ_ORACLE_ST_DIR not set (run tests/oracle/test_safetensors_oracle.py)";
  const std::string dir = env;

  SafetensorsFile py(dir + "/py.safetensors");
  expect_tensor<float>(py, "f32", DType::F32, {3, 5}, oracle_float);
  expect_tensor<uint16_t>(py, "f16", DType::F16, {7}, [](int64_t i) { return f32_to_f16(oracle_float(i)); });
  expect_tensor<double>(py, "f64", DType::F64, {2}, [](int64_t i) { return static_cast<double>(oracle_float(i)); });
  expect_tensor<int32_t>(py, "i32", DType::I32, {2, 2, 3}, oracle_i32);
  expect_tensor<uint8_t>(py, "u8", DType::U8, {300}, oracle_u8);
  expect_tensor<int64_t>(py, "i64", DType::I64, {4}, oracle_i64);
  expect_tensor<float>(py, "scalar", DType::F32, {}, oracle_float);
  expect_tensor<float>(py, "empty", DType::F32, {0, 3}, oracle_float);
  EXPECT_EQ(py.metadata().at("origin"), "numpy");
  EXPECT_EQ(py.metadata().at("note"), kOracleNote);
  if (file_exists(dir + "/py_bf16.safetensors")) {
    SafetensorsFile pb(dir + "/py_bf16.safetensors");
    expect_tensor<uint16_t>(pb, "bf16", DType::BF16, {4, 8}, [](int64_t i) { return f32_to_bf16(oracle_float(i)); });
    expect_tensor<float>(pb, "f32", DType::F32, {5}, oracle_float);
    EXPECT_EQ(pb.metadata().at("origin"), "torch");
  }

  // The C++ side writes the same formula; the script reads it back with safetensors (numpy, and torch for BF16).
  std::vector<float> f32(15), scalar = {oracle_float(0)}, round_src(4096);
  std::vector<uint16_t> f16(7), bf16(32), round_f16(4096), round_bf16(4096);
  std::vector<double> f64(2);
  std::vector<int32_t> i32(12);
  std::vector<uint8_t> u8(300);
  std::vector<int64_t> i64(4);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = oracle_float(i);
  for (size_t i = 0; i < f16.size(); ++i) f16[i] = f32_to_f16(oracle_float(i));
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = f32_to_bf16(oracle_float(i));
  for (size_t i = 0; i < f64.size(); ++i) f64[i] = oracle_float(i);
  for (size_t i = 0; i < i32.size(); ++i) i32[i] = oracle_i32(i);
  for (size_t i = 0; i < u8.size(); ++i) u8[i] = oracle_u8(i);
  for (size_t i = 0; i < i64.size(); ++i) i64[i] = oracle_i64(i);
  for (size_t i = 0; i < round_src.size(); ++i) {
    const uint32_t b = oracle_bits(i);
    std::memcpy(&round_src[i], &b, 4);
  }
  from_f32(DType::F16, round_src.data(), round_f16.data(), round_src.size());
  from_f32(DType::BF16, round_src.data(), round_bf16.data(), round_src.size());

  SafetensorsWriter w;
  w.add("f32", DType::F32, {3, 5}, f32.data());
  w.add("f16", DType::F16, {7}, f16.data());
  w.add("f64", DType::F64, {2}, f64.data());
  w.add("i32", DType::I32, {2, 2, 3}, i32.data());
  w.add("u8", DType::U8, {300}, u8.data());
  w.add("i64", DType::I64, {4}, i64.data());
  w.add("scalar", DType::F32, {}, scalar.data());
  w.add("empty", DType::F32, {0, 3}, nullptr);
  w.add("round_src", DType::F32, {4096}, round_src.data());
  w.add("round_f16", DType::F16, {4096}, round_f16.data());
  w.set_metadata("origin", "qwenq");
  w.set_metadata("note", kOracleNote);
  w.write(dir + "/cpp.safetensors");

  SafetensorsWriter wb;
  wb.add("bf16", DType::BF16, {4, 8}, bf16.data());
  wb.add("round_src", DType::F32, {4096}, round_src.data());
  wb.add("round_bf16", DType::BF16, {4096}, round_bf16.data());
  wb.set_metadata("origin", "qwenq");
  wb.write(dir + "/cpp_bf16.safetensors");

  // py_order.safetensors (every dtype, odd-sized byte tensors among them) rewritten tensor for tensor: the script
  // requires the same bytes as Python's file, the reference writer's layout.
  SafetensorsFile order(dir + "/py_order.safetensors");
  SafetensorsWriter wo;
  for (const std::string& name : order.names()) {
    const TensorView& t = order.get(name);
    wo.add(name, t.dtype, t.shape, t.data);
  }
  for (const auto& kv : order.metadata()) wo.set_metadata(kv.first, kv.second);
  wo.write(dir + "/cpp_order.safetensors");
}

}  // namespace
}  // namespace qwenq
