// The two LogitsSources of trainer/logits_source.h.
#include "trainer/logits_source.h"

#include "core/error.h"
#ifdef QWENQ_HAVE_CUDA
#include "kernels/cuda_check.cuh"
#endif

namespace qwenq {

LogitsSource cpu_logits_source(const QwenModel& model) {
  LogitsSource s;
  s.name = model.dir();
  s.vocab_size = model.config().vocab_size;
  s.max_positions = model.config().max_position_embeddings;
  auto hidden = std::make_shared<std::vector<float>>();
  auto rows = std::make_shared<int64_t>(0);
  const int64_t C = model.config().hidden_size;
  s.forward = [&model, hidden, rows](const PackedBatch& b) {
    *rows = 0;
    model.forward_hidden(b, hidden.get());
    *rows = b.num_tokens();
  };
  s.logits = [&model, hidden, rows, C](int64_t r0, int64_t n, float* out) {
    QWENQ_CHECK(r0 >= 0 && n >= 0 && r0 + n <= *rows, "cpu_logits_source: rows [" << r0 << ", " << r0 + n << ") of "
                                                                                    << *rows << " hidden states");
    if (n > 0) model.logits(hidden->data() + r0 * C, n, out);
  };
  s.nll = [&model, hidden, rows](const int32_t* targets, float* nll) {
    QWENQ_CHECK(*rows > 0, "cpu_logits_source: no hidden states (forward runs the batch first)");
    return model.hidden_nll(hidden->data(), *rows, targets, nll);
  };
  return s;
}

#ifdef QWENQ_HAVE_CUDA
LogitsSource cuda_logits_source(QwenModelCuda& gpu, const std::string& name) {
  LogitsSource s;
  s.name = name;
  s.vocab_size = gpu.config().vocab_size;
  s.max_positions = gpu.config().max_position_embeddings;
  s.forward = [&gpu](const PackedBatch& b) { gpu.forward_hidden(b); };
  s.logits = [&gpu](int64_t r0, int64_t n, float* out) { gpu.logits_rows(r0, n, out); };
  s.nll = [&gpu](const int32_t* targets, float* nll) { return gpu.hidden_nll(targets, nll); };
  s.device_logits = [&gpu](int64_t r0, int64_t n) { return gpu.logits_device(r0, n); };
  return s;
}

namespace {

// The device halves below run on the legacy default stream: the logits they read are complete (device_logits waits
// for the source's stream), and each waits for the default stream before it returns.
void require_gpu(const LogitsSource& src, const char* fn) {
  QWENQ_CHECK(src.device_logits, fn << ": " << src.name << " is not a GPU source");
}

// `bytes` of host data in a device allocation of their own.
DeviceMemory to_device(const void* host, size_t bytes) {
  DeviceMemory d(bytes, nullptr);
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(d.get(), host, bytes, cudaMemcpyHostToDevice, nullptr));
  return d;
}

void to_host(void* host, const DeviceMemory& d) {
  QWENQ_CUDA_CHECK(cudaMemcpyAsync(host, d.get(), d.bytes(), cudaMemcpyDeviceToHost, nullptr));
}

}  // namespace

void device_kl_rows(LogitsSource& model, LogitsSource& base, int64_t r0, int64_t rows, const int32_t* targets,
                    KlRow* out) {
  require_gpu(model, "device_kl_rows");
  require_gpu(base, "device_kl_rows");
  QWENQ_CHECK(model.vocab_size == base.vocab_size, "device_kl_rows: vocabularies of " << model.vocab_size << " and "
                                                                                      << base.vocab_size << " tokens");
  if (rows == 0) return;
  const float* q = model.device_logits(r0, rows);
  const float* b = base.device_logits(r0, rows);
  const DeviceMemory dt = to_device(targets, static_cast<size_t>(rows) * sizeof(int32_t));
  DeviceMemory dout(static_cast<size_t>(rows) * sizeof(KlRow), nullptr);
  kl_rows_cuda(b, q, rows, model.vocab_size, dt.as<int32_t>(), dout.as<KlRow>(), nullptr);
  to_host(out, dout);
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

void device_kld_encode_rows(LogitsSource& src, int64_t r0, int64_t rows, const int32_t* targets, uint16_t* out,
                            float* nll) {
  require_gpu(src, "device_kld_encode_rows");
  if (rows == 0) return;
  const float* z = src.device_logits(r0, rows);
  const DeviceMemory dt = to_device(targets, static_cast<size_t>(rows) * sizeof(int32_t));
  DeviceMemory dnll(static_cast<size_t>(rows) * sizeof(float), nullptr),
      drows(static_cast<size_t>(rows * kld_row_width(src.vocab_size)) * sizeof(uint16_t), nullptr);
  kld_encode_rows_cuda(z, rows, src.vocab_size, dt.as<int32_t>(), drows.as<uint16_t>(), dnll.as<float>(), nullptr);
  to_host(out, drows);
  to_host(nll, dnll);
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

void device_kld_score_rows(LogitsSource& src, const uint16_t* base, int64_t r0, int64_t rows, const int32_t* targets,
                           KlRow* out) {
  require_gpu(src, "device_kld_score_rows");
  if (rows == 0) return;
  const float* z = src.device_logits(r0, rows);
  const DeviceMemory dt = to_device(targets, static_cast<size_t>(rows) * sizeof(int32_t));
  const DeviceMemory drows = to_device(base, static_cast<size_t>(rows * kld_row_width(src.vocab_size)) * sizeof(uint16_t));
  DeviceMemory dout(static_cast<size_t>(rows) * sizeof(KlRow), nullptr);
  kld_score_rows_cuda(drows.as<uint16_t>(), z, rows, src.vocab_size, dt.as<int32_t>(), dout.as<KlRow>(), nullptr);
  to_host(out, dout);
  QWENQ_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}
#endif

}  // namespace qwenq
