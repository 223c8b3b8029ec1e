#pragma once
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "io/run_file.hpp"

namespace moesim::cli {

// Each returns the process exit code; ConfigError escapes for the caller to report.
// `preset`: INI text of option values below the command line (sweep points).
int run_moe(const Communicator& comm, const std::vector<std::string>& args,
            const std::string& preset = "");
// stack (blend = false) or blend (blend = true).
int run_stack(const Communicator& comm, const std::vector<std::string>& args, bool blend,
              const std::string& preset = "");
// The option checks of moe / stack / blend alone, for a sweep point that may never run:
// ConfigError (the command's own text) when `args` with `preset` cannot run on `ranks` ranks.
// No data is read and nothing is communicated.
void check_moe(const std::vector<std::string>& args, const std::string& preset, int ranks);
void check_stack(const std::vector<std::string>& args, bool blend, const std::string& preset);
// The options a run of moe / stack / blend with `args` over `preset` stores in its run file,
// parsed only (nothing checked or read; ConfigError when they cannot be parsed): a sweep
// point's every option for sweep.h5.
std::vector<OptionSetting> moe_settings(const std::vector<std::string>& args, const std::string& preset);
std::vector<OptionSetting> stack_settings(const std::vector<std::string>& args, bool blend, const std::string& preset);
std::vector<OptionSetting> binned_settings(const std::vector<std::string>& args, const std::string& preset);
// `moe --task binned` (the supervised-gate mixture, cli/binned_command.cpp):
// whether args, preset or the --config file ask for it, and the run itself.
bool binned_task_requested(const std::vector<std::string>& args, const std::string& preset);
int run_binned(const Communicator& comm, const std::vector<std::string>& args, const std::string& preset);
void check_binned(const std::vector<std::string>& args, const std::string& preset);
int run_sweep(const Communicator& comm, const std::vector<std::string>& args);
int run_merge(const Communicator& comm, const std::vector<std::string>& args);
int run_synth(const Communicator& comm, const std::vector<std::string>& args);
int run_info(const Communicator& comm, const std::vector<std::string>& args);

}  // namespace moesim::cli
