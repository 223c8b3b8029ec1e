// The sweep's point loop (sweep/runner) with a stand-in for the commands: which points run,
// with which arguments, how failures are recorded and finished points skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "io/run_file.hpp"
#include "support/shared_dir.hpp"
#include "support/test_support.hpp"
#include "sweep/runner.hpp"
#include "sweep/summary.hpp"

namespace moesim {
namespace {

using test::world;

const char* kGrid = "command = moe\nexperts = 1,2,3\nsteps = 5\n";

struct Call {
  std::string command, preset;
  std::vector<std::string> args;
};

std::string value_of(const std::vector<std::string>& args, const std::string& key) {
  const auto it = std::find(args.begin(), args.end(), key);
  return it == args.end() || it + 1 == args.end() ? "" : *(it + 1);
}

// A command that writes a complete run file, or fails (ConfigError on every rank) for the
// points whose preset names `fail`.
PointRunner fake_command(std::vector<Call>& calls, const std::string& fail) {
  return [&calls, fail](const std::string& command, const std::vector<std::string>& args, const std::string& preset) {
    calls.push_back({command, preset, args});
    if (!fail.empty() && preset.find(fail) != std::string::npos) throw ConfigError("refused " + fail);
    auto rf = RunFile::create(world(), value_of(args, "--out"), command);
    rf->mark_complete();
    return 0;
  };
}

TEST(SweepRunner, RunsEveryPointRecordsFailuresAndSkipsFinishedOnes) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  ASSERT_EQ(points.size(), 3u);

  std::vector<Call> calls;
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, "experts = 2")), 3);
  ASSERT_EQ(calls.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(calls[i].command, "moe");
    EXPECT_EQ(calls[i].preset, point_preset(points[i]));
    // MoE points write their run file and resume from their own checkpoint.
    EXPECT_EQ(value_of(calls[i].args, "--out"), run_file_of(dir.path(), points[i]));
    EXPECT_EQ(value_of(calls[i].args, "--checkpoint"), dir.file("checkpoints/" + points[i].id + ".h5"));
    EXPECT_NE(std::find(calls[i].args.begin(), calls[i].args.end(), "--resume"), calls[i].args.end());
  }
  if (world().rank() == 0) {
    EXPECT_EQ(point_status(run_file_of(dir.path(), points[0])).status, "complete");
    const PointStatus failed = point_status(run_file_of(dir.path(), points[1]));
    EXPECT_EQ(failed.status, "failed");
    EXPECT_NE(failed.error.find("refused experts = 2"), std::string::npos) << failed.error;
    EXPECT_TRUE(std::filesystem::exists(dir.file("sweep.h5")));
  }

  // Again: only the failed point runs.
  calls.clear();
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, "")), 0);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].preset, point_preset(points[1]));
  world().barrier();
}

TEST(SweepRunner, IndexRunsOnePointAndSummaryOnlyRunsNone) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  std::vector<Call> calls;
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), 2, false, fake_command(calls, "")), 0);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].preset, point_preset(points[2]));
  calls.clear();
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, true, fake_command(calls, "")), 0);
  EXPECT_TRUE(calls.empty());
  if (world().rank() == 0) {
    EXPECT_TRUE(std::filesystem::exists(dir.file("sweep.h5")));
  }
  world().barrier();
}

TEST(SweepRunner, StackPointsGetNoCheckpoint) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config("command = blend\nseed = 1,2\n", "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  std::vector<Call> calls;
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, "")), 0);
  ASSERT_EQ(calls.size(), 2u);
  for (const Call& c : calls) {
    EXPECT_EQ(c.command, "blend");
    EXPECT_EQ(value_of(c.args, "--checkpoint"), "");
  }
  world().barrier();
}

}  // namespace
}  // namespace moesim
