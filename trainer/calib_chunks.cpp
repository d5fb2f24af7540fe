// split_calibration and check_host_memory: see trainer/calib_chunks.h.
#include "trainer/calib_chunks.h"

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "core/progress.h"

namespace qwenq {

CalibChunks split_calibration(const std::vector<std::vector<int32_t>>& windows, int64_t max_tokens) {
  QWENQ_CHECK(max_tokens > 0, "calibration chunks of " << max_tokens << " tokens (must be positive)");
  CalibChunks c;
  for (size_t i0 = 0; i0 < windows.size();) {
    int64_t tokens = 0;
    size_t i1 = i0;
    while (i1 < windows.size() && (i1 == i0 || tokens + static_cast<int64_t>(windows[i1].size()) <= max_tokens))
      tokens += static_cast<int64_t>(windows[i1++].size());
    c.batches.push_back(PackedBatch::from_sequences(
        std::vector<std::vector<int32_t>>(windows.begin() + i0, windows.begin() + i1)));
    c.offsets.push_back(c.total_tokens);
    c.total_tokens += tokens;
    c.largest = std::max(c.largest, tokens);
    i0 = i1;
  }
  return c;
}

namespace {

uint64_t saturate(double bytes) { return bytes >= 1.8e19 ? UINT64_MAX : static_cast<uint64_t>(bytes); }

std::string shape(int64_t windows, int64_t seq_len, int64_t width, const char* what) {
  return "[" + std::to_string(windows) + " windows x " + std::to_string(seq_len) + " tokens, " + what + " " +
         std::to_string(width) + "] fp32";
}

// The parts both drivers hold: token ids, the residual stream, one chunk's block scratch.
std::vector<MemoryPart> common_parts(const QwenConfig& cfg, int64_t windows, int64_t seq_len, int64_t chunk_tokens,
                                     double* chunk) {
  const double T = static_cast<double>(windows) * static_cast<double>(seq_len);
  const int64_t C = cfg.hidden_size;
  *chunk = std::min(T, static_cast<double>(std::max(chunk_tokens, seq_len)));
  const double scratch = static_cast<double>(C + 2 * cfg.q_dim() + 2 * cfg.kv_dim() + 2 * cfg.intermediate_size);
  return {{"the calibration token ids", saturate(8.0 * T)},
          {"the residual stream " + shape(windows, seq_len, C, "hidden"), saturate(4.0 * T * C)},
          {"one chunk of " + std::to_string(static_cast<int64_t>(*chunk)) + " tokens through a block",
           saturate(4.0 * *chunk * scratch)}};
}

}  // namespace

std::vector<MemoryPart> gptq_cpu_memory_parts(const QwenConfig& cfg, int64_t windows, int64_t seq_len,
                                              int64_t chunk_tokens) {
  double chunk = 0;
  std::vector<MemoryPart> parts = common_parts(cfg, windows, seq_len, chunk_tokens, &chunk);
  const int64_t C = cfg.hidden_size;
  const double K = static_cast<double>(std::max({C, cfg.q_dim(), cfg.intermediate_size}));
  parts.push_back({"the chunk's copy of the stream", saturate(4.0 * chunk * C)});
  parts.push_back({"the widest Hessian [" + std::to_string(static_cast<int64_t>(K)) + ", " +
                       std::to_string(static_cast<int64_t>(K)) + "] fp32, twice",
                   saturate(2.0 * 4.0 * K * K)});
  if (cfg.is_moe()) {  // a MoE group's Hessians exist together: one per expert (and the shared expert)
    const double E = static_cast<double>(cfg.num_experts), Cd = static_cast<double>(C);
    const double Is = static_cast<double>(cfg.shared_expert_intermediate_size);
    const double Im = static_cast<double>(cfg.moe_intermediate_size);
    const double gate_up = (E + (Is > 0 ? 1 : 0)) * Cd * Cd, down = E * Im * Im + Is * Is;
    parts.push_back({"the experts' Hessians of one MoE group, " + std::to_string(cfg.num_experts +
                                                                                 (Is > 0 ? 1 : 0)) + " x [" +
                         std::to_string(C) + ", " + std::to_string(C) + "] fp32",
                     saturate(4.0 * std::max(gate_up, down))});
  }
  return parts;
}

std::vector<MemoryPart> awq_cpu_memory_parts(const QwenConfig& cfg, int64_t windows, int64_t seq_len,
                                             int64_t chunk_tokens) {
  double chunk = 0;
  std::vector<MemoryPart> parts = common_parts(cfg, windows, seq_len, chunk_tokens, &chunk);
  const int64_t C = cfg.hidden_size, inputs = 2 * C + cfg.q_dim() + cfg.intermediate_size;
  const double T = static_cast<double>(windows) * static_cast<double>(seq_len);
  parts.push_back({"the captured Linear inputs " + shape(windows, seq_len, inputs, "width"), saturate(4.0 * T * inputs)});
  parts.push_back({"the reference and candidate module outputs, 2 x " + shape(windows, seq_len, C, "hidden"),
                   saturate(2.0 * 4.0 * T * C)});
  if (cfg.is_moe()) {
    // Each token's k experts' down_proj inputs (and the shared expert's), the routed token lists, and one MoE layer's
    // experts in fp32 twice over: the working copies and a grid point's gate/up candidates.
    const double E = static_cast<double>(cfg.num_experts), k = static_cast<double>(cfg.experts_per_token);
    const double Im = static_cast<double>(cfg.moe_intermediate_size);
    const double Is = static_cast<double>(cfg.shared_expert_intermediate_size), Cd = static_cast<double>(C);
    parts.push_back({"the experts' down_proj inputs " + shape(windows, seq_len, cfg.experts_per_token *
                                                                                     cfg.moe_intermediate_size +
                                                                                 cfg.shared_expert_intermediate_size,
                                                              "width"),
                     saturate(4.0 * T * (k * Im + Is) + 8.0 * T * k)});
    parts.push_back({"one MoE layer's experts in fp32, working copies and candidates",
                     saturate(4.0 * (3.0 * Cd * (E * Im + Is) + 2.0 * Cd * (E * Im + Is)))});
  }
  return parts;
}

void check_host_memory(const std::string& method, const std::vector<MemoryPart>& parts, uint64_t available,
                       const std::string& available_source, const std::string& advice) {
  double total_d = 0;
  std::string list;
  for (const MemoryPart& p : parts) {
    total_d += static_cast<double>(p.bytes);
    list += (list.empty() ? "" : "; ") + p.what + ": " + format_bytes(p.bytes);
  }
  const uint64_t total = saturate(total_d);
  if (available == 0 || total <= available) return;
  QWENQ_FAIL(method << ": the calibration needs at least " << format_bytes(total) << " of host memory (" << list
                    << "), but " << format_bytes(available) << " is available (" << available_source << "): "
                    << advice);
}

}  // namespace qwenq
