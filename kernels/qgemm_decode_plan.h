// The launch plan of the tensor-core decode product (kernels/qgemm_decode_mma.cu, qgemm_int4_decode_mma_cuda): how
// many K splits share a column block, the word-rows each takes, and the block's dynamic shared memory. Plain C++:
// the kernel file includes it for the shared-memory layout, tests/test_qgemm_decode_plan.cpp checks the choice on
// the CPU against a brute-force search.
//
// Layout of a block's shared memory for a split of `rps` word-rows (8·rps values of K) and x_rows rows of x:
//   x      x_pair_slots(x_rows) row-pair slots of x_pitch_of(rps) = 8·rps + 4 words (the A fragments' order, see the
//          kernel file), then, 16-byte aligned,
//   metas  meta_rows x 128 words: the groups one split touches, at most rps·8 / group + 2 of them.
//
// The choice. A launch is ceil(Np / 128) x mtiles column/row tiles ("tiles"), each cut along K into `splits`
// blocks; an SM holds resident(smem) of them at once (registers and shared memory; the launcher asks the runtime),
// so one wave is resident(smem)·SMs blocks. More splits mean shorter blocks (less work each, less shared memory,
// hence maybe more resident) but more partial sums to reduce. The plan:
//   s_min  the fewest splits whose block fits kMaxSmem (the x of a long split does not fit: 72B gate/up at M = 16
//          needs 5);
//   w      the waves s_min takes, ceil(tiles·s_min / places(s_min)), places(s) = resident(smem(s))·SMs;
//   splits the most splits, up to max(s_min, quads / kMinItPerSplit), that still take w waves: the last wave
//          filled, each block as short as the wave count allows.
// With one wave this is the largest split count that fits one wave, rounded down: a second, mostly empty wave
// costs more than the idle places of the first (72B gate/up at M = 1, 231 column blocks: 2 splits, 88 % of one
// wave of 4 blocks per SM; 3 would be 1.31 waves). At M = 16 the same weight needs 5 splits for shared memory, at
// 61 KB per block only 3 blocks per SM: 2.9 waves of 396; the plan takes 6 splits, 50 KB, 4 per SM, 2.6 waves of
// 528 with 17 % less K per block. At M = 17..32 the kernel's 163 registers allow 3 blocks per SM, at 33..64 its
// 229 allow 2, where a fixed 4 would have planned 1.3 waves.
#pragma once

#include <cstdint>
#include <functional>

#include "kernels/host_device.h"

namespace qwenq::decode_mma {

constexpr int kRowsPerIt = 4;          // word-rows (32 K) per warp iteration; a split's rps is a multiple
constexpr int kBlockCols = 128;        // output columns per block (4 warps x 32)
constexpr int kMaxSmem = 64 * 1024;    // dynamic shared memory per block, at most
constexpr int kMinItPerSplit = 2;      // splits chosen for the waves keep >= 2 iterations (64 K) per block

// Row-pair slots of x for `rows` valid rows of a block (rows a·16 + g and a·16 + g + 8 share slot a·8 + g): every
// slot of the full tiles, and of the last tile the slots whose first row is valid.
QWENQ_HOST_DEVICE inline int x_pair_slots(int rows) {
  const int full = rows / 16, rest = rows % 16;
  return full * 8 + (rest < 8 ? rest : 8);
}

// 8 words (32 bytes) per run, plus 4: a slot is ≡ 16 bytes (mod 32) long, so the 8 lanes of a 16-byte load phase
// (g = 0, 1 at slots g; t = 0..3 at runs 32 bytes apart) hit 8 distinct 16-byte bank groups.
inline int64_t x_pitch_of(int64_t rps) { return rps * 8 + 4; }
inline int meta_rows_of(int64_t rps, int64_t group, int64_t num_groups) {
  const int64_t most = rps * 8 / group + 2;
  return static_cast<int>(num_groups < most ? num_groups : most);
}
inline int64_t meta_offset_of(int x_rows, int64_t rps) {
  return (int64_t{x_pair_slots(x_rows)} * x_pitch_of(rps) * 4 + 15) / 16 * 16;
}
inline int64_t smem_bytes(int x_rows, int64_t rps, int meta_rows) {
  return meta_offset_of(x_rows, rps) + int64_t{meta_rows} * kBlockCols * 4;
}

struct Plan {
  int64_t splits;  // blocks along K per tile (every one non-empty)
  int64_t rps;     // word-rows per split, a multiple of kRowsPerIt
  int meta_rows;
  int64_t smem;    // dynamic shared memory per block; above kMaxSmem only when even rps = kRowsPerIt does not fit
};

// quads = ceil(Kp / 8 / kRowsPerIt), tiles = column blocks x row tiles, sms = the device's SMs, x_rows = the rows of
// x a block stages (min(M, 16·MT)), group / num_groups the weight's. resident(smem): blocks of the kernel instance an
// SM holds at that much dynamic shared memory (at least 1 is assumed). Deterministic for the same arguments.
Plan plan(int64_t quads, int64_t tiles, int64_t sms, int x_rows, int64_t group, int64_t num_groups,
          const std::function<int(int64_t)>& resident);

}  // namespace qwenq::decode_mma
