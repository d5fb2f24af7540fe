#include "trainer/quantize_model.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "kernels/device_allocator.h"
#include "lora/loftq.h"
#include "lora/pissa.h"
#include "lora/lora_adapter.h"
#include "lora/peft_io.h"
#include "quant/compressed_tensors.h"
#include "quant/format/nf4_pack.h"
#include "quant/fp8_quantize.h"
#include "quant/grid.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "quant/quantize_step.h"
#include "trainer/adapter_init.h"
#include "trainer/quant_config.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_weights.h"
#include "trainer/quantize_output.h"
#include "trainer/quantize_model_cuda.h"

namespace qwenq {

namespace {

// The RTN grid of an [N, K] Linear, scales and zeros to be filled.
GroupGrid rtn_grid(const QuantizeOptions& o, int64_t N, int64_t K) {
  GroupGrid grid;
  grid.bits = o.bits;
  grid.group = o.group_size == -1 ? K : o.group_size;
  grid.K = K;
  grid.N = N;
  grid.scale.resize(grid.num_groups() * N);
  grid.zero.resize(grid.num_groups() * N);
  return grid;
}

// An FP8 Linear's tensors: weight F8_E4M3 [N, K] and its F32 scales, compressed-tensors' weight_scale [N, 1] (per
// channel) or the block-wise format's weight_scale_inv [ceil(N / B), ceil(K / B)].
void add_fp8_linear(ShardedWriter& shards, const std::string& prefix, Fp8Blocks q, bool block) {
  const int64_t rows = (q.N + q.block_n - 1) / q.block_n, cols = (q.K + q.block_k - 1) / q.block_k;
  std::vector<uint8_t> scale = bytes_of(q.scale);
  shards.current().add_owned(prefix + ".weight", DType::F8_E4M3, {q.N, q.K}, std::move(q.codes));
  shards.note_added(prefix + ".weight");
  const std::string sname = prefix + (block ? ".weight_scale_inv" : ".weight_scale");
  shards.current().add_owned(sname, DType::F32, {rows, cols}, std::move(scale));
  shards.note_added(sname);
}

// q(X): the values the stored form of X stands for, with this run's quantizer (the same calls as below).
std::vector<float> round_trip(const QuantizeOptions& o, const std::vector<float>& X, int64_t N, int64_t K) {
  if (o.method == QuantizeOptions::Method::Rtn) {
    const GridRule rule = o.layout == IntLayout::AwqGemm ? GridRule::Awq : GridRule::Gptq;
    GroupGrid grid = rtn_grid(o, N, K);
    std::vector<uint8_t> codes(N * K);
    rtn_quantize_ref(X.data(), N, K, o.bits, o.group_size, o.sym, rule, grid.scale.data(), grid.zero.data(),
                     codes.data());
    return dequantize_codes(codes.data(), grid);
  }
  Nf4Options no;
  no.fp4 = o.method == QuantizeOptions::Method::Fp4;
  no.blocksize = o.blocksize;
  no.double_quant = o.double_quant;
  std::vector<uint8_t> packed(nf4_packed_bytes(N * K));
  std::vector<float> absmax((N * K + no.blocksize - 1) / no.blocksize);
  nf4_quantize_blocks(X.data(), N * K, no.blocksize, no.fp4, packed.data(), absmax.data());
  return nf4_dequantize(nf4_from_blocks(no, N * K, std::move(packed), std::move(absmax)));
}

}  // namespace

std::string quantize_gpu_refusal(const QuantizeOptions& o) {
  if (o.method == QuantizeOptions::Method::Fp8) return "fp8 quantizes on the CPU";
  if (check_quantizable_source(o.model_dir).method != QuantConfig::Method::None) {
    return o.model_dir + " is an FP8 model, whose weights are decoded on the CPU";
  }
  if (o.loftq.r > 0 && o.loftq_iters > 1) {
    return "--loftq-iter " + std::to_string(o.loftq_iters) + " re-quantizes W - L R on the CPU at each iteration";
  }
  if (o.pissa.r > 0) return "--pissa-rank quantizes the residual W - s*B*A, made on the CPU";
  return "";
}

QuantizeReport quantize_model(const QuantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  // An FP8 source: each Linear is read as its fp32 ŵ, and its scale tensors are dropped with it.
  const QuantConfig source_quant = check_quantizable_source(o.model_dir);
  const bool fp8_source = source_quant.method != QuantConfig::Method::None;
  const QwenConfig cfg = load_qwen_config(o.model_dir);
  if (o.method == QuantizeOptions::Method::Rtn) check_int_options(o);
  QWENQ_CHECK(!fp8_source || o.device == Device::Cpu,
              o.model_dir << " is an FP8 model: its weights are decoded on the CPU; quantize it with --device cpu, or "
                             "`qwen-quant dequantize` it first");
  // A MoE model's routers stay unquantized; quantization_config must say so (checked now, written at the end).
  nlohmann::ordered_json moe_lists = nlohmann::ordered_json::object();
  QWENQ_CHECK(o.method != QuantizeOptions::Method::Fp8 || o.fp8_block >= 0, "fp8: --block must be 0 or positive");
  QWENQ_CHECK(o.method != QuantizeOptions::Method::Fp8 || (o.device == Device::Cpu && o.loftq.r == 0 && o.pissa.r == 0),
              "fp8 runs on the CPU (--device cpu) and without LoftQ or PiSSA (an 8-bit base needs no correction)");
  QWENQ_CHECK(o.pissa.r <= 0 || o.device == Device::Cpu,
              "--pissa-rank runs on the CPU (the residual W - s*B*A is made there): drop --device cuda");
  add_moe_module_lists(moe_lists, cfg,
                       o.method == QuantizeOptions::Method::Fp8   ? (o.fp8_block ? MoeListFor::Fp8Block : MoeListFor::Ct)
                       : o.method != QuantizeOptions::Method::Rtn ? MoeListFor::Bnb
                                                                  : moe_list_for(o));
  Checkpoint ckpt(o.model_dir);
  const std::vector<std::string> names = ckpt.names();
  const int64_t I = cfg.intermediate_size, I2 = padded_intermediate(o, I);
  // The shape a Linear is written with: MLP shapes padded along the intermediate dimension when asked.
  auto out_shape = [&](const std::string& name, int64_t N, int64_t K) {
    const bool mlp_in = name.find("mlp.gate_proj") != std::string::npos || name.find("mlp.up_proj") != std::string::npos;
    const bool mlp_out = name.find("mlp.down_proj") != std::string::npos;
    return std::make_pair(mlp_in && N == I ? I2 : N, mlp_out && K == I ? I2 : K);
  };
  // Refuse awkward shapes before writing anything.
  std::vector<const TensorView*> linears;  // in the order they are written (the GPU uploads the next one early)
  // The original weights' dtype (an FP8 model's: its embedding's, what it computes in), for NF4's quant state.
  DType weight_dtype = fp8_source && ckpt.has("model.embed_tokens.weight") ? ckpt.get("model.embed_tokens.weight").dtype
                                                                           : DType::BF16;
  for (const auto& name : names) {
    if (!std::regex_match(name, kDecoderLinearRe)) continue;
    const TensorView& t = ckpt.get(name);
    const auto [N2, K2] = out_shape(name, t.shape[0], t.shape[1]);
    check_layout_fits(o, ckpt.file_of(name) + ": " + name, N2, K2);
    if (!fp8_source) weight_dtype = t.dtype;
    linears.push_back(&t);
  }
  const int64_t n_linear = static_cast<int64_t>(linears.size());
  QWENQ_CHECK(n_linear > 0, o.model_dir << ": no decoder Linear weights (model.layers.N.*_proj.weight) found");
#ifdef QWENQ_HAVE_CUDA
  std::unique_ptr<QuantizeModelCuda> gpu;
  if (o.device == Device::Cuda) gpu = std::make_unique<QuantizeModelCuda>(o);
#else
  QWENQ_CHECK(o.device == Device::Cpu, "quantize: this build has no CUDA backend; use the CPU");
#endif
  // LoftQ: the adapter it writes, shaped for the model as written (padded MLP included).
  // One iteration is the one-shot step on the stored base: computed after the quantization, from the staged output
  // (write_loftq_adapter, as GPTQ does), whatever device quantized. More iterations change what is quantized, so
  // they run inline, on the CPU's copy of W.
  const bool loftq = o.loftq.r > 0, loftq_inline = loftq && o.loftq_iters > 1;
  QWENQ_CHECK(!loftq_inline || o.device == Device::Cpu,
              "--loftq-iter " << o.loftq_iters << " runs on the CPU (each iteration re-quantizes W - L R there): "
                              << "drop --device cuda, or use one iteration");
  std::unique_ptr<LoraAdapter> loftq_adapter = loftq_adapter_for(o, cfg, I2);
  double loftq_plain2 = 0, loftq_err2 = 0;
  // PiSSA: each targeted Linear's principal part goes to the adapter and the residual is quantized (CPU).
  std::unique_ptr<LoraAdapter> pissa_adapter = pissa_adapter_for(o, cfg, I2);
  double pissa_plain2 = 0, pissa_err2 = 0, pissa_w2 = 0, pissa_principal2 = 0;

  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  set_int_output(shards, o);
  QuantizeReport rep;
  Progress bar("quantize", n_linear, "layers", o.quiet);
  // With the GPU (or host_overlap), the host half of each Linear (packing, double quantization, adding it to the
  // shard, writing a full shard) runs on a helper thread while the next Linear is uploaded and quantized. One Linear
  // is in flight, and everything reaches the writer in file order (a pass-through tensor waits for the Linear
  // before it), so the bytes are the sequential ones. host_half is declared after everything the helper touches,
  // so unwinding waits for it before those go. On the CPU alone the host half runs inline: the next Linear's
  // conversion and codes keep every thread busy already, and a second thread team only oversubscribes the cores.
  auto linear_done = [&](const std::string& prefix, int64_t params) {  // in the host half, after the Linear's tensors
    ++rep.linears;
    rep.params_quantized += params;
    bar.update(rep.linears, prefix);
    shards.maybe_flush();
  };
  const bool overlap = o.host_overlap || o.device == Device::Cuda;
  std::future<void> host_half;
  auto join_host_half = [&] {
    if (host_half.valid()) host_half.get();  // rethrows the helper's error
  };
  auto hand_over = [&](std::function<void()> work) {
    join_host_half();
    if (!overlap) return work();
    host_half = std::async(std::launch::async, std::move(work));  // parallel_for keeps --threads (core/threads.h)
  };
  int64_t li = 0;  // the Linear being quantized (rep.linears counts those handed to the writer)
  for (const auto& name : names) {
    const TensorView& t = ckpt.get(name);
    if (is_source_scale(name)) continue;  // read with its FP8 weight
    if (!std::regex_match(name, kDecoderLinearRe)) {
      join_host_half();
      shards.add_view(name, t);  // pass-through, straight from the map
      shards.maybe_flush();
      continue;
    }
    const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
    const std::pair<int64_t, int64_t> shape = out_shape(name, t.shape[0], t.shape[1]);
    const int64_t N = shape.first, K = shape.second;
    [[maybe_unused]] const TensorView* next = li + 1 < n_linear ? linears[li + 1] : nullptr;  // the GPU's prefetch
    ++li;
    // A refusal of this Linear's weights (a non-finite value) names its shard file and tensor; a device out of
    // memory keeps its own report.
    const auto named = [&](const auto& step) {
      try {
        step();
      } catch (const OutOfMemoryError&) {
        throw;
      } catch (const Error& e) {
        throw Error(ckpt.file_of(name) + ": " + name + ": " + e.what());
      }
    };
    std::vector<float> W;  // the CPU's fp32 copy; the GPU converts on the device
#ifdef QWENQ_HAVE_CUDA
    if (!gpu)
#endif
    {
      named([&] { W = source_linear_f32(ckpt, source_quant, prefix, t, N, K); });  // converted and padded
      release_mapped_pages(t.data, t.nbytes());
      const auto quantizer = [&](const std::vector<float>& X) { return round_trip(o, X, N, K); };
      if (LoraWeights* lw = loftq_inline ? adapter_weights_for(loftq_adapter.get(), name) : nullptr) {
        named([&] {
          const std::string what = "loftq: " + prefix;
          LoftqIterResult lq =
              loftq_iterate(W, N, K, o.loftq.r, loftq_adapter->uniform_scaling(), o.loftq_iters, quantizer, {}, what.c_str());
          lw->A = std::move(lq.factors.A);
          lw->B = std::move(lq.factors.B);
          loftq_plain2 += lq.plain_error * lq.plain_error;
          loftq_err2 += lq.factors.corrected_error * lq.factors.corrected_error;
          W = std::move(lq.to_quantize);  // quantized below into the codes q(X) stands for
        });
      }
      if (LoraWeights* pw = adapter_weights_for(pissa_adapter.get(), name)) {
        named([&] {
          const std::string what = "pissa: " + prefix;
          PissaSplit ps = pissa_split(W, N, K, o.pissa.r, pissa_adapter->uniform_scaling(), quantizer, {}, what.c_str());
          pw->A = std::move(ps.A);
          pw->B = std::move(ps.B);
          pissa_plain2 += ps.plain_error * ps.plain_error;
          pissa_err2 += ps.residual_error * ps.residual_error;
          pissa_w2 += ps.weight_sq;
          pissa_principal2 += ps.principal_sq;
          W = std::move(ps.residual);  // quantized below: the stored base is q(W_res)
        });
      }
    }
    if (o.method == QuantizeOptions::Method::Fp8) {
      Fp8Blocks q;
      const int64_t bn = o.fp8_block ? o.fp8_block : 1, bk = o.fp8_block ? o.fp8_block : K;  // block, or channel
      named([&] { q = quantize_fp8_blocks(W.data(), N, K, bn, bk); });
      hand_over([&, prefix, N, K, q = std::move(q)]() mutable {
        add_fp8_linear(shards, prefix, std::move(q), o.fp8_block > 0);
        linear_done(prefix, N * K);
      });
    } else if (o.method == QuantizeOptions::Method::Rtn) {
      const GridRule rule = o.layout == IntLayout::AwqGemm ? GridRule::Awq : GridRule::Gptq;
      GroupGrid grid = rtn_grid(o, N, K);
      std::vector<uint8_t> codes(N * K);
#ifdef QWENQ_HAVE_CUDA
      if (gpu)
        named([&] { gpu->rtn(t, next, N, K, rule, grid.scale.data(), grid.zero.data(), codes.data()); });
      else
#endif
        named([&] {
          rtn_quantize_ref(W.data(), N, K, o.bits, o.group_size, o.sym, rule, grid.scale.data(), grid.zero.data(),
                           codes.data());
        });
      hand_over([&, prefix, N, K, grid = std::move(grid), codes = std::move(codes)] {
        shards.add_int_linear(prefix, pack_int_linear(codes.data(), grid, nullptr, o.layout));
        linear_done(prefix, N * K);
      });
    } else {
      Nf4Options no;
      no.fp4 = o.method == QuantizeOptions::Method::Fp4;
      no.blocksize = o.blocksize;
      no.double_quant = o.double_quant;
      nf4_check_options(no, "nf4_quantize");
      std::vector<uint8_t> packed(nf4_packed_bytes(N * K));
      std::vector<float> absmax((N * K + no.blocksize - 1) / no.blocksize);
#ifdef QWENQ_HAVE_CUDA
      if (gpu)
        named([&] { gpu->nf4(t, next, N, K, packed.data(), absmax.data()); });
      else
#endif
        named([&] { nf4_quantize_blocks(W.data(), N * K, no.blocksize, no.fp4, packed.data(), absmax.data()); });
      hand_over([&, prefix, N, K, no, dtype = std::string(torch_dtype_name(fp8_source ? weight_dtype : t.dtype)),
                 packed = std::move(packed), absmax = std::move(absmax)]() mutable {
        const Nf4Tensor q = nf4_from_blocks(no, N * K, std::move(packed), std::move(absmax));
        add_nf4_linear(shards.current(), prefix, q, {N, K}, dtype);
        shards.note_added(prefix + ".weight");
        linear_done(prefix, N * K);
      });
    }
  }
  join_host_half();
  shards.finish();
  bar.finish();
  if (loftq_inline) {
    save_peft_adapter(path_join(out.path(), "loftq_init"), *loftq_adapter);
    rep.loftq_plain_error = std::sqrt(loftq_plain2);
    rep.loftq_error = std::sqrt(loftq_err2);
  }
  if (pissa_adapter) {
    save_peft_adapter(path_join(out.path(), "pissa_init"), *pissa_adapter);
    rep.pissa_plain_error = std::sqrt(pissa_plain2);
    rep.pissa_error = std::sqrt(pissa_err2);
    rep.pissa_share = pissa_w2 > 0 ? pissa_principal2 / pissa_w2 : 0;
  }

  nlohmann::ordered_json config = read_ordered_json_file(path_join(o.model_dir, "config.json"));
  if (I2 != I) {
    config["intermediate_size"] = I2;
    if (!o.quiet) std::fprintf(stderr, "padded intermediate_size %lld -> %lld with zero channels\n", (long long)I, (long long)I2);
  }
  if (o.method == QuantizeOptions::Method::Fp8) {
    config["quantization_config"] = o.fp8_block ? fp8_block_quantization_config(o.fp8_block)
                                                : ct_fp8_dynamic_quantization_config({"lm_head"});
  } else if (o.method == QuantizeOptions::Method::Rtn) {
    config["quantization_config"] = int_quantization_config(o);
    config["quantization_config"]["qwenq_method"] = "rtn";
  } else {
    config["quantization_config"] = nf4_quantization_config_json(o.double_quant, torch_dtype_name(weight_dtype),
                                                                 o.method == QuantizeOptions::Method::Fp4);
  }
  for (const auto& [key, value] : moe_lists.items()) config["quantization_config"][key] = value;
  if (!loftq || loftq_inline) return finish_output(config, o.model_dir, shards, out, t0, rep);
  return finish_output_with_loftq(config, o.model_dir, shards, out, t0, rep, loftq_adapter.get(), o.quiet);
}

QuantizeReport dequantize_model(const DequantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  QWENQ_CHECK(o.dtype == DType::BF16 || o.dtype == DType::F16 || o.dtype == DType::F32,
              "dequantize: --dtype must be bf16, fp16 or fp32");
  const QwenConfig cfg = load_qwen_config(o.model_dir);
  const QuantConfig quant = load_quant_config(o.model_dir);
  QWENQ_CHECK(quant.method != QuantConfig::Method::None,
              o.model_dir << " is not quantized (no quantization_config in config.json)");
  Checkpoint ckpt(o.model_dir);
  StagedDir out(o.out_dir, o.overwrite);
  ShardedWriter shards(out.path(), o.max_shard_bytes);
  QuantizeReport rep;
  std::unordered_set<std::string> packed_prefixes;
  Progress bar("dequantize", count_layer_linears(cfg), "layers", o.quiet);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    for (const LayerLinear& ll : layer_linears(cfg, l)) {
      const std::string prefix = "model.layers." + std::to_string(l) + "." + ll.name;
      LinearWeight w = load_linear(ckpt, quant, prefix, ll.N, ll.K);
      if (w.is_dense()) continue;
      const std::vector<float> W = w.dequantize();
      std::vector<uint8_t> bytes(W.size() * dtype_size(o.dtype));
      from_f32(o.dtype, W.data(), bytes.data(), W.size());
      shards.current().add_owned(prefix + ".weight", o.dtype, {w.N, w.K}, std::move(bytes));
      shards.note_added(prefix + ".weight");
      packed_prefixes.insert(prefix);
      ++rep.linears;
      rep.params_quantized += w.N * w.K;
      bar.update(rep.linears);
      shards.maybe_flush();
    }
  }
  for (const auto& name : ckpt.names()) {
    if (is_packed_part(packed_prefixes, name)) continue;
    const TensorView& t = ckpt.get(name);
    shards.current().add(name, t.dtype, t.shape, t.data);
    shards.note_added(name);
    shards.maybe_flush();
  }
  shards.finish();
  bar.finish();
  nlohmann::ordered_json config = read_ordered_json_file(path_join(o.model_dir, "config.json"));
  config.erase("quantization_config");
  config["torch_dtype"] = torch_dtype_name(o.dtype);
  return finish_output(config, o.model_dir, shards, out, t0, rep);
}

}  // namespace qwenq
