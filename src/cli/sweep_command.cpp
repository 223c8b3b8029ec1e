// `moesim sweep CONFIG --out DIR [--list] [--index I]`: expand a grid, run every point
// (or one, for Slurm job arrays) on all ranks, skip finished points, record failures,
// rebuild DIR/sweep.h5.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "sweep/grid.hpp"
#include "sweep/summary.hpp"
#include "comm/stop_request.hpp"

namespace moesim::cli {

namespace {
using I = std::int64_t;

// Kept beside the run files, not among them (the analysis reads every DIR/*.h5).
std::string checkpoint_of(const std::string& dir, const SweepPoint& p) {
  return (std::filesystem::path(dir) / "checkpoints" / (p.id + ".h5")).string();
}
}

int run_sweep(const Communicator& comm, const std::vector<std::string>& args) {
  po::options_description d("Sweep");
  d.add_options()
      ("sweep-config", po::value<std::string>(), "the sweep's config file (also the first positional argument)")
      ("out", po::value<std::string>(), "directory for the run files DIR/<point id>.h5 and the summary DIR/sweep.h5")
      ("list", po::bool_switch()->default_value(false), "print the grid (index, id, status, swept values) and exit")
      ("index", po::value<I>()->default_value(-1), "run only point I (0-based; for job arrays)")
      ("summary-only", po::bool_switch()->default_value(false), "only rebuild DIR/sweep.h5 from the run files");
  // The positional CONFIG is folded into --sweep-config before the shared parser runs.
  std::vector<std::string> a;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (i == 0 && !args[i].empty() && args[i][0] != '-') {
      a.push_back("--sweep-config");
    }
    a.push_back(args[i]);
  }
  const Parsed p = parse("sweep", a, d);
  if (p.help) {
    if (comm.rank() == 0)
      print_help("sweep CONFIG --out DIR",
                 "Run a grid of moe (or stack/blend) runs. CONFIG holds any options of the command; a value may be\n"
                 "a comma-separated list, and `zip = a,b` makes the lists of a and b advance together.\n"
                 "`command = moe|stack|blend` picks the command (default moe).",
                 d);
    return 0;
  }
  const po::variables_map& vm = p.vm;
  MOESIM_CONFIG_CHECK(vm.count("sweep-config"), "give the sweep's config file: moesim sweep CONFIG --out DIR");
  MOESIM_CONFIG_CHECK(vm.count("out"), "--out DIR is required");
  const std::string path = vm["sweep-config"].as<std::string>();
  const std::string dir = vm["out"].as<std::string>();

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
  const SweepConfig cfg = parse_sweep_config(text, path);
  const std::vector<SweepPoint> points = expand_grid(cfg);
  const I index = vm["index"].as<I>();
  MOESIM_CONFIG_CHECK(index >= -1 && index < static_cast<I>(points.size()),
                      "--index " << index << " is outside the grid of " << points.size() << " points (0.."
                                 << points.size() - 1 << ")");

  if (vm["list"].as<bool>()) {
    if (comm.rank() == 0) {
      std::printf("%zu points (command %s)\n", points.size(), cfg.command.c_str());
      for (const SweepPoint& pt : points) {
        std::string swept;
        for (const auto& [k, v] : pt.swept) swept += " " + k + "=" + v;
        std::printf("%4zu  %-40s %-10s%s\n", pt.index, pt.id.c_str(),
                    point_status(run_file_of(dir, pt)).status.c_str(), swept.c_str());
      }
      std::fflush(stdout);
    }
    return 0;
  }

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
  if (!vm["summary-only"].as<bool>()) {
    for (const SweepPoint& pt : points) {
      if (index >= 0 && static_cast<I>(pt.index) != index) continue;
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
        const std::string preset = point_preset(pt);
        rc = cfg.command == "moe" ? run_moe(comm, run_args, preset)
                                  : run_stack(comm, run_args, cfg.command == "blend", preset);
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
  // 143: stopped by a signal (requeue); 3: some point failed (recorded in its file).
  return rc != 0 ? rc : any_failed ? 3 : 0;
}

}  // namespace moesim::cli
