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

TEST(CompareReport, KldColumnsOnlyWithKld) {
  CompareTable t = table();
  EXPECT_EQ(compare_markdown(t).find("KLD"), std::string::npos);
  EXPECT_EQ(compare_csv(t).find("kld_"), std::string::npos);
  t.kld = true;
  t.rows[1].kld = {0.0123456, 0.5};
  t.rows[1].same_top1 = {0.91234, 0.5};
  const std::string md = compare_markdown(t);
  EXPECT_NE(md.find("| ppl wiki | Δ wiki | KLD wiki | top-1 wiki | ppl c4 | Δ c4 | KLD c4 | top-1 c4 | quant time |"),
            std::string::npos) << md;
  EXPECT_NE(md.find("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"), std::string::npos) << md;
  // The original has no KLD of its own: dashes.
  EXPECT_NE(md.find("| original | safetensors bfloat16 | 16 | - | 1000 B | 10.0000 | - | - | - | 20.0000 | - | - | - |"),
            std::string::npos) << md;
  EXPECT_NE(md.find("| rtn | gptq | 4 | 128 | 300 B | 10.5000 | +5.00% | 0.012346 | 91.23% | 19.0000 | -5.00% | 0.500000 | 50.00% |"),
            std::string::npos) << md;
  const std::string csv = compare_csv(t);
  EXPECT_NE(csv.find("ppl_wiki,delta_pct_wiki,kld_wiki,same_top1_wiki,ppl_c4"), std::string::npos) << csv;
  EXPECT_NE(csv.find("original,safetensors bfloat16,16,0,1000,10.000000,0.0000,,,20.000000,0.0000,,,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("rtn,gptq,4,128,300,10.500000,5.0000,0.01234560,0.912340,19.000000"), std::string::npos) << csv;
  const auto j = nlohmann::json::parse(compare_json(t));
  EXPECT_TRUE(j["kld"].get<bool>());
  EXPECT_EQ(j["kld_scoring"], "windows: the original beside each model");  // compare --kld-file names its own
  EXPECT_FALSE(nlohmann::json::parse(compare_json(table())).contains("kld_scoring"));
  EXPECT_FALSE(j["rows"][0].contains("kld"));
  EXPECT_DOUBLE_EQ(j["rows"][1]["kld"]["wiki"].get<double>(), 0.0123456);
  EXPECT_DOUBLE_EQ(j["rows"][1]["same_top1"]["c4"].get<double>(), 0.5);
}

// table() with one multiple-choice set "arc": the original 50 % / 62.5 %, rtn 25 % / 37.5 %.
CompareTable table_with_arc() {
  CompareTable t = table();
  t.choice_sets = {"arc"};
  t.rows[0].acc = {0.5};
  t.rows[0].acc_norm = {0.625};
  t.rows[1].acc = {0.25};
  t.rows[1].acc_norm = {0.375};
  return t;
}

TEST(CompareReport, AccuracyColumnsPerChoiceSet) {
  const CompareTable t = table_with_arc();
  const std::string md = compare_markdown(t);
  EXPECT_NE(md.find("| Δ c4 | acc arc | acc_norm arc | quant time |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 20.0000 | - | 50.00% | 62.50% | - | - |"), std::string::npos) << md;
  EXPECT_NE(md.find("| -5.00% | 25.00% | 37.50% | 1.50 s |"), std::string::npos) << md;
  EXPECT_NE(compare_csv(t).find(",acc_arc,acc_norm_arc,quant_seconds"), std::string::npos);
  EXPECT_NE(compare_csv(t).find("-5.0000,0.250000,0.375000,1.500"), std::string::npos) << compare_csv(t);
  const auto j = nlohmann::json::parse(compare_json(t));
  EXPECT_EQ(j["choice_sets"][0], "arc");
  EXPECT_DOUBLE_EQ(j["rows"][1]["acc_norm"]["arc"].get<double>(), 0.375);
}

TEST(CompareReport, Gsm8kColumnsOnlyWithAGsm8kSet) {
  CompareTable t = table_with_arc();
  t.rows[1].gsm8k_strict = 0.25;  // without a set: no column, whatever the rows hold
  t.rows[1].gsm8k_flexible = 0.5;
  EXPECT_EQ(compare_markdown(t).find("gsm8k"), std::string::npos);
  EXPECT_EQ(compare_csv(t).find("gsm8k"), std::string::npos);
  EXPECT_FALSE(nlohmann::json::parse(compare_json(t))["rows"][1].contains("gsm8k"));
  t.gsm8k_set = "test";
  t.gsm8k_fewshot = 5;
  const std::string md = compare_markdown(t);
  EXPECT_NE(md.find("| acc_norm arc | gsm8k strict test | gsm8k flexible test | quant time |"), std::string::npos) << md;
  std::string rule = "\n";
  for (int c = 0; c < 15; ++c) rule += "|---";  // 5 + 2 x 2 perplexity + 2 acc + 2 gsm8k + 2 quantization columns
  EXPECT_NE(md.find(rule + "|\n"), std::string::npos) << md;
  EXPECT_NE(md.find("| 50.00% | 62.50% | - | - | - | - |"), std::string::npos) << md;  // the original: none
  EXPECT_NE(md.find("| 25.00% | 37.50% | 25.00% | 50.00% | 1.50 s |"), std::string::npos) << md;
  const std::string csv = compare_csv(t);
  EXPECT_NE(csv.find(",acc_norm_arc,gsm8k_strict_test,gsm8k_flexible_test,quant_seconds"), std::string::npos) << csv;
  EXPECT_NE(csv.find("0.500000,0.625000,,,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("0.250000,0.375000,0.250000,0.500000,1.500"), std::string::npos) << csv;
  const auto j = nlohmann::json::parse(compare_json(t));
  EXPECT_EQ(j["gsm8k"]["set"], "test");
  EXPECT_EQ(j["gsm8k"]["fewshot"], 5);
  EXPECT_FALSE(j["rows"][0].contains("gsm8k"));
  EXPECT_DOUBLE_EQ(j["rows"][1]["gsm8k"]["exact_match_flexible"].get<double>(), 0.5);
}

}  // namespace
}  // namespace qwenq
