// Sums of GPU buffers across the ranks of a data-parallel run (trainer/train_loop.h, `qwen-qlora train --nproc`)
// through NCCL, which moves them GPU to GPU (NVLink, PCIe) instead of through host memory and sockets
// (core/process_group.h; about 1 GB/s there against hundreds over NVLink). NCCL is loaded at run time
// (dlopen libnccl.so.2; no header or link dependency), and its communicator is set up over the ranks' ProcessGroup:
// rank 0's ncclGetUniqueId is broadcast along the ring, then every rank calls ncclCommInitRank on its one visible
// GPU. An NCCL all-reduce gives every rank the same bits (each chunk is summed once, then copied), which the
// trainer's agreement checks verify at each checkpoint.
// Opt-in (QWENQ_DP_NCCL=1) until it has run on a machine with several GPUs (none is lent to this project).
// CUDA builds only.
#pragma once

#ifdef QWENQ_HAVE_CUDA

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

namespace qwenq {

class ProcessGroup;

class NcclComm {
 public:
  // Collective: every rank of `group` calls it at the same point. When some rank cannot load NCCL, every rank
  // returns null and *why_not says why (this rank's reason, or which ranks failed); NCCL's own setup errors throw.
  static std::unique_ptr<NcclComm> create(ProcessGroup& group, std::string* why_not);
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  // x[0, n) on this rank's GPU <- the sum over the ranks, in place (every rank the same calls); returns when `stream`
  // has run it. While it waits it watches NCCL's asynchronous error and, with `watch`, the ring's sockets and its
  // timeout (ProcessGroup::timeout_seconds, counted from the call): a rank that stopped mid-collective, or a sum not
  // done in that time, aborts the communicator and throws, instead of waiting forever. No timeout without `watch`.
  void all_reduce_sum(float* x, int64_t n, cudaStream_t stream, const ProcessGroup* watch = nullptr);

 private:
  NcclComm() = default;
  void* comm_ = nullptr;  // ncclComm_t
};

// QWENQ_DP_NCCL=1: the GPU trainer's data-parallel gradient sums go through NCCL (default: host memory).
bool nccl_requested();

}  // namespace qwenq

#endif  // QWENQ_HAVE_CUDA
