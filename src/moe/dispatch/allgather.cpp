// The alltoallv exchange with the whole P x E count matrix gathered by MPI_Allgather,
// as systems that plan from every rank's counts do.
#include "moe/dispatch/alltoallv.hpp"

namespace moesim {

namespace {

class AllgatherDispatch final : public AlltoallvDispatch {
 public:
  using AlltoallvDispatch::AlltoallvDispatch;
  void plan(DispatchLayout& L, const DispatchLimits&, CommStats& stats) const override {
    const int P = L.P, E = L.E, El = L.E_local, first = comm_.rank() * El;
    matrix_.resize(static_cast<std::size_t>(P * E));
    {
      PhaseTimer timer(stats);
      comm_.allgather(L.send_expert_counts.data(), E, matrix_.data());
    }
    for (int q = 0; q < P; ++q)
      for (int le = 0; le < El; ++le)
        L.recv_expert_counts[static_cast<std::size_t>(q * El + le)] = matrix_[static_cast<std::size_t>(q * E + first + le)];
    complete_receive_side(L);
  }

 private:
  mutable std::vector<int> matrix_;  // every rank's counts per expert, kept from plan to plan
};

}  // namespace

std::unique_ptr<DispatchAlgorithm> make_allgather_dispatch(const Communicator& comm, const std::vector<int>&) {
  return std::make_unique<AllgatherDispatch>(comm);
}

}  // namespace moesim
