#pragma once
// The ranks' agreement on a stop signal. In comm/ because it is one collective over the
// local flag of core/stop_signal, needed by callers that do not train (sweep).
#include "comm/communicator.hpp"
#include "core/stop_signal.hpp"

namespace moesim {

// COLLECTIVE. Whether any rank has received a stop signal (SIGTERM, SIGINT, SIGUSR1).
inline bool stop_requested(const Communicator& comm) {
  return comm.allreduce_max(stop_signal_received() ? 1 : 0) != 0;
}

}  // namespace moesim
