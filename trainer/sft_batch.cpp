// Train/eval split, per-epoch order, and packed / padded batches of SFT examples (see sft_data.h).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/process_group.h"
#include "core/rng.h"
#include "kernels/loss.h"
#include "trainer/sft_data.h"

namespace qwenq {

namespace {

// Fisher-Yates with the project's platform-independent generator.
void shuffle_in_place(std::vector<int64_t>* v, Rng* rng) {
  for (size_t i = v->size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng->below(i));
    std::swap((*v)[i - 1], (*v)[j]);
  }
}

}  // namespace

void split_sft_indices(int64_t n, uint64_t seed, double eval_fraction, int64_t eval_count,
                       std::vector<int64_t>* train, std::vector<int64_t>* eval) {
  QWENQ_CHECK(n >= 1, "cannot split an empty dataset");
  QWENQ_CHECK(eval_fraction >= 0 && eval_fraction < 1, "eval_fraction must be in [0, 1), got " << eval_fraction);
  QWENQ_CHECK(eval_count >= 0, "eval_count must be >= 0, got " << eval_count);
  QWENQ_CHECK(!(eval_fraction > 0 && eval_count > 0),
              "set eval_fraction (" << eval_fraction << ") or eval_count (" << eval_count << "), not both");
  int64_t k = eval_count;
  if (eval_fraction > 0) k = std::max<int64_t>(1, std::llround(eval_fraction * static_cast<double>(n)));
  if (k > 0) {
    QWENQ_CHECK(n >= 2, "an eval split needs at least 2 examples (one to train on), the dataset has " << n);
    QWENQ_CHECK(eval_count <= n - 1, "eval_count " << eval_count << " leaves no training examples (dataset has "
                                                    << n << ")");
    k = std::min(k, n - 1);
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  Rng rng(seed);
  shuffle_in_place(&order, &rng);
  eval->assign(order.begin(), order.begin() + k);
  train->assign(order.begin() + k, order.end());
}

void sft_example_targets(const SftExample& ex, int32_t* out) {
  const size_t n = ex.tokens.size();
  for (size_t t = 0; t + 1 < n; ++t) out[t] = ex.loss_mask[t + 1] ? ex.tokens[t + 1] : kIgnoreIndex;
  if (n) out[n - 1] = kIgnoreIndex;
}

SftBatchIterator::SftBatchIterator(std::vector<SftExample> examples, const SftBatchOptions& opt)
    : examples_(std::move(examples)), opt_(opt) {
  QWENQ_CHECK(!examples_.empty(), "SftBatchIterator: no examples");
  QWENQ_CHECK(opt_.seq_len >= 2, "seq_len must be >= 2, got " << opt_.seq_len);
  QWENQ_CHECK(opt_.batch_size >= 1, "batch_size must be >= 1, got " << opt_.batch_size);
  QWENQ_CHECK(opt_.epochs >= 0, "epochs must be >= 0 (0 = endless), got " << opt_.epochs);
  QWENQ_CHECK(opt_.group >= 1 && static_cast<int64_t>(examples_.size()) % opt_.group == 0 &&
                  (opt_.group == 1 || (opt_.mode == SftBatchMode::kPadding && opt_.batch_size % opt_.group == 0)),
              "SftBatchIterator: groups of " << opt_.group << " need padding mode, a batch size (" << opt_.batch_size
                                             << ") and an example count (" << examples_.size() << ") divisible by it");
  for (size_t i = 0; i < examples_.size(); ++i) {
    SftExample& ex = examples_[i];
    QWENQ_CHECK(!ex.tokens.empty() && ex.tokens.size() == ex.loss_mask.size(),
                "example " << i << ": " << ex.tokens.size() << " tokens and " << ex.loss_mask.size()
                           << " mask entries (need the same, non-zero number)");
    truncated_ += truncate_sft_example(&ex, opt_.seq_len) > 0;
  }
  load_epoch(0);
}

std::vector<int64_t> SftBatchIterator::epoch_order(int64_t epoch) const {
  const int64_t g = opt_.group;
  std::vector<int64_t> units(examples_.size() / static_cast<size_t>(g));
  std::iota(units.begin(), units.end(), 0);
  if (opt_.shuffle) {
    // A stream per (seed, epoch), distinct from the split's stream of the same seed.
    Rng base(opt_.seed ^ 0xD1B54A32D192ED03ull);
    Rng rng(base.next_u64() + static_cast<uint64_t>(epoch) * 0x9E3779B97F4A7C15ull);
    shuffle_in_place(&units, &rng);
  }
  if (g == 1) return units;
  std::vector<int64_t> order;
  order.reserve(examples_.size());
  for (int64_t u : units)
    for (int64_t k = 0; k < g; ++k) order.push_back(u * g + k);
  return order;
}

void SftBatchIterator::load_epoch(int64_t epoch) {
  epoch_ = epoch;
  index_ = 0;
  order_ = epoch_order(epoch);
}

SftBatchIterator::State SftBatchIterator::state() const { return {epoch_, index_, num_examples()}; }

void SftBatchIterator::restore(const State& s) {
  QWENQ_CHECK(s.num_examples == num_examples(), "cannot resume: the saved cursor is for " << s.num_examples
                                                    << " examples, this dataset has " << num_examples());
  QWENQ_CHECK(s.epoch >= 0 && s.index >= 0 && s.index < num_examples(),
              "cannot resume: cursor (epoch " << s.epoch << ", index " << s.index << ") out of range for "
                                              << num_examples() << " examples");
  load_epoch(s.epoch);
  index_ = s.index;
}

bool SftBatchIterator::next(SftBatch* out) {
  if (opt_.epochs > 0 && epoch_ >= opt_.epochs) return false;
  const bool packing = opt_.mode == SftBatchMode::kPacking;
  const int64_t n = num_examples();
  *out = SftBatch{};
  out->epoch = epoch_;
  out->first_index = index_;
  PackedBatch& pb = out->packed;
  pb.cu_seqlens.push_back(0);
  out->cu_rows.push_back(0);

  int64_t rows = 0, row_len = 0, longest = 0;
  bool row_open = false;
  auto close_row = [&] {
    out->cu_rows.push_back(static_cast<int32_t>(pb.tokens.size()));
    ++rows;
    row_open = false;
    row_len = 0;
  };
  while (index_ < n) {
    const SftExample& ex = examples_[static_cast<size_t>(order_[static_cast<size_t>(index_)])];
    const int64_t len = static_cast<int64_t>(ex.tokens.size());
    if (packing) {
      if (row_open && row_len + len > opt_.seq_len) {
        close_row();
        if (rows == opt_.batch_size) break;
      }
    } else if (rows == opt_.batch_size) {
      break;
    }
    const size_t at = pb.tokens.size();
    pb.tokens.insert(pb.tokens.end(), ex.tokens.begin(), ex.tokens.end());
    for (int64_t t = 0; t < len; ++t) pb.positions.push_back(static_cast<int32_t>(t));
    pb.cu_seqlens.push_back(static_cast<int32_t>(pb.tokens.size()));
    out->targets.resize(pb.tokens.size());
    sft_example_targets(ex, out->targets.data() + at);
    longest = std::max(longest, len);
    ++out->num_examples;
    ++index_;
    if (packing) {
      row_open = true;
      row_len += len;
    } else {
      close_row();
    }
  }
  if (row_open) close_row();
  for (int32_t t : out->targets) out->num_targets += t != kIgnoreIndex;
  if (!packing) out->padded_len = opt_.pad_to_seq_len ? opt_.seq_len : longest;
  if (index_ == n) load_epoch(epoch_ + 1);  // canonical cursor: the next batch's first example
  return true;
}

std::vector<double> gather_example_values(const std::vector<SftExample>& examples, const SftBatchOptions& opt,
                                          int64_t per_example, int64_t max_batches, ProcessGroup* group,
                                          const std::function<std::vector<double>(const SftBatch&)>& values) {
  const size_t k = static_cast<size_t>(per_example);
  std::vector<double> out(examples.size() * k, 0.0);
  if (examples.empty()) return out;
  QWENQ_CHECK(!opt.shuffle && opt.epochs == 1 && per_example >= 1,
              "gather_example_values: batches in order over one epoch, " << per_example << " values per example");
  SftBatchIterator it(examples, opt);
  const int rank = group ? group->rank() : 0, world = group ? group->world() : 1;
  SftBatch b;
  size_t covered = 0;  // examples in the batches walked
  for (int64_t batch = 0; it.next(&b) && (max_batches <= 0 || batch < max_batches); ++batch) {
    covered += static_cast<size_t>(b.num_examples);
    if (batch % world != rank) continue;
    const std::vector<double> v = values(b);
    QWENQ_CHECK(v.size() == static_cast<size_t>(b.num_examples) * k,
                "gather_example_values: " << v.size() << " values for a batch of " << b.num_examples << " examples ("
                                          << per_example << " each)");
    std::copy(v.begin(), v.end(), out.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(b.first_index) * k));
  }
  if (group) group->all_reduce_sum(out.data(), static_cast<int64_t>(out.size()));
  out.resize(covered * k);
  return out;
}

}  // namespace qwenq
