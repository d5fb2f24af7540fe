// reduce_lr_on_plateau (trainer/lr_plateau.h). The expected rates are torch 2.5.1's: ReduceLROnPlateau(SGD with one
// parameter group per starting rate, **kwargs).step(metric) for each metric, the groups' "lr" read after each step
// (tests/oracle/test_lr_plateau_oracle.py drives whole training runs through the same class).
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tests/support/test_paths.h"
#include "trainer/lr_plateau.h"
#include "trainer/lr_schedule.h"

namespace qwenq {
namespace {

struct Golden {
  const char* name;
  nlohmann::json kwargs;
  std::vector<double> metrics, start;
  std::vector<std::vector<double>> lrs;  // after each metric, per group
  double best;
  int64_t bad;
};

// Printed by Python (repr: the shortest text that reads back as the same double), so compared exactly.
std::vector<Golden> goldens() {
  std::vector<double> defaults_metrics(13, 2.0);
  defaults_metrics.push_back(1.0);
  for (int i = 0; i < 12; ++i) defaults_metrics.push_back(1.5);
  std::vector<std::vector<double>> defaults_lrs;
  for (int i = 0; i < 11; ++i) defaults_lrs.push_back({0.001});
  for (int i = 0; i < 13; ++i) defaults_lrs.push_back({0.0001});
  for (int i = 0; i < 2; ++i) defaults_lrs.push_back({1e-05});
  return {
      {"defaults", nlohmann::json::object(), defaults_metrics, {1e-3}, defaults_lrs, 1.0, 1},
      {"patience1_factor0.5", {{"patience", 1}, {"factor", 0.5}},
       {3.0, 2.9, 2.95, 2.96, 2.8, 2.85, 2.86, 2.87, 2.9, 2.7}, {0.001, 0.004},
       {{0.001, 0.004}, {0.001, 0.004}, {0.001, 0.004}, {0.0005, 0.002}, {0.0005, 0.002}, {0.0005, 0.002},
        {0.00025, 0.001}, {0.00025, 0.001}, {0.000125, 0.0005}, {0.000125, 0.0005}},
       2.7, 0},
      {"rel_threshold", {{"patience", 0}, {"threshold", 0.1}}, {1.0, 0.95, 0.85, 0.84, 0.5}, {0.01},
       {{0.01}, {0.001}, {0.001}, {0.0001}, {0.0001}}, 0.5, 0},
      {"abs_max_cooldown",
       {{"mode", "max"}, {"threshold_mode", "abs"}, {"threshold", 0.05}, {"patience", 0}, {"cooldown", 2}},
       {0.1, 0.12, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3}, {0.001},
       {{0.001}, {0.0001}, {0.0001}, {0.0001}, {1e-05}, {1e-05}, {1e-05}, {1.0000000000000002e-06},
        {1.0000000000000002e-06}},
       0.3, 0},
      {"min_lr_binds", {{"patience", 0}, {"factor", 0.1}, {"min_lr", 5e-05}}, {1.0, 1.1, 1.2, 1.3, 1.4},
       {0.001, 0.01}, {{0.001, 0.01}, {0.0001, 0.001}, {5e-05, 0.0001}, {5e-05, 5e-05}, {5e-05, 5e-05}}, 1.0, 0},
      {"eps_stops", {{"patience", 0}, {"factor", 0.5}, {"eps", 0.0001}}, {1.0, 1.1, 1.2, 1.3, 1.4, 1.5}, {0.001},
       {{0.001}, {0.0005}, {0.00025}, {0.000125}, {0.000125}, {0.000125}}, 1.0, 0},
      {"rel_max_negative", {{"mode", "max"}, {"patience", 0}}, {-1.0, -0.99995, -0.5, -0.6}, {0.001},
       {{0.001}, {0.001}, {0.001}, {0.0001}}, -0.5, 0},
  };
}

TEST(LrPlateau, RatesAreTorchs) {
  for (const Golden& g : goldens()) {
    LrPlateau p(plateau_options(g.kwargs), g.start);
    for (size_t i = 0; i < g.metrics.size(); ++i) {
      p.observe(g.metrics[i]);
      EXPECT_EQ(p.lrs(), g.lrs[i]) << g.name << " after metric " << i;
    }
    EXPECT_EQ(p.best(), g.best) << g.name;
    EXPECT_EQ(p.bad_evaluations(), g.bad) << g.name;
    EXPECT_EQ(p.evaluations(), static_cast<int64_t>(g.metrics.size())) << g.name;
  }
}

// A state saved after any evaluation and restored into a fresh object continues with the same rates.
TEST(LrPlateau, RestoredStateContinuesTheSame) {
  for (const Golden& g : goldens()) {
    for (size_t cut = 0; cut <= g.metrics.size(); ++cut) {
      LrPlateau first(plateau_options(g.kwargs), g.start);
      for (size_t i = 0; i < cut; ++i) first.observe(g.metrics[i]);
      // Through the JSON text, as trainer_state.json holds it.
      const nlohmann::json saved = nlohmann::json::parse(first.state().dump());
      LrPlateau resumed(plateau_options(g.kwargs), g.start);
      resumed.restore(saved, "trainer_state.json");
      for (size_t i = cut; i < g.metrics.size(); ++i) {
        resumed.observe(g.metrics[i]);
        EXPECT_EQ(resumed.lrs(), g.lrs[i]) << g.name << " cut " << cut << " metric " << i;
      }
      EXPECT_EQ(resumed.best(), g.best) << g.name << " cut " << cut;
    }
  }
}

TEST(LrPlateau, RefusesBadKwargsAndStates) {
  const auto refusal = [](const nlohmann::json& kw) { return test::error_of([&] { plateau_options(kw); }); };
  EXPECT_NE(refusal({{"factor", 1.0}}).find("factor must be in (0, 1)"), std::string::npos);
  EXPECT_NE(refusal({{"factor", 0.0}}).find("factor must be in (0, 1)"), std::string::npos);
  EXPECT_NE(refusal({{"mode", "maximum"}}).find("\"mode\" must be \"min\" or \"max\""), std::string::npos);
  EXPECT_NE(refusal({{"threshold_mode", "relative"}}).find("\"threshold_mode\""), std::string::npos);
  EXPECT_NE(refusal({{"patience", 2.5}}).find("\"patience\" must be an integer"), std::string::npos);
  EXPECT_NE(refusal({{"patience", -1}}).find("patience and cooldown must be >= 0"), std::string::npos);
  EXPECT_NE(refusal({{"min_lr", {1e-5, 1e-6}}}).find("must be one number"), std::string::npos);
  EXPECT_NE(refusal({{"verbose", true}}).find("not \"verbose\""), std::string::npos);
  EXPECT_NE(refusal({{"threshold", -0.1}}).find("must be >= 0"), std::string::npos);
  EXPECT_EQ(refusal({{"patience", 3}, {"cooldown", 1}, {"min_lr", 0}}), "<no error>");
  // Through the schedule's own check (--scheduler reduce_lr_on_plateau): its kwargs, no warm-up, no min-lr-ratio.
  EXPECT_NE(test::error_of([] { make_lr_schedule("reduce_lr_on_plateau", {{"num_cycles", 2}}, 1e-3, 0, 0, 10); })
                .find("not \"num_cycles\""),
            std::string::npos);
  EXPECT_NE(test::error_of([] { make_lr_schedule("reduce_lr_on_plateau", nullptr, 1e-3, 0, 5, 10); }).find("no warm-up"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { make_lr_schedule("reduce_lr_on_plateau", nullptr, 1e-3, 0.1, 0, 10); })
                .find("--min-lr-ratio does not apply"),
            std::string::npos);
  EXPECT_EQ(lr_at(make_lr_schedule("reduce_lr_on_plateau", nullptr, 1e-3, 0, 0, 10), 7), 1e-3);
  // A state of another run's groups, or not a state at all, names the file.
  LrPlateau p(PlateauOptions{}, {1e-3});
  EXPECT_NE(test::error_of([&] { p.restore({{"lrs", {1e-3, 2e-3}}, {"best", 1.0}, {"bad_evaluations", 0},
                                      {"cooldown_left", 0}, {"evaluations", 1}}, "ck/trainer_state.json"); })
                .find("ck/trainer_state.json: lr_plateau has 2 rate groups, this run 1"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { p.restore({{"lrs", {1e-3}}}, "ck/trainer_state.json"); }).find("is not a reduce_lr_on_plateau state"),
            std::string::npos);
  EXPECT_EQ(p.lrs(), std::vector<double>{1e-3});  // untouched by the refusals
}

}  // namespace
}  // namespace qwenq
