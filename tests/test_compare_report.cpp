// The comparison table renderers: deltas against the first row, every format carries every row.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "trainer/compare_report.h"

namespace qwenq {
namespace {

CompareTable table() {
  CompareTable t;
  t.model = "m";
  t.datasets = {"wiki", "c4"};
  t.seq_len = 2048;
  CompareRow base;
  base.method = "original";
  base.format = "safetensors bfloat16";
  base.perplexity = {10.0, 20.0};
  base.size_bytes = 1000;
  CompareRow q;
  q.method = "rtn";
  q.format = "gptq";
  q.bits = 4;
  q.group_size = 128;
  q.perplexity = {10.5, 19.0};
  q.size_bytes = 300;
  q.quant_seconds = 1.5;
  t.rows = {base, q};
  return t;
}

TEST(CompareReport, DeltasAreRelativeToTheOriginal) {
  const CompareTable t = table();
  const std::string md = compare_markdown(t);
  EXPECT_NE(md.find("| rtn | gptq | 4 | 128 | 300 B | 10.5000 | +5.00% | 19.0000 | -5.00% | 1.50 s |"), std::string::npos) << md;
  const std::string csv = compare_csv(t);
  EXPECT_NE(csv.find("rtn,gptq,4,128,300,10.500000,5.0000,19.000000,-5.0000,1.500,0"), std::string::npos) << csv;
  const auto j = nlohmann::json::parse(compare_json(t));
  EXPECT_DOUBLE_EQ(j["rows"][1]["delta_pct"]["wiki"].get<double>(), 5.0);
  EXPECT_EQ(j["rows"].size(), 2u);
  const std::string svg = compare_svg(t);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("rtn (300 B)"), std::string::npos);
  EXPECT_NE(svg.find("+5.00%"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
}

}  // namespace
}  // namespace qwenq
