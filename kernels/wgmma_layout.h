// Shared-memory layout of Hopper's wgmma operands, as plain integer code for host and device: the kernels
// (kernels/qgemm_wgmma.cu, kernels/flash_attention_wgmma.cu) store their tiles with these functions and build
// their matrix descriptors with them, and tests/test_wgmma_layout.cpp checks on the CPU that what the kernels
// store is where the tensor cores read (the hardware's addressing, below, emulated from the PTX ISA's description).
//
// The one swizzle used: bf16 tiles of R rows x 64 elements (128 bytes per row) in the 128-byte swizzle mode
// (wider tiles as 64-column panels), read K-major, or MN-major for attention's V (below). Rows are 128 bytes apart; 8 rows (1024 bytes, a "swizzle atom") are one unit whose base is
// 1024-byte aligned; inside an atom the 16-byte chunk c of row r sits at chunk c ^ (r % 8):
//
//   byte offset of element (r, k) = r·128 + ((k / 8) ^ (r % 8))·16 + (k % 8)·2
//
// The tensor cores' view (PTX ISA, "Matrix Descriptor Format" of wgmma): a 64-bit descriptor holds
//   bits  0..13  start address >> 4 (shared-memory byte address of the operand's first element)
//   bits 16..29  leading dimension byte offset >> 4 (unused by swizzled K-major layouts; conventionally 1)
//   bits 32..45  stride dimension byte offset >> 4 (the distance between 8-row groups: 1024 here)
//   bits 49..51  base offset (0: every atom is 1024-byte aligned)
//   bits 62..63  swizzle mode (1 = 128-byte swizzle)
// and a k16 step of an m64nNk16 operand reads, for row r and k in [0, 16), the byte at
//   a = start + (r / 8)·SBO + (r % 8)·128 + k·2,  then the swizzle: bits 4..6 of a ^= bits 7..9 of a.
// The kernels advance `start` by 32 bytes per k16 step inside the 128-byte row, the usual way to walk K.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace qwenq {

constexpr int kWgmmaRowBytes = 128;   // one row: 64 bf16 of K
constexpr int kWgmmaAtomBytes = 1024; // 8 rows
constexpr int kWgmmaTileK = 64;       // bf16 elements per row

// Byte offset of the 16-byte chunk `chunk` (0..7, i.e. k = 8·chunk..8·chunk + 7) of row `row` in a tile.
QWENQ_HOST_DEVICE constexpr uint32_t wgmma_sw128_chunk_offset(uint32_t row, uint32_t chunk) {
  return row * kWgmmaRowBytes + ((chunk ^ (row & 7u)) << 4);
}

// Byte offset of element (row, k), k in [0, 64).
QWENQ_HOST_DEVICE constexpr uint32_t wgmma_sw128_element_offset(uint32_t row, uint32_t k) {
  return wgmma_sw128_chunk_offset(row, k >> 3) + ((k & 7u) << 1);
}

// The descriptor of a K-major 128-byte-swizzled operand starting at shared byte address `start` (a tile's
// 1024-aligned base plus 32 bytes per k16 step).
QWENQ_HOST_DEVICE constexpr uint64_t wgmma_sw128_descriptor(uint32_t start) {
  return (static_cast<uint64_t>((start & 0x3FFFFu) >> 4)) |               // start address
         (static_cast<uint64_t>(1) << 16) |                               // leading byte offset (unused)
         (static_cast<uint64_t>(kWgmmaAtomBytes >> 4) << 32) |            // stride byte offset: 1024
         (static_cast<uint64_t>(1) << 62);                                // 128-byte swizzle
}

// A tile wider than 64 elements (attention's head dim 128) is stored as 64-column panels, each R rows x 128
// bytes as above, panel p at p·R·128: the byte offset of element (row, col) of such an R-row tile.
QWENQ_HOST_DEVICE constexpr uint32_t wgmma_sw128_panel_offset(uint32_t rows, uint32_t row, uint32_t col) {
  return (col / kWgmmaTileK) * rows * kWgmmaRowBytes + wgmma_sw128_element_offset(row, col % kWgmmaTileK);
}

// The descriptor of an MN-major 128-byte-swizzled operand (a B whose N runs along the 128-byte rows: attention's
// V tile [keys][head dim], keys = the reduction K). The PTX ISA's canonical layout ((T,8,m),(8,k)) :
// ((1,T,LBO),(8T,SBO)), T = 8 bf16: 64 consecutive N in a 128-byte row, 8 K-rows of one atom 128 bytes apart,
// the next 8 K-rows SBO = 1024 bytes on, the next 64 N (panel) LBO = `panel_bytes` on. `start` is the panel-0
// base of the k16 step (+ 16 rows = 2048 bytes per step).
QWENQ_HOST_DEVICE constexpr uint64_t wgmma_sw128_mn_descriptor(uint32_t start, uint32_t panel_bytes) {
  return (static_cast<uint64_t>((start & 0x3FFFFu) >> 4)) |
         (static_cast<uint64_t>((panel_bytes >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>(kWgmmaAtomBytes >> 4) << 32) |
         (static_cast<uint64_t>(1) << 62);
}

// The hardware's address of element (k, n) (k in [0, 16), n < N) of an MN-major operand read through `desc`:
// start + (n / 64)·LBO + (k / 8)·SBO + (k % 8)·128 + (n % 64)·2, then the 128-byte swizzle. Host only: tests.
inline uint32_t wgmma_emulated_read_address_mn(uint64_t desc, uint32_t k, uint32_t n) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFFu) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFFu) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4;
  uint32_t a = start + (n / 64) * lbo + (k / 8) * sbo + (k % 8) * kWgmmaRowBytes + (n % 64) * 2;
  if ((desc >> 62) == 1) a ^= ((a >> 7) & 7u) << 4;
  return a;
}

// The hardware's address of element (row, k) of a k16 step (k in [0, 16)) read through descriptor `desc`,
// emulated from the PTX ISA's description (see the top of this file). Host only: tests.
inline uint32_t wgmma_emulated_read_address(uint64_t desc, uint32_t row, uint32_t k) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFFu) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4;
  const uint32_t mode = static_cast<uint32_t>(desc >> 62);
  uint32_t a = start + (row / 8) * sbo + (row % 8) * kWgmmaRowBytes + k * 2;
  if (mode == 1) a ^= ((a >> 7) & 7u) << 4;
  return a;
}

// Two 32-bit words each holding a bf16 pair (element 0 in the low half): the pair (a's element h, b's element
// h), element 0 in the low half. The transposed kernel's register transpose of dequantized words.
QWENQ_HOST_DEVICE constexpr uint32_t wgmma_pick_halves(uint32_t a, uint32_t b, int h) {
  return h == 0 ? (a & 0xFFFFu) | (b << 16) : (a >> 16) | (b & 0xFFFF0000u);
}

// The transposed kernel's store of dequantized words: thread (word-row rl, quad q) holds the words of columns
// n = 4q .. 4q + 3 of word-row rl; value j of each goes to tile row kk = 8·rl + j, columns 4q .. 4q + 3, i.e.
// the 8-byte piece at this offset.
QWENQ_HOST_DEVICE constexpr uint32_t wgmma_sw128_quad_offset(uint32_t row, uint32_t q) {
  return wgmma_sw128_chunk_offset(row, q >> 1) + (q & 1u) * 8;
}

// The accumulator fragment of wgmma m64nNk16 with f32 D (PTX ISA, "Register Fragments" of wgmma): thread t of
// the warpgroup (warp w = t / 32, lane l) holds, for each 8-column block j, d[4j + e] at
//   row 16·w + l / 4 + 8·(e / 2),  column 8·j + 2·(l % 4) + e % 2.
QWENQ_HOST_DEVICE constexpr int wgmma_acc_row(int thread, int e) { return 16 * (thread / 32) + (thread % 32) / 4 + 8 * (e / 2); }
QWENQ_HOST_DEVICE constexpr int wgmma_acc_col(int thread, int j, int e) { return 8 * j + 2 * (thread % 4) + e % 2; }

}  // namespace qwenq
