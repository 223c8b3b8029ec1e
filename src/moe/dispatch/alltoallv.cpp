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

#define MOESIM_INSTANTIATE(T)                                                                                   \
  template void AlltoallvDispatch::exchange(const T*, const std::vector<int>&, const std::vector<int>&, T*,        \
                                            const std::vector<int>&, const std::vector<int>&, Index, CommStats&) \
      const;
MOESIM_INSTANTIATE(float)
MOESIM_INSTANTIATE(double)
MOESIM_INSTANTIATE(std::int64_t)
#undef MOESIM_INSTANTIATE

std::unique_ptr<DispatchAlgorithm> make_alltoallv_dispatch(const Communicator& comm, const std::vector<int>&) {
  return std::make_unique<AlltoallvDispatch>(comm);
}

}  // namespace moesim
