// Counter-based dropout masks: whether element i of a dropout call is kept is a pure function of (key, i), so
// the CPU and the GPU draw the same mask in any order, and a backward (or a checkpoint recomputation) regenerates
// it instead of storing it. Plain integer arithmetic, usable from host C++ and from CUDA device code.
//
// Generator: SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014) read
// as a counter-based generator. Its finalizer (Stafford's "Mix13", the same as core/rng.h's seeding) is a
// bijection of 64-bit words with full avalanche; the stream z_i = mix64(key + (i + 1)·G), G = 0x9e3779b97f4a7c15
// (odd: a Weyl sequence), is exactly the output sequence of SplitMix64 seeded with `key`, which passes
// TestU01's BigCrush. Chosen over Philox4x32-10 for being three 64-bit multiplies per element and one line each
// side; two keys' streams overlap within n elements only if they differ by j·G with |j| < n (probability
// ~2n/2^64 for hashed keys).
//
//   mix64(z)   = z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb; z ^ (z >> 31)
//   key(seed, layer, target)
//              = mix64(mix64(seed + G) + (8·layer + target + 1)·G)          target in [0, 8), layer >= 0
//              (for one seed, distinct (layer, target) give distinct keys: the multiplier is odd and mix64 a
//              bijection)
//   u(key, i)  = float(mix64(key + (i + 1)·G) >> 40) · 2^-24                 the top 24 bits: exact in fp32,
//                                                                           u in {0, 2^-24, ..., 1 − 2^-24}
//   keep(i)    = u(key, i) >= p                                              (fp32 compare: P(drop) =
//                                                                           ceil(p·2^24)/2^24, p to 6e-8)
//   scale      = 1.0f / (1.0f − p)      computed once, on the host, in fp32
//   x̃_i        = m_i · x_i,  m_i = keep(i) ? scale : 0                       (torch.nn.Dropout: inverted dropout,
//                                                                           NaN/inf in x propagate as in torch)
//   noise_key(seed) = mix64(mix64(seed + G))                                 lane 0 of key(), which no (layer,
//                                                                           target) takes: NEFTune's embedding
//                                                                           noise (kernels/dropout.h)
// All integer arithmetic is modulo 2^64. The LoRA trainers (trainer/lora_model.cpp, trainer/lora_model_cuda.cpp)
// call dropout_key(step's dropout_seed, layer, target index in lora_config.h's table order) per adapted Linear
// and index the row-major [T, K] input of that Linear, so packing and layout cannot change a mask.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace qwenq {

constexpr uint64_t kDropoutGolden = 0x9e3779b97f4a7c15ull;

QWENQ_HOST_DEVICE inline uint64_t dropout_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The mask key of one dropout call: a step's seed, a layer and a target index in [0, 8).
QWENQ_HOST_DEVICE inline uint64_t dropout_key(uint64_t seed, int64_t layer, int target) {
  const uint64_t lane = static_cast<uint64_t>(layer) * 8u + static_cast<uint64_t>(target) + 1u;
  return dropout_mix64(dropout_mix64(seed + kDropoutGolden) + lane * kDropoutGolden);
}

// The key of a step's embedding noise (NEFTune): lane 0 of dropout_key's seed hash, distinct from every dropout key
// of the same seed (their lanes are 8·layer + target + 1 >= 1).
QWENQ_HOST_DEVICE inline uint64_t noise_key(uint64_t seed) {
  return dropout_mix64(dropout_mix64(seed + kDropoutGolden));
}

// u(key, i) in [0, 1) with 24 random bits.
QWENQ_HOST_DEVICE inline float dropout_uniform(uint64_t key, int64_t i) {
  const uint64_t z = dropout_mix64(key + (static_cast<uint64_t>(i) + 1u) * kDropoutGolden);
  return static_cast<float>(static_cast<uint32_t>(z >> 40)) * (1.0f / 16777216.0f);
}

// The factor element i is multiplied by: `scale` when kept (u >= p), else 0.
QWENQ_HOST_DEVICE inline float dropout_factor(uint64_t key, int64_t i, float p, float scale) {
  return dropout_uniform(key, i) >= p ? scale : 0.0f;
}

}  // namespace qwenq
