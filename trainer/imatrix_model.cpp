// llama-imatrix's statistics by our CPU forward (what is counted: trainer/imatrix_model.h).
#include "trainer/imatrix_model.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "kernels/norm.h"
#include "trainer/gguf_model.h"
#include "trainer/moe_block.h"
#include "trainer/qwen_model.h"
#include "trainer/text_data.h"
#include "trainer/tokenizer.h"

namespace qwenq {

namespace {

// Running sums of one input (the Linears that share it), in double: one matrix, or one per expert of a MoE layer's
// stack (rows of the tokens routed to it).
struct GroupSums {
  std::vector<double> sum2, sum;
  std::vector<int64_t> count;  // tokens per matrix
  int64_t K = 0;
  void init(int64_t mats, int64_t width) {
    K = width;
    sum2.assign(static_cast<size_t>(mats * K), 0.0);
    sum.assign(static_cast<size_t>(mats * K), 0.0);
    count.assign(static_cast<size_t>(mats), 0);
  }
  void add(const float* x, int64_t T, int64_t width, int64_t mat = 0) {
    if (sum2.empty()) init(1, width);
    QWENQ_CHECK(width == K && mat >= 0 && mat < static_cast<int64_t>(count.size()),
                "imatrix: an input of " << width << " columns for matrix " << mat << " of sums " << K << " wide");
    double* s2 = sum2.data() + mat * K;
    double* s1 = sum.data() + mat * K;
    // Columns in parallel, tokens in order inside a column: the same sums at any thread count.
    parallel_for(K, 64, [&](int64_t j0, int64_t j1) {
      for (int64_t t = 0; t < T; ++t) {
        const float* row = x + t * K;
        for (int64_t j = j0; j < j1; ++j) {
          const double v = row[j];
          s2[j] += v * v;
          s1[j] += v;
        }
      }
    });
    count[static_cast<size_t>(mat)] += T;
  }
  ImatrixEntry entry() const {
    ImatrixEntry e;
    e.sum2.assign(sum2.begin(), sum2.end());
    e.sum.assign(sum.begin(), sum.end());
    for (int64_t c : count) e.counts.push_back(static_cast<float>(c));
    return e;
  }
};

// A MoE layer's expert inputs: the stacks' (one matrix per expert) and the shared expert's.
struct MoeSums {
  GroupSums exps_in, exps_down, shexp_in, shexp_down;
};

int group_index(BlockLinear g) {
  return g == BlockLinear::QKV ? 0 : g == BlockLinear::O ? 1 : g == BlockLinear::GateUp ? 2 : 3;
}

}  // namespace

Imatrix compute_imatrix(const ImatrixOptions& o, ImatrixReport* report) {
  const auto t0 = std::chrono::steady_clock::now();
  QWENQ_CHECK(o.ctx >= 2, "imatrix: --ctx must be at least 2 tokens, not " << o.ctx);
  QwenModel model(o.model);
  const QwenConfig& c = model.config();
  check_gguf_moe(c, "imatrix: " + o.model);  // the entries are named for the GGUF file they weigh
  QWENQ_CHECK(o.ctx <= c.max_position_embeddings, "imatrix: --ctx " << o.ctx << " is longer than the model's context ("
                                                                    << c.max_position_embeddings << " tokens)");
  const Tokenizer tok = Tokenizer::from_model(o.model);
  bool chat = false;
  const std::string text = load_text_corpus(o.calib_path, o.text_field, &tok, &chat);
  std::vector<int32_t> ids = tok.encode(text, /*add_special_tokens=*/true, /*parse_special=*/o.parse_special || chat);
  int64_t n_chunks = static_cast<int64_t>(ids.size()) / o.ctx;
  if (o.chunks > 0) n_chunks = std::min(n_chunks, o.chunks);
  QWENQ_CHECK(n_chunks >= 1, o.calib_path << ": tokenizes to " << ids.size() << " tokens, fewer than one chunk of "
                                          << o.ctx << " (lower --ctx or give more text)");
  const bool bos = tok.adds_bos() && tok.bos_id() >= 0;
  const bool output = o.process_output && !c.tie_word_embeddings;
  const int64_t per_batch = std::max<int64_t>(1, o.batch_tokens / o.ctx);

  std::vector<std::array<GroupSums, 4>> sums(static_cast<size_t>(c.num_layers));
  std::vector<MoeSums> moe(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    MoeSums& m = moe[static_cast<size_t>(l)];
    m.exps_in.init(c.num_experts, c.hidden_size);
    m.exps_down.init(c.num_experts, c.moe_intermediate_size);
    if (c.shared_expert_intermediate_size > 0) {
      m.shexp_in.init(1, c.hidden_size);
      m.shexp_down.init(1, c.shared_expert_intermediate_size);
    }
  }
  GroupSums out_sums;
  double nll_sum = 0, nll_sq = 0;
  int64_t nll_n = 0;
  const int64_t first = o.ctx / 2, scored = o.ctx - 1 - first;  // llama-imatrix's second half of each chunk
  std::vector<float> nll;
  std::vector<int32_t> targets;
  Progress bar("imatrix", n_chunks, "chunks", o.quiet);
  std::vector<float> x, normed;
  for (int64_t c0 = 0; c0 < n_chunks; c0 += per_batch) {
    const int64_t c1 = std::min(n_chunks, c0 + per_batch);
    std::vector<std::vector<int32_t>> seqs;
    for (int64_t ch = c0; ch < c1; ++ch) {
      seqs.emplace_back(ids.begin() + ch * o.ctx, ids.begin() + (ch + 1) * o.ctx);
      if (bos) seqs.back()[0] = tok.bos_id();
    }
    const PackedBatch batch = PackedBatch::from_sequences(seqs);
    const int64_t T = batch.num_tokens();
    model.embed_batch(batch, &x);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      MoeSums& m = moe[static_cast<size_t>(l)];
      const MoeInputHook experts = [&](BlockLinear g, int64_t e, const float* in, int64_t rows, const int64_t*) {
        GroupSums& s = g == BlockLinear::GateUp ? (e < 0 ? m.shexp_in : m.exps_in) : (e < 0 ? m.shexp_down : m.exps_down);
        s.add(in, rows, s.K, e < 0 ? 0 : e);
      };
      model.block_forward(
          l, batch, x.data(),
          [&](BlockLinear g, const float* in, int64_t rows) {
            sums[static_cast<size_t>(l)][static_cast<size_t>(group_index(g))].add(in, rows, block_linear_inputs(c, g));
          },
          c.is_moe_layer(l) ? experts : MoeInputHook{});
    }
    if (output || !o.no_ppl) {
      const TensorView& fn = model.weights().final_norm;
      normed.resize(x.size());
      rmsnorm_forward_ref(x.data(), T, c.hidden_size, fn.data, fn.dtype, static_cast<float>(c.rms_norm_eps),
                          normed.data());
    }
    if (output) out_sums.add(normed.data(), T, c.hidden_size);
    if (!o.no_ppl && scored > 0) {
      nll.resize(static_cast<size_t>(scored));
      targets.resize(static_cast<size_t>(scored));
      for (int64_t s = 0; s < c1 - c0; ++s) {
        const int64_t r0 = s * o.ctx + first;  // the chunk's scored rows in the batch
        for (int64_t i = 0; i < scored; ++i) targets[i] = batch.tokens[static_cast<size_t>(r0 + i + 1)];
        model.hidden_nll(normed.data() + r0 * c.hidden_size, scored, targets.data(), nll.data());
        for (float v : nll) nll_sum += v, nll_sq += double(v) * v;
        nll_n += scored;
      }
    }
    bar.update(c1);
  }
  bar.finish();

  Imatrix m;
  m.datasets = {o.calib_path};
  m.chunk_count = static_cast<uint32_t>(n_chunks);
  m.chunk_size = static_cast<uint32_t>(o.ctx);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    const bool sparse = c.is_moe_layer(l);
    for (int i = 0; i < (sparse ? 4 : 7); ++i) {
      const DecoderLinear& d = kDecoderLinears[i];
      const GroupSums& s = sums[static_cast<size_t>(l)][static_cast<size_t>(group_index(d.group))];
      m.entries[p + gguf_linear_name(i) + ".weight"] = s.entry();
    }
    if (!sparse) continue;
    // The router (and qwen2moe's shared-expert gate) read the MoE block's input; each stack has one matrix per expert.
    const GroupSums& n = sums[static_cast<size_t>(l)][static_cast<size_t>(group_index(BlockLinear::GateUp))];
    const MoeSums& x = moe[static_cast<size_t>(l)];
    m.entries[p + "ffn_gate_inp.weight"] = n.entry();
    m.entries[p + "ffn_gate_exps.weight"] = x.exps_in.entry();
    m.entries[p + "ffn_up_exps.weight"] = x.exps_in.entry();
    m.entries[p + "ffn_down_exps.weight"] = x.exps_down.entry();
    if (c.shared_expert_intermediate_size > 0) {
      m.entries[p + "ffn_gate_inp_shexp.weight"] = n.entry();
      m.entries[p + "ffn_gate_shexp.weight"] = x.shexp_in.entry();
      m.entries[p + "ffn_up_shexp.weight"] = x.shexp_in.entry();
      m.entries[p + "ffn_down_shexp.weight"] = x.shexp_down.entry();
    }
  }
  if (output) m.entries["output.weight"] = out_sums.entry();
  if (report) {
    report->text_tokens = static_cast<int64_t>(ids.size());
    report->chat_records = chat;
    report->chunks = n_chunks;
    report->tokens = n_chunks * o.ctx;
    report->entries = static_cast<int64_t>(m.entries.size());
    report->tied_output = o.process_output && c.tie_word_embeddings;
    report->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (nll_n > 1) {
      const double mean = nll_sum / static_cast<double>(nll_n);
      const double var = std::max(0.0, nll_sq / static_cast<double>(nll_n) - mean * mean);
      report->ppl = std::exp(mean);
      report->ppl_err = std::sqrt(var / static_cast<double>(nll_n - 1)) * report->ppl;
      report->ppl_tokens = nll_n;
    }
  }
  return m;
}

}  // namespace qwenq
