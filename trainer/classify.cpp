// Sequence classification: labelled texts, the loss of the head's logits per problem type (trainer/classify.h).
#include "trainer/classify.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
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
  std::string text, pair, where;  // pair: the second text (--text-pair-field), else empty
  Json label;  // as read: an integer, a string, a number or a list of them (null: none, ClassifyDataOptions::unlabelled_ok)
  std::string json;  // the record
};

// "" or why `label` is not a label of problem type t (when the type is not known yet: of any type).
std::string label_shape_error(const Json& label, const std::optional<ProblemType>& t, const std::string& field) {
  const std::string got = label.dump().substr(0, 80);
  const auto all = [&](bool (*ok)(const Json&)) { return std::all_of(label.begin(), label.end(), ok); };
  const auto id_or_name = [](const Json& v) { return v.is_number_integer() || v.is_string(); };
  const auto number = [](const Json& v) { return v.is_number(); };
  if (!t) {
    if (id_or_name(label) || label.is_number() || (label.is_array() && (all(id_or_name) || all(number)))) return "";
    return "\"" + field + "\" must be a label (an integer or a name), a list of labels or numbers, got " + got;
  }
  switch (*t) {
    case ProblemType::kSingleLabel:
      if (id_or_name(label)) return "";
      if (label.is_number())
        return "\"" + field + "\" " + got + " is not a label id or name (a regression head: --problem-type regression)";
      return "\"" + field + "\" must be an integer or a label name, got " + got;
    case ProblemType::kMultiLabel:
      if (label.is_array() && all(id_or_name)) return "";
      return "\"" + field + "\" must be the list of the text's labels (names or ids) for " +
             problem_type_name(*t) + ", got " + got;
    default:
      if (label.is_number() || (label.is_array() && !label.empty() && all(number))) return "";
      return "\"" + field + "\" must be a number or a list of numbers for regression, got " + got;
  }
}

// "" or why the record is malformed.
std::string labelled_text_from_json(const Json& j, const ClassifyDataOptions& o, LabelledText* out) {
  if (!j.is_object()) return std::string("expected a JSON object, got ") + j.type_name();
  if (!j.contains(o.text_field)) return "no \"" + o.text_field + "\" (the text to classify; --text-field names it)";
  const Json& text = j[o.text_field];
  if (!text.is_string() || text.get<std::string>().empty())
    return "\"" + o.text_field + "\" must be a non-empty string, got " + text.dump();
  if (!o.text_pair_field.empty()) {
    if (!j.contains(o.text_pair_field)) return "no \"" + o.text_pair_field + "\" (the pair's second text, --text-pair-field)";
    const Json& pair = j[o.text_pair_field];
    if (!pair.is_string() || pair.get<std::string>().empty())
      return "\"" + o.text_pair_field + "\" must be a non-empty string, got " + pair.dump();
    out->pair = pair.get<std::string>();
  }
  out->text = text.get<std::string>();
  out->json = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (!j.contains(o.label_field)) {
    if (o.unlabelled_ok) return "";  // a text to predict (label null)
    return "no \"" + o.label_field + "\" (the label; --label-field names it)";
  }
  const std::string why = label_shape_error(j[o.label_field], o.problem_type, o.label_field);
  if (!why.empty()) return why;
  out->label = j[o.label_field];
  return "";
}

// The label names a classification file implies (top of classify.h): over each record's label, or each entry of its
// list (multi-label).
std::vector<std::string> names_from(const std::vector<LabelledText>& records, bool lists, const std::string& path,
                                    const std::string& field) {
  bool ints = false, strings = false;
  int64_t max_id = -1;
  std::set<std::string> names;
  const auto see = [&](const Json& label, const std::string& where) {
    if (label.is_string()) {
      strings = true;
      names.insert(label.get<std::string>());
    } else {
      ints = true;
      const int64_t id = label.get<int64_t>();
      QWENQ_CHECK(id >= 0, where << ": label " << id << " is negative (ids are 0, 1, ...)");
      max_id = std::max(max_id, id);
    }
  };
  for (const LabelledText& r : records) {
    if (!lists) see(r.label, r.where);
    else
      for (const Json& v : r.label) see(v, r.where);
  }
  QWENQ_CHECK(!(ints && strings), path << ": \"" << field << "\" holds both integers and names; give every label one "
                                       << "way, or name them all with --labels");
  std::vector<std::string> out;
  if (strings) out.assign(names.begin(), names.end());
  for (int64_t i = 0; i <= max_id; ++i) out.push_back("LABEL_" + std::to_string(i));
  if (out.size() == 1 && ints && !lists) out.push_back("LABEL_1");  // one id seen: still two classes
  return out;
}

// A regression label's values (a number or a list).
std::vector<float> regression_values(const Json& label) {
  std::vector<float> v;
  if (label.is_array())
    for (const Json& x : label) v.push_back(x.get<float>());
  else
    v.push_back(label.get<float>());
  return v;
}

std::string names_list(const std::vector<std::string>& names) {
  std::string l;
  for (const std::string& n : names) l += (l.empty() ? "" : ", ") + n;
  return l;
}

}  // namespace

const char* problem_type_name(ProblemType t) {
  switch (t) {
    case ProblemType::kSingleLabel: return "single_label_classification";
    case ProblemType::kMultiLabel: return "multi_label_classification";
    default: return "regression";
  }
}

bool problem_type_from_name(const std::string& name, ProblemType* out) {
  for (ProblemType t : {ProblemType::kSingleLabel, ProblemType::kMultiLabel, ProblemType::kRegression}) {
    if (name == problem_type_name(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

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
  const auto unlabelled = [](const LabelledText& r) { return r.label.is_null(); };
  const auto first_bare = std::find_if(records.begin(), records.end(), unlabelled);
  ds.unlabelled = first_bare == records.begin() && std::all_of(records.begin(), records.end(), unlabelled);
  QWENQ_CHECK(first_bare == records.end() || ds.unlabelled,
              first_bare->where << ": no \"" << labels->label_field << "\", where other records have one");
  if (ds.unlabelled) {
    QWENQ_CHECK(labels->problem_type && !labels->label_names.empty(),
                path << ": no record has a \"" << labels->label_field << "\"; predicting needs the label names and "
                     << "the problem type (an adapter's labels.json, or --labels and --problem-type)");
  }
  if (!labels->problem_type) {  // a list label: multi-label; else single-label (top)
    const bool lists = std::any_of(records.begin(), records.end(), [](const LabelledText& r) { return r.label.is_array(); });
    labels->problem_type = lists ? ProblemType::kMultiLabel : ProblemType::kSingleLabel;
    for (const LabelledText& r : records) {
      const std::string why = label_shape_error(r.label, labels->problem_type, labels->label_field);
      QWENQ_CHECK(why.empty(), r.where << ": " << why << (lists ? " (another record's label is a list: "
                                                                  "multi_label_classification)" : ""));
    }
  }
  const ProblemType type = *labels->problem_type;
  const bool regression = type == ProblemType::kRegression, multi = type == ProblemType::kMultiLabel;
  if (labels->label_names.empty()) {
    if (regression) {  // the first record's count of values, LABEL_<i>
      const size_t n = regression_values(records.front().label).size();
      for (size_t i = 0; i < n; ++i) labels->label_names.push_back("LABEL_" + std::to_string(i));
    } else {
      labels->label_names = names_from(records, multi, path, labels->label_field);
    }
  }
  const std::vector<std::string>& names = labels->label_names;
  const size_t C = names.size();
  if (type == ProblemType::kSingleLabel)
    QWENQ_CHECK(C >= 2, path << ": " << C << " label(s); a classifier needs at least 2");
  QWENQ_CHECK(C >= 1, path << ": no label in any record; a " << problem_type_name(type) << " head needs at least one "
                           << "(--labels names them)");
  std::map<std::string, int32_t> id_of;
  for (size_t i = 0; i < C; ++i) {
    QWENQ_CHECK(id_of.emplace(names[i], static_cast<int32_t>(i)).second, "the label name \"" << names[i]
                                                                              << "\" is given twice");
  }
  // A label's id: a name among `names` or an integer in [0, C), else an error naming the record.
  const auto id_of_label = [&](const Json& label, const std::string& where) {
    if (label.is_string()) {
      const auto it = id_of.find(label.get<std::string>());
      QWENQ_CHECK(it != id_of.end(), where << ": label \"" << label.get<std::string>() << "\" is not one of the " << C
                                           << " labels (" << names_list(names) << ")");
      return it->second;
    }
    const int64_t id = label.get<int64_t>();
    QWENQ_CHECK(id >= 0 && id < static_cast<int64_t>(C), where << ": label " << id << " is outside [0, " << C << ")");
    return static_cast<int32_t>(id);
  };
  std::vector<SftExample> examples;
  std::vector<ClassifyTarget> targets;
  for (const LabelledText& r : records) {
    ClassifyTarget y;
    if (ds.unlabelled) {
      // (a placeholder: nothing reads it)
    } else if (type == ProblemType::kSingleLabel) {
      y.id = id_of_label(r.label, r.where);
    } else if (multi) {
      y.values.assign(C, 0.0f);
      for (const Json& v : r.label) y.values[static_cast<size_t>(id_of_label(v, r.where))] = 1.0f;
    } else {
      y.values = regression_values(r.label);
      QWENQ_CHECK(y.values.size() == C, r.where << ": " << y.values.size() << " value(s) for a regression head of " << C
                                                << " output(s) (" << names_list(names) << ")");
      for (float v : y.values) QWENQ_CHECK(std::isfinite(v), r.where << ": the regression target " << v << " is not finite");
    }
    SftExample ex;
    const bool pair = !labels->text_pair_field.empty();
    ex.tokens = pair ? tok.encode_pair(r.text, r.pair) : tok.encode(r.text, /*add_special_tokens=*/true);
    QWENQ_CHECK(!ex.tokens.empty(), r.where << ": the text encodes to no token");
    st.longest = std::max<int64_t>(st.longest, static_cast<int64_t>(ex.tokens.size()));
    if (static_cast<int64_t>(ex.tokens.size()) > opt.max_len) {
      ++st.truncated;
      st.truncated_tokens += static_cast<int64_t>(ex.tokens.size()) - opt.max_len;
      if (pair) {
        try {
          ex.tokens = tok.encode_pair(r.text, r.pair, opt.max_len);
        } catch (const Error& e) {
          QWENQ_FAIL(r.where << ": " << e.what());
        }
      } else {
        ex.tokens.resize(static_cast<size_t>(opt.max_len));
      }
    }
    ex.loss_mask.assign(ex.tokens.size(), 0);
    st.tokens += static_cast<int64_t>(ex.tokens.size());
    ++st.records;
    examples.push_back(std::move(ex));
    targets.push_back(std::move(y));
  }
  std::vector<int64_t> train, eval;
  split_sft_indices(static_cast<int64_t>(examples.size()), opt.seed, opt.eval_fraction, opt.eval_count, &train, &eval);
  for (int64_t i : train) {
    ds.train.push_back(examples[static_cast<size_t>(i)]);
    ds.train_targets.push_back(targets[static_cast<size_t>(i)]);
    ds.train_index.push_back(i);
    ds.train_records.push_back(records[static_cast<size_t>(i)].json);
  }
  for (int64_t i : eval) {
    ds.eval.push_back(examples[static_cast<size_t>(i)]);
    ds.eval_targets.push_back(targets[static_cast<size_t>(i)]);
    ds.eval_index.push_back(i);
    ds.eval_records.push_back(records[static_cast<size_t>(i)].json);
  }
  st.train_examples = static_cast<int64_t>(train.size());
  st.eval_examples = static_cast<int64_t>(eval.size());
  return ds;
}

double ClassifyStats::f1() const {
  const int64_t d = 2 * tp + fp + fn;
  return d > 0 ? 2.0 * static_cast<double>(tp) / static_cast<double>(d) : 0.0;
}

double ClassifyStats::pearson() const {
  if (examples < 2) return 0.0;
  const double n = static_cast<double>(examples);
  const double vz = szz - sz * sz / n, vy = syy - sy * sy / n, c = szy - sz * sy / n;
  if (!(vz > 0) || !(vy > 0)) return 0.0;
  return c / std::sqrt(vz * vy);
}

void ClassifyStats::add(const ClassifyStats& o) {
  const std::vector<double> a = pack(), b = o.pack();
  std::vector<double> s(a.size());
  for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + b[i];
  *this = unpack(s);
}

std::vector<double> ClassifyStats::pack() const {
  return {static_cast<double>(examples), static_cast<double>(correct), loss, static_cast<double>(tp),
          static_cast<double>(fp), static_cast<double>(fn), sz, sy, szz, syy, szy};
}

ClassifyStats ClassifyStats::unpack(const std::vector<double>& v) {
  QWENQ_CHECK(v.size() == 11, "ClassifyStats::unpack: " << v.size() << " numbers");
  ClassifyStats s;
  s.examples = static_cast<int64_t>(v[0]);
  s.correct = static_cast<int64_t>(v[1]);
  s.loss = v[2];
  s.tp = static_cast<int64_t>(v[3]);
  s.fp = static_cast<int64_t>(v[4]);
  s.fn = static_cast<int64_t>(v[5]);
  s.sz = v[6];
  s.sy = v[7];
  s.szz = v[8];
  s.syy = v[9];
  s.szy = v[10];
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

// softplus(z) = log(1 + e^z) without overflow.
double softplus(double z) { return std::max(z, 0.0) + std::log1p(std::exp(-std::fabs(z))); }
double sigmoid(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }

void check_logits(const std::vector<double>& logits, const std::vector<ClassifyTarget>& targets, const ClassifyTask& t) {
  const int64_t C = t.num_labels;
  QWENQ_CHECK(C >= (t.type == ProblemType::kSingleLabel ? 2 : 1) &&
                  logits.size() == targets.size() * static_cast<size_t>(C),
              "classify: " << logits.size() << " logits for " << targets.size() << " examples of " << C << " labels");
  for (const ClassifyTarget& y : targets) {
    if (t.type == ProblemType::kSingleLabel) {
      QWENQ_CHECK(y.id >= 0 && y.id < C, "classify: label " << y.id << " outside [0, " << C << ")");
    } else {
      QWENQ_CHECK(static_cast<int64_t>(y.values.size()) == C,
                  "classify: a target of " << y.values.size() << " values for " << C << " outputs");
    }
  }
}

}  // namespace

ClassifyStats classify_batch_stats(const std::vector<double>& logits, const std::vector<ClassifyTarget>& targets,
                                   const ClassifyTask& task) {
  check_logits(logits, targets, task);
  const int64_t C = task.num_labels;
  ClassifyStats s;
  std::vector<double> p;
  for (size_t j = 0; j < targets.size(); ++j) {
    const double* z = logits.data() + j * static_cast<size_t>(C);
    const ClassifyTarget& y = targets[j];
    ++s.examples;
    if (task.type == ProblemType::kSingleLabel) {
      s.loss += softmax_and_loss(z, C, y.id, &p);
      s.correct += std::max_element(z, z + C) - z == y.id;
      continue;
    }
    double l = 0;
    bool all_right = true;
    for (int64_t c = 0; c < C; ++c) {
      const double t = y.values[static_cast<size_t>(c)];
      if (task.type == ProblemType::kMultiLabel) {
        l += softplus(z[c]) - t * z[c];
        const bool predicted = z[c] > 0, truth = t > 0.5;
        all_right = all_right && predicted == truth;
        s.tp += predicted && truth;
        s.fp += predicted && !truth;
        s.fn += !predicted && truth;
      } else {
        l += (z[c] - t) * (z[c] - t);
        s.sz += z[c];
        s.sy += t;
        s.szz += z[c] * z[c];
        s.syy += t * t;
        s.szy += z[c] * t;
      }
    }
    s.loss += l / static_cast<double>(C);
    s.correct += task.type == ProblemType::kMultiLabel && all_right;
  }
  return s;
}

std::function<std::vector<double>(const std::vector<double>&)> classify_objective(std::vector<ClassifyTarget> targets,
                                                                                  const ClassifyTask& task,
                                                                                  int64_t step_examples,
                                                                                  ClassifyStats* stats) {
  QWENQ_CHECK(step_examples >= 1, "classify_objective: a step of " << step_examples << " examples");
  return [targets = std::move(targets), task, step_examples, stats](const std::vector<double>& logits) {
    check_logits(logits, targets, task);
    const int64_t C = task.num_labels;
    std::vector<double> d(logits.size());
    std::vector<double> p;
    const double n = static_cast<double>(step_examples), nc = n * static_cast<double>(C);
    for (size_t j = 0; j < targets.size(); ++j) {
      const double* z = logits.data() + j * static_cast<size_t>(C);
      double* dz = d.data() + j * static_cast<size_t>(C);
      const ClassifyTarget& y = targets[j];
      if (task.type == ProblemType::kSingleLabel) softmax_and_loss(z, C, y.id, &p);
      for (int64_t c = 0; c < C; ++c) {
        switch (task.type) {
          case ProblemType::kSingleLabel:
            dz[c] = (p[static_cast<size_t>(c)] - (c == y.id ? 1.0 : 0.0)) / n;
            break;
          case ProblemType::kMultiLabel:
            dz[c] = (sigmoid(z[c]) - static_cast<double>(y.values[static_cast<size_t>(c)])) / nc;
            break;
          default:
            dz[c] = 2.0 * (z[c] - static_cast<double>(y.values[static_cast<size_t>(c)])) / nc;
        }
      }
    }
    if (stats) stats->add(classify_batch_stats(logits, targets, task));
    return d;
  };
}

namespace {

double ratio(int64_t num, int64_t den) { return den > 0 ? static_cast<double>(num) / static_cast<double>(den) : 0.0; }

// The 1-based rank of each value, tied values sharing the mean of their ranks.
std::vector<double> mean_ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> rank(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double mean = 0.5 * static_cast<double>(i + j) + 1.0;
    for (size_t k = i; k <= j; ++k) rank[order[k]] = mean;
    i = j + 1;
  }
  return rank;
}

}  // namespace

double ClassifyLabelReport::precision(size_t c) const { return ratio(tp[c], tp[c] + fp[c]); }
double ClassifyLabelReport::recall(size_t c) const { return ratio(tp[c], tp[c] + fn[c]); }
double ClassifyLabelReport::f1(size_t c) const { return ratio(2 * tp[c], 2 * tp[c] + fp[c] + fn[c]); }

double ClassifyLabelReport::macro_f1() const {
  double sum = 0;
  for (size_t c = 0; c < tp.size(); ++c) sum += f1(c);
  return tp.empty() ? 0.0 : sum / static_cast<double>(tp.size());
}

ClassifyLabelReport classify_label_report(const std::vector<double>& logits, const std::vector<ClassifyTarget>& targets,
                                          const ClassifyTask& task) {
  check_logits(logits, targets, task);
  const size_t C = static_cast<size_t>(task.num_labels);
  ClassifyLabelReport r;
  if (task.type == ProblemType::kRegression) {
    for (size_t c = 0; c < C; ++c) {  // each output as a one-output regression
      std::vector<double> z;
      std::vector<ClassifyTarget> y;
      for (size_t j = 0; j < targets.size(); ++j) {
        z.push_back(logits[j * C + c]);
        y.push_back(ClassifyTarget{-1, {targets[j].values[c]}});
      }
      const ClassifyStats s = classify_batch_stats(z, y, ClassifyTask{ProblemType::kRegression, 1});
      r.mse.push_back(s.objective());
      r.pearson.push_back(s.pearson());
      std::vector<double> rz = mean_ranks(z), ry;
      for (const ClassifyTarget& t : y) ry.push_back(t.values[0]);
      ry = mean_ranks(ry);
      std::vector<ClassifyTarget> ranked;
      for (double v : ry) ranked.push_back(ClassifyTarget{-1, {static_cast<float>(v)}});
      r.spearman.push_back(classify_batch_stats(rz, ranked, ClassifyTask{ProblemType::kRegression, 1}).pearson());
    }
    return r;
  }
  r.tp.assign(C, 0);
  r.fp.assign(C, 0);
  r.fn.assign(C, 0);
  if (task.type == ProblemType::kSingleLabel) r.confusion.assign(C, std::vector<int64_t>(C, 0));
  for (size_t j = 0; j < targets.size(); ++j) {
    const double* z = logits.data() + j * C;
    if (task.type == ProblemType::kSingleLabel) {
      const size_t p = static_cast<size_t>(std::max_element(z, z + C) - z), t = static_cast<size_t>(targets[j].id);
      ++r.confusion[t][p];
      if (p == t) {
        ++r.tp[t];
      } else {
        ++r.fp[p];
        ++r.fn[t];
      }
      continue;
    }
    for (size_t c = 0; c < C; ++c) {
      const bool predicted = z[c] > 0, truth = targets[j].values[c] > 0.5f;
      r.tp[c] += predicted && truth;
      r.fp[c] += predicted && !truth;
      r.fn[c] += !predicted && truth;
    }
  }
  return r;
}

nlohmann::ordered_json classify_report_json(const ClassifyLabelReport& r, const ClassifyTask& task,
                                            const std::vector<std::string>& names) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (task.type == ProblemType::kRegression) {
    j["per_output"] = nlohmann::ordered_json::array();
    for (size_t c = 0; c < r.mse.size(); ++c)
      j["per_output"].push_back(
          {{"output", names.at(c)}, {"mse", r.mse[c]}, {"pearson", r.pearson[c]}, {"spearman", r.spearman[c]}});
    return j;
  }
  j["per_label"] = nlohmann::ordered_json::array();
  for (size_t c = 0; c < r.tp.size(); ++c) {
    j["per_label"].push_back({{"label", names.at(c)},
                              {"precision", r.precision(c)},
                              {"recall", r.recall(c)},
                              {"f1", r.f1(c)},
                              {"support", r.support(c)}});
  }
  j["macro_f1"] = r.macro_f1();
  if (!r.confusion.empty()) j["confusion"] = r.confusion;
  return j;
}

std::string classify_report_text(const ClassifyLabelReport& r, const ClassifyTask& task,
                                 const std::vector<std::string>& names) {
  size_t w = 6;
  for (const std::string& n : names) w = std::max(w, std::min<size_t>(n.size(), 32));
  const int width = static_cast<int>(w);
  std::string out;
  char buf[160];
  if (task.type == ProblemType::kRegression) {
    std::snprintf(buf, sizeof buf, "%-*s %10s %8s %8s\n", width, "output", "mse", "pearson", "spearman");
    out += buf;
    for (size_t c = 0; c < r.mse.size(); ++c) {
      std::snprintf(buf, sizeof buf, "%-*.*s %10.4f %8.3f %8.3f\n", width, width, names.at(c).c_str(), r.mse[c],
                    r.pearson[c], r.spearman[c]);
      out += buf;
    }
    return out;
  }
  std::snprintf(buf, sizeof buf, "%-*s %9s %6s %6s %8s\n", width, "label", "precision", "recall", "f1", "support");
  out += buf;
  for (size_t c = 0; c < r.tp.size(); ++c) {
    std::snprintf(buf, sizeof buf, "%-*.*s %9.3f %6.3f %6.3f %8lld\n", width, width, names.at(c).c_str(), r.precision(c),
                  r.recall(c), r.f1(c), static_cast<long long>(r.support(c)));
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "macro F1 %.3f\n", r.macro_f1());
  out += buf;
  if (!r.confusion.empty() && r.confusion.size() <= 12) {
    out += "confusion (rows: the true label, columns: the predicted one)\n";
    std::snprintf(buf, sizeof buf, "%-*s", width, "");
    out += buf;
    for (const std::string& n : names) {
      std::snprintf(buf, sizeof buf, " %6.6s", n.c_str());
      out += buf;
    }
    out += "\n";
    for (size_t t = 0; t < r.confusion.size(); ++t) {
      std::snprintf(buf, sizeof buf, "%-*.*s", width, width, names.at(t).c_str());
      out += buf;
      for (int64_t v : r.confusion[t]) {
        std::snprintf(buf, sizeof buf, " %6lld", static_cast<long long>(v));
        out += buf;
      }
      out += "\n";
    }
  }
  return out;
}

nlohmann::ordered_json classify_prediction(const double* z, const ClassifyTask& task,
                                           const std::vector<std::string>& names) {
  const size_t C = static_cast<size_t>(task.num_labels);
  QWENQ_CHECK(names.size() == C, "classify_prediction: " << names.size() << " names for " << C << " outputs");
  const std::vector<double> scores(z, z + C);
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  switch (task.type) {
    case ProblemType::kSingleLabel: {
      std::vector<double> p;
      softmax_and_loss(z, task.num_labels, 0, &p);
      j["predicted"] = names[static_cast<size_t>(std::max_element(z, z + C) - z)];
      j["scores"] = scores;
      j["probabilities"] = p;
      break;
    }
    case ProblemType::kMultiLabel: {
      std::vector<std::string> on;
      std::vector<double> p;
      for (size_t c = 0; c < C; ++c) {
        if (z[c] > 0) on.push_back(names[c]);
        p.push_back(sigmoid(z[c]));
      }
      j["predicted"] = on;
      j["scores"] = scores;
      j["probabilities"] = p;
      break;
    }
    default:
      j["predicted"] = C == 1 ? nlohmann::ordered_json(z[0]) : nlohmann::ordered_json(scores);
      j["scores"] = scores;
  }
  return j;
}

std::vector<std::string> classify_metric_names(const ClassifyTask& task) {
  switch (task.type) {
    case ProblemType::kSingleLabel: return {"accuracy"};
    case ProblemType::kMultiLabel: return {"accuracy", "f1"};
    default: return task.num_labels == 1 ? std::vector<std::string>{"pearson"} : std::vector<std::string>{};
  }
}

namespace {

// One of classify_metric_names' metrics of `s`.
double metric_value(const ClassifyStats& s, const std::string& name) {
  return name == "accuracy" ? s.accuracy() : name == "f1" ? s.f1() : s.pearson();
}

// The problem type a JSON file's "problem_type" value names (labels.json, a classifier's config.json).
ProblemType problem_type_in(const nlohmann::json& v, const std::string& path) {
  ProblemType t;
  QWENQ_CHECK(v.is_string() && problem_type_from_name(v.get<std::string>(), &t),
              path << ": \"problem_type\" must be single_label_classification, multi_label_classification or "
                      "regression, got " << v.dump());
  return t;
}

}  // namespace

void add_classify_metrics(const ClassifyStats& s, const ClassifyTask& task, const std::string& prefix,
                          nlohmann::json* record) {
  for (const std::string& m : classify_metric_names(task)) {
    (*record)[prefix + m] = metric_value(s, m);
  }
}

std::string classify_metrics_text(const ClassifyStats& s, const ClassifyTask& task) {
  std::string out;
  char buf[48];
  for (const std::string& m : classify_metric_names(task)) {
    std::snprintf(buf, sizeof buf, "%s%s %.3f", out.empty() ? "" : ", ", m.c_str(),
                  metric_value(s, m));
    out += buf;
  }
  return out;
}

void write_label_names(const std::string& dir, const std::vector<std::string>& names, ProblemType type) {
  nlohmann::ordered_json id2label = nlohmann::ordered_json::object();
  for (size_t i = 0; i < names.size(); ++i) id2label[std::to_string(i)] = names[i];
  nlohmann::ordered_json j{{"id2label", id2label}};
  if (type != ProblemType::kSingleLabel) j["problem_type"] = problem_type_name(type);
  write_file_atomic(path_join(dir, "labels.json"), j.dump(2) + "\n");
}

std::vector<std::string> read_label_names(const std::string& dir, ProblemType* type) {
  const std::string path = path_join(dir, "labels.json");
  if (type) *type = ProblemType::kSingleLabel;
  if (!file_exists(path)) return {};
  const nlohmann::json j = read_json_file(path);
  QWENQ_CHECK(j.contains("id2label") && j["id2label"].is_object(), path << ": no \"id2label\" object");
  if (j.contains("problem_type")) {
    const ProblemType t = problem_type_in(j["problem_type"], path);
    if (type) *type = t;
  }
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

bool config_problem_type(const std::string& model_dir, ProblemType* type) {
  const std::string path = path_join(model_dir, "config.json");
  const nlohmann::json cfg = read_json_file(path);
  if (!cfg.contains("problem_type") || cfg["problem_type"].is_null()) return false;
  *type = problem_type_in(cfg["problem_type"], path);
  return true;
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
