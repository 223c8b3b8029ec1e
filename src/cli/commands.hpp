#pragma once
#include <string>
#include <vector>

#include "comm/communicator.hpp"

namespace moesim::cli {

// Each returns the process exit code; ConfigError escapes for the caller to report.
int run_moe(const Communicator& comm, const std::vector<std::string>& args);
// stack (blend = false) or blend (blend = true).
int run_stack(const Communicator& comm, const std::vector<std::string>& args, bool blend);
int run_synth(const Communicator& comm, const std::vector<std::string>& args);
int run_info(const Communicator& comm, const std::vector<std::string>& args);

}  // namespace moesim::cli
