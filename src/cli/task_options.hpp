#pragma once
// Options of the tasks `moesim moe` trains on (data/tasks): regimes, teacher, lm.
#include "cli/options.hpp"
#include "data/tasks.hpp"

namespace moesim::cli {

// The corpus of --task lm when --data is not given (Debian package `fortunes`).
inline constexpr const char* kDefaultCorpus = "/usr/share/games/fortunes";

// Adds the options of the teacher and lm tasks to `d` (moe's Task group, after the regimes options).
void add_task_options(po::options_description& d);

// Whether option `name` is in effect for the task `vm` names: the options of other tasks
// (and --classes of a regression) are not, and run files leave them out.
bool task_option_in_effect(const std::string& name, const po::variables_map& vm);

// Checks the task options (ConfigError, identical on every rank).
TaskConfig task_config(const po::variables_map& vm, const RegimesConfig& regimes);

}  // namespace moesim::cli
