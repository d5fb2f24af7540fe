// kernels/wgmma_layout.h, the shared-memory layout of the Hopper kernels (kernels/qgemm_wgmma.cu and, in
// AttentionTilesAreReadWhereTheCopiesStoredThem, kernels/flash_attention_wgmma.cu), checked
// on the CPU: every element the kernel stores (the x tile's cp.async chunks, the dequantized Ŵ tile's one
// 16-byte chunk per packed word) is exactly where the tensor cores read it through the kernel's descriptors,
// with the hardware's addressing emulated from the PTX ISA (start + (r / 8)·SBO + (r % 8)·128 + 2k, then
// address bits 4..6 ^= bits 7..9), for both warpgroups' A operands and the B operand at every k16 step; the
// stores cover each tile once and the 16-byte stores of 8 consecutive threads fall in 8 distinct bank groups;
// the transposed kernel's 8-byte pieces (a register transpose of 4 words) land where the B descriptor reads;
// the accumulator fragment map covers the 64 x 128 output once. The GPU test (tests/gpu/test_qgemm_tc_cuda.cpp)
// is the oracle for the instruction itself; this test is what the CPU can say about the addressing.
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <vector>

#include "kernels/wgmma_layout.h"

namespace qwenq {
namespace {

// A shared-memory base as the kernel gets one: some dynamic-smem address rounded up to 1024.
constexpr uint32_t kBase = 0x400u + 3u * kWgmmaAtomBytes;
constexpr uint32_t kTileRows = 128;

// The kernel's operands: A of warpgroup wg = rows 64·wg.. of the x tile, B = all 128 rows of the Ŵ tile.
// Returns how many (row, k) elements of the k16 steps read something other than what was stored there.
int64_t mismatches(uint32_t base, uint32_t first_row, uint32_t rows, bool swizzled_stores) {
  int64_t bad = 0;
  for (uint32_t k16 = 0; k16 < kWgmmaTileK / 16; ++k16) {
    const uint64_t desc = wgmma_sw128_descriptor(base + first_row * kWgmmaRowBytes + k16 * 32);
    for (uint32_t r = 0; r < rows; ++r)
      for (uint32_t k = 0; k < 16; ++k) {
        const uint32_t row = first_row + r, kk = k16 * 16 + k;
        const uint32_t stored =
            base + (swizzled_stores ? wgmma_sw128_element_offset(row, kk) : row * kWgmmaRowBytes + kk * 2);
        if (wgmma_emulated_read_address(desc, r, k) != stored) ++bad;
      }
  }
  return bad;
}

TEST(WgmmaLayout, DescriptorFieldsAreThePtxEncoding) {
  const uint64_t d = wgmma_sw128_descriptor(0x1A400u);
  EXPECT_EQ(d & 0x3FFFu, 0x1A400u >> 4) << "start address >> 4 in bits 0..13";
  EXPECT_EQ((d >> 16) & 0x3FFFu, 1u) << "leading byte offset (unused by swizzled K-major)";
  EXPECT_EQ((d >> 32) & 0x3FFFu, 1024u >> 4) << "stride byte offset: 8 rows of 128 bytes";
  EXPECT_EQ((d >> 49) & 7u, 0u) << "base offset 0 for 1024-aligned atoms";
  EXPECT_EQ(d >> 62, 1u) << "128-byte swizzle";
  EXPECT_EQ((d >> 14) & 3u, 0u);
  EXPECT_EQ((d >> 30) & 3u, 0u);
  EXPECT_EQ((d >> 46) & 7u, 0u);
  EXPECT_EQ((d >> 52) & 0x3FFu, 0u);
}

TEST(WgmmaLayout, TensorCoresReadWhatTheKernelStored) {
  for (uint32_t wg = 0; wg < 2; ++wg) EXPECT_EQ(mismatches(kBase, 64 * wg, 64, true), 0) << "A of warpgroup " << wg;
  EXPECT_EQ(mismatches(kBase + 4 * 128 * kWgmmaRowBytes, 0, 128, true), 0) << "B (Ŵ tile)";
  // The check can fail: unswizzled stores, or a tile base off the 1024-byte grid, are read wrongly.
  EXPECT_GT(mismatches(kBase, 0, 64, false), 0);
  EXPECT_GT(mismatches(kBase + 512, 0, 64, true), 0);
  EXPECT_GT(mismatches(kBase + 16, 0, 64, true), 0);
}

TEST(WgmmaLayout, StoresCoverEachTileOnce) {
  std::vector<int> hits(kTileRows * kWgmmaRowBytes, 0);
  for (uint32_t row = 0; row < kTileRows; ++row)
    for (uint32_t k = 0; k < kWgmmaTileK; ++k) {
      const uint32_t off = wgmma_sw128_element_offset(row, k);
      ASSERT_LT(off + 1, hits.size());
      ++hits[off];
      ++hits[off + 1];
    }
  for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i], 1) << "byte " << i;
  // A packed word of column n, word-row rl is 8 consecutive k: one 16-byte chunk, elements in order.
  for (uint32_t n = 0; n < kTileRows; ++n)
    for (uint32_t rl = 0; rl < 8; ++rl)
      for (uint32_t j = 0; j < 8; ++j)
        ASSERT_EQ(wgmma_sw128_chunk_offset(n, rl) + 2 * j, wgmma_sw128_element_offset(n, 8 * rl + j));
}

// 16-byte shared stores are served 8 threads (128 bytes) at a time; they are conflict-free when the 8 chunks
// land in 8 distinct 16-byte slots of the 128-byte bank line. The kernel's thread -> chunk maps:
//   dequant:  idx = tid + 256·i, word-row rl = idx / 128, column n = idx % 128 -> chunk (row n, chunk rl)
//   x copy:   ch = tid + 256·i, row = ch / 8, chunk c = ch % 8
TEST(WgmmaLayout, SixteenByteStoresOfEightThreadsHitEightBankGroups) {
  for (int i = 0; i < 4; ++i)
    for (int t0 = 0; t0 < 256; t0 += 8) {
      std::set<uint32_t> dq, cp;
      for (int t = t0; t < t0 + 8; ++t) {
        const int idx = t + 256 * i;
        dq.insert((wgmma_sw128_chunk_offset(idx % 128, idx / 128) / 16) % 8);
        cp.insert((wgmma_sw128_chunk_offset(idx / 8, idx % 8) / 16) % 8);
      }
      EXPECT_EQ(dq.size(), 8u) << "dequant stores, threads " << t0 << ".., i=" << i;
      EXPECT_EQ(cp.size(), 8u) << "x copies, threads " << t0 << ".., i=" << i;
    }
}

// The transposed kernel: thread tid = (rl = tid / 16, q = tid % 16) dequantizes the words of columns n = 4q..4q+3
// of word-row rl (value j of word i is ŵ[n = 4q + i, kk = 8·rl + j]) and stores, for each j, the four values
// as one 8-byte piece of tile row kk = 8·rl + j. Each element lands where the B descriptor reads (row kk,
// reduction index n), the pieces cover the tile once, and the 16 threads of one rl that store together cover
// 16 distinct 8-byte slots of each row (a warp's store is 2 full rows: 2 wavefronts, no conflict).
TEST(WgmmaLayout, TransposedStoresPutEachWeightWhereTheTensorCoresReadIt) {
  std::vector<int> hits(kTileRows * kWgmmaRowBytes, 0);
  for (uint32_t tid = 0; tid < 256; ++tid) {
    const uint32_t rl = tid / 16, q = tid % 16;
    for (uint32_t j = 0; j < 8; ++j) {
      const uint32_t kk = 8 * rl + j, off = wgmma_sw128_quad_offset(kk, q);
      for (uint32_t i = 0; i < 4; ++i) {
        ASSERT_EQ(off + 2 * i, wgmma_sw128_element_offset(kk, 4 * q + i)) << "tid " << tid << " j " << j;
        ++hits[off + 2 * i];
        ++hits[off + 2 * i + 1];
      }
    }
  }
  for (size_t b = 0; b < hits.size(); ++b) ASSERT_EQ(hits[b], 1) << "byte " << b;
  for (uint32_t rl = 0; rl < 16; ++rl)
    for (uint32_t j = 0; j < 8; ++j) {
      std::set<uint32_t> slots;
      for (uint32_t q = 0; q < 16; ++q) slots.insert((wgmma_sw128_quad_offset(8 * rl + j, q) / 8) % 16);
      EXPECT_EQ(slots.size(), 16u) << "rl " << rl << " j " << j;
    }
}

// The register transpose: from four words of bf16 pairs (one per column n), the pair of element h of a and b.
TEST(WgmmaLayout, PickHalvesTransposesBf16Pairs) {
  const uint32_t a = 0xA1A1A0A0u, b = 0xB1B1B0B0u;  // a: element 0 = 0xA0A0, element 1 = 0xA1A1
  EXPECT_EQ(wgmma_pick_halves(a, b, 0), 0xB0B0A0A0u);
  EXPECT_EQ(wgmma_pick_halves(a, b, 1), 0xB1B1A1A1u);
  // Four words v[i] holding values 8i + j at element j (j = 0..7 over x, y, z, w): the pieces of row j hold
  // 8i + j for i = 0..3 in order, what the kernel's loop over j builds.
  uint32_t v[4][4];
  for (uint32_t i = 0; i < 4; ++i)
    for (uint32_t p = 0; p < 4; ++p) v[i][p] = (8 * i + 2 * p) | ((8 * i + 2 * p + 1) << 16);
  for (int j = 0; j < 8; ++j) {
    const uint32_t lo = wgmma_pick_halves(v[0][j / 2], v[1][j / 2], j & 1);
    const uint32_t hi = wgmma_pick_halves(v[2][j / 2], v[3][j / 2], j & 1);
    EXPECT_EQ(lo & 0xFFFFu, static_cast<uint32_t>(j));
    EXPECT_EQ(lo >> 16, static_cast<uint32_t>(8 + j));
    EXPECT_EQ(hi & 0xFFFFu, static_cast<uint32_t>(16 + j));
    EXPECT_EQ(hi >> 16, static_cast<uint32_t>(24 + j));
  }
}

// Flash attention's tiles (kernels/flash_attention_wgmma.cu): 64 rows, head dim D in 64-column panels of 8 KB.
// Q and K are read K-major (the head dim is the reduction: panel kk / 4, 32 bytes per k16 step inside it); V is
// read MN-major (keys = the reduction, 16 rows = 2048 bytes per step; head dim = N across panels LBO = 8 KB apart).
// Every element the copies store (load_tile_sw: row r, head-dim column d at wgmma_sw128_panel_offset(64, r, d))
// is where those descriptors read it.
TEST(WgmmaLayout, AttentionTilesAreReadWhereTheCopiesStoredThem) {
  constexpr uint32_t kRows = 64, kPanel = kRows * kWgmmaRowBytes;
  for (uint32_t D : {64u, 128u}) {
    int64_t bad_k = 0, bad_v = 0;
    for (uint32_t kk = 0; kk < D / 16; ++kk) {
      const uint64_t desc = wgmma_sw128_descriptor(kBase + (kk / 4) * kPanel + (kk % 4) * 32);
      for (uint32_t r = 0; r < kRows; ++r)
        for (uint32_t k = 0; k < 16; ++k)
          bad_k += wgmma_emulated_read_address(desc, r, k) != kBase + wgmma_sw128_panel_offset(kRows, r, 16 * kk + k);
    }
    for (uint32_t kk = 0; kk < 4; ++kk) {
      const uint64_t desc = wgmma_sw128_mn_descriptor(kBase + kk * 16 * kWgmmaRowBytes, kPanel);
      EXPECT_EQ((desc >> 16) & 0x3FFFu, kPanel >> 4) << "LBO: the next 64 head-dim columns";
      EXPECT_EQ((desc >> 32) & 0x3FFFu, 1024u >> 4) << "SBO: the next 8 keys";
      for (uint32_t k = 0; k < 16; ++k)
        for (uint32_t n = 0; n < D; ++n)
          bad_v += wgmma_emulated_read_address_mn(desc, k, n) != kBase + wgmma_sw128_panel_offset(kRows, 16 * kk + k, n);
    }
    EXPECT_EQ(bad_k, 0) << "Q/K, D=" << D;
    EXPECT_EQ(bad_v, 0) << "V, D=" << D;
    // The copies cover the tile once, and 8 consecutive threads' 16-byte chunks fall in 8 bank groups.
    std::vector<int> hits((D / 64) * kPanel, 0);
    for (uint32_t c = 0; c < kRows * D / 8; ++c) {
      const uint32_t r = c / (D / 8), col = (c % (D / 8)) * 8;
      const uint32_t off = wgmma_sw128_panel_offset(kRows, r, col);
      for (uint32_t b = 0; b < 16; ++b) ++hits[off + b];
    }
    for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i], 1) << "D=" << D << " byte " << i;
    for (uint32_t c0 = 0; c0 < kRows * D / 8; c0 += 8) {
      std::set<uint32_t> groups;
      for (uint32_t c = c0; c < c0 + 8; ++c)
        groups.insert((wgmma_sw128_panel_offset(kRows, c / (D / 8), (c % (D / 8)) * 8) / 16) % 8);
      EXPECT_EQ(groups.size(), 8u) << "D=" << D << " chunks " << c0;
    }
  }
  // The backward's dk/dv pass reads query halves of 32 rows: K-major as the N = 32 B of Sᵀ = K·Qᵀ (start at row
  // 32·half, a whole number of atoms), and MN-major as the reduction of dv += Pᵀ·dO, dk += dSᵀ·Q (rows 32·half +
  // 16·kk onward).
  for (uint32_t D : {64u, 128u})
    for (uint32_t half = 0; half < 2; ++half) {
      int64_t bad_b = 0, bad_mn = 0;
      for (uint32_t kk = 0; kk < D / 16; ++kk) {
        const uint64_t desc = wgmma_sw128_descriptor(kBase + half * 32 * kWgmmaRowBytes + (kk / 4) * kPanel + (kk % 4) * 32);
        for (uint32_t r = 0; r < 32; ++r)
          for (uint32_t k = 0; k < 16; ++k)
            bad_b += wgmma_emulated_read_address(desc, r, k) !=
                     kBase + wgmma_sw128_panel_offset(kRows, 32 * half + r, 16 * kk + k);
      }
      for (uint32_t kk = 0; kk < 2; ++kk) {
        const uint64_t desc = wgmma_sw128_mn_descriptor(kBase + (32 * half + 16 * kk) * kWgmmaRowBytes, kPanel);
        for (uint32_t k = 0; k < 16; ++k)
          for (uint32_t n = 0; n < D; ++n)
            bad_mn += wgmma_emulated_read_address_mn(desc, k, n) !=
                      kBase + wgmma_sw128_panel_offset(kRows, 32 * half + 16 * kk + k, n);
      }
      EXPECT_EQ(bad_b, 0) << "query half " << half << " as a K-major B, D=" << D;
      EXPECT_EQ(bad_mn, 0) << "query half " << half << " as an MN-major B, D=" << D;
    }
  // A V descriptor with the panel stride wrong (LBO = 0) reads the second panel's columns from the first.
  int64_t bad = 0;
  const uint64_t wrong = wgmma_sw128_mn_descriptor(kBase, 0);
  for (uint32_t n = 64; n < 128; ++n) bad += wgmma_emulated_read_address_mn(wrong, 0, n) != kBase + wgmma_sw128_panel_offset(64, 0, n);
  EXPECT_GT(bad, 0);
}

TEST(WgmmaLayout, AccumulatorFragmentsCoverTheOutputOnce) {
  std::vector<int> hits(64 * 128, 0);
  for (int t = 0; t < 128; ++t)
    for (int j = 0; j < 16; ++j)
      for (int e = 0; e < 4; ++e) {
        const int r = wgmma_acc_row(t, e), c = wgmma_acc_col(t, j, e);
        ASSERT_TRUE(r >= 0 && r < 64 && c >= 0 && c < 128) << t << " " << j << " " << e;
        ++hits[r * 128 + c];
      }
  for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i], 1) << "output " << i / 128 << "," << i % 128;
  // The documented corners: thread 0 holds (0, 0), (0, 1), (8, 0), (8, 1) of each 8-column block; thread 127
  // (warp 3, lane 31) holds rows 16·3 + 7 and + 15, columns 6 and 7.
  EXPECT_EQ(wgmma_acc_row(0, 2), 8);
  EXPECT_EQ(wgmma_acc_col(0, 5, 1), 41);
  EXPECT_EQ(wgmma_acc_row(127, 0), 55);
  EXPECT_EQ(wgmma_acc_row(127, 3), 63);
  EXPECT_EQ(wgmma_acc_col(127, 0, 0), 6);
}

}  // namespace
}  // namespace qwenq
