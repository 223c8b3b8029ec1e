#pragma once
// The options of `moesim stack` and `moesim blend`.
#include "cli/options.hpp"

namespace moesim::cli {

// Data, learner and meta-learner options, then stacking's (blend = false) or blending's.
po::options_description stack_options(bool blend);

}  // namespace moesim::cli
