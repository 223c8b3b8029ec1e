// The per-step metrics table: complete rows that print as markdown, and a writer that
// refuses what the table does not name or shape.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>

#include "core/error.hpp"
#include "support/test_support.hpp"
#include "train/step_metrics.hpp"

namespace moesim {
namespace {

TEST(StepMetrics, TableRowsAreCompleteAndUnique) {
  std::set<std::string_view> names;
  for (const MetricSpec& s : kStepMetrics) {
    EXPECT_TRUE(names.insert(s.name).second) << s.name;
    EXPECT_FALSE(s.unit.empty()) << s.name;
    EXPECT_FALSE(s.description.empty()) << s.name;
    // A '|' would split the markdown cell.
    for (std::string_view field : {s.name, s.shape, s.unit, s.description})
      EXPECT_EQ(field.find('|'), std::string_view::npos) << s.name;
    // Shapes are sizes over " x ": letters the writer knows, or numbers.
    std::string_view rest = s.shape;
    while (!rest.empty()) {
      const std::size_t cut = rest.find(" x ");
      const std::string_view part = rest.substr(0, cut);
      EXPECT_TRUE(part == "E" || part == "P" || part == "L_moe" ||
                  part.find_first_not_of("0123456789") == std::string_view::npos)
          << s.name << ": " << part;
      rest = cut == std::string_view::npos ? std::string_view{} : rest.substr(cut + 3);
    }
    EXPECT_EQ(find_step_metric(s.name), &s);
  }
  EXPECT_EQ(find_step_metric("no_such_metric"), nullptr);
}

TEST(StepMetrics, MarkdownHasOneRowPerMetric) {
  const std::string md = step_metrics_markdown();
  std::size_t lines = 0;
  for (char c : md) lines += c == '\n';
  EXPECT_EQ(lines, kStepMetrics.size() + 2);
  EXPECT_NE(md.find("| `metrics/traffic` | P x P | step x sender x receiver | int64 | bytes | always |"),
            std::string::npos);
}

TEST(StepMetrics, PerRankSeriesAreThoseShapedByP) {
  EXPECT_EQ(kPerRankSeries, (std::vector<std::string>{"traffic", "rank_expert_tokens"}));
}

TEST(StepMetrics, WrittenFollowsTheContext) {
  MetricContext c{.E = 4, .P = 2, .L_moe = 0};
  EXPECT_TRUE(written_in(MetricWhen::kAlways, c));
  EXPECT_FALSE(written_in(MetricWhen::kMoeLayers, c));
  c.noisy_topk = c.balance_bias = true;
  EXPECT_FALSE(written_in(MetricWhen::kNoisyTopK, c));  // needs MoE layers
  c.L_moe = 1;
  EXPECT_TRUE(written_in(MetricWhen::kNoisyTopK, c));
  EXPECT_TRUE(written_in(MetricWhen::kBalanceBias, c));
  EXPECT_FALSE(written_in(MetricWhen::kMixtureLoss, c));
  EXPECT_FALSE(written_in(MetricWhen::kEvalEvery, c));
}

TEST(StepMetrics, WriterAcceptsOnlyWhatTheTableStates) {
  const Communicator& comm = test::world();
  if (comm.size() != 1) GTEST_SKIP() << "one rank";
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("moesim_unit_metrics_" + std::to_string(::getpid()) + ".h5")).string();
  {
    std::unique_ptr<RunFile> out = RunFile::create(comm, path, "moe");
    MetricWriter w(*out, MetricContext{.E = 3, .P = 2, .L_moe = 2});
    w.append("train_loss", std::vector<double>{1.0});
    w.append("gate_mass", std::vector<double>(3, 0.25));
    w.append("expert_tokens_per_layer", std::vector<std::int64_t>(6, 1));
    EXPECT_EQ(w.rows_written(), 3);
    EXPECT_THROW(w.append("no_such_metric", std::vector<double>{1.0}), RuntimeError);
    EXPECT_THROW(w.append("gate_mass", std::vector<double>(4, 0.25)), RuntimeError);   // E = 3
    EXPECT_THROW(w.append("step", std::vector<double>{1.0}), RuntimeError);            // int64
    EXPECT_THROW(w.append("load_loss", std::vector<double>{1.0}), RuntimeError);       // noisy-topk only
    EXPECT_THROW(w.append("val_loss", std::vector<double>{1.0}), RuntimeError);        // no --eval-every
    EXPECT_EQ(w.rows_written(), 3);
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace moesim
