// `moesim moe`: one expert-parallel MoE training run, logged to one HDF5 file.
#include "cli/commands.hpp"
#include "cli/moe_options.hpp"
#include "core/stop_signal.hpp"
#include "train/moe_run.hpp"

namespace moesim::cli {

int run_moe(const Communicator& comm, const std::vector<std::string>& args, const std::string& preset) {
  // The binned mixture fits stacking learners, not this model: it has its own options.
  if (binned_task_requested(args, preset)) return run_binned(comm, args, preset);
  const po::options_description desc = moe_options();
  const Parsed p = parse("moe", args, desc, preset);
  if (p.help) {
    if (comm.rank() == 0)
      print_help("moe", "Train an expert-parallel top-k MoE on P MPI ranks and log it to HDF5.", desc);
    return 0;
  }
  install_stop_handlers();  // early, so a signal during set-up still stops cleanly
  return moe_run(comm, moe_run_config(p.vm, comm.size()));
}

void check_moe(const std::vector<std::string>& args, const std::string& preset, int ranks) {
  if (binned_task_requested(args, preset)) return check_binned(args, preset);
  const Parsed p = parse("moe", args, moe_options(), preset);
  if (!p.help) moe_run_config(p.vm, ranks);  // pure option checks; data is read by moe_run
}

std::vector<OptionSetting> moe_settings(const std::vector<std::string>& args, const std::string& preset) {
  if (binned_task_requested(args, preset)) return binned_settings(args, preset);
  return moe_option_settings(parse("moe", args, moe_options(), preset).vm);
}

}  // namespace moesim::cli
