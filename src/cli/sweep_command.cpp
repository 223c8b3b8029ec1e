// `moesim sweep CONFIG --out DIR [--list] [--index I]`: expand a grid, run every point
// (or one, for Slurm job arrays) on all ranks, skip finished points, record failures,
// rebuild DIR/sweep.h5.
#include <cstdint>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "sweep/runner.hpp"

namespace moesim::cli {

using I = std::int64_t;

namespace {
// The binned mixture (moe --task binned) fits in one pass and keeps no checkpoint, so its
// points run without the checkpoint the sweep gives every moe point (a requeued one starts again).
std::vector<std::string> for_moe(const std::vector<std::string>& args, const std::string& preset) {
  if (!binned_task_requested(args, preset)) return args;
  std::vector<std::string> out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--resume") continue;
    if (args[i] == "--checkpoint") {
      ++i;
      continue;
    }
    out.push_back(args[i]);
  }
  return out;
}
}  // namespace

int run_sweep(const Communicator& comm, const std::vector<std::string>& args) {
  po::options_description d("Sweep");
  d.add_options()
      ("sweep-config", po::value<std::string>(), "the sweep's config file (also the first positional argument)")
      ("out", po::value<std::string>(), "directory for the run files DIR/<point id>.h5 and the summary DIR/sweep.h5")
      ("list", po::bool_switch()->default_value(false),
       "print the grid (index, id, status, swept values, `# reason` of invalid and failed points) and exit")
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
                 "`command = moe|stack|blend` picks the command (default moe). A point whose options can never\n"
                 "run on this many ranks (top-k > experts, ...) is invalid: listed and recorded with its reason, not\n"
                 "run. Exit code: 0 when every valid point completed, 3 when one failed (or no point can run),\n"
                 "143 when a signal stopped the sweep.",
                 d);
    return 0;
  }
  const po::variables_map& vm = p.vm;
  MOESIM_CONFIG_CHECK(vm.count("sweep-config"), "give the sweep's config file: moesim sweep CONFIG --out DIR");
  MOESIM_CONFIG_CHECK(vm.count("out"), "--out DIR is required");
  const std::string path = vm["sweep-config"].as<std::string>();
  const std::string dir = vm["out"].as<std::string>();

  const SweepConfig cfg = read_sweep_config(comm, path);
  const std::vector<SweepPoint> points = expand_grid(cfg);
  const I index = vm["index"].as<I>();
  MOESIM_CONFIG_CHECK(index >= -1 && index < static_cast<I>(points.size()),
                      "--index " << index << " is outside the grid of " << points.size() << " points (0.."
                                 << points.size() - 1 << ")");
  // A point is invalid when the command's option checks alone refuse it (for this job's rank
  // count); errors found later, reading data, are failures of a point that could run.
  const PointValidator check = [&](const std::string& command, const std::vector<std::string>& run_args,
                                   const std::string& preset) {
    if (command == "moe") check_moe(for_moe(run_args, preset), preset, comm.size());
    else check_stack(run_args, command == "blend", preset);
  };
  if (vm["list"].as<bool>()) {
    print_grid(comm, cfg, points, dir, check);
    return 0;
  }
  return moesim::run_sweep(comm, cfg, points, dir, index, vm["summary-only"].as<bool>(),
                           [&](const std::string& command, const std::vector<std::string>& run_args,
                               const std::string& preset) {
                             return command == "moe" ? run_moe(comm, for_moe(run_args, preset), preset)
                                                     : run_stack(comm, run_args, command == "blend", preset);
                           },
                           check,
                           [&](const std::string& command, const std::vector<std::string>& run_args,
                               const std::string& preset) {
                             return command == "moe" ? moe_settings(for_moe(run_args, preset), preset)
                                                     : stack_settings(run_args, command == "blend", preset);
                           });
}

}  // namespace moesim::cli
