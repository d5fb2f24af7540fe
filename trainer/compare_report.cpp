#include "trainer/compare_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "core/progress.h"

namespace qwenq {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

double delta_pct(const CompareTable& t, const CompareRow& r, size_t d) {
  const double base = t.rows.front().perplexity[d];
  return 100.0 * (r.perplexity[d] - base) / base;
}

bool has_kld(const CompareRow& r, size_t d) { return d < r.kld.size() && d < r.same_top1.size(); }
bool has_acc(const CompareRow& r, size_t c) { return c < r.acc.size() && c < r.acc_norm.size(); }
bool has_gsm8k(const CompareRow& r) { return r.gsm8k_strict >= 0 && r.gsm8k_flexible >= 0; }

std::string group_str(const CompareRow& r) { return r.group_size == 0 ? "-" : std::to_string(r.group_size); }

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o += c;
  }
  return o;
}

}  // namespace

std::string compare_markdown(const CompareTable& t) {
  std::string s = "| method | format | bits | group | size | ";
  for (const auto& d : t.datasets) {
    s += "ppl " + d + " | Δ " + d + " | ";
    if (t.kld) s += "KLD " + d + " | top-1 " + d + " | ";
  }
  for (const auto& c : t.choice_sets) s += "acc " + c + " | acc_norm " + c + " | ";
  if (!t.gsm8k_set.empty()) s += "gsm8k strict " + t.gsm8k_set + " | gsm8k flexible " + t.gsm8k_set + " | ";
  s += "quant time | quant peak RSS |\n|---|---|---|---|---|";
  for (size_t i = 0; i < t.datasets.size(); ++i) s += t.kld ? "---|---|---|---|" : "---|---|";
  for (size_t i = 0; i < t.choice_sets.size(); ++i) s += "---|---|";
  if (!t.gsm8k_set.empty()) s += "---|---|";
  s += "---|---|\n";
  for (const CompareRow& r : t.rows) {
    const bool base = &r == &t.rows.front();
    s += "| " + r.method + " | " + r.format + " | " + std::to_string(r.bits) + " | " + group_str(r) + " | " +
         format_bytes(r.size_bytes) + " | ";
    for (size_t d = 0; d < t.datasets.size(); ++d) {
      s += fmt("%.4f", r.perplexity[d]) + " | " + (base ? std::string("-") : fmt("%+.2f%%", delta_pct(t, r, d))) + " | ";
      if (t.kld) {
        s += has_kld(r, d) ? fmt("%.6f", r.kld[d]) + " | " + fmt("%.2f%%", 100 * r.same_top1[d]) + " | " : "- | - | ";
      }
    }
    for (size_t c = 0; c < t.choice_sets.size(); ++c) {
      s += has_acc(r, c) ? fmt("%.2f%%", 100 * r.acc[c]) + " | " + fmt("%.2f%%", 100 * r.acc_norm[c]) + " | " : "- | - | ";
    }
    if (!t.gsm8k_set.empty()) {
      s += has_gsm8k(r) ? fmt("%.2f%%", 100 * r.gsm8k_strict) + " | " + fmt("%.2f%%", 100 * r.gsm8k_flexible) + " | "
                        : "- | - | ";
    }
    s += (base || r.given ? std::string("-") : fmt("%.2f s", r.quant_seconds)) + " | " +
         (base || r.given ? std::string("-") : format_bytes(r.quant_peak_rss)) + " |\n";
  }
  return s;
}

std::string compare_csv(const CompareTable& t) {
  std::string s = "method,format,bits,group_size,size_bytes";
  for (const auto& d : t.datasets) s += ",ppl_" + d + ",delta_pct_" + d + (t.kld ? ",kld_" + d + ",same_top1_" + d : "");
  for (const auto& c : t.choice_sets) s += ",acc_" + c + ",acc_norm_" + c;
  if (!t.gsm8k_set.empty()) s += ",gsm8k_strict_" + t.gsm8k_set + ",gsm8k_flexible_" + t.gsm8k_set;
  s += ",quant_seconds,quant_peak_rss_bytes\n";
  for (const CompareRow& r : t.rows) {
    s += r.method + "," + r.format + "," + std::to_string(r.bits) + "," + std::to_string(r.group_size) + "," +
         std::to_string(r.size_bytes);
    for (size_t d = 0; d < t.datasets.size(); ++d) {
      s += "," + fmt("%.6f", r.perplexity[d]) + "," + fmt("%.4f", delta_pct(t, r, d));
      if (t.kld) s += has_kld(r, d) ? "," + fmt("%.8f", r.kld[d]) + "," + fmt("%.6f", r.same_top1[d]) : ",,";
    }
    for (size_t c = 0; c < t.choice_sets.size(); ++c)
      s += has_acc(r, c) ? "," + fmt("%.6f", r.acc[c]) + "," + fmt("%.6f", r.acc_norm[c]) : ",,";
    if (!t.gsm8k_set.empty())
      s += has_gsm8k(r) ? "," + fmt("%.6f", r.gsm8k_strict) + "," + fmt("%.6f", r.gsm8k_flexible) : ",,";
    s += r.given ? std::string(",,\n") : "," + fmt("%.3f", r.quant_seconds) + "," + std::to_string(r.quant_peak_rss) + "\n";
  }
  return s;
}

std::string compare_json(const CompareTable& t) {
  nlohmann::ordered_json j = {{"model", t.model}, {"datasets", t.datasets}, {"seq_len", t.seq_len},
                              {"max_windows", t.max_windows}, {"kld", t.kld}, {"choice_sets", t.choice_sets}};
  if (t.kld) j["kld_scoring"] = t.kld_scoring;
  if (!t.gsm8k_set.empty()) j["gsm8k"] = {{"set", t.gsm8k_set}, {"fewshot", t.gsm8k_fewshot}};
  j["rows"] = nlohmann::ordered_json::array();
  for (const CompareRow& r : t.rows) {
    nlohmann::ordered_json row = {{"method", r.method}, {"format", r.format}, {"bits", r.bits},
                                  {"group_size", r.group_size}, {"size_bytes", r.size_bytes}};
    for (size_t d = 0; d < t.datasets.size(); ++d) {
      row["perplexity"][t.datasets[d]] = r.perplexity[d];
      row["delta_pct"][t.datasets[d]] = delta_pct(t, r, d);
      if (has_kld(r, d)) {
        row["kld"][t.datasets[d]] = r.kld[d];
        row["same_top1"][t.datasets[d]] = r.same_top1[d];
      }
    }
    for (size_t c = 0; c < t.choice_sets.size(); ++c) {
      if (!has_acc(r, c)) continue;
      row["acc"][t.choice_sets[c]] = r.acc[c];
      row["acc_norm"][t.choice_sets[c]] = r.acc_norm[c];
    }
    if (!t.gsm8k_set.empty() && has_gsm8k(r)) {
      row["gsm8k"] = {{"exact_match_strict", r.gsm8k_strict}, {"exact_match_flexible", r.gsm8k_flexible}};
    }
    if (r.given) {
      row["given"] = true;  // quantized elsewhere: no time or memory of ours
      row["quant_seconds"] = nullptr;
      row["quant_peak_rss_bytes"] = nullptr;
    } else {
      row["quant_seconds"] = r.quant_seconds;
      row["quant_peak_rss_bytes"] = r.quant_peak_rss;
    }
    j["rows"].push_back(row);
  }
  return j.dump(2) + "\n";
}

std::string compare_svg(const CompareTable& t) {
  // One group of bars per method (original excluded), one bar per dataset; x = perplexity increase in %.
  const char* colors[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"};
  const size_t nd = t.datasets.size(), nm = t.rows.size() - 1;
  double max_delta = 1.0;
  for (size_t m = 1; m < t.rows.size(); ++m) {
    for (size_t d = 0; d < nd; ++d) max_delta = std::max(max_delta, delta_pct(t, t.rows[m], d));
  }
  max_delta = std::ceil(max_delta / 5.0) * 5.0;
  const int label_w = 190, plot_w = 460, bar_h = 16, gap = 12, top = 56;
  const int height = top + static_cast<int>(nm * (nd * bar_h + gap)) + 50;
  std::string s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(label_w + plot_w + 90) +
                  "\" height=\"" + std::to_string(height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Perplexity increase over the original: " +
       xml_escape(t.model) + "</text>\n";
  for (size_t d = 0; d < nd; ++d) {
    const int x = label_w + static_cast<int>(d) * 150;
    s += "<rect x=\"" + std::to_string(x) + "\" y=\"32\" width=\"12\" height=\"12\" fill=\"" + colors[d % 5] + "\"/>";
    s += "<text x=\"" + std::to_string(x + 16) + "\" y=\"43\">" + xml_escape(t.datasets[d]) + "</text>\n";
  }
  for (int tick = 0; tick <= 5; ++tick) {
    const double v = max_delta * tick / 5;
    const int x = label_w + static_cast<int>(plot_w * tick / 5);
    s += "<line x1=\"" + std::to_string(x) + "\" y1=\"" + std::to_string(top - 4) + "\" x2=\"" + std::to_string(x) +
         "\" y2=\"" + std::to_string(height - 40) + "\" stroke=\"#ddd\"/>";
    s += "<text x=\"" + std::to_string(x) + "\" y=\"" + std::to_string(height - 26) + "\" text-anchor=\"middle\">" +
         fmt("%.0f%%", v) + "</text>\n";
  }
  int y = top;
  for (size_t m = 1; m < t.rows.size(); ++m) {
    const CompareRow& r = t.rows[m];
    s += "<text x=\"" + std::to_string(label_w - 8) + "\" y=\"" + std::to_string(y + static_cast<int>(nd) * bar_h / 2 + 4) +
         "\" text-anchor=\"end\">" + xml_escape(r.method) + " (" + format_bytes(r.size_bytes) + ")</text>\n";
    for (size_t d = 0; d < nd; ++d) {
      const double v = std::max(0.0, delta_pct(t, r, d));
      const int w = static_cast<int>(plot_w * v / max_delta);
      s += "<rect x=\"" + std::to_string(label_w) + "\" y=\"" + std::to_string(y) + "\" width=\"" + std::to_string(w) +
           "\" height=\"" + std::to_string(bar_h - 2) + "\" fill=\"" + colors[d % 5] + "\"/>";
      s += "<text x=\"" + std::to_string(label_w + w + 4) + "\" y=\"" + std::to_string(y + bar_h - 4) + "\">" +
           fmt("%+.2f%%", delta_pct(t, r, d)) + "</text>\n";
      y += bar_h;
    }
    y += gap;
  }
  s += "<text x=\"" + std::to_string(label_w) + "\" y=\"" + std::to_string(height - 8) +
       "\">perplexity increase (%), seq_len " + std::to_string(t.seq_len) + "; lower is better</text>\n</svg>\n";
  return s;
}

}  // namespace qwenq
