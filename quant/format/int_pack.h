// The packed 4-bit (and 2/8-bit) layouts other tools read, in one place: GPTQ v1/v2 (AutoGPTQ/GPTQModel)
// and AutoAWQ GEMM. Quantizers, kernels and checkpoint I/O all include this header; nothing else knows a
// bit layout. Codes are unsigned integers in [0, 2^bits). Logical matrices use the nn.Linear
// orientation of the *quantizer*: codes[k * N + n] for input row k, output column n ([K, N] row-major),
// which is how both formats index their tensors.
//
// GPTQ (REFERENCE A1.2): qweight int32 [K·bits/32, N], packed along K as one little-endian bit stream per
//   column: row k occupies stream bits [bits·k, bits·k + bits), word r holds stream bits [32r, 32r + 32). For
//   2/4/8 bits that is "word r holds rows r·(32/bits) + j at bits·j"; 3-bit codes straddle words (32 rows in 3
//   words: code 10 is split 2+1 bits over words 0 and 1, code 21 1+2 over words 1 and 2), as AutoGPTQ packs them.
//   qzeros int32 [G, N·bits/32], packed along N the same way. v1 ("gptq") stores zero - 1 (every v1 reader adds
//   1 back); v2 ("gptq_v2") stores the zero itself.
// AWQ GEMM (REFERENCE A2.2): qweight int32 [K, N/8] and qzeros int32 [G, N/8], packed along N with the
//   interleave kAwqOrder: nibble i of a word holds logical column 8c + kAwqOrder[i]. Zeros stored as is.
#pragma once

#include <cstdint>

namespace qwenq {

constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
constexpr int kAwqReverseOrder[8] = {0, 4, 1, 5, 2, 6, 3, 7};  // logical column j lives in nibble kAwqReverseOrder[j]
static_assert(kAwqOrder[kAwqReverseOrder[3]] == 3, "AWQ order tables must be inverses");

enum class GptqFormat { V1, V2 };

inline bool gptq_bits_supported(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }
// The packed axis must be a multiple of this: the codes that fill a whole number of words.
inline int gptq_pack_multiple(int bits) { return bits == 3 ? 32 : 32 / bits; }

// codes [K, N] -> qweight [K·bits/32, N]. K must be a multiple of gptq_pack_multiple(bits).
void gptq_pack_qweight(const uint8_t* codes, int64_t K, int64_t N, int bits, int32_t* qweight);
void gptq_unpack_qweight(const int32_t* qweight, int64_t K, int64_t N, int bits, uint8_t* codes);

// zeros [G, N] (true zero points) -> qzeros [G, N·bits/32]. N must be a multiple of gptq_pack_multiple(bits). With V1 a zero
// of 0 cannot be stored (it becomes -1, which the format wraps to 2^bits - 1): gptq_pack_qzeros throws for it.
void gptq_pack_qzeros(const uint8_t* zeros, int64_t G, int64_t N, int bits, GptqFormat fmt, int32_t* qzeros);
// qzeros -> zero points. V1 readers add 1 to the masked field, so a field of all ones (what another packer's zero 0
// leaves) reads as 2^bits: 16 for 4-bit, 256 for 8-bit, as in AutoGPTQ's torch path (hence 16-bit zeros).
void gptq_unpack_qzeros(const int32_t* qzeros, int64_t G, int64_t N, int bits, GptqFormat fmt, uint16_t* zeros);

// AWQ GEMM, 4-bit only: codes [R, N] (R = K for qweight, G for qzeros) -> [R, N/8]. N must be a multiple of 8.
void awq_pack(const uint8_t* codes, int64_t R, int64_t N, int32_t* packed);
void awq_unpack(const int32_t* packed, int64_t R, int64_t N, uint8_t* codes);

}  // namespace qwenq
