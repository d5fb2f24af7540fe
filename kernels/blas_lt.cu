// cuBLASLt front end: BlasLt (handle, workspace, plan cache) and the linear-layer twins of gemm_ref.cpp.
// Formulas, dtype rules and the row-major -> column-major mapping are in kernels/blas_lt.h.
//
// A plan is built once per key and then only read: descriptor, layouts and the heuristic's first algorithm.
// The bias pointer is an attribute of the matmul descriptor, so it is set on the cached descriptor right before
// each cublasLtMatmul, under the mutex that serializes calls. cuBLASLt reads descriptor attributes when the call
// is enqueued, so changing the pointer for the next call does not affect a matmul already queued.
#include <cublasLt.h>
#include <dlfcn.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/blas_lt.h"
#include "kernels/cuda_check.cuh"

#define QWENQ_STRINGIFY_(x) #x
#define QWENQ_STRINGIFY(x) QWENQ_STRINGIFY_(x)

namespace qwenq {

namespace {

// cuBLASLt is opened with dlopen on first use instead of being linked: the library is over 500 MB, and merely
// loading it (relocations) costs every process ~200 MB of resident memory, CPU-only runs included. The entry
// points used here, typed from the header.
struct LtApi {
#define QWENQ_LT_FN(name) decltype(&cublasLt##name) name = nullptr;
  QWENQ_LT_FN(Create) QWENQ_LT_FN(Destroy) QWENQ_LT_FN(GetStatusName) QWENQ_LT_FN(GetStatusString) QWENQ_LT_FN(Matmul)
  QWENQ_LT_FN(MatmulAlgoGetHeuristic) QWENQ_LT_FN(MatmulDescCreate) QWENQ_LT_FN(MatmulDescDestroy)
  QWENQ_LT_FN(MatmulDescSetAttribute) QWENQ_LT_FN(MatmulPreferenceCreate) QWENQ_LT_FN(MatmulPreferenceDestroy)
  QWENQ_LT_FN(MatmulPreferenceSetAttribute) QWENQ_LT_FN(MatrixLayoutCreate) QWENQ_LT_FN(MatrixLayoutDestroy)
#undef QWENQ_LT_FN
};

const LtApi& lt_api() {
  static LtApi api;
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    const char* names[] = {"libcublasLt.so." QWENQ_STRINGIFY(CUBLAS_VER_MAJOR), "libcublasLt.so"};
    void* lib = nullptr;
    for (const char* n : names) {
      if ((lib = ::dlopen(n, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    }
    if (!lib) {
      const char* why = ::dlerror();
      error = std::string("cannot load cuBLASLt (libcublasLt.so." QWENQ_STRINGIFY(CUBLAS_VER_MAJOR) "): ") +
              (why ? why : "not found");
      return;
    }
#define QWENQ_LT_LOAD(name)                                                                         \
    api.name = reinterpret_cast<decltype(api.name)>(::dlsym(lib, "cublasLt" #name));               \
    if (!api.name && error.empty()) error = "libcublasLt has no symbol cublasLt" #name;
    QWENQ_LT_LOAD(Create) QWENQ_LT_LOAD(Destroy) QWENQ_LT_LOAD(GetStatusName) QWENQ_LT_LOAD(GetStatusString)
    QWENQ_LT_LOAD(Matmul) QWENQ_LT_LOAD(MatmulAlgoGetHeuristic) QWENQ_LT_LOAD(MatmulDescCreate)
    QWENQ_LT_LOAD(MatmulDescDestroy) QWENQ_LT_LOAD(MatmulDescSetAttribute) QWENQ_LT_LOAD(MatmulPreferenceCreate)
    QWENQ_LT_LOAD(MatmulPreferenceDestroy) QWENQ_LT_LOAD(MatmulPreferenceSetAttribute)
    QWENQ_LT_LOAD(MatrixLayoutCreate) QWENQ_LT_LOAD(MatrixLayoutDestroy)
#undef QWENQ_LT_LOAD
  });
  QWENQ_CHECK(error.empty(), error);
  return api;
}

}  // namespace

namespace {

#define QWENQ_CUBLASLT_CHECK(call, ctx)                                                                 \
  do {                                                                                                  \
    const cublasStatus_t qwenq_lt_st_ = (call);                                                         \
    if (qwenq_lt_st_ != CUBLAS_STATUS_SUCCESS)                                                          \
      QWENQ_FAIL(ctx << ": `" << #call << "` returned " << lt_api().GetStatusName(qwenq_lt_st_) << " ("   \
                     << lt_api().GetStatusString(qwenq_lt_st_) << ")");                                  \
  } while (0)

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: QWENQ_FAIL("cuBLASLt: dtype " << dtype_name(t) << " is not supported (F32, BF16 or F16)");
  }
}

// Largest power of two dividing the address, capped at 256 (cuBLASLt's default assumption); null counts as 256.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  const uintptr_t low = a & (~a + 1);
  return low >= 256 ? 256u : static_cast<uint32_t>(low);
}

std::string describe(const LtGemm& g) {
  std::ostringstream os;
  os << "cuBLASLt matmul m=" << g.m << " n=" << g.n << " k=" << g.k << " A " << dtype_name(g.a_type)
     << (g.trans_a ? " (T)" : " (N)") << " lda=" << g.lda << ", B " << dtype_name(g.b_type)
     << (g.trans_b ? " (T)" : " (N)") << " ldb=" << g.ldb << ", D " << dtype_name(g.d_type) << " ldd=" << g.ldd
     << (g.bias ? ", bias epilogue" : "") << (g.accumulate ? ", beta=1" : "");
  return os.str();
}

using PlanKey = std::array<int64_t, 17>;

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

void destroy(Plan& p) noexcept {
  if (p.a) lt_api().MatrixLayoutDestroy(p.a);
  if (p.b) lt_api().MatrixLayoutDestroy(p.b);
  if (p.d) lt_api().MatrixLayoutDestroy(p.d);
  if (p.desc) lt_api().MatmulDescDestroy(p.desc);
  p = Plan{};
}

// Frees a cuBLASLt preference on scope exit.
struct PreferenceGuard {
  cublasLtMatmulPreference_t p = nullptr;
  ~PreferenceGuard() {
    if (p) lt_api().MatmulPreferenceDestroy(p);
  }
};

// ---- dtype conversion (activations to the weight's dtype, bias to the output's) ------------------------------

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  __device__ static float load(const float* p, int64_t i) { return p[i]; }
  __device__ static void store(float* p, int64_t i, float v) { p[i] = v; }
};
template <>
struct Elem<__nv_bfloat16> {
  __device__ static float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
  __device__ static void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }
};
template <>
struct Elem<__half> {
  __device__ static float load(const __half* p, int64_t i) { return __half2float(p[i]); }
  __device__ static void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
};

template <typename From, typename To>
__global__ void convert_kernel(const From* in, To* out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    Elem<To>::store(out, i, Elem<From>::load(in, i));
}

template <typename From>
void convert_from(const void* in, void* out, DType to, int64_t n, cudaStream_t s, unsigned grid, unsigned block) {
  const From* src = static_cast<const From*>(in);
  switch (to) {
    case DType::F32: convert_kernel<<<grid, block, 0, s>>>(src, static_cast<float*>(out), n); break;
    case DType::BF16: convert_kernel<<<grid, block, 0, s>>>(src, static_cast<__nv_bfloat16*>(out), n); break;
    default: convert_kernel<<<grid, block, 0, s>>>(src, static_cast<__half*>(out), n); break;
  }
}

// Round-to-nearest-even conversion of n elements on `stream` (bf16 and f16 as core/dtype.h converts them).
void convert(const void* in, DType from, void* out, DType to, int64_t n, CudaStream stream) {
  const unsigned block = 256;
  const int64_t blocks = std::min<int64_t>((n + block - 1) / block, 4096);
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(blocks, 1));
  switch (from) {
    case DType::F32: convert_from<float>(in, out, to, n, stream, grid, block); break;
    case DType::BF16: convert_from<__nv_bfloat16>(in, out, to, n, stream, grid, block); break;
    default: convert_from<__half>(in, out, to, n, stream, grid, block); break;
  }
  QWENQ_CUDA_CHECK_LAUNCH("convert " << n << " elements " << dtype_name(from) << " -> " << dtype_name(to));
}

bool overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

// Activations against the weight: F32 always; otherwise the weight's own 16-bit dtype (F32 weights take F32).
void check_activation_dtype(const char* name, const char* what, DType act, DType w) {
  QWENQ_CHECK(act == DType::F32 || (act == w && w != DType::F32),
              name << ": " << what << " dtype " << dtype_name(act) << " does not go with weight dtype "
                   << dtype_name(w) << " (use F32 " << what << ", or " << what << " in the weight's 16-bit dtype)");
}

}  // namespace

// ---- BlasLt ------------------------------------------------------------------------------------------------

struct BlasLt::Impl {
  cublasLtHandle_t handle = nullptr;
  std::mutex mu;
  std::map<PlanKey, Plan> plans;
  size_t heuristics = 0;
  void* workspace = nullptr;
  cudaEvent_t last_done = nullptr;  // recorded after each matmul: the workspace is free once it completes
  bool used = false;

  ~Impl() {
    for (auto& kv : plans) destroy(kv.second);
    // Errors are dropped: a destructor must not throw, and a dead context was reported by the call that broke it.
    if (workspace && cudaFree(workspace) != cudaSuccess) cudaGetLastError();
    if (last_done && cudaEventDestroy(last_done) != cudaSuccess) cudaGetLastError();
    if (handle) lt_api().Destroy(handle);
  }

  Plan& plan_for(const LtGemm& g, uint32_t align_a, uint32_t align_b, uint32_t align_d) {
    const PlanKey key = {g.m,
                         g.n,
                         g.k,
                         g.trans_a,
                         g.trans_b,
                         static_cast<int64_t>(g.a_type),
                         static_cast<int64_t>(g.b_type),
                         static_cast<int64_t>(g.d_type),
                         g.lda,
                         g.ldb,
                         g.ldd,
                         g.bias,
                         g.accumulate,
                         align_a,
                         align_b,
                         align_d,
                         0};
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;

    const std::string ctx = describe(g);
    Plan p;
    try {
      QWENQ_CUBLASLT_CHECK(lt_api().MatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), ctx);
      const cublasOperation_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
      QWENQ_CUBLASLT_CHECK(lt_api().MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), ctx);
      QWENQ_CUBLASLT_CHECK(lt_api().MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), ctx);
      if (g.bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        QWENQ_CUBLASLT_CHECK(lt_api().MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
                             ctx);
        const int32_t bias_type = cuda_type(g.d_type);
        QWENQ_CUBLASLT_CHECK(
            lt_api().MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type),
            ctx);
      }
      const uint64_t a_rows = g.trans_a ? g.k : g.m, a_cols = g.trans_a ? g.m : g.k;
      const uint64_t b_rows = g.trans_b ? g.n : g.k, b_cols = g.trans_b ? g.k : g.n;
      QWENQ_CUBLASLT_CHECK(lt_api().MatrixLayoutCreate(&p.a, cuda_type(g.a_type), a_rows, a_cols, g.lda), ctx);
      QWENQ_CUBLASLT_CHECK(lt_api().MatrixLayoutCreate(&p.b, cuda_type(g.b_type), b_rows, b_cols, g.ldb), ctx);
      QWENQ_CUBLASLT_CHECK(lt_api().MatrixLayoutCreate(&p.d, cuda_type(g.d_type), g.m, g.n, g.ldd), ctx);

      PreferenceGuard pref;
      QWENQ_CUBLASLT_CHECK(lt_api().MatmulPreferenceCreate(&pref.p), ctx);
      const uint64_t ws = kWorkspaceBytes;
      QWENQ_CUBLASLT_CHECK(
          lt_api().MatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws), ctx);
      // The heuristic may only return algorithms that work with the pointers' actual alignment (its default
      // assumes 256-byte aligned buffers; a sub-matrix or an odd K breaks that).
      const uint32_t aligns[4] = {align_a, align_b, align_d, align_d};
      const cublasLtMatmulPreferenceAttributes_t attrs[4] = {
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
      for (int i = 0; i < 4; ++i)
        QWENQ_CUBLASLT_CHECK(lt_api().MatmulPreferenceSetAttribute(pref.p, attrs[i], &aligns[i], sizeof aligns[i]), ctx);

      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      ++heuristics;
      QWENQ_CUBLASLT_CHECK(
          lt_api().MatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, p.d, p.d, pref.p, 1, &result, &found), ctx);
      QWENQ_CHECK(found > 0, ctx << ": cuBLASLt has no algorithm for this shape, dtype and alignment (A "
                                 << align_a << " B " << align_b << " D " << align_d << " bytes)");
      p.algo = result.algo;
      p.workspace = result.workspaceSize;
    } catch (...) {
      destroy(p);
      throw;
    }
    return plans.emplace(key, p).first->second;
  }
};

BlasLt::BlasLt() : impl_(std::make_unique<Impl>()) {
  const cublasStatus_t st = lt_api().Create(&impl_->handle);
  QWENQ_CHECK(st == CUBLAS_STATUS_SUCCESS, "cublasLtCreate returned " << lt_api().GetStatusName(st) << " ("
                                                                      << lt_api().GetStatusString(st) << ")");
  QWENQ_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->last_done, cudaEventDisableTiming));
}

BlasLt::~BlasLt() = default;

size_t BlasLt::plan_count() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->plans.size();
}

size_t BlasLt::heuristic_calls() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->heuristics;
}

void BlasLt::matmul(const LtGemm& g, const void* A, const void* B, void* D, const void* bias, float alpha,
                    CudaStream stream) {
  QWENQ_CHECK(g.m > 0 && g.n > 0 && g.k > 0, describe(g) << ": shapes must be positive");
  QWENQ_CHECK(A != nullptr && B != nullptr && D != nullptr, describe(g) << ": null A, B or D");
  QWENQ_CHECK(!g.bias || bias != nullptr, describe(g) << ": the bias epilogue needs a bias pointer");
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& s = *impl_;
  Plan& p = s.plan_for(g, alignment_of(A), alignment_of(B), alignment_of(D));
  const std::string ctx = g.bias ? describe(g) : std::string();
  if (g.bias)
    QWENQ_CUBLASLT_CHECK(lt_api().MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
                         ctx);
  if (p.workspace > 0 && s.workspace == nullptr) QWENQ_CUDA_CHECK(cudaMalloc(&s.workspace, kWorkspaceBytes));
  // The shared workspace's previous user must be done: wait on its event always, not only when the stream handle
  // differs (a destroyed stream's handle can come back for a new stream with that matmul still queued); on the
  // same stream the wait is already satisfied in order. Not while `stream` is being captured into a CUDA graph: a
  // capture may not wait on an event recorded outside it, nor record one that eager work then waits on; the graph's
  // launcher orders it instead (wait_for_workspace / mark_workspace_used).
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  QWENQ_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool captured = capture != cudaStreamCaptureStatusNone;
  if (s.used && !captured) QWENQ_CUDA_CHECK(cudaStreamWaitEvent(stream, s.last_done, 0));
  const float beta = g.accumulate ? 1.f : 0.f;
  const cublasStatus_t st = lt_api().Matmul(s.handle, p.desc, &alpha, A, p.a, B, p.b, &beta, D, p.d, D, p.d, &p.algo,
                                           s.workspace, p.workspace, stream);
  QWENQ_CHECK(st == CUBLAS_STATUS_SUCCESS,
              describe(g) << ": cublasLtMatmul returned " << lt_api().GetStatusName(st) << " ("
                          << lt_api().GetStatusString(st) << ")");
  if (captured) return;
  QWENQ_CUDA_CHECK(cudaEventRecord(s.last_done, stream));
  s.used = true;
}

void BlasLt::wait_for_workspace(CudaStream stream) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->used) QWENQ_CUDA_CHECK(cudaStreamWaitEvent(stream, impl_->last_done, 0));
}

void BlasLt::reserve_workspace() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->workspace == nullptr) QWENQ_CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
}

void BlasLt::mark_workspace_used(CudaStream stream) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  QWENQ_CUDA_CHECK(cudaEventRecord(impl_->last_done, stream));
  impl_->used = true;
}

BlasLt& BlasLt::current() {
  static std::mutex mu;
  static std::vector<BlasLt*> per_device;  // never freed: see blas_lt.h
  int device = 0;
  QWENQ_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mu);
  if (per_device.size() <= static_cast<size_t>(device)) per_device.resize(device + 1, nullptr);
  if (per_device[device] == nullptr) per_device[device] = new BlasLt();
  return *per_device[device];
}

// ---- linear layers -----------------------------------------------------------------------------------------

void linear_forward_cuda(const void* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
                         const void* bias, DType bias_dtype, void* y, DType x_dtype, CudaStream stream) {
  const char* name = "linear_forward_cuda";
  QWENQ_CHECK(M > 0 && K > 0 && N > 0, name << ": shapes must be positive, got M=" << M << " K=" << K << " N=" << N);
  QWENQ_CHECK(is_float_dtype(w_dtype),
              name << ": weight dtype " << dtype_name(w_dtype) << " is not supported (F32, BF16 or F16)");
  QWENQ_CHECK(bias == nullptr || is_float_dtype(bias_dtype),
              name << ": bias dtype " << dtype_name(bias_dtype) << " is not supported (F32, BF16 or F16)");
  check_activation_dtype(name, "x", x_dtype, w_dtype);
  QWENQ_CHECK(x != nullptr && w != nullptr && y != nullptr, name << ": null x, weight or output pointer");
  const DType y_dtype = x_dtype;
  QWENQ_CHECK(!overlap(y, M * N * dtype_size(y_dtype), x, M * K * dtype_size(x_dtype)),
              name << ": output y overlaps input x (in-place is not supported)");

  DeviceMemory x_cast, bias_cast;
  const void* xa = x;
  if (x_dtype != w_dtype) {  // F32 activations against a 16-bit weight: round them to the weight's dtype
    x_cast = DeviceMemory(static_cast<size_t>(M * K) * dtype_size(w_dtype), stream);
    convert(x, x_dtype, x_cast.get(), w_dtype, M * K, stream);
    xa = x_cast.get();
  }
  const void* b = bias;
  if (bias != nullptr && bias_dtype != y_dtype) {
    bias_cast = DeviceMemory(static_cast<size_t>(N) * dtype_size(y_dtype), stream);
    convert(bias, bias_dtype, bias_cast.get(), y_dtype, N, stream);
    b = bias_cast.get();
  }
  LtGemm g;
  g.m = N, g.n = M, g.k = K;
  g.trans_a = true, g.trans_b = false;
  g.a_type = w_dtype, g.b_type = w_dtype, g.d_type = y_dtype;
  g.lda = K, g.ldb = K, g.ldd = N;
  g.bias = bias != nullptr;
  BlasLt::current().matmul(g, w, xa, y, b, 1.f, stream);
}  // the scratch copies are released in stream order, after the matmul

void linear_backward_input_cuda(const void* dy, int64_t M, int64_t N, const void* w, DType w_dtype, int64_t K,
                                void* dx, DType dy_dtype, CudaStream stream) {
  const char* name = "linear_backward_input_cuda";
  QWENQ_CHECK(M > 0 && K > 0 && N > 0, name << ": shapes must be positive, got M=" << M << " K=" << K << " N=" << N);
  QWENQ_CHECK(is_float_dtype(w_dtype),
              name << ": weight dtype " << dtype_name(w_dtype) << " is not supported (F32, BF16 or F16)");
  check_activation_dtype(name, "dy", dy_dtype, w_dtype);
  QWENQ_CHECK(dy != nullptr && w != nullptr && dx != nullptr, name << ": null dy, weight or dx pointer");
  QWENQ_CHECK(!overlap(dx, M * K * dtype_size(dy_dtype), dy, M * N * dtype_size(dy_dtype)),
              name << ": output dx overlaps input dy");

  DeviceMemory dy_cast;
  const void* g_in = dy;
  if (dy_dtype != w_dtype) {
    dy_cast = DeviceMemory(static_cast<size_t>(M * N) * dtype_size(w_dtype), stream);
    convert(dy, dy_dtype, dy_cast.get(), w_dtype, M * N, stream);
    g_in = dy_cast.get();
  }
  LtGemm g;
  g.m = K, g.n = M, g.k = N;
  g.trans_a = false, g.trans_b = false;
  g.a_type = w_dtype, g.b_type = w_dtype, g.d_type = dy_dtype;
  g.lda = K, g.ldb = N, g.ldd = K;
  BlasLt::current().matmul(g, w, g_in, dx, nullptr, 1.f, stream);
}

void linear_backward_weight_cuda(const float* dy, const float* x, int64_t M, int64_t N, int64_t K, float* dW,
                                 CudaStream stream) {
  const char* name = "linear_backward_weight_cuda";
  QWENQ_CHECK(M > 0 && K > 0 && N > 0, name << ": shapes must be positive, got M=" << M << " K=" << K << " N=" << N);
  QWENQ_CHECK(dy != nullptr && x != nullptr && dW != nullptr, name << ": null dy, x or dW pointer");
  QWENQ_CHECK(!overlap(dW, N * K * 4, dy, M * N * 4) && !overlap(dW, N * K * 4, x, M * K * 4),
              name << ": output dW overlaps input dy or x");
  LtGemm g;
  g.m = K, g.n = N, g.k = M;
  g.trans_a = false, g.trans_b = true;
  g.lda = K, g.ldb = N, g.ldd = K;
  g.accumulate = true;
  BlasLt::current().matmul(g, x, dy, dW, nullptr, 1.f, stream);
}

}  // namespace qwenq
