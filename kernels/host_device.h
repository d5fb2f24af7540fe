// QWENQ_HOST_DEVICE marks a function compiled for the host and, under nvcc, also for the device: the arithmetic of a
// header that a CUDA kernel and its CPU twin or host-side planner share, so both sides compute the same numbers
// from the same source (kernels/bf16_split.h, dropout_mask.h, wgmma_layout.h, attention_decode_split.h,
// qgemm_decode_plan.h).
#pragma once

#if defined(__CUDACC__)
#define QWENQ_HOST_DEVICE __host__ __device__
#else
#define QWENQ_HOST_DEVICE
#endif
