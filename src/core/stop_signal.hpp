#pragma once
// SIGTERM/SIGINT (and SIGUSR1, which launchers pass to the ranks unchanged: the Slurm batch
// scripts forward a time-limit SIGTERM as SIGUSR1, since srun and Open MPI's mpirun answer a
// SIGTERM of their own by killing the ranks) ask a run to stop at the next step boundary (or a
// sweep before its next point). The handler only sets a flag; the ranks agree on it collectively
// (comm/stop_request.hpp, or folded into the trainer's per-step reduce).

namespace moesim {

void install_stop_handlers();
// Whether this process has received SIGTERM, SIGINT or SIGUSR1 since install_stop_handlers().
bool stop_signal_received();

}  // namespace moesim
