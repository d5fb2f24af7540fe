#include "trainer/qwen_weights.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/files.h"
#include "core/strings.h"
#include "core/threads.h"
#include "kernels/convert.h"
#include "kernels/exp_rows.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"
#include "kernels/loss.h"
#include "quant/ggml_dot_int8.h"
#include "quant/int_dot_int8.h"
#include "quant/packed_matvec.h"

namespace qwenq {

namespace {

TensorView fetch(const Checkpoint& ckpt, const std::string& name, std::vector<int64_t> shape) {
  QWENQ_CHECK(ckpt.has(name), "tensor '" << name << "' not found in checkpoint " << ckpt.dir());
  const TensorView& t = ckpt.get(name);
  QWENQ_CHECK(t.shape == shape, ckpt.file_of(name) << ": tensor '" << name << "' has shape " << shape_str(t.shape)
                                                   << " but config.json implies " << shape_str(shape));
  QWENQ_CHECK(t.dtype == DType::BF16 || t.dtype == DType::F16 || t.dtype == DType::F32,
              ckpt.file_of(name) << ": tensor '" << name << "' has dtype " << dtype_name(t.dtype)
                                 << "; expected BF16, F16 or F32");
  return t;
}

bool skipped(const QuantConfig& q, const std::string& prefix) {
  for (const std::string& m : q.skip_modules) {
    if (prefix == m || (has_proper_suffix(prefix, m) &&
                        prefix[prefix.size() - m.size() - 1] == '.')) {
      return true;
    }
  }
  return false;
}

// A GPTQ/AWQ Linear as every packed one is held: act-order rows sorted by group once (the same ŵ; the packed
// products' grouped kernels), and with the int8 switch AWQ words repacked along K (the same ŵ) for the int8 products.
std::shared_ptr<const PackedIntLinear> packed_for_products(PackedIntLinear p) {
  p = int_linear_for_products(std::move(p));
  if (int8_activations()) p = int_linear_for_int8(std::move(p));
  return std::make_shared<const PackedIntLinear>(std::move(p));
}

// A compressed-tensors Linear whose scheme is `scheme` (null: ignored or not targeted): by what its tensors hold
// (weight_packed: packed integers; weight I8: unpacked int8; weight F8_E4M3: float8), else dense (a module the
// quantizer did not reach).
void load_ct_linear(const Checkpoint& ckpt, const CtScheme* scheme, const std::string& prefix, LinearWeight* w) {
  const std::string wname = prefix + ".weight";
  const bool packed = ckpt.has(prefix + ".weight_packed");
  const DType stored = !packed && ckpt.has(wname) ? ckpt.get(wname).dtype : DType::F32;
  if (!packed && stored != DType::I8 && stored != DType::F8_E4M3) {
    w->dense = fetch(ckpt, wname, {w->N, w->K});
    return;
  }
  QWENQ_CHECK(scheme, ckpt.file_of(packed ? prefix + ".weight_packed" : wname)
                          << ": " << prefix << " is stored quantized, but no compressed-tensors config group in "
                          << "config.json targets it (or \"ignore\" names it)");
  const CtScheme& s = *scheme;
  QWENQ_CHECK(packed == s.packed && (stored == DType::F8_E4M3) == s.weights.is_float,
              ckpt.file_of(packed ? prefix + ".weight_packed" : wname)
                  << ": " << prefix << " is stored as " << (packed ? "weight_packed" : dtype_name(stored))
                  << " but its compressed-tensors scheme \"" << s.name << "\" says "
                  << (s.weights.is_float ? "float" : "int") << s.weights.bits << (s.packed ? ", packed" : ", unpacked"));
  if (s.weights.is_float) {
    w->fp8 = std::make_shared<Fp8Linear>(read_ct_fp8_linear(ckpt, prefix, s.weights, w->N, w->K));
    return;
  }
  CtIntLinear c = packed ? read_ct_packed_linear(ckpt, prefix, s.weights, w->N, w->K)
                         : read_ct_int8_linear(ckpt, prefix, s.weights, w->N, w->K);
  if (!c.scales_f32.empty()) {
    // GPTQ v2 holds fp16 scales; this Linear's are not all exact there, so it is kept as its exact fp32 ŵ (said
    // once per process: a checkpoint with F32 scales has many such Linears).
    static std::atomic<bool> said{false};
    if (!said.exchange(true)) {
      std::fprintf(stderr, "note: %s (and maybe other Linears): compressed-tensors scales that fp16 cannot hold "
                   "exactly; such Linears are kept as fp32 weights (4 bytes per weight)\n", prefix.c_str());
    }
    *w = LinearWeight::from_fp32(dequantize_ct_int_linear(c), w->N, w->K);
    return;
  }
  w->packed = packed_for_products(std::move(c.packed));
}

}  // namespace

LinearWeight load_linear(const Checkpoint& ckpt, const QuantConfig& q, const std::string& prefix, int64_t N, int64_t K) {
  LinearWeight w;
  w.N = N;
  w.K = K;
  const bool int_packed = (q.method == QuantConfig::Method::Gptq || q.method == QuantConfig::Method::Awq) &&
                          ckpt.has(prefix + ".qweight");
  if (int_packed && !skipped(q, prefix)) {
    int bits = q.bits;
    int64_t group = q.group_size;
    q.gptq_params_for(prefix, &bits, &group);  // GPTQModel's per-module overrides
    w.packed = packed_for_products(read_int_linear(ckpt, prefix, q.layout, bits, group, K, N));
  } else if (q.method == QuantConfig::Method::CompressedTensors) {
    load_ct_linear(ckpt, q.ct_scheme_for(prefix), prefix, &w);
  } else if (q.method == QuantConfig::Method::Fp8 && has_fp8_linear(ckpt, prefix) && !skipped(q, prefix)) {
    w.fp8 = std::make_shared<Fp8Linear>(read_fp8_linear(ckpt, prefix, q.block_n, q.block_k, N, K));
  } else if (q.method == QuantConfig::Method::Bnb4 && has_nf4_linear(ckpt, prefix) && !skipped(q, prefix)) {
    auto nf4 = std::make_shared<Nf4Linear>(read_nf4_linear(ckpt, prefix));
    QWENQ_CHECK(nf4->shape == std::vector<int64_t>({N, K}),
                ckpt.file_of(prefix + ".weight") << ": 4-bit tensor '" << prefix << ".weight' has shape "
                                                 << shape_str(nf4->shape) << " but config.json implies "
                                                 << shape_str({N, K}));
    w.nf4 = std::move(nf4);
  } else {
    w.dense = fetch(ckpt, prefix + ".weight", {N, K});
  }
  return w;
}

std::string moe_expert_path(int64_t expert) {
  return expert < 0 ? std::string("mlp.shared_expert.") : "mlp.experts." + std::to_string(expert) + ".";
}

int64_t count_layer_linears(const QwenConfig& c) {
  int64_t n = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) n += static_cast<int64_t>(layer_linears(c, l).size());
  return n;
}

std::vector<LayerLinear> layer_linears(const QwenConfig& c, int64_t l) {
  const int64_t C = c.hidden_size, I = c.intermediate_size;
  std::vector<LayerLinear> out = {{"self_attn.q_proj", c.q_dim(), C, 0},
                                  {"self_attn.k_proj", c.kv_dim(), C, 1},
                                  {"self_attn.v_proj", c.kv_dim(), C, 2},
                                  {"self_attn.o_proj", C, c.q_dim(), 3}};
  if (!c.is_moe_layer(l)) {
    out.push_back({"mlp.gate_proj", I, C, 4});
    out.push_back({"mlp.up_proj", I, C, 5});
    out.push_back({"mlp.down_proj", C, I, 6});
    return out;
  }
  auto expert = [&](const std::string& p, int64_t width) {
    out.push_back({p + "gate_proj", width, C, -1});
    out.push_back({p + "up_proj", width, C, -1});
    out.push_back({p + "down_proj", C, width, -1});
  };
  out.push_back({"mlp.gate", c.num_experts, C, -1});
  for (int64_t e = 0; e < c.num_experts; ++e) expert(moe_expert_path(e), c.moe_intermediate_size);
  if (c.shared_expert_intermediate_size > 0) {
    expert(moe_expert_path(-1), c.shared_expert_intermediate_size);
    out.push_back({"mlp.shared_expert_gate", 1, C, -1});
  }
  return out;
}

namespace {
std::atomic<bool> g_int8_activations{false};
std::atomic<bool> g_cpu_bf16_products{false};
}  // namespace

void set_cpu_bf16_products(bool on) { g_cpu_bf16_products.store(on); }
bool cpu_bf16_products() { return g_cpu_bf16_products.load(); }
bool cpu_bf16_attention(int64_t rows) { return cpu_bf16_products() && rows >= kCpuBf16MinRows; }

namespace {
// y = x Wᵀ + b on the CPU, on bf16 operands with the switch above from kCpuBf16MinRows rows on (kernels/gemm_bf16.h's
// choice).
void forward_product(const float* x, int64_t M, int64_t K, const void* w, DType wt, int64_t N, const void* bias,
                     DType bt, float* y) {
  linear_forward_cpu(cpu_bf16_products() && M >= kCpuBf16MinRows, x, M, K, w, wt, N, bias, bt, y);
}
}  // namespace

void set_int8_activations(bool on) { g_int8_activations.store(on); }
bool int8_activations() { return g_int8_activations.load(); }
bool uses_int8_activations(const GgmlLinear* q) {
  return q != nullptr && int8_activations() && ggml_int8_product_supported(q->type);
}
bool uses_int8_activations(const PackedIntLinear* p) {
  return p != nullptr && int8_activations() && int_int8_product_supported(*p);
}

Int8Coverage int8_coverage(const QwenWeights& w) {
  Int8Coverage c;
  const auto count = [&c](const LinearWeight& lw) {
    if (lw.N == 0) return;
    ++c.linears;
    if (uses_int8_activations(lw.ggml.get()) || uses_int8_activations(lw.packed.get())) ++c.int8;
  };
  for (const QwenLayerWeights& L : w.layers) {
    for (int t = 0; t < 7; ++t) count(layer_linear(L, t));
    count(L.moe.router);
    for (const MoeExpertWeights& e : L.moe.experts)
      for (int which = 0; which < 3; ++which) count(expert_member(e, which));
    for (int which = 0; which < 3; ++which) count(expert_member(L.moe.shared, which));
    count(L.moe.shared_gate);
  }
  c.lm_head = uses_int8_activations(w.lm_head_q.get());
  return c;
}

void table_row_f32(const TensorView& view, const GgmlLinear* q, int64_t r, float* out) {
  if (q) {
    dequantize_ggml_row(q->type, q->data + static_cast<size_t>(r) * ggml_row_bytes(q->type, q->K), q->K, out);
    return;
  }
  const int64_t C = view.shape.at(1);
  to_f32(view.dtype, static_cast<const char*>(view.data) + static_cast<size_t>(r * C) * dtype_size(view.dtype), out,
         static_cast<size_t>(C));
}

namespace {

// The GGUF output table q [V, C] in blocks of block_rows rows (0: kTableBlockFloats / C, at least 64), each dequantized
// once: fn(v0, n, y) gets y [M, n] = hidden[M, C] · rows [v0, v0 + n)ᵀ.
void for_each_table_block(const GgmlLinear& q, const float* hidden, int64_t M, int64_t block_rows,
                          const std::function<void(int64_t, int64_t, const float*)>& fn) {
  const int64_t V = q.N, C = q.K;
  const int64_t nb = std::min(V, block_rows > 0 ? block_rows : std::max<int64_t>(64, kTableBlockFloats / C));
  std::vector<float> y(static_cast<size_t>(M * nb));
  if (uses_int8_activations(&q)) {  // the hidden rows quantized once, each block's rows multiplied from their bytes
    GgmlInt8Rows a;
    quantize_int8_rows(ggml_int8_activation_type(q.type), hidden, M, C, &a);
    for (int64_t v0 = 0; v0 < V; v0 += nb) {
      const int64_t n = std::min(nb, V - v0);
      ggml_linear_matvec_int8(GgmlLinear{q.type, q.data + v0 * ggml_row_bytes(q.type, C), n, C, 0}, a, y.data());
      fn(v0, n, y.data());
    }
    return;
  }
  std::vector<float> W(static_cast<size_t>(nb * C));
  for (int64_t v0 = 0; v0 < V; v0 += nb) {
    const int64_t n = std::min(nb, V - v0);
    parallel_for(n, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) table_row_f32(TensorView{}, &q, v0 + r, W.data() + r * C);
    });
    linear_forward_ref(hidden, M, C, W.data(), DType::F32, n, nullptr, DType::F32, y.data());
    fn(v0, n, y.data());
  }
}

}  // namespace

void lm_head_forward(const QwenWeights& w, const float* hidden, int64_t M, float* logits, int64_t block_rows) {
  if (!w.lm_head_q) {
    const int64_t V = w.lm_head.shape.at(0), C = w.lm_head.shape.at(1);
    forward_product(hidden, M, C, w.lm_head.data, w.lm_head.dtype, V, nullptr, DType::F32, logits);
    return;
  }
  if (M == 0) return;
  if (uses_int8_activations(w.lm_head_q.get())) {
    ggml_linear_matvec_int8(*w.lm_head_q, hidden, M, logits);
    return;
  }
  if (block_rows == 0 && M <= kGgmlMatvecMaxRows) {  // decode: the table's rows multiplied from their blocks
    ggml_linear_matvec(*w.lm_head_q, hidden, M, logits);
    return;
  }
  const int64_t V = w.lm_head_q->N;
  for_each_table_block(*w.lm_head_q, hidden, M, block_rows, [&](int64_t v0, int64_t n, const float* y) {
    for (int64_t m = 0; m < M; ++m) std::copy(y + m * n, y + (m + 1) * n, logits + m * V + v0);
  });
}

int64_t lm_head_nll(const QwenWeights& w, const float* hidden, int64_t rows, const int32_t* targets, float* nll,
                    int64_t block_rows) {
  const int64_t V = w.lm_head.shape.at(0), C = w.lm_head.shape.at(1);
  if (!w.lm_head_q) {
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(rows, logits_block_rows(V)));
    std::vector<float> lg(static_cast<size_t>(chunk * V));
    int64_t counted = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      lm_head_forward(w, hidden + r0 * C, n, lg.data());
      counted += cross_entropy_forward_ref(lg.data(), n, V, targets + r0, nll + r0);
    }
    return counted;
  }
  const int64_t counted = cross_entropy_count_targets("lm_head_nll", rows, V, targets);
  if (rows == 0) return 0;
  std::vector<float> mx(static_cast<size_t>(rows), -INFINITY), target_logit(static_cast<size_t>(rows), 0.f);
  std::vector<double> sum(static_cast<size_t>(rows), 0.0);
  for_each_table_block(*w.lm_head_q, hidden, rows, block_rows, [&](int64_t v0, int64_t n, const float* y) {
    parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* l = y + r * n;
        float m = mx[r];
        for (int64_t v = 0; v < n; ++v) m = std::max(m, l[v]);
        if (m > mx[r] && sum[r] > 0) sum[r] *= std::exp(static_cast<double>(mx[r]) - static_cast<double>(m));
        mx[r] = m;
        sum[r] += exp_sum_row(l, n, m);  // kernels/exp_rows.h: the dense path's exponentials and sum
        const int32_t t = targets[r];
        if (t >= v0 && t < v0 + n) target_logit[r] = l[t - v0];
      }
    });
  });
  for (int64_t r = 0; r < rows; ++r)
    nll[r] = targets[r] == kIgnoreIndex
                 ? 0.f
                 : static_cast<float>(static_cast<double>(mx[r]) + std::log(sum[r]) - static_cast<double>(target_logit[r]));
  return counted;
}

void require_dense_tables(const QwenWeights& w, const std::string& what) {
  QWENQ_CHECK(!w.embed_q && !w.lm_head_q, what << " reads the embedding and output tables in place, and this GGUF "
                                                  "model holds them quantized: GGUF models run eval, generate and "
                                                  "imatrix on the CPU only (qwen-quant dequantize turns one into a "
                                                  "directory)");
}

namespace {

// This thread's buffer for one dequantized Linear, grown (never shrunk) to the largest met: the same bytes the
// memory plan's dequant workspace counts, kept instead of mapped afresh for every product.
// Returns w's values dequantized into it.
const float* dequantized_in_scratch(const LinearWeight& w) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local int64_t capacity = 0;
  if (capacity < w.N * w.K) {
    buf.reset();
    buf.reset(new float[static_cast<size_t>(w.N * w.K)]);
    capacity = w.N * w.K;
  }
  w.dequantize_into(buf.get());
  return buf.get();
}

// The packed product (quant/packed_matvec.h) of w with M rows, forward (y = x·Ŵᵀ) or transposed (dx = dy·Ŵ),
// when M is within the format's measured row limit; false otherwise (dense weights, GGUF's float types: F32, F16
// and BF16 keep the dense path, so that an F32 GGUF computes exactly what its source directory does).
bool packed_product(const LinearWeight& w, const float* in, int64_t M, float* out, bool transposed) {
  if (!transposed && uses_int8_activations(w.ggml.get())) {
    ggml_linear_matvec_int8(*w.ggml, in, M, out);
    return true;
  }
  if (!transposed && uses_int8_activations(w.packed.get())) {
    int_linear_matvec_int8(*w.packed, in, M, out);
    return true;
  }
  int64_t max_rows = 0;
  if (w.packed) {
    max_rows = transposed ? int_linear_matvec_t_max_rows(*w.packed) : int_linear_matvec_max_rows(*w.packed);
  } else if (w.nf4) {
    max_rows = transposed ? kNf4MatvecTMaxRows : kNf4MatvecMaxRows;
  } else if (w.ggml && !ggml_type_is_float(w.ggml->type)) {
    max_rows = transposed ? kGgmlMatvecTMaxRows : kGgmlMatvecMaxRows;
  } else if (w.fp8) {
    max_rows = transposed ? kFp8MatvecTMaxRows : kFp8MatvecMaxRows;
  }
  if (M > max_rows) return false;
  if (w.packed) {
    (transposed ? int_linear_matvec_t : int_linear_matvec)(*w.packed, in, M, out);
  } else if (w.nf4) {
    (transposed ? nf4_linear_matvec_t : nf4_linear_matvec)(w.nf4->q, w.N, w.K, in, M, out);
  } else if (w.fp8) {
    (transposed ? fp8_linear_matvec_t : fp8_linear_matvec)(*w.fp8, in, M, out);
  } else {
    (transposed ? ggml_linear_matvec_t : ggml_linear_matvec)(*w.ggml, in, M, out);
  }
  return true;
}

}  // namespace

void apply_linear(const LinearWeight& w, const float* x, int64_t M, const TensorView& bias, float* y) {
  if (w.is_dense()) {
    forward_product(x, M, w.K, w.dense.data, w.dense.dtype, w.N, bias.data, bias.dtype, y);
    return;
  }
  const bool int8 = uses_int8_activations(w.ggml.get()) || uses_int8_activations(w.packed.get());
  if (!int8 && cpu_bf16_products() && M >= kCpuBf16Q4MinRows) {
    const Q4Transient q4 = q4_linear_form(w);
    if (q4.has_form()) {
      qgemm_int4_forward_bf16(q4.view, x, M, bias.data, bias.dtype, y);
      return;
    }
  }
  if (packed_product(w, x, M, y, false)) {  // decode and small batches: no fp32 copy of the weight
    if (bias.data != nullptr) add_bias_rows_ref(y, M, w.N, bias.data, bias.dtype);
    return;
  }
  forward_product(x, M, w.K, dequantized_in_scratch(w), DType::F32, w.N, bias.data, bias.dtype, y);
}

Q4Transient q4_linear_form(const LinearWeight& w) {
  if (w.packed) return q4_transient_int_linear(*w.packed);
  if (w.nf4) return q4_transient_nf4(w.nf4->q, w.N, w.K);
  return {};
}

void apply_linear_backward_input(const LinearWeight& w, const float* dy, int64_t M, float* dx) {
  if (w.is_dense()) {
    linear_backward_input_ref(dy, M, w.N, w.dense.data, w.dense.dtype, w.K, dx);
    return;
  }
  if (packed_product(w, dy, M, dx, true)) return;  // a few rows (an MoE expert's tokens)
  linear_backward_input_ref(dy, M, w.N, dequantized_in_scratch(w), DType::F32, w.K, dx);
}

LinearWeight LinearWeight::from_fp32(std::vector<float> W, int64_t N, int64_t K) {
  QWENQ_CHECK(static_cast<int64_t>(W.size()) == N * K, "LinearWeight::from_fp32: " << W.size() << " values for [" << N << ", " << K << "]");
  LinearWeight w;
  w.N = N;
  w.K = K;
  auto owned = std::make_shared<const std::vector<float>>(std::move(W));
  w.dense.data = owned->data();
  w.dense.dtype = DType::F32;
  w.dense.shape = {N, K};
  w.owned = std::move(owned);
  return w;
}

std::vector<float> LinearWeight::dequantize() const {
  if (packed) return dequantize_int_linear(*packed);
  if (nf4) return nf4_dequantize(nf4->q);
  if (ggml) return dequantize_ggml_linear(*ggml);
  if (fp8) {
    std::vector<float> W(static_cast<size_t>(N * K));
    dequantize_fp8_linear_into(*fp8, W.data());
    return W;
  }
  return tensor_to_f32(dense);
}

void LinearWeight::dequantize_into(float* W) const {
  if (packed) {
    dequantize_int_linear_into(*packed, W);
  } else if (nf4) {
    nf4_dequantize_into(nf4->q, W);
  } else if (ggml) {
    dequantize_ggml_linear_into(*ggml, W);
  } else if (fp8) {
    dequantize_fp8_linear_into(*fp8, W);
  } else {
    const std::vector<float> v = tensor_to_f32(dense);
    std::copy(v.begin(), v.end(), W);
  }
}

namespace {

MoeExpertWeights bind_expert(const Checkpoint& ckpt, const QuantConfig& quant, const std::string& p, int64_t C,
                             int64_t I) {
  MoeExpertWeights e;
  e.gate = load_linear(ckpt, quant, p + "gate_proj", I, C);
  e.up = load_linear(ckpt, quant, p + "up_proj", I, C);
  e.down = load_linear(ckpt, quant, p + "down_proj", C, I);
  return e;
}

// "model.layers.<l>." (p) of a MoE layer: mlp.gate (the router), mlp.experts.<e>.{gate,up,down}_proj, and qwen2_moe's
// mlp.shared_expert.{gate,up,down}_proj and mlp.shared_expert_gate.
MoeWeights bind_moe(const QwenConfig& c, const QuantConfig& quant, const Checkpoint& ckpt, const std::string& p) {
  const int64_t C = c.hidden_size;
  MoeWeights m;
  m.router = load_linear(ckpt, quant, p + "mlp.gate", c.num_experts, C);
  m.experts.reserve(c.num_experts);
  for (int64_t e = 0; e < c.num_experts; ++e)
    m.experts.push_back(bind_expert(ckpt, quant, p + moe_expert_path(e), C, c.moe_intermediate_size));
  if (c.shared_expert_intermediate_size > 0) {
    m.shared = bind_expert(ckpt, quant, p + moe_expert_path(-1), C, c.shared_expert_intermediate_size);
    m.shared_gate = load_linear(ckpt, quant, p + "mlp.shared_expert_gate", 1, C);
  }
  return m;
}

}  // namespace

bool is_sequence_classifier(const Checkpoint& ckpt) { return ckpt.has("score.weight") && !ckpt.has("lm_head.weight"); }

ModelHead checkpoint_head(const std::string& dir) {
  if (!dir_exists(dir)) return ModelHead::kLanguageModel;  // a GGUF file (the caller's loader names any problem)
  return is_sequence_classifier(Checkpoint(dir)) ? ModelHead::kSequenceScore : ModelHead::kLanguageModel;
}

QwenWeights bind_qwen_weights(const QwenConfig& c, const QuantConfig& quant, const Checkpoint& ckpt, ModelHead head) {
  const int64_t C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  QwenWeights w;
  w.embed = fetch(ckpt, "model.embed_tokens.weight", {V, C});
  w.final_norm = fetch(ckpt, "model.norm.weight", {C});
  const bool classifier = is_sequence_classifier(ckpt);
  if (head == ModelHead::kSequenceScore) {
    QWENQ_CHECK(classifier, ckpt.dir() << ": " << (ckpt.has("lm_head.weight") ? "holds lm_head.weight" : "has no score.weight")
                                       << ", so it is a causal language model, not a sequence classifier "
                                          "(Qwen2ForSequenceClassification: a decoder and score.weight), which a "
                                          "reward model is");
    const std::vector<int64_t> shape = ckpt.get("score.weight").shape;
    QWENQ_CHECK(shape.size() == 2 && shape[0] >= 1 && shape[1] == C,
                ckpt.file_of("score.weight") << ": the score head has shape " << shape_str(shape)
                                             << "; a sequence classifier's is [num_labels, hidden_size " << C << "]");
    w.score = fetch(ckpt, "score.weight", shape);
    if (c.tie_word_embeddings) w.lm_head = w.embed;
  } else if (c.tie_word_embeddings || classifier) {
    QWENQ_CHECK(!classifier, ckpt.file_of("score.weight")
                                 << ": a sequence classifier (score.weight and no lm_head.weight, as a reward model "
                                    "is): it scores whole sequences and has no next-token logits; score pairs with "
                                    "`qwen-qlora eval --objective reward --model "
                                 << ckpt.dir() << "` or reward GRPO with `train --objective grpo --reward model="
                                 << ckpt.dir() << "`");
    w.lm_head = w.embed;
  } else {
    QWENQ_CHECK(!ckpt.has("lm_head.weight_packed") && !ckpt.has("lm_head.qweight"),
                ckpt.file_of(ckpt.has("lm_head.qweight") ? "lm_head.qweight" : "lm_head.weight_packed")
                    << ": the output layer lm_head is quantized, which qwenq does not read (it keeps lm_head dense, "
                       "as the quantizers do by default)");
    w.lm_head = fetch(ckpt, "lm_head.weight", {V, C});
  }
  w.layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    QwenLayerWeights& L = w.layers[l];
    L.input_norm = fetch(ckpt, p + "input_layernorm.weight", {C});
    L.q = load_linear(ckpt, quant, p + "self_attn.q_proj", c.q_dim(), C);
    L.k = load_linear(ckpt, quant, p + "self_attn.k_proj", c.kv_dim(), C);
    L.v = load_linear(ckpt, quant, p + "self_attn.v_proj", c.kv_dim(), C);
    L.o = load_linear(ckpt, quant, p + "self_attn.o_proj", C, c.q_dim());
    if (c.qkv_bias) {
      L.q_bias = fetch(ckpt, p + "self_attn.q_proj.bias", {c.q_dim()});
      L.k_bias = fetch(ckpt, p + "self_attn.k_proj.bias", {c.kv_dim()});
      L.v_bias = fetch(ckpt, p + "self_attn.v_proj.bias", {c.kv_dim()});
    }
    if (c.qk_norm) {
      L.q_norm = fetch(ckpt, p + "self_attn.q_norm.weight", {c.head_dim});
      L.k_norm = fetch(ckpt, p + "self_attn.k_norm.weight", {c.head_dim});
    }
    L.post_norm = fetch(ckpt, p + "post_attention_layernorm.weight", {C});
    if (c.is_moe_layer(l)) {
      L.moe = bind_moe(c, quant, ckpt, p);
      continue;
    }
    L.gate = load_linear(ckpt, quant, p + "mlp.gate_proj", I, C);
    L.up = load_linear(ckpt, quant, p + "mlp.up_proj", I, C);
    L.down = load_linear(ckpt, quant, p + "mlp.down_proj", C, I);
  }
  return w;
}

}  // namespace qwenq
