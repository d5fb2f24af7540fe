// The CPU trainer's steps allocate and free the same large buffers again and again (a step's activations, a layer's
// dequantized weight, a 67 MB chunk of logits). glibc hands every block above its mmap threshold (at most 32 MiB)
// back to the kernel when freed, and trims the heap's top past 128 KiB, so each step faults every such page in again
// (zeroed by the kernel): 15-20 % of a 4-layer Qwen2.5-0.5B step at seq 512 on 2 cores. keep_heap_for_reuse() raises
// both limits (blocks up to 1 GiB come from the heap; up to 256 MiB of free heap top is kept), so a step reuses the
// last one's pages; the peak RSS stays where the step's own peak puts it.
// Nothing is changed when the user set glibc's own malloc variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
// or malloc tunables in GLIBC_TUNABLES), with QWENQ_HEAP_REUSE=0, or off glibc.
#pragma once

namespace qwenq {

// Returns whether the limits were raised (once per process; later calls return the first answer).
bool keep_heap_for_reuse();

}  // namespace qwenq
