#pragma once
// SIGTERM/SIGINT ask a run to stop at the next step boundary (or a sweep before its next
// point). The handler only sets a flag; the ranks agree on it collectively
// (comm/stop_request.hpp, or folded into the trainer's per-step reduce).

namespace moesim {

void install_stop_handlers();
// Whether this process has received SIGTERM or SIGINT since install_stop_handlers().
bool stop_signal_received();

}  // namespace moesim
