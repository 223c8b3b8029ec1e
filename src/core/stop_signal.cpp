#include "core/stop_signal.hpp"

#include <csignal>

namespace moesim {

namespace {
volatile std::sig_atomic_t g_stop_requested = 0;
extern "C" void on_stop_signal(int) { g_stop_requested = 1; }
}  // namespace

void install_stop_handlers() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGUSR1, on_stop_signal);
}

bool stop_signal_received() { return g_stop_requested != 0; }

}  // namespace moesim
