#include "kernels/nccl_comm.h"

#include <dlfcn.h>

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
constexpr NcclResult kNcclSuccess = 0;
constexpr int kNcclFloat32 = 7;
constexpr int kNcclSum = 0;

struct NcclApi {
  NcclResult (*GetUniqueId)(NcclUniqueId*) = nullptr;
  NcclResult (*CommInitRank)(void** comm, int nranks, NcclUniqueId id, int rank) = nullptr;
  NcclResult (*CommDestroy)(void* comm) = nullptr;
  NcclResult (*AllReduce)(const void* send, void* recv, size_t count, int dtype, int op, void* comm,
                          cudaStream_t stream) = nullptr;
  const char* (*GetErrorString)(NcclResult) = nullptr;
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
  std::unique_ptr<NcclComm> c(new NcclComm());
  QWENQ_NCCL_CHECK(api.CommInitRank(&c->comm_, group.world(), id, group.rank()),
                   "ncclCommInitRank (rank " << group.rank() << " of " << group.world() << ")");
  return c;
}

NcclComm::~NcclComm() {
  std::string error;
  const NcclApi& api = nccl_api(&error);
  if (comm_ != nullptr && api.CommDestroy != nullptr) api.CommDestroy(comm_);  // nothing to report from here
}

void NcclComm::all_reduce_sum(float* x, int64_t n, cudaStream_t stream) {
  std::string error;
  const NcclApi& api = nccl_api(&error);
  QWENQ_CHECK(n >= 0, "NcclComm::all_reduce_sum: " << n << " values");
  if (n == 0) return;
  QWENQ_NCCL_CHECK(api.AllReduce(x, x, static_cast<size_t>(n), kNcclFloat32, kNcclSum, comm_, stream),
                   "ncclAllReduce of " << n << " fp32 values");
}

}  // namespace qwenq
