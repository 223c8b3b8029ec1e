#include "moe/dispatch/algorithm.hpp"

namespace moesim {

void DispatchAlgorithm::counts_by_alltoall(DispatchLayout& L, CommStats& stats) const {
  {
    PhaseTimer timer(stats);
    comm_.alltoall(L.send_expert_counts.data(), L.recv_expert_counts.data(), L.E_local);
  }
  complete_receive_side(L);
}

}  // namespace moesim
