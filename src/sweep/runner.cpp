#include "sweep/runner.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "comm/stop_request.hpp"
#include "core/error.hpp"
#include "core/stop_signal.hpp"
#include "core/timer.hpp"
#include "io/output_lock.hpp"
#include "sweep/summary.hpp"

namespace moesim {

namespace {

// Kept beside the run files, not among them (the analysis reads every DIR/*.h5).
std::string checkpoint_of(const std::string& dir, const SweepPoint& p) {
  return (std::filesystem::path(dir) / "checkpoints" / (p.id + ".h5")).string();
}

// "2.1 s", "2 min 10 s", "1 h 05 min".
std::string duration_str(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  char buf[48];
  if (s < 59.95) {
    std::snprintf(buf, sizeof buf, "%.1f s", s);
  } else if (s < 3599.5) {
    const long t = std::lround(s);
    std::snprintf(buf, sizeof buf, "%ld min %ld s", t / 60, t % 60);
  } else {
    const long m = std::lround(s / 60);
    std::snprintf(buf, sizeof buf, "%ld h %02ld min", m / 60, m % 60);
  }
  return buf;
}

// Rank 0's estimate of the rest of this invocation: the mean wall time of the points it
// ran (failed ones included; skipped and invalid ones take no time) times the points left
// to run.
class Eta {
 public:
  void add(double seconds) {
    seconds_ += seconds;
    ++runs_;
  }
  // "; ETA 2 min 10 s for 60 points", "; ETA unknown for 60 points" before the first run
  // point, "" when none is left.
  std::string left(std::size_t points) const {
    if (points == 0) return "";
    const std::string what = " for " + std::to_string(points) + (points == 1 ? " point" : " points");
    if (runs_ == 0) return "; ETA unknown" + what;
    return "; ETA " + duration_str(seconds_ / static_cast<double>(runs_) * static_cast<double>(points)) + what;
  }

 private:
  double seconds_ = 0;
  std::size_t runs_ = 0;
};

}  // namespace

SweepConfig read_sweep_config(const Communicator& comm, const std::string& path) {
  std::string text, error;
  if (comm.rank() == 0) {
    std::ifstream in(path);
    if (!in) error = "cannot open sweep config '" + path + "'";
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  comm.agree_or_throw(error.empty(), error);
  comm.broadcast(text, 0);
  return parse_sweep_config(text, path);
}

std::vector<std::string> point_args(const SweepConfig& cfg, const SweepPoint& p, const std::string& dir) {
  std::vector<std::string> args{"--out", run_file_of(dir, p)};
  if (cfg.command == "moe") {
    // An interrupted point continues from its checkpoint instead of from scratch. A
    // checkpoint the config names once, for every point, becomes one file per point: a
    // shared one would resume each point from the one before.
    std::string own;
    bool swept = false;
    for (const auto& [k, v] : p.values) if (k == "checkpoint") own = v;
    for (const auto& [k, v] : p.swept) swept = swept || k == "checkpoint";
    if (own.empty()) {
      args.insert(args.end(), {"--checkpoint", checkpoint_of(dir, p)});
    } else if (!swept) {
      const std::filesystem::path f(own);
      args.insert(args.end(), {"--checkpoint", (f.parent_path() / (f.stem().string() + "." + p.id +
                                                                    f.extension().string())).string()});
    }
    args.push_back("--resume");
  }
  return args;
}

std::vector<std::string> invalid_reasons(const Communicator& comm, const SweepConfig& cfg,
                                         const std::vector<SweepPoint>& points, const std::string& dir,
                                         const PointValidator& check) {
  std::vector<std::string> reasons(points.size());
  for (std::size_t i = 0; i < points.size(); ++i) {
    if (comm.rank() == 0) {
      try {
        check(cfg.command, point_args(cfg, points[i], dir), point_preset(points[i]));
      } catch (const ConfigError& e) {
        reasons[i] = e.what();
        if (reasons[i].empty()) reasons[i] = "invalid options";
      }
    }
    comm.broadcast(reasons[i], 0);
  }
  return reasons;
}

void print_grid(const Communicator& comm, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
                const std::string& dir, const PointValidator& check) {
  const std::vector<std::string> invalid = invalid_reasons(comm, cfg, points, dir, check);
  if (comm.rank() != 0) return;
  std::printf("%zu points (command %s)\n", points.size(), cfg.command.c_str());
  for (const SweepPoint& pt : points) {
    std::string swept;
    for (const auto& [k, v] : pt.swept) swept += " " + k + "=" + v;
    const PointStatus st = sweep_status(run_file_of(dir, pt), invalid[pt.index]);
    // '#' never occurs in a swept value (the config parser strips comments), so the reason
    // after it cannot be mistaken for one.
    const std::string why = st.error.empty() ? "" : "  # " + st.error;
    std::printf("%4zu  %-40s %-10s%s%s\n", pt.index, pt.id.c_str(), st.status.c_str(), swept.c_str(), why.c_str());
  }
  std::fflush(stdout);
}

int run_sweep(const Communicator& comm, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
              const std::string& dir, std::int64_t index, bool summary_only, const PointRunner& run,
              const PointValidator& check, const PointOptionReader& read_options) {
  const std::vector<std::string> invalid = invalid_reasons(comm, cfg, points, dir, check);
  // Every point refused for one reason (an unknown key, say) is a bad config, not a grid of
  // invalid points: one error before anything is written. (The reasons are the same on
  // every rank, broadcast by invalid_reasons.)
  const bool one_reason = !summary_only && !points.empty() && !invalid[0].empty() &&
                          std::all_of(invalid.begin(), invalid.end(), [&](const std::string& r) { return r == invalid[0]; });
  MOESIM_CONFIG_CHECK(!one_reason, "every point of the grid is refused: " << invalid[0]);
  std::string error;
  if (comm.rank() == 0) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) error = "cannot create sweep directory '" + dir + "': " + ec.message();
  }
  comm.agree_or_throw(error.empty(), error);
  // Two whole sweeps in one directory would fight over every point; single points (array
  // tasks) may run side by side, each point's run file locked by the run writing it.
  OutputLock lock;
  if (comm.rank() == 0 && !summary_only) {
    try {
      lock = OutputLock::sweep(dir, index < 0);
    } catch (const ConfigError& e) {
      error = e.what();
    }
  }
  comm.agree_or_throw(error.empty(), error);

  int rc = 0;
  bool any_failed = false;
  // MoE points stop at a step boundary on SIGTERM; between points the sweep itself
  // checks, so a signal that lands after a point's last step starts nothing new.
  if (cfg.command == "moe") install_stop_handlers();
  if (!summary_only) {
    auto in_scope = [&](const SweepPoint& pt) { return index < 0 || static_cast<std::int64_t>(pt.index) == index; };
    // Rank 0: per point, how many points after it this invocation will run (those neither
    // invalid nor complete now), for the ETA of each point's result line.
    std::vector<std::size_t> left_after(points.size(), 0);
    if (comm.rank() == 0) {
      std::size_t left = 0;
      for (std::size_t i = points.size(); i-- > 0;) {
        left_after[i] = left;
        left += in_scope(points[i]) && invalid[i].empty() && point_status(run_file_of(dir, points[i])).status != "complete";
      }
    }
    Eta eta;
    // One line per point when it ends: what became of it, and the ETA of the rest. Printed
    // whatever the points' own `quiet`: the sweep's progress is its own.
    auto report = [&](const SweepPoint& pt, const std::string& what, bool with_eta) {
      if (comm.rank() != 0) return;
      std::printf("[sweep %zu/%zu] %s: %s%s\n", pt.index + 1, points.size(), pt.id.c_str(), what.c_str(),
                  with_eta ? eta.left(left_after[pt.index]).c_str() : "");
      std::fflush(stdout);
    };
    for (const SweepPoint& pt : points) {
      if (!in_scope(pt)) continue;
      if (cfg.command == "moe" && stop_requested(comm)) {
        if (comm.rank() == 0) std::fprintf(stderr, "[sweep] stopped by signal before %s\n", pt.id.c_str());
        rc = 143;
        break;
      }
      const std::string file = run_file_of(dir, pt);
      std::string st = comm.rank() == 0 ? point_status(file).status : "";
      comm.broadcast(st, 0);
      if (st == "complete") {
        const std::string result = comm.rank() == 0 ? point_result(file) : "";
        report(pt, "complete, skipped" + (result.empty() ? "" : ": " + result), true);
        continue;
      }
      if (!invalid[pt.index].empty()) {
        // Not a failure: these options can never run, so the point is recorded and left out.
        report(pt, "invalid, not run: " + invalid[pt.index], true);
        if (comm.rank() == 0) record_invalid(file, pt, cfg.command, invalid[pt.index]);
        comm.barrier();
        continue;
      }
      if (comm.rank() == 0) {
        std::printf("[sweep %zu/%zu] %s: running\n", pt.index + 1, points.size(), pt.id.c_str());
        std::fflush(stdout);
      }
      Stopwatch clock;
      bool failed = false;
      try {
        rc = run(cfg.command, point_args(cfg, pt, dir), point_preset(pt));
      } catch (const ConfigError& e) {
        // Deterministic on every rank; the sweep records it and goes on.
        if (comm.rank() == 0) {
          std::fprintf(stderr, "[sweep] %s failed: %s\n", pt.id.c_str(), e.what());
          record_failure(file, pt, cfg.command, e.what());
        }
        comm.barrier();
        rc = 0;
        failed = any_failed = true;
      }
      const double seconds = clock.seconds();
      const std::string took = duration_str(seconds);
      if (rc != 0) {  // stopped by a signal: leave the rest for the requeued job
        report(pt, (rc == 143 ? "stopped by signal, " : "exit code " + std::to_string(rc) + ", ") + took, false);
        break;
      }
      eta.add(seconds);
      if (failed) {
        report(pt, "failed, " + took, true);
      } else {
        const std::string result = comm.rank() == 0 ? point_result(file) : "";
        report(pt, "done: " + (result.empty() ? "" : result + ", ") + took, true);
      }
    }
  }
  int none_valid = 0;
  if (comm.rank() == 0) {
    PointOptions options_of;
    if (read_options)
      options_of = [&](const SweepPoint& p) { return read_options(cfg.command, point_args(cfg, p, dir), point_preset(p)); };
    write_summary(dir, cfg, points, invalid, options_of);
    std::size_t done = 0, not_runnable = 0;
    for (const SweepPoint& pt : points) {
      const std::string s = sweep_status(run_file_of(dir, pt), invalid[pt.index]).status;
      done += s == "complete";
      not_runnable += s == "invalid";
    }
    std::printf("[sweep] %zu/%zu points complete", done, points.size());
    if (not_runnable > 0) std::printf(", %zu invalid (not run)", not_runnable);
    std::printf("; summary: %s/sweep.h5\n", dir.c_str());
    std::fflush(stdout);
    // A whole grid none of whose points can run is a mistake (a misspelt option, say), not
    // a sweep whose every valid point completed.
    none_valid = index < 0 && !summary_only && !points.empty() && not_runnable == points.size();
    if (none_valid) std::fprintf(stderr, "[sweep] no point of the grid can run: every point is invalid\n");
  }
  comm.broadcast(&none_valid, 1, 0);
  return rc != 0 ? rc : (any_failed || none_valid) ? 3 : 0;
}

}  // namespace moesim
