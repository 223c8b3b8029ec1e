#pragma once
// Options of `moesim moe` and their translation into a run's settings.
#include <string>
#include <vector>

#include "cli/options.hpp"
#include "train/moe_run.hpp"

namespace moesim::cli {

// Every option of `moesim moe`, the task options included.
po::options_description moe_options();

// Checks the options (ConfigError, identical on every rank) and maps them to a run's
// settings for P = `ranks`.
MoeRunConfig moe_run_config(const po::variables_map& vm, int ranks);

// The options a run with `vm` stores in its run file: those in effect (not other tasks'), with
// the defaults that follow other options (eval_capacity_factor, teacher_seed) as resolved.
std::vector<OptionSetting> moe_option_settings(const po::variables_map& vm);

// The settings of a trained run from the options its checkpoint stores (INI text),
// `overrides` (command-line style, e.g. {"--val-tokens", "512"}) winning.
MoeRunConfig moe_run_config(const std::string& ini, const std::vector<std::string>& overrides, int ranks);

}  // namespace moesim::cli
