#include "kernels/nccl_comm.h"

#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <exception>

#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "core/env_switch.h"
#include "core/error.h"
#include "core/process_group.h"

namespace qwenq {

namespace {

// The NCCL 2 C ABI this file uses, declared here (nccl.h is not part of every CUDA toolkit): results and enums are
// ints, the communicator an opaque pointer, the unique id 128 bytes.
struct NcclUniqueId {
  char internal[128];
};
using NcclResult = int;
constexpr NcclResult kNcclSuccess = 0, kNcclInProgress = 7;
constexpr int kNcclFloat32 = 7;
constexpr int kNcclSum = 0;

struct NcclApi {
  NcclResult (*GetUniqueId)(NcclUniqueId*) = nullptr;
  NcclResult (*CommInitRank)(void** comm, int nranks, NcclUniqueId id, int rank) = nullptr;
  NcclResult (*CommDestroy)(void* comm) = nullptr;
  NcclResult (*AllReduce)(const void* send, void* recv, size_t count, int dtype, int op, void* comm,
                          cudaStream_t stream) = nullptr;
  const char* (*GetErrorString)(NcclResult) = nullptr;
  NcclResult (*CommAbort)(void* comm) = nullptr;
  NcclResult (*CommGetAsyncError)(void* comm, NcclResult* error) = nullptr;
  NcclResult (*GetVersion)(int* version) = nullptr;
};

// Loads libnccl once per process; "" when every entry point was found, else why not.
const NcclApi& nccl_api(std::string* error) {
  static NcclApi api;
  static std::string err;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = ::dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) lib = ::dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = ::dlerror();
      err = std::string("cannot load NCCL (libnccl.so.2): ") + (why ? why : "not found");
      return;
    }
    const auto load = [&](auto* fn, const char* name) {
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(::dlsym(lib, name));
      if (*fn == nullptr && err.empty()) err = std::string("libnccl has no symbol ") + name;
    };
    load(&api.GetUniqueId, "ncclGetUniqueId");
    load(&api.CommInitRank, "ncclCommInitRank");
    load(&api.CommDestroy, "ncclCommDestroy");
    load(&api.AllReduce, "ncclAllReduce");
    load(&api.GetErrorString, "ncclGetErrorString");
    load(&api.CommAbort, "ncclCommAbort");
    load(&api.CommGetAsyncError, "ncclCommGetAsyncError");
    load(&api.GetVersion, "ncclGetVersion");
    // NCCL 2's ABI (version codes X·1000 + Y·100 + Z up to 2.8, X·10000 + Y·100 + Z after).
    int v = 0;
    if (err.empty() && api.GetVersion(&v) == kNcclSuccess) {
      const int major = v >= 10000 ? v / 10000 : v / 1000;
      if (major != 2) err = "libnccl is version code " + std::to_string(v) + ", not NCCL 2";
    }
  });
  *error = err;
  return api;
}

#define QWENQ_NCCL_CHECK(call, what)                                                                     \
  do {                                                                                                   \
    const NcclResult qwenq_nccl_r_ = (call);                                                             \
    QWENQ_CHECK(qwenq_nccl_r_ == kNcclSuccess, "NCCL " << what << " failed: " << api.GetErrorString(qwenq_nccl_r_) \
                                                       << " (error " << qwenq_nccl_r_ << ")");           \
  } while (0)

}  // namespace

bool nccl_requested() { return env_switch("QWENQ_DP_NCCL") == 1; }

std::unique_ptr<NcclComm> NcclComm::create(ProcessGroup& group, std::string* why_not) {
  std::string error;
  const NcclApi& api = nccl_api(&error);
  // Every rank learns whether every rank loaded it: a rank entering ncclCommInitRank alone would wait forever.
  std::vector<double> failed(static_cast<size_t>(group.world()), 0.0);
  failed[static_cast<size_t>(group.rank())] = error.empty() ? 0.0 : 1.0;
  group.all_reduce_sum(failed.data(), static_cast<int64_t>(failed.size()));
  std::string which;
  for (size_t r = 0; r < failed.size(); ++r)
    if (failed[r] != 0.0) which += (which.empty() ? "" : ", ") + std::to_string(r);
  if (!which.empty()) {
    *why_not = error.empty() ? "NCCL could not be loaded by rank(s) " + which : error;
    return nullptr;
  }
  NcclUniqueId id{};
  if (group.rank() == 0) QWENQ_NCCL_CHECK(api.GetUniqueId(&id), "ncclGetUniqueId");
  group.broadcast(&id, sizeof id);
  // Into a local handle: a failed init leaves nothing for the destructor to abort.
  void* comm = nullptr;
  QWENQ_NCCL_CHECK(api.CommInitRank(&comm, group.world(), id, group.rank()),
                   "ncclCommInitRank (rank " << group.rank() << " of " << group.world() << ")");
  std::unique_ptr<NcclComm> c(new NcclComm());
  c->comm_ = comm;
  return c;
}

NcclComm::~NcclComm() {
  std::string error;
  const NcclApi& api = nccl_api(&error);
  if (comm_ == nullptr) return;
  // While an error unwinds (a failed init, a stopped peer, this rank's own failure) the others may never join a
  // destroy, which waits for them: abort instead. Nothing to report from a destructor.
  if (std::uncaught_exceptions() > 0) api.CommAbort(comm_);
  else api.CommDestroy(comm_);
}

void NcclComm::all_reduce_sum(float* x, int64_t n, cudaStream_t stream, const ProcessGroup* watch) {
  std::string error;
  const NcclApi& api = nccl_api(&error);
  QWENQ_CHECK(n >= 0, "NcclComm::all_reduce_sum: " << n << " values");
  if (n == 0) return;
  QWENQ_NCCL_CHECK(api.AllReduce(x, x, static_cast<size_t>(n), kNcclFloat32, kNcclSum, comm_, stream),
                   "ncclAllReduce of " << n << " fp32 values");
  // A collective whose peer died never completes, and NCCL may not say so: wait by polling the stream, NCCL's
  // asynchronous error and the ring's sockets (a stopped neighbour), and abort the communicator on a failure or
  // after the ring's timeout (QWENQ_DP_TIMEOUT_S) without completing.
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return;
    QWENQ_CHECK(q == cudaErrorNotReady, "ncclAllReduce of " << n << " fp32 values: " << cudaGetErrorString(q));
    NcclResult async = kNcclSuccess;
    api.CommGetAsyncError(comm_, &async);
    const bool nccl_failed = async != kNcclSuccess && async != kNcclInProgress;
    const bool peer_gone = watch != nullptr && watch->neighbour_stopped();
    const double timeout = watch != nullptr ? watch->timeout_seconds() : 0;
    const bool timed_out =
        timeout > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout;
    if (nccl_failed || peer_gone || timed_out) {
      api.CommAbort(comm_);
      comm_ = nullptr;
      if (!nccl_failed && !peer_gone) {  // the timeout alone: a more specific cause is named first
        QWENQ_FAIL(dp_timeout_message(watch->rank(), "an NCCL all-reduce did not complete", timeout,
                                      "a sum of " + std::to_string(n) + " fp32 values"));
      }
      QWENQ_FAIL("ncclAllReduce of " << n << " fp32 values: "
                 << (peer_gone ? std::string("a neighbouring rank has stopped (it prints its own error, if any)")
                               : std::string("NCCL reports ") + api.GetErrorString(async)));
    }
    usleep(100);
  }
}

}  // namespace qwenq
