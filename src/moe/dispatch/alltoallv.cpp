#include "moe/dispatch/alltoallv.hpp"

namespace moesim {

void AlltoallvDispatch::plan(DispatchLayout& L, const DispatchLimits&, CommStats& stats) const {
  counts_by_alltoall(L, stats);
}

template <class T>
void AlltoallvDispatch::exchange(const T* send, const std::vector<int>& send_rows,
                                 const std::vector<int>& send_row_displs, T* recv,
                                 const std::vector<int>& recv_rows, const std::vector<int>& recv_row_displs,
                                 Index width, CommStats& stats) const {
  const int P = comm_.size();
  auto& [sc, sd, rc, rd] = element_counts(P);
  for (int q = 0; q < P; ++q) {
    sc[q] = checked_int(static_cast<Index>(send_rows[q]) * width, "all-to-all message");
    sd[q] = checked_int(static_cast<Index>(send_row_displs[q]) * width, "all-to-all offset");
    rc[q] = checked_int(static_cast<Index>(recv_rows[q]) * width, "all-to-all message");
    rd[q] = checked_int(static_cast<Index>(recv_row_displs[q]) * width, "all-to-all offset");
    count_bytes(stats, comm_.rank(), q, static_cast<double>(sc[q]) * sizeof(T));
  }
  PhaseTimer timer(stats);
  comm_.alltoallv(send, sc, sd, recv, rc, rd);
}

template <class T>
MatMap<T> AlltoallvDispatch::dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                                           CommStats& stats) const {
  const Index width = send_rows.cols();
  MatMap<T> received = scratch<T>(0).view(L.rows_received(), width);
  exchange(send_rows.data(), L.send_counts, L.send_displs, received.data(), L.recv_counts, L.recv_displs, width,
           stats);
  MatMap<T> blocks = out.view(L.rows_received(), width);
  for (Index i = 0; i < L.rows_received(); ++i) blocks.row(L.recv_to_block[static_cast<std::size_t>(i)]) = received.row(i);
  return blocks;
}

template <class T>
MatMap<T> AlltoallvDispatch::combine_rows(const DispatchLayout& L, const ConstMatMap<T>& block_rows,
                                          RowBuffer<T>& out, CommStats& stats) const {
  const Index width = block_rows.cols();
  MatMap<T> outgoing = scratch<T>(0).view(L.rows_received(), width);
  for (Index i = 0; i < L.rows_received(); ++i)
    outgoing.row(i) = block_rows.row(L.recv_to_block[static_cast<std::size_t>(i)]);
  MatMap<T> back = out.view(L.rows_sent(), width);
  exchange(outgoing.data(), L.recv_counts, L.recv_displs, back.data(), L.send_counts, L.send_displs, width, stats);
  return back;
}

#define MOESIM_INSTANTIATE(T)                                                                                   \
  template MatMap<T> AlltoallvDispatch::dispatch_rows(DispatchLayout&, const ConstMatMap<T>&, RowBuffer<T>&,     \
                                                      CommStats&) const;                                        \
  template MatMap<T> AlltoallvDispatch::combine_rows(const DispatchLayout&, const ConstMatMap<T>&, RowBuffer<T>&, \
                                                     CommStats&) const;
MOESIM_INSTANTIATE(float)
MOESIM_INSTANTIATE(double)
MOESIM_INSTANTIATE(std::int64_t)
#undef MOESIM_INSTANTIATE

std::unique_ptr<DispatchAlgorithm> make_alltoallv_dispatch(const Communicator& comm, const std::vector<int>&) {
  return std::make_unique<AlltoallvDispatch>(comm);
}

}  // namespace moesim
