// No count exchange: each (source, expert) pair owns a fixed slot of S rows plus a
// header row holding the count, moved by one equal-split MPI_Alltoall; the unused rows
// are padding. The receive side is learnt from the headers of the first dispatch.
#include <algorithm>

#include "moe/dispatch/algorithm.hpp"

namespace moesim {

namespace {

class PaddedDispatch final : public DispatchAlgorithmOf<PaddedDispatch> {
 public:
  using DispatchAlgorithmOf::DispatchAlgorithmOf;

  // No rank sends one expert more than the capacity or than its own tokens (at most
  // ceil(B/P) by shard_of, P the ranks holding tokens), so S is known everywhere without
  // communication.
  void plan(DispatchLayout& L, const DispatchLimits& limits, CommStats&) const override {
    const std::int64_t P = limits.token_ranks > 0 ? limits.token_ranks : L.P;
    const std::int64_t n_max = (limits.tokens + P - 1) / P;
    L.slot_rows = static_cast<Index>(limits.capacity > 0 ? std::min(limits.capacity, n_max) : n_max);
    for (int e = 0; e < L.E; ++e)
      MOESIM_REQUIRE(L.send_expert_counts[static_cast<std::size_t>(e)] <= L.slot_rows,
                     "padded dispatch: " << L.send_expert_counts[static_cast<std::size_t>(e)] << " rows for expert "
                                         << e << " exceed the slot of " << L.slot_rows);
  }

  template <class T>
  MatMap<T> dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& result,
                          CommStats& stats) const {
    const Index width = send_rows.cols(), slot = L.slot_rows + 1;  // header row + S rows
    const int El = L.E_local;
    const Index per_rank = static_cast<Index>(El) * slot;
    MatMap<T> out = scratch<T>(0).view(static_cast<Index>(L.P) * per_rank, width);
    out.setZero();
    for (int e = 0; e < L.E; ++e) {
      const Index base = (static_cast<Index>(e / El) * El + e % El) * slot;
      const int rows = L.send_expert_counts[static_cast<std::size_t>(e)];
      out(base, 0) = static_cast<T>(rows);
      if (rows > 0) out.middleRows(base + 1, rows) = send_rows.middleRows(send_start(L, e), rows);
      count_slot(stats, e / El, rows, slot, width, sizeof(T));
    }
    MatMap<T> in = exchange(out, per_rank, stats);
    if (!L.recv_known) {
      for (int q = 0; q < L.P; ++q)
        for (int le = 0; le < El; ++le)
          L.recv_expert_counts[static_cast<std::size_t>(q * El + le)] =
              static_cast<int>(in((static_cast<Index>(q) * El + le) * slot, 0));
      complete_receive_side(L);
    }
    MatMap<T> blocks = result.view(L.rows_received(), width);
    for (int q = 0; q < L.P; ++q)
      for (int le = 0; le < El; ++le) {
        const int rows = L.recv_expert_counts[static_cast<std::size_t>(q * El + le)];
        if (rows > 0)
          blocks.middleRows(block_start(L, q, le), rows) = in.middleRows((static_cast<Index>(q) * El + le) * slot + 1, rows);
      }
    return blocks;
  }

  template <class T>
  MatMap<T> combine_rows(const DispatchLayout& L, const ConstMatMap<T>& blocks, RowBuffer<T>& result,
                         CommStats& stats) const {
    const Index width = blocks.cols(), slot = L.slot_rows + 1;
    const int El = L.E_local;
    const Index per_rank = static_cast<Index>(El) * slot;
    MatMap<T> out = scratch<T>(0).view(static_cast<Index>(L.P) * per_rank, width);
    out.setZero();
    for (int q = 0; q < L.P; ++q)
      for (int le = 0; le < El; ++le) {
        const int rows = L.recv_expert_counts[static_cast<std::size_t>(q * El + le)];
        const Index base = (static_cast<Index>(q) * El + le) * slot;
        if (rows > 0) out.middleRows(base + 1, rows) = blocks.middleRows(block_start(L, q, le), rows);
        count_slot(stats, q, rows, slot, width, sizeof(T));
      }
    MatMap<T> in = exchange(out, per_rank, stats);
    MatMap<T> back = result.view(L.rows_sent(), width);
    for (int e = 0; e < L.E; ++e) {
      const int rows = L.send_expert_counts[static_cast<std::size_t>(e)];
      if (rows > 0)
        back.middleRows(send_start(L, e), rows) = in.middleRows((static_cast<Index>(e / El) * El + e % El) * slot + 1, rows);
    }
    return back;
  }

 private:
  // A whole slot goes to rank q; all but `rows` of its rows are padding.
  void count_slot(CommStats& stats, int q, int rows, Index slot, Index width, std::size_t elem) const {
    const double total = static_cast<double>(slot) * static_cast<double>(width) * elem;
    count_bytes(stats, comm_.rank(), q, total);
    if (q != comm_.rank()) stats.padding_bytes += total - static_cast<double>(rows) * static_cast<double>(width) * elem;
  }

  template <class T>
  MatMap<T> exchange(const MatMap<T>& out, Index per_rank, CommStats& stats) const {
    MatMap<T> in = scratch<T>(1).view(out.rows(), out.cols());
    PhaseTimer timer(stats);
    comm_.alltoall_equal(out.data(), checked_int(per_rank * out.cols(), "padded all-to-all message"), in.data());
    return in;
  }
};

}  // namespace

std::unique_ptr<DispatchAlgorithm> make_padded_dispatch(const Communicator& comm, const std::vector<int>&) {
  return std::make_unique<PaddedDispatch>(comm);
}

}  // namespace moesim
