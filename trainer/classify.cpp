// Sequence classification: labelled texts, the cross-entropy of the head's logits (trainer/classify.h).
#include "trainer/classify.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;

struct LabelledText {
  std::string text, where;
  Json label;  // an integer or a string, as read
};

// "" or why the record is malformed.
std::string labelled_text_from_json(const Json& j, const ClassifyDataOptions& o, LabelledText* out) {
  if (!j.is_object()) return std::string("expected a JSON object, got ") + j.type_name();
  if (!j.contains(o.text_field)) return "no \"" + o.text_field + "\" (the text to classify; --text-field names it)";
  const Json& text = j[o.text_field];
  if (!text.is_string() || text.get<std::string>().empty())
    return "\"" + o.text_field + "\" must be a non-empty string, got " + text.dump();
  if (!j.contains(o.label_field)) return "no \"" + o.label_field + "\" (the label; --label-field names it)";
  const Json& label = j[o.label_field];
  if (!(label.is_number_integer() || label.is_string()))
    return "\"" + o.label_field + "\" must be an integer or a label name, got " + label.dump();
  out->text = text.get<std::string>();
  out->label = label;
  return "";
}

// The label names a training file implies (top of classify.h).
std::vector<std::string> names_from(const std::vector<LabelledText>& records, const std::string& path,
                                    const std::string& field) {
  bool ints = false, strings = false;
  int64_t max_id = -1;
  std::set<std::string> names;
  for (const LabelledText& r : records) {
    if (r.label.is_string()) {
      strings = true;
      names.insert(r.label.get<std::string>());
    } else {
      ints = true;
      const int64_t id = r.label.get<int64_t>();
      QWENQ_CHECK(id >= 0, r.where << ": label " << id << " is negative (ids are 0, 1, ...)");
      max_id = std::max(max_id, id);
    }
  }
  QWENQ_CHECK(!(ints && strings), path << ": \"" << field << "\" holds both integers and names; give every label one "
                                       << "way, or name them all with --labels");
  std::vector<std::string> out;
  if (strings) out.assign(names.begin(), names.end());
  for (int64_t i = 0; i <= max_id; ++i) out.push_back("LABEL_" + std::to_string(i));
  if (out.size() == 1 && ints) out.push_back("LABEL_1");  // one id seen: still two classes
  return out;
}

}  // namespace

SftDataset load_classify_dataset(const std::string& path, const Tokenizer& tok, const SftDataOptions& opt,
                                 ClassifyDataOptions* labels) {
  QWENQ_CHECK(opt.max_len >= 1, "max_len must be >= 1, got " << opt.max_len);
  QWENQ_CHECK(opt.format == SftFormat::kAuto || opt.format == SftFormat::kText,
              "classification reads {\"" << labels->text_field << "\", \"" << labels->label_field
                                         << "\"} records (leave --format out), not --format "
                                         << sft_format_name(opt.format));
  SftDataset ds;
  SftDataStats& st = ds.stats;
  st.path = path;
  st.format = SftFormat::kText;
  std::vector<LabelledText> records;
  for_each_json_record(path, opt.skip_bad, &st, [&](const Json& j, const std::string& where) {
    LabelledText r;
    const std::string why = labelled_text_from_json(j, *labels, &r);
    if (why.empty()) {
      r.where = where;
      records.push_back(std::move(r));
    }
    return why;
  });
  QWENQ_CHECK(!records.empty(), path << ": no labelled records");
  if (labels->label_names.empty()) labels->label_names = names_from(records, path, labels->label_field);
  const std::vector<std::string>& names = labels->label_names;
  QWENQ_CHECK(names.size() >= 2, path << ": " << names.size() << " label(s); a classifier needs at least 2");
  std::map<std::string, int32_t> id_of;
  for (size_t i = 0; i < names.size(); ++i) {
    QWENQ_CHECK(id_of.emplace(names[i], static_cast<int32_t>(i)).second, "the label name \"" << names[i]
                                                                              << "\" is given twice");
  }
  std::vector<SftExample> examples;
  std::vector<int32_t> classes;
  for (const LabelledText& r : records) {
    int32_t y;
    if (r.label.is_string()) {
      const auto it = id_of.find(r.label.get<std::string>());
      QWENQ_CHECK(it != id_of.end(), r.where << ": label \"" << r.label.get<std::string>() << "\" is not one of the "
                                             << names.size() << " labels (" << [&] {
                                                  std::string l;
                                                  for (const std::string& n : names) l += (l.empty() ? "" : ", ") + n;
                                                  return l;
                                                }() << ")");
      y = it->second;
    } else {
      const int64_t id = r.label.get<int64_t>();
      QWENQ_CHECK(id >= 0 && id < static_cast<int64_t>(names.size()),
                  r.where << ": label " << id << " is outside [0, " << names.size() << ")");
      y = static_cast<int32_t>(id);
    }
    SftExample ex;
    ex.tokens = tok.encode(r.text, /*add_special_tokens=*/true);
    QWENQ_CHECK(!ex.tokens.empty(), r.where << ": the text encodes to no token");
    st.longest = std::max<int64_t>(st.longest, static_cast<int64_t>(ex.tokens.size()));
    if (static_cast<int64_t>(ex.tokens.size()) > opt.max_len) {
      ++st.truncated;
      st.truncated_tokens += static_cast<int64_t>(ex.tokens.size()) - opt.max_len;
      ex.tokens.resize(static_cast<size_t>(opt.max_len));
    }
    ex.loss_mask.assign(ex.tokens.size(), 0);
    st.tokens += static_cast<int64_t>(ex.tokens.size());
    ++st.records;
    examples.push_back(std::move(ex));
    classes.push_back(y);
  }
  std::vector<int64_t> train, eval;
  split_sft_indices(static_cast<int64_t>(examples.size()), opt.seed, opt.eval_fraction, opt.eval_count, &train, &eval);
  for (int64_t i : train) {
    ds.train.push_back(examples[static_cast<size_t>(i)]);
    ds.train_classes.push_back(classes[static_cast<size_t>(i)]);
  }
  for (int64_t i : eval) {
    ds.eval.push_back(examples[static_cast<size_t>(i)]);
    ds.eval_classes.push_back(classes[static_cast<size_t>(i)]);
  }
  st.train_examples = static_cast<int64_t>(train.size());
  st.eval_examples = static_cast<int64_t>(eval.size());
  return ds;
}

void ClassifyStats::add(const ClassifyStats& o) {
  examples += o.examples;
  correct += o.correct;
  loss += o.loss;
}

std::vector<double> ClassifyStats::pack() const {
  return {static_cast<double>(examples), static_cast<double>(correct), loss};
}

ClassifyStats ClassifyStats::unpack(const std::vector<double>& v) {
  QWENQ_CHECK(v.size() == 3, "ClassifyStats::unpack: " << v.size() << " numbers");
  ClassifyStats s;
  s.examples = static_cast<int64_t>(v[0]);
  s.correct = static_cast<int64_t>(v[1]);
  s.loss = v[2];
  return s;
}

namespace {

// softmax(z) of one example and its loss ℓ = logsumexp(z) − z[y], in double.
double softmax_and_loss(const double* z, int64_t C, int32_t y, std::vector<double>* p) {
  const double m = *std::max_element(z, z + C);
  double sum = 0;
  p->resize(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) sum += ((*p)[static_cast<size_t>(c)] = std::exp(z[c] - m));
  for (double& v : *p) v /= sum;
  return m + std::log(sum) - z[y];
}

void check_logits(const std::vector<double>& logits, const std::vector<int32_t>& labels, int64_t C) {
  QWENQ_CHECK(C >= 2 && logits.size() == labels.size() * static_cast<size_t>(C),
              "classify: " << logits.size() << " logits for " << labels.size() << " examples of " << C << " labels");
  for (int32_t y : labels) QWENQ_CHECK(y >= 0 && y < C, "classify: label " << y << " outside [0, " << C << ")");
}

}  // namespace

ClassifyStats classify_batch_stats(const std::vector<double>& logits, const std::vector<int32_t>& labels,
                                   int64_t num_labels) {
  check_logits(logits, labels, num_labels);
  ClassifyStats s;
  std::vector<double> p;
  for (size_t j = 0; j < labels.size(); ++j) {
    const double* z = logits.data() + j * static_cast<size_t>(num_labels);
    s.loss += softmax_and_loss(z, num_labels, labels[j], &p);
    s.correct += std::max_element(z, z + num_labels) - z == labels[j];
    ++s.examples;
  }
  return s;
}

std::function<std::vector<double>(const std::vector<double>&)> classify_objective(std::vector<int32_t> labels,
                                                                                  int64_t num_labels,
                                                                                  int64_t step_examples,
                                                                                  ClassifyStats* stats) {
  QWENQ_CHECK(step_examples >= 1, "classify_objective: a step of " << step_examples << " examples");
  return [labels = std::move(labels), num_labels, step_examples, stats](const std::vector<double>& logits) {
    check_logits(logits, labels, num_labels);
    std::vector<double> d(logits.size());
    std::vector<double> p;
    const double n = static_cast<double>(step_examples);
    for (size_t j = 0; j < labels.size(); ++j) {
      softmax_and_loss(logits.data() + j * static_cast<size_t>(num_labels), num_labels, labels[j], &p);
      for (int64_t c = 0; c < num_labels; ++c) {
        d[j * static_cast<size_t>(num_labels) + static_cast<size_t>(c)] =
            (p[static_cast<size_t>(c)] - (c == labels[j] ? 1.0 : 0.0)) / n;
      }
    }
    if (stats) stats->add(classify_batch_stats(logits, labels, num_labels));
    return d;
  };
}

void write_label_names(const std::string& dir, const std::vector<std::string>& names) {
  nlohmann::ordered_json id2label = nlohmann::ordered_json::object();
  for (size_t i = 0; i < names.size(); ++i) id2label[std::to_string(i)] = names[i];
  write_file_atomic(path_join(dir, "labels.json"), nlohmann::ordered_json{{"id2label", id2label}}.dump(2) + "\n");
}

std::vector<std::string> read_label_names(const std::string& dir) {
  const std::string path = path_join(dir, "labels.json");
  if (!file_exists(path)) return {};
  const nlohmann::json j = read_json_file(path);
  QWENQ_CHECK(j.contains("id2label") && j["id2label"].is_object(), path << ": no \"id2label\" object");
  const nlohmann::json& m = j["id2label"];
  std::vector<std::string> names(m.size());
  for (auto it = m.begin(); it != m.end(); ++it) {
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(it.key(), &used);
    } catch (const std::exception&) {
    }
    QWENQ_CHECK(used == it.key().size() && id >= 0 && id < static_cast<long long>(names.size()) &&
                    it.value().is_string() && names[static_cast<size_t>(id)].empty(),
                path << ": id2label must map each id 0.." << names.size() - 1 << " to one name; \"" << it.key()
                     << "\": " << it.value().dump());
    names[static_cast<size_t>(id)] = it.value().get<std::string>();
  }
  return names;
}

std::vector<std::string> config_label_names(const std::string& model_dir) {
  const std::string path = path_join(model_dir, "config.json");
  const nlohmann::json cfg = read_json_file(path);
  if (!cfg.contains("id2label") || !cfg["id2label"].is_object()) return {};
  const nlohmann::json& m = cfg["id2label"];
  std::vector<std::string> names;
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string key = std::to_string(i);
    QWENQ_CHECK(m.contains(key) && m[key].is_string(), path << ": id2label has no name for label " << i);
    names.push_back(m[key].get<std::string>());
  }
  return names;
}

}  // namespace qwenq
