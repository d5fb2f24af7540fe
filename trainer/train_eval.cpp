// The held-out evaluations of a training run and of `qwen-qlora eval` (trainer/train_eval.h).
#include "trainer/train_eval.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/process_group.h"
#include "trainer/dpo.h"
#include "trainer/kto.h"
#include "trainer/reward.h"

namespace qwenq {

// The options of an evaluation call (no dropout; the run's checkpoint storage and CPU products).
LoraStepOptions eval_step_options(const TrainOptions& o) {
  LoraStepOptions so;
  so.train = false;
  so.checkpointing = o.checkpointing;
  so.bf16_checkpoints = o.bf16_checkpoints;
  so.bf16_matmul = o.cpu_bf16_matmul;
  return so;
}

// The loss of a batch alone (no gradient) on the device's adapter (gpu) or the CPU's.
LoraStepResult batch_loss(const QwenModel& model, const LoraAdapter& adapter, LoraModelCuda* gpu, const SftBatch& b,
                          const LoraStepOptions& so) {
  return gpu ? gpu->loss(b.packed, b.targets, so) : lora_loss_and_grad(model, adapter, b.packed, b.targets, nullptr, so);
}

// Each example's NLL sum (preference pairs: example_nll_sums over o.batch_size pairs a batch, the first max_batches
// batches) on the device's adapter (gpu) or the CPU's.
std::vector<double> pair_nll_sums(const QwenModel& model, const LoraAdapter& adapter, LoraModelCuda* gpu,
                                  const std::vector<SftExample>& examples, const TrainOptions& o, int64_t max_batches,
                                  ProcessGroup* group) {
  const LoraStepOptions so = eval_step_options(o);
  return example_nll_sums(examples, o.seq_len, o.batch_size, max_batches, group,
                          [&](const SftBatch& b) { return batch_loss(model, adapter, gpu, b, so); });
}

// Mean next-token loss over (up to max_batches batches of) the eval split; gpu: on the device's adapter. With a
// group (data parallelism) every rank walks the same batches and computes every R-th one with targets; the per-batch
// sums are gathered (an all-reduce in which each slot has one nonzero term, so exact) and added in batch order, so
// the loss has the bits of a single process's.
std::pair<double, int64_t> sft_held_out_loss(const QwenModel& model, const LoraAdapter& adapter, LoraModelCuda* gpu,
                                             const std::vector<SftExample>& eval, const TrainOptions& o,
                                             ProcessGroup* group) {
  SftBatchOptions bo;
  bo.mode = o.batch_mode;
  bo.seq_len = o.seq_len;
  bo.batch_size = o.batch_size;
  bo.shuffle = false;
  bo.epochs = 1;
  SftBatchIterator it(eval, bo);
  SftBatch b;
  const int rank = group ? group->rank() : 0, world = group ? group->world() : 1;
  std::vector<double> nll, count;  // per batch with targets: [j] from rank j mod world
  int64_t batches = 0;
  const LoraStepOptions so = eval_step_options(o);
  while (it.next(&b) && (o.eval_batches <= 0 || batches < o.eval_batches)) {
    if (b.num_targets == 0) continue;
    nll.push_back(0.0);
    count.push_back(0.0);
    if (batches++ % world != rank) continue;
    const LoraStepResult r = batch_loss(model, adapter, gpu, b, so);
    nll.back() = r.nll_sum;
    count.back() = static_cast<double>(r.counted);
  }
  if (group) {
    group->all_reduce_sum(nll.data(), static_cast<int64_t>(nll.size()));
    group->all_reduce_sum(count.data(), static_cast<int64_t>(count.size()));
  }
  double sum = 0;
  int64_t counted = 0;
  for (size_t j = 0; j < nll.size(); ++j) {
    sum += nll[j];
    counted += static_cast<int64_t>(count[j]);
  }
  return {counted > 0 ? sum / counted : 0.0, counted};
}

RewardStats reward_eval_stats(const QwenModel& model, const LoraAdapter& adapter,
                              const std::vector<SftExample>& examples, const std::vector<double>& margins,
                              const TrainOptions& o, int32_t pad_id, ProcessGroup* group) {
  const LoraStepOptions base = eval_step_options(o);
  // example_nll_sums gathers one number per example (LoraStepResult::seq_nll): here each sequence's score.
  const std::vector<double> scores =
      example_nll_sums(examples, o.seq_len, o.batch_size, o.eval_batches, group, [&](const SftBatch& b) {
        LoraStepOptions so = base;
        so.score_rows = reward_pooled_rows(b.packed, pad_id);
        LoraStepResult r = lora_loss_and_grad(model, adapter, b.packed, b.targets, nullptr, so);
        r.seq_nll = std::move(r.scores);
        return r;
      });
  // (the first eval_batches batches: a prefix of the pairs)
  const std::vector<double> mu = margins.empty() ? margins
                                                 : std::vector<double>(margins.begin(), margins.begin() + scores.size() / 2);
  return reward_batch_stats(o.reward_options, scores, mu);
}

std::vector<double> classify_eval_logits(const QwenModel& model, const LoraAdapter& adapter,
                                         const std::vector<SftExample>& examples, const TrainOptions& o,
                                         int32_t pad_id, ProcessGroup* group) {
  const int64_t C = adapter.config().num_labels;
  QWENQ_CHECK(C >= 1, "classify_eval_logits: the adapter has no score head");
  const LoraStepOptions base = eval_step_options(o);
  // Batches of o.batch_size texts in file order (the first eval_batches), shared by the ranks.
  SftBatchOptions bo;
  bo.mode = SftBatchMode::kPadding;
  bo.seq_len = o.seq_len;
  bo.batch_size = o.batch_size;
  bo.shuffle = false;
  bo.epochs = 1;
  return gather_example_values(examples, bo, C, o.eval_batches, group, [&](const SftBatch& b) {
    LoraStepOptions so = base;
    so.score_rows = reward_pooled_rows(b.packed, pad_id);
    return lora_loss_and_grad(model, adapter, b.packed, b.targets, nullptr, so).scores;
  });
}

ClassifyStats classify_eval_stats(const QwenModel& model, const LoraAdapter& adapter,
                                  const std::vector<SftExample>& examples, const std::vector<ClassifyTarget>& targets,
                                  const ClassifyTask& task, const TrainOptions& o, int32_t pad_id, ProcessGroup* group) {
  QWENQ_CHECK(targets.size() == examples.size(), "classify_eval_stats: " << targets.size() << " targets for "
                                                                          << examples.size() << " examples");
  const int64_t C = adapter.config().num_labels;
  QWENQ_CHECK(C == task.num_labels, "classify_eval_stats: a head of " << C << " outputs for a task of "
                                                                      << task.num_labels);
  const std::vector<double> logits = classify_eval_logits(model, adapter, examples, o, pad_id, group);
  const size_t covered = logits.size() / static_cast<size_t>(C);
  return classify_batch_stats(
      logits, std::vector<ClassifyTarget>(targets.begin(), targets.begin() + static_cast<std::ptrdiff_t>(covered)), task);
}

std::pair<double, int64_t> sft_eval_loss(const QwenModel& model, const LoraAdapter& adapter,
                                         const std::vector<SftExample>& examples, const TrainOptions& o) {
  if (!o.use_cuda) return sft_held_out_loss(model, adapter, nullptr, examples, o);
#ifdef QWENQ_HAVE_CUDA
  LoraModelCuda gpu(model, adapter);
  return sft_held_out_loss(model, adapter, &gpu, examples, o);
#else
  QWENQ_FAIL("--device cuda: this build has no CUDA backend (configure with -DQWENQ_CUDA=ON)");
  return {};
#endif
}

std::vector<double> preference_eval_sums(const QwenModel& model, const LoraAdapter& adapter,
                                         const std::vector<SftExample>& examples, const TrainOptions& o) {
  std::unique_ptr<LoraModelCuda> gpu;
#ifdef QWENQ_HAVE_CUDA
  if (o.use_cuda) gpu = std::make_unique<LoraModelCuda>(model, adapter);
#else
  QWENQ_CHECK(!o.use_cuda, "--device cuda: this build has no CUDA backend (configure with -DQWENQ_CUDA=ON)");
#endif
  return pair_nll_sums(model, adapter, gpu.get(), examples, o, o.eval_batches, nullptr);
}

nlohmann::json held_out_record(QwenModel& model, const LoraAdapter& adapter, LoraModelCuda* gpu,
                               const TrainOptions& o, const HeldOutSet& h, GrpoRun* grpo, int64_t step) {
  const std::vector<SftExample>& examples = *h.examples;
  if (examples.empty()) return nullptr;
  nlohmann::json record = {{"step", step}};
  const auto sequence_sums = [&] { return pair_nll_sums(model, adapter, gpu, examples, o, o.eval_batches, o.group); };
  if (o.reward) {  // the held-out pairs' scores
    const RewardStats es = reward_eval_stats(model, adapter, examples, *h.margins, o, h.reward_pad, o.group);
    record["eval_loss"] = es.objective();
    record["eval_rewards_margin"] = (es.reward_c - es.reward_r) / static_cast<double>(es.pairs);
    record["eval_rewards_accuracy"] = es.accuracy();
    record["eval_pairs"] = es.pairs;
  } else if (o.dpo) {  // the held-out pairs of the first eval_batches batches
    const std::vector<double> now = sequence_sums();
    const size_t n = now.size();
    const DpoStats es = dpo_batch_stats(o.dpo_options, now, std::vector<double>(h.ref_sums->begin(), h.ref_sums->begin() + n),
                                        std::vector<int64_t>(h.target_counts->begin(), h.target_counts->begin() + n));
    record["eval_loss"] = es.objective(o.dpo_options);
    record["eval_rewards_margin"] = (es.reward_c - es.reward_r) / static_cast<double>(es.pairs);
    record["eval_rewards_accuracy"] = static_cast<double>(es.correct) / static_cast<double>(es.pairs);
    record["eval_pairs"] = es.pairs;
  } else if (o.kto) {  // the held-out examples of the first eval_batches batches, each batch's own z
    const KtoStats es = kto_eval_stats(o.kto_options, sequence_sums(), *h.ref_sums, *h.labels, o.batch_size);
    record["eval_loss"] = es.objective();
    record["eval_kl"] = es.mean_kl();
    add_kto_rewards(es, "eval_", &record);
    record["eval_examples"] = es.examples();
  } else if (o.classify) {  // the held-out texts' logits
    const ClassifyStats es = classify_eval_stats(model, adapter, examples, *h.targets, h.task, o, h.reward_pad, o.group);
    record["eval_loss"] = es.objective();
    add_classify_metrics(es, h.task, "eval_", &record);
    record["eval_examples"] = es.examples;
  } else if (o.grpo) {  // the held-out prompts sampled with a fixed seed: the reward, not a loss
    QWENQ_CHECK(grpo != nullptr, "held_out_record: a GRPO run's evaluation needs its GrpoRun");
    record.update(grpo->evaluate(model, adapter, examples, *h.records, o.batch_size, o.eval_batches, o.seed, o.group));
  } else {
    const auto [loss, n] = sft_held_out_loss(model, adapter, gpu, examples, o, o.group);
    record["eval_loss"] = loss;
    record["eval_tokens"] = n;
  }
  return record;
}

}  // namespace qwenq
