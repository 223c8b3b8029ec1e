#include "sweep/runner.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "comm/stop_request.hpp"
#include "core/stop_signal.hpp"
#include "sweep/summary.hpp"

namespace moesim {

namespace {

// Kept beside the run files, not among them (the analysis reads every DIR/*.h5).
std::string checkpoint_of(const std::string& dir, const SweepPoint& p) {
  return (std::filesystem::path(dir) / "checkpoints" / (p.id + ".h5")).string();
}

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

void print_grid(const Communicator& comm, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
                const std::string& dir) {
  if (comm.rank() != 0) return;
  std::printf("%zu points (command %s)\n", points.size(), cfg.command.c_str());
  for (const SweepPoint& pt : points) {
    std::string swept;
    for (const auto& [k, v] : pt.swept) swept += " " + k + "=" + v;
    std::printf("%4zu  %-40s %-10s%s\n", pt.index, pt.id.c_str(), point_status(run_file_of(dir, pt)).status.c_str(),
                swept.c_str());
  }
  std::fflush(stdout);
}

int run_sweep(const Communicator& comm, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
              const std::string& dir, std::int64_t index, bool summary_only, const PointRunner& run) {
  std::string error;
  if (comm.rank() == 0) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) error = "cannot create sweep directory '" + dir + "': " + ec.message();
  }
  comm.agree_or_throw(error.empty(), error);

  int rc = 0;
  bool any_failed = false;
  // MoE points stop at a step boundary on SIGTERM; between points the sweep itself
  // checks, so a signal that lands after a point's last step starts nothing new.
  if (cfg.command == "moe") install_stop_handlers();
  if (!summary_only) {
    for (const SweepPoint& pt : points) {
      if (index >= 0 && static_cast<std::int64_t>(pt.index) != index) continue;
      if (cfg.command == "moe" && stop_requested(comm)) {
        if (comm.rank() == 0) std::fprintf(stderr, "[sweep] stopped by signal before %s\n", pt.id.c_str());
        rc = 143;
        break;
      }
      const std::string file = run_file_of(dir, pt);
      std::string st = comm.rank() == 0 ? point_status(file).status : "";
      comm.broadcast(st, 0);
      if (st == "complete") {
        if (comm.rank() == 0) std::printf("[sweep %zu/%zu] %s: complete, skipped\n", pt.index + 1, points.size(), pt.id.c_str());
        continue;
      }
      if (comm.rank() == 0) {
        std::printf("[sweep %zu/%zu] %s: running\n", pt.index + 1, points.size(), pt.id.c_str());
        std::fflush(stdout);
      }
      std::vector<std::string> run_args{"--out", file};
      if (cfg.command == "moe") {
        // An interrupted point continues from its checkpoint instead of from scratch.
        bool own = false;
        for (const auto& [k, v] : pt.values) own = own || (k == "checkpoint" && !v.empty());
        if (!own) run_args.insert(run_args.end(), {"--checkpoint", checkpoint_of(dir, pt)});
        run_args.push_back("--resume");
      }
      try {
        rc = run(cfg.command, run_args, point_preset(pt));
      } catch (const ConfigError& e) {
        // Deterministic on every rank; the sweep records it and goes on.
        if (comm.rank() == 0) {
          std::fprintf(stderr, "[sweep] %s failed: %s\n", pt.id.c_str(), e.what());
          record_failure(file, pt, cfg.command, e.what());
        }
        comm.barrier();
        rc = 0;
        any_failed = true;
      }
      if (rc != 0) break;  // stopped by a signal: leave the rest for the requeued job
    }
  }
  if (comm.rank() == 0) {
    write_summary(dir, cfg, points);
    std::size_t done = 0;
    for (const SweepPoint& pt : points) done += point_status(run_file_of(dir, pt)).status == "complete";
    std::printf("[sweep] %zu/%zu points complete; summary: %s/sweep.h5\n", done, points.size(), dir.c_str());
    std::fflush(stdout);
  }
  comm.barrier();
  return rc != 0 ? rc : any_failed ? 3 : 0;
}

}  // namespace moesim
