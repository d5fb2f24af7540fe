// The CUDA twins of kernels/convert.h (casts, embedding gather, residual and bias adds) against their CPU twins.
// Every op is exact or a single fp32 rounding of the same operands, so the rule is bit equality, over sizes that
// mix awkward ones (1, 3, 17, 127) with real Qwen2.5 rows (896, 3584) and one past the launch's grid-stride limit
// (4096 blocks x 256 threads = 1,048,576). The casts also get every special value (±0, subnormals, ±inf, NaNs with
// payloads, exact ties in both rounding directions). Outputs carry guard elements no kernel may touch. Seeds are
// fixed and printed with every failure. Every test skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/convert.h"
#include "kernels/cuda_check.cuh"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;
using test::error_of;

constexpr size_t kGuard = 16;                // elements after every output
constexpr uint32_t kGuard32 = 0x7fc5a5a5u;   // a quiet NaN with a payload no kernel writes
constexpr uint16_t kGuard16 = 0x7fa5u;       // likewise in bf16

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Bit equality of the first n elements (so NaN payloads count) and intact guards after them.
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, size_t n, const std::string& ctx) {
  ASSERT_EQ(got.size(), n + kGuard) << ctx;
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    if (float_bits(got[i]) != float_bits(want[i])) {
      if (bad < 5) ADD_FAILURE() << ctx << ": element " << i << " is " << got[i] << ", the ref has " << want[i];
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0u) << ctx << ": " << bad << " of " << n << " elements differ";
  for (size_t i = n; i < got.size(); ++i) ASSERT_EQ(float_bits(got[i]), kGuard32) << ctx << ": guard " << i - n;
}

void expect_same_bits16(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want, size_t n,
                        const std::string& ctx) {
  ASSERT_EQ(got.size(), n + kGuard) << ctx;
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    if (got[i] != want[i]) {
      if (bad < 5) ADD_FAILURE() << ctx << ": element " << i << " is 0x" << std::hex << got[i] << ", the ref has 0x"
                                 << want[i] << std::dec;
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0u) << ctx << ": " << bad << " of " << n << " elements differ";
  for (size_t i = n; i < got.size(); ++i) ASSERT_EQ(got[i], kGuard16) << ctx << ": guard " << i - n;
}

// Seeded values of every magnitude from 1e-38 to 1e38 and both signs, then the special values at the front.
std::vector<float> awkward_floats(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& f : v) {
    const float mag = std::pow(10.f, rng.uniform(-38.f, 38.f));
    f = (rng.uniform() < 0.5f ? -1.f : 1.f) * mag * rng.uniform(1.f, 9.99f);
  }
  const float specials[] = {0.f,
                            -0.f,
                            std::numeric_limits<float>::denorm_min(),
                            -1e-40f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            bits_to_float(0x7fc00000u),  // canonical quiet NaN
                            bits_to_float(0x7f800001u),  // signalling NaN with the lowest payload
                            bits_to_float(0xffa12345u),  // negative NaN with a payload
                            bits_to_float(0x3f808000u),  // exact tie, even below: rounds down
                            bits_to_float(0x3f818000u),  // exact tie, odd below: rounds up
                            bits_to_float(0x7f7fffffu),  // FLT_MAX: rounds to inf in bf16
                            bits_to_float(0x3f80ffffu),  // just below a tie
                            1.f,
                            -3.14159265f};
  for (size_t i = 0; i < sizeof specials / sizeof specials[0] && i < n; ++i) v[i] = specials[i];
  return v;
}

const int64_t kSizes[] = {1, 3, 17, 127, 896, 3584 * 3, 1048576 + 4099};

TEST(ConvertCuda, F32ToBf16AndBackAreTheRefsBits) {
  QWENQ_REQUIRE_GPU();
  for (int64_t n : kSizes) {
    const uint64_t seed = 7000 + static_cast<uint64_t>(n);
    std::ostringstream os;
    os << "n=" << n << " seed " << seed;
    const std::string ctx = os.str();
    const std::vector<float> x = awkward_floats(static_cast<size_t>(n), seed);
    std::vector<uint16_t> h_ref(static_cast<size_t>(n));
    f32_to_bf16_ref(x.data(), n, h_ref.data());
    std::vector<float> back_ref(static_cast<size_t>(n));
    bf16_to_f32_ref(h_ref.data(), n, back_ref.data());

    DeviceBuffer<float> d_x(x);
    DeviceBuffer<uint16_t> d_h(std::vector<uint16_t>(static_cast<size_t>(n) + kGuard, kGuard16));
    DeviceBuffer<float> d_back(std::vector<float>(static_cast<size_t>(n) + kGuard, bits_to_float(kGuard32)));
    f32_to_bf16_cuda(d_x.get(), n, d_h.get());
    bf16_to_f32_cuda(d_h.get(), n, d_back.get());
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    expect_same_bits16(d_h.download(), h_ref, static_cast<size_t>(n), ctx + " f32_to_bf16");
    expect_same_bits(d_back.download(), back_ref, static_cast<size_t>(n), ctx + " bf16_to_f32");
  }
}

TEST(ConvertCuda, EmbeddingGatherIsTheRefsRows) {
  QWENQ_REQUIRE_GPU();
  struct Case {
    int64_t V, C, T;
  };
  for (const Case& cs : {Case{5, 1, 1}, Case{17, 3, 7}, Case{320, 64, 41}, Case{1000, 896, 130}, Case{300, 1030, 3}}) {
    for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
      const uint64_t seed = 9000 + static_cast<uint64_t>(cs.V * 31 + cs.C * 7 + cs.T) + static_cast<int>(dtype);
      std::ostringstream os;
      os << "V=" << cs.V << " C=" << cs.C << " T=" << cs.T << " " << dtype_name(dtype) << " seed " << seed;
      const std::string ctx = os.str();
      Rng rng(seed);
      std::vector<float> table_f(static_cast<size_t>(cs.V * cs.C));
      for (auto& f : table_f) f = rng.uniform(-3.f, 3.f) * std::pow(10.f, rng.uniform(-6.f, 4.f));
      if (dtype == DType::F16) table_f[0] = 3e-6f;  // an fp16 subnormal
      std::vector<uint8_t> table(table_f.size() * dtype_size(dtype));
      from_f32(dtype, table_f.data(), table.data(), table_f.size());
      if (dtype != DType::F32) {  // row 0 (always gathered) also holds NaNs with payloads and infinities
        const uint16_t f16_specials[] = {0x7d01u, 0xfe3fu, 0x7c00u, 0xfc00u};  // NaN, -NaN (quiet), +inf, -inf
        const uint16_t bf16_specials[] = {0x7f81u, 0xffc5u, 0x7f80u, 0xff80u};
        const uint16_t* specials = dtype == DType::F16 ? f16_specials : bf16_specials;
        for (int64_t c = 1; c < std::min<int64_t>(cs.C, 5); ++c)
          std::memcpy(table.data() + c * 2, &specials[c - 1], 2);
      }
      std::vector<int32_t> tokens(static_cast<size_t>(cs.T));
      for (auto& t : tokens) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cs.V)));
      tokens[0] = 0;
      tokens.back() = static_cast<int32_t>(cs.V - 1);  // both ends of the table
      const size_t n = static_cast<size_t>(cs.T * cs.C);
      std::vector<float> want(n);
      embedding_gather_ref(table.data(), dtype, cs.V, cs.C, tokens.data(), cs.T, want.data());

      DeviceBuffer<uint8_t> d_table(table);
      DeviceBuffer<int32_t> d_tokens(tokens);
      DeviceBuffer<float> d_out(std::vector<float>(n + kGuard, bits_to_float(kGuard32)));
      embedding_gather_cuda(d_table.get(), dtype, cs.V, cs.C, d_tokens.get(), cs.T, d_out.get());
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      expect_same_bits(d_out.download(), want, n, ctx);
      // The ids checked on the caller's host copy instead of a download: the same rows.
      DeviceBuffer<float> d_out2(std::vector<float>(n + kGuard, bits_to_float(kGuard32)));
      embedding_gather_cuda(d_table.get(), dtype, cs.V, cs.C, d_tokens.get(), cs.T, d_out2.get(), nullptr,
                            tokens.data());
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      expect_same_bits(d_out2.download(), want, n, ctx + " (host copy of the ids)");
    }
  }
}

TEST(ConvertCuda, EmbeddingGatherRefusesOutOfRangeIdsWithTheRefsMessage) {
  QWENQ_REQUIRE_GPU();
  const int64_t V = 10, C = 4;
  std::vector<float> table(static_cast<size_t>(V * C), 1.f);
  const std::vector<int32_t> tokens = {1, 2, 3, 10, 4};
  DeviceBuffer<float> d_table(table);
  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<float> d_out(std::vector<float>(tokens.size() * C + kGuard, bits_to_float(kGuard32)));
  const std::string want = "token id 10 at position 3 is outside the vocabulary [0, 10)";
  std::string ref_err, cuda_err;
  std::vector<float> host_out(tokens.size() * C);
  try {
    embedding_gather_ref(table.data(), DType::F32, V, C, tokens.data(), 5, host_out.data());
  } catch (const Error& e) {
    ref_err = e.what();
  }
  try {
    embedding_gather_cuda(d_table.get(), DType::F32, V, C, d_tokens.get(), 5, d_out.get());
  } catch (const Error& e) {
    cuda_err = e.what();
  }
  EXPECT_NE(ref_err.find(want), std::string::npos) << ref_err;
  EXPECT_NE(cuda_err.find(want), std::string::npos) << cuda_err;
  // A host copy of the ids is what is checked (here the same bad ids, on the host only: the device's are good).
  const std::vector<int32_t> good = {1, 2, 3, 9, 4};
  DeviceBuffer<int32_t> d_good(good);
  test::expect_error(
      [&] {
        embedding_gather_cuda(d_table.get(), DType::F32, V, C, d_good.get(), 5, d_out.get(), nullptr, tokens.data());
      },
      {want});
  // Nothing was launched: the output is untouched.
  for (float f : d_out.download()) ASSERT_EQ(float_bits(f), kGuard32);
}

TEST(ConvertCuda, AddsAreTheRefsBits) {
  QWENQ_REQUIRE_GPU();
  for (int64_t n : kSizes) {
    const uint64_t seed = 11000 + static_cast<uint64_t>(n);
    std::ostringstream os;
    os << "n=" << n << " seed " << seed;
    Rng rng(seed);
    std::vector<float> y(static_cast<size_t>(n)), x(static_cast<size_t>(n));
    for (size_t i = 0; i < y.size(); ++i) y[i] = rng.uniform(-4.f, 4.f), x[i] = rng.uniform(-1.f, 1.f) * 1e-3f;
    std::vector<float> want = y;
    add_inplace_ref(want.data(), x.data(), n);
    std::vector<float> y_guarded = y;
    y_guarded.insert(y_guarded.end(), kGuard, bits_to_float(kGuard32));
    DeviceBuffer<float> d_y(y_guarded), d_x(x);
    add_inplace_cuda(d_y.get(), d_x.get(), n);
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    expect_same_bits(d_y.download(), want, static_cast<size_t>(n), os.str() + " add_inplace");
  }
  struct Case {
    int64_t rows, N;
  };
  for (const Case& cs : {Case{1, 1}, Case{3, 17}, Case{41, 896}, Case{130, 128}, Case{1200, 1000}}) {
    for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
      const uint64_t seed = 12000 + static_cast<uint64_t>(cs.rows * 13 + cs.N) + static_cast<int>(dtype);
      std::ostringstream os;
      os << "rows=" << cs.rows << " N=" << cs.N << " bias " << dtype_name(dtype) << " seed " << seed;
      Rng rng(seed);
      const size_t n = static_cast<size_t>(cs.rows * cs.N);
      std::vector<float> y(n), bias_f(static_cast<size_t>(cs.N));
      for (auto& f : y) f = rng.uniform(-2.f, 2.f);
      for (auto& f : bias_f) f = rng.uniform(-0.5f, 0.5f);
      std::vector<uint8_t> bias(bias_f.size() * dtype_size(dtype));
      from_f32(dtype, bias_f.data(), bias.data(), bias_f.size());
      std::vector<float> want = y;
      add_bias_rows_ref(want.data(), cs.rows, cs.N, bias.data(), dtype);
      y.insert(y.end(), kGuard, bits_to_float(kGuard32));
      DeviceBuffer<float> d_y(y);
      DeviceBuffer<uint8_t> d_bias(bias);
      add_bias_rows_cuda(d_y.get(), cs.rows, cs.N, d_bias.get(), dtype);
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      expect_same_bits(d_y.download(), want, n, os.str() + " add_bias_rows");
    }
  }
}

// The sweeps above pass cudaMalloc'd (aligned) pointers: the 4-element path. Pointers one element in take the
// element path (and the vector path with the other operand aligned never mixes): the same bits, the element before
// the output untouched.
TEST(ConvertCuda, UnalignedPointersGiveTheSameBits) {
  QWENQ_REQUIRE_GPU();
  for (int64_t n : {int64_t{5}, int64_t{1027}}) {
    const std::string ctx = "n=" + std::to_string(n) + " one element in";
    const std::vector<float> x = awkward_floats(static_cast<size_t>(n), 9000 + static_cast<uint64_t>(n));
    std::vector<uint16_t> h_ref(static_cast<size_t>(n));
    f32_to_bf16_ref(x.data(), n, h_ref.data());
    std::vector<float> back_ref(static_cast<size_t>(n)), y(static_cast<size_t>(n)), y_ref;
    bf16_to_f32_ref(h_ref.data(), n, back_ref.data());
    for (size_t i = 0; i < y.size(); ++i) y[i] = static_cast<float>(i % 7) - 3.f;
    y_ref = y;
    add_inplace_ref(y_ref.data(), back_ref.data(), n);
    const size_t guarded = static_cast<size_t>(n) + 1 + kGuard;  // a guard before and kGuard after each output
    std::vector<float> x1(1, 0.f), y1(1, bits_to_float(kGuard32));
    x1.insert(x1.end(), x.begin(), x.end());
    y1.insert(y1.end(), y.begin(), y.end());
    y1.insert(y1.end(), kGuard, bits_to_float(kGuard32));
    DeviceBuffer<float> d_x(x1), d_back(std::vector<float>(guarded, bits_to_float(kGuard32))), d_y(y1);
    DeviceBuffer<uint16_t> d_h(std::vector<uint16_t>(guarded, kGuard16));
    f32_to_bf16_cuda(d_x.get() + 1, n, d_h.get() + 1);
    bf16_to_f32_cuda(d_h.get() + 1, n, d_back.get() + 1);
    add_inplace_cuda(d_y.get() + 1, d_back.get() + 1, n);
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<uint16_t> h = d_h.download();
    const std::vector<float> back = d_back.download(), got_y = d_y.download();
    EXPECT_EQ(h[0], kGuard16) << ctx;
    EXPECT_EQ(float_bits(back[0]), kGuard32) << ctx;
    EXPECT_EQ(float_bits(got_y[0]), kGuard32) << ctx;
    expect_same_bits16(std::vector<uint16_t>(h.begin() + 1, h.end()), h_ref, static_cast<size_t>(n),
                       ctx + " f32_to_bf16");
    expect_same_bits(std::vector<float>(back.begin() + 1, back.end()), back_ref, static_cast<size_t>(n),
                     ctx + " bf16_to_f32");
    expect_same_bits(std::vector<float>(got_y.begin() + 1, got_y.end()), y_ref, static_cast<size_t>(n),
                     ctx + " add_inplace");
  }
}

// store_row_cuda against store_row_ref: the indexed row's bytes, every other row untouched; an index outside the
// cache writes nothing (the ref refuses it).
TEST(ConvertCuda, StoreRowIsTheRefsRow) {
  QWENQ_REQUIRE_GPU();
  const int64_t rows = 5;
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (int64_t n : {int64_t{1}, int64_t{17}, int64_t{3584}}) {
      const std::string ctx = std::string(dtype_name(dtype)) + " n=" + std::to_string(n);
      const std::vector<float> x = awkward_floats(static_cast<size_t>(n), 13000 + static_cast<uint64_t>(n));
      const size_t bytes = static_cast<size_t>(rows * n) * dtype_size(dtype);
      std::vector<uint8_t> want(bytes, 0xA5);
      const int32_t row = 3;
      store_row_ref(x.data(), n, &row, rows, want.data(), dtype);
      DeviceBuffer<float> d_x(x);
      DeviceBuffer<uint8_t> d_cache(std::vector<uint8_t>(bytes, 0xA5));
      DeviceBuffer<int32_t> d_row(std::vector<int32_t>{row, rows + 2});
      store_row_cuda(d_x.get(), n, d_row.get(), rows, d_cache.get(), dtype);
      store_row_cuda(d_x.get(), n, d_row.get() + 1, rows, d_cache.get(), dtype);  // outside: nothing
      QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(d_cache.download() == want) << ctx;
    }
  }
}

TEST(ConvertCuda, ArgumentErrorsMatchTheRefs) {
  QWENQ_REQUIRE_GPU();
  float f = 0.f;
  EXPECT_NE(error_of([&] { embedding_gather_cuda(&f, DType::I32, 4, 4, nullptr, 1, &f); })
                .find("embedding_gather_cuda: table dtype I32 is not supported (F32, BF16 or F16)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { add_bias_rows_cuda(&f, 2, 0, &f, DType::F32); })
                .find("add_bias_rows_cuda: bad shape rows=2 N=0"),
            std::string::npos);
  EXPECT_NE(error_of([&] { f32_to_bf16_cuda(nullptr, 4, nullptr); }).find("f32_to_bf16_cuda: null pointer"),
            std::string::npos);
  // Empty inputs are no-ops on both sides.
  EXPECT_EQ(error_of([&] { add_inplace_cuda(nullptr, nullptr, 0); }), "<no error>");
  EXPECT_EQ(error_of([&] { add_inplace_ref(nullptr, nullptr, 0); }), "<no error>");
}

}  // namespace
}  // namespace qwenq
