// Counts by MPI_Alltoall, then one MPI_Isend/Irecv per (rank, local expert): rows land
// directly in their expert's block, no permutation afterwards.
#include <cstring>

#include "moe/dispatch/algorithm.hpp"

namespace moesim {

namespace {

class P2PDispatch final : public DispatchAlgorithmOf<P2PDispatch> {
 public:
  using DispatchAlgorithmOf::DispatchAlgorithmOf;
  bool can_leave_own_rows() const override { return true; }

  void plan(DispatchLayout& L, const DispatchLimits&, CommStats& stats) const override {
    counts_by_alltoall(L, stats);
  }

  template <class T>
  MatMap<T> dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                          CommStats& stats) const {
    const Index width = send_rows.cols();
    const int me = comm_.rank(), El = L.E_local;
    MatMap<T> blocks = out.view(L.rows_received(), width);
    PhaseTimer timer(stats);
    std::vector<MPI_Request>& reqs = requests_;
    for (int q = 0; q < L.P; ++q)
      for (int le = 0; le < El; ++le) {
        const int rows = L.recv_expert_counts[static_cast<std::size_t>(q * El + le)];
        if (rows == 0 || q == me) continue;
        reqs.push_back(comm_.irecv(blocks.data() + block_start(L, q, le) * width,
                                   checked_int(rows * width, "p2p message"), q, le));
      }
    for (int e = 0; e < L.E; ++e) {
      const int rows = L.send_expert_counts[static_cast<std::size_t>(e)];
      if (rows == 0) continue;
      const int q = e / El, le = e % El;
      const T* src = send_rows.data() + send_start(L, e) * width;
      count_bytes(stats, me, q, static_cast<double>(rows) * static_cast<double>(width) * sizeof(T));
      if (q == me) {
        if (!L.own_in_blocks)
          std::memcpy(blocks.data() + block_start(L, me, le) * width, src,
                      sizeof(T) * static_cast<std::size_t>(rows * width));
      } else
        reqs.push_back(comm_.isend(src, checked_int(rows * width, "p2p message"), q, le));
    }
    comm_.waitall(reqs);
    return blocks;
  }

  template <class T>
  MatMap<T> combine_rows(const DispatchLayout& L, const ConstMatMap<T>& blocks, RowBuffer<T>& out,
                         CommStats& stats) const {
    const Index width = blocks.cols();
    const int me = comm_.rank(), El = L.E_local;
    MatMap<T> back = out.view(L.rows_sent(), width);
    PhaseTimer timer(stats);
    std::vector<MPI_Request>& reqs = requests_;
    for (int e = 0; e < L.E; ++e) {
      const int rows = L.send_expert_counts[static_cast<std::size_t>(e)];
      const int q = e / El, le = e % El;
      if (rows == 0 || q == me) continue;
      reqs.push_back(comm_.irecv(back.data() + send_start(L, e) * width, checked_int(rows * width, "p2p message"), q, le));
    }
    for (int q = 0; q < L.P; ++q)
      for (int le = 0; le < El; ++le) {
        const int rows = L.recv_expert_counts[static_cast<std::size_t>(q * El + le)];
        if (rows == 0) continue;
        const T* src = blocks.data() + block_start(L, q, le) * width;
        count_bytes(stats, me, q, static_cast<double>(rows) * static_cast<double>(width) * sizeof(T));
        if (q == me) {
          if (!L.own_in_blocks)
            std::memcpy(back.data() + send_start(L, me * El + le) * width, src,
                        sizeof(T) * static_cast<std::size_t>(rows * width));
        } else
          reqs.push_back(comm_.isend(src, checked_int(rows * width, "p2p message"), q, le));
      }
    comm_.waitall(reqs);
    return back;
  }

 private:
  // One exchange's requests; waitall empties it and keeps its memory for the next.
  mutable std::vector<MPI_Request> requests_;
};

}  // namespace

std::unique_ptr<DispatchAlgorithm> make_p2p_dispatch(const Communicator& comm, const std::vector<int>&) {
  return std::make_unique<P2PDispatch>(comm);
}

}  // namespace moesim
