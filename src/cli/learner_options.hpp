#pragma once
// Hyper-parameter options of the stacking engine's learners, shared by every command
// that fits them (stack, blend, moe --task binned), so one name means one thing.
#include "cli/options.hpp"
#include "learners/learner.hpp"

namespace moesim::cli {

// Adds --ridge-alpha ... --nb-var-smoothing to `d`.
void add_learner_hyper_options(po::options_description& d);

// Reads and validates them (ConfigError naming the option).
LearnerOptions learner_settings(const po::variables_map& vm);

}  // namespace moesim::cli
