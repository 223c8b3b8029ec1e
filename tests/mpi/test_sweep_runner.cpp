// The sweep's point loop (sweep/runner) with a stand-in for the commands and their option
// checks: which points run, with which arguments, how failures and invalid points are
// recorded, finished points skipped, and the exit code.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "io/hdf5.hpp"
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

// Option checks that refuse (ConfigError, as the commands' checks do) the points whose preset
// names `refuse`; every call is counted.
PointValidator fake_check(std::vector<Call>& checked, const std::string& refuse) {
  return [&checked, refuse](const std::string& command, const std::vector<std::string>& args, const std::string& preset) {
    checked.push_back({command, preset, args});
    if (!refuse.empty() && preset.find(refuse) != std::string::npos) throw ConfigError("cannot run " + refuse);
  };
}

PointValidator accept_all() {
  return [](const std::string&, const std::vector<std::string>&, const std::string&) {};
}

// points/<name> of DIR/sweep.h5 (variable-length strings, as h5::write_strings writes them).
std::vector<std::string> summary_strings(const std::string& dir, const std::string& name) {
  h5::Handle f = h5::open_file(dir + "/sweep.h5", false);
  h5::Handle d(H5Dopen2(f.id(), ("points/" + name).c_str(), H5P_DEFAULT), H5Dclose);
  h5::Handle type(H5Dget_type(d.id()), H5Tclose);
  h5::Handle space(H5Dget_space(d.id()), H5Sclose);
  std::vector<char*> raw(static_cast<std::size_t>(H5Sget_simple_extent_npoints(space.id())), nullptr);
  EXPECT_GE(H5Dread(d.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()), 0);
  std::vector<std::string> out(raw.begin(), raw.end());
  EXPECT_GE(H5Dvlen_reclaim(type.id(), space.id(), H5P_DEFAULT, raw.data()), 0);
  return out;
}

std::int64_t summary_attr(const std::string& dir, const std::string& name) {
  h5::Handle f = h5::open_file(dir + "/sweep.h5", false);
  return h5::read_attr_int(f.id(), name);
}

TEST(SweepRunner, RunsEveryPointRecordsFailuresAndSkipsFinishedOnes) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  ASSERT_EQ(points.size(), 3u);

  std::vector<Call> calls;
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, "experts = 2"), accept_all()), 3);
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
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, ""), accept_all()), 0);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].preset, point_preset(points[1]));
  world().barrier();
}

TEST(SweepRunner, IndexRunsOnePointAndSummaryOnlyRunsNone) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  std::vector<Call> calls;
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), 2, false, fake_command(calls, ""), accept_all()), 0);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].preset, point_preset(points[2]));
  calls.clear();
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, true, fake_command(calls, ""), accept_all()), 0);
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
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, ""), accept_all()), 0);
  ASSERT_EQ(calls.size(), 2u);
  for (const Call& c : calls) {
    EXPECT_EQ(c.command, "blend");
    EXPECT_EQ(value_of(c.args, "--checkpoint"), "");
  }
  world().barrier();
}

TEST(SweepRunner, InvalidPointsAreRecordedNotRunAndDoNotFailTheSweep) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  std::vector<Call> calls, checked;
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, ""),
                      fake_check(checked, "experts = 3")),
            0);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].preset, point_preset(points[0]));
  EXPECT_EQ(calls[1].preset, point_preset(points[1]));
  if (world().rank() == 0) {
    // The check sees exactly what the run would: the same command, preset and arguments.
    ASSERT_EQ(checked.size(), 3u);
    for (std::size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(checked[i].command, calls[i].command);
      EXPECT_EQ(checked[i].args, calls[i].args);
      EXPECT_EQ(checked[i].preset, calls[i].preset);
    }
    const PointStatus st = point_status(run_file_of(dir.path(), points[2]));
    EXPECT_EQ(st.status, "invalid");
    EXPECT_EQ(st.error, "cannot run experts = 3");
    EXPECT_EQ(summary_strings(dir.path(), "status"), (std::vector<std::string>{"complete", "complete", "invalid"}));
    EXPECT_EQ(summary_strings(dir.path(), "error"), (std::vector<std::string>{"", "", "cannot run experts = 3"}));
    EXPECT_EQ(summary_attr(dir.path(), "points_complete"), 2);
    EXPECT_EQ(summary_attr(dir.path(), "points_invalid"), 1);
  } else {
    EXPECT_TRUE(checked.empty()) << "only rank 0 checks; the verdict is broadcast";
  }

  // Again: nothing runs, the invalid point stays invalid, still a success.
  calls.clear();
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, ""),
                      fake_check(checked, "experts = 3")),
            0);
  EXPECT_TRUE(calls.empty());

  // With --index the invalid point alone: not run, not a failure.
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), 2, false, fake_command(calls, ""),
                      fake_check(checked, "experts = 3")),
            0);
  EXPECT_TRUE(calls.empty());
  world().barrier();
}

TEST(SweepRunner, AFailedValidPointStillFailsTheSweepBesideInvalidOnes) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  std::vector<Call> calls, checked;
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, "experts = 1"),
                      fake_check(checked, "experts = 3")),
            3);
  EXPECT_EQ(calls.size(), 2u);
  if (world().rank() == 0) {
    EXPECT_EQ(summary_strings(dir.path(), "status"), (std::vector<std::string>{"failed", "complete", "invalid"}));
  }
  world().barrier();
}

TEST(SweepRunner, AGridOfOnlyInvalidPointsIsAFailure) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  std::vector<Call> calls, checked;
  // Every point refused, each for its own reason (its preset): recorded invalid, exit 3.
  const PointValidator refuse_each = [&checked](const std::string& command, const std::vector<std::string>& args,
                                                const std::string& preset) {
    checked.push_back({command, preset, args});
    throw ConfigError("cannot run " + preset);
  };
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, false, fake_command(calls, ""), refuse_each), 3);
  EXPECT_TRUE(calls.empty());
  if (world().rank() == 0) {
    EXPECT_EQ(summary_strings(dir.path(), "status"), (std::vector<std::string>(3, "invalid")));
  }
  // Rebuilding the summary runs nothing and is no failure.
  EXPECT_EQ(run_sweep(world(), cfg, points, dir.path(), -1, true, fake_command(calls, ""), refuse_each), 0);
  world().barrier();
}

TEST(SweepRunner, EveryPointRefusedForOneReasonIsOneErrorUpFront) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  std::vector<Call> calls, checked;
  const std::string sub = (std::filesystem::path(dir.path()) / "never").string();
  // "steps = 5" is in every point: a bad config (an unknown key, say), refused on every rank
  // before the sweep directory exists.
  EXPECT_THROW(run_sweep(world(), cfg, points, sub, -1, false, fake_command(calls, ""), fake_check(checked, "steps = 5")),
               ConfigError);
  EXPECT_TRUE(calls.empty());
  EXPECT_FALSE(std::filesystem::exists(sub));
  world().barrier();
}

TEST(SweepRunner, InvalidReasonsAreTheSameOnEveryRank) {
  const test::SharedDir dir;
  const SweepConfig cfg = parse_sweep_config(kGrid, "grid.ini");
  const std::vector<SweepPoint> points = expand_grid(cfg);
  std::vector<Call> checked;
  const std::vector<std::string> reasons =
      invalid_reasons(world(), cfg, points, dir.path(), fake_check(checked, "experts = 2"));
  EXPECT_EQ(reasons, (std::vector<std::string>{"", "cannot run experts = 2", ""}));
  // A complete run of a point judged invalid (say, under another rank count) stays complete.
  RunFile::create(world(), run_file_of(dir.path(), points[1]), "moe")->mark_complete();
  if (world().rank() == 0) {
    EXPECT_EQ(sweep_status(run_file_of(dir.path(), points[1]), reasons[1]).status, "complete");
    EXPECT_EQ(sweep_status(run_file_of(dir.path(), points[2]), "no").status, "invalid");
    EXPECT_EQ(sweep_status(run_file_of(dir.path(), points[2]), "").status, "pending");
  }
  world().barrier();
}

}  // namespace
}  // namespace moesim
