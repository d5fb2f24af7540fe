// The preference objective's pieces of a training run (trainer/dpo.h): per-example NLL sums over batches of pairs,
// and the reference's sums kept in the run directory.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/process_group.h"
#include "trainer/dpo.h"

namespace qwenq {

std::vector<double> example_nll_sums(const std::vector<SftExample>& examples, int64_t seq_len, int64_t pairs_per_batch,
                                     int64_t max_batches, ProcessGroup* group,
                                     const std::function<LoraStepResult(const SftBatch&)>& loss) {
  SftBatchOptions bo;
  bo.mode = SftBatchMode::kPadding;
  bo.seq_len = seq_len;
  bo.batch_size = 2 * pairs_per_batch;
  bo.group = 2;
  bo.shuffle = false;
  bo.epochs = 1;
  return gather_example_values(examples, bo, 1, max_batches, group,
                               [&](const SftBatch& b) { return loss(b).seq_nll; });
}

std::vector<int64_t> examples_in_batches(const std::vector<SftExample>& examples, const SftBatchOptions& opt,
                                         int64_t batches) {
  std::vector<uint8_t> read(examples.size(), 0);
  SftBatchIterator it(examples, opt);
  SftBatch b;
  std::vector<int64_t> order;
  int64_t order_epoch = -1;
  for (int64_t k = 0; k < batches && it.next(&b); ++k) {
    if (b.epoch != order_epoch) order = it.epoch_order(order_epoch = b.epoch);
    for (int64_t j = 0; j < b.num_examples; ++j) read[static_cast<size_t>(order[static_cast<size_t>(b.first_index + j)])] = 1;
  }
  std::vector<int64_t> out;
  for (size_t i = 0; i < read.size(); ++i)
    if (read[i]) out.push_back(static_cast<int64_t>(i));
  return out;
}

std::vector<int64_t> example_target_counts(const std::vector<SftExample>& examples) {
  std::vector<int64_t> n;
  n.reserve(examples.size());
  for (const SftExample& ex : examples) {
    int64_t k = 0;
    for (uint8_t m : ex.loss_mask) k += m;
    n.push_back(k);
  }
  return n;
}

std::string dpo_reference_path(const std::string& out_dir) { return path_join(out_dir, "dpo_reference.json"); }

void write_dpo_reference(const std::string& out_dir, const std::vector<double>& train, const std::vector<double>& eval) {
  const nlohmann::json j = {{"train", train}, {"eval", eval}};
  write_file_atomic(dpo_reference_path(out_dir), j.dump() + "\n");
}

void read_dpo_reference(const std::string& out_dir, size_t n_train, size_t n_eval, std::vector<double>* train,
                        std::vector<double>* eval) {
  const std::string path = dpo_reference_path(out_dir);
  QWENQ_CHECK(file_exists(path), "--resume: " << path << " is missing (the reference model's sums of this preference "
                                              << "run; without them it cannot continue)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
    *train = j.at("train").get<std::vector<double>>();
    *eval = j.at("eval").get<std::vector<double>>();
  } catch (const nlohmann::json::exception& e) {
    QWENQ_FAIL(path << ": not the reference sums of a preference run (" << e.what() << ")");
  }
  QWENQ_CHECK(train->size() == n_train && eval->size() == n_eval,
              path << ": sums for " << train->size() << " training and " << eval->size() << " held-out sequences, the "
                   << "data has " << n_train << " and " << n_eval);
}

}  // namespace qwenq
