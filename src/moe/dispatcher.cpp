#include "moe/dispatcher.hpp"

#include <limits>

#include "core/timer.hpp"

namespace moesim {

Dispatcher::Dispatcher(const Communicator& comm, int experts) : comm_(comm), E_(experts) {
  MOESIM_REQUIRE(experts % comm.size() == 0,
                 "experts (" << experts << ") must be divisible by ranks (" << comm.size() << ")");
  E_local_ = experts / comm.size();
}

DispatchLayout Dispatcher::plan(const std::vector<int>& expert, const std::vector<char>& kept,
                                Index n, int K, CommStats& stats) const {
  const int P = comm_.size();
  DispatchLayout L;
  L.P = P;
  L.E = E_;
  L.E_local = E_local_;

  // Bucket kept assignments by expert; within a bucket tokens stay in ascending order.
  std::vector<int> per_expert(static_cast<std::size_t>(E_), 0);
  for (Index a = 0; a < n * K; ++a)
    if (kept[static_cast<std::size_t>(a)]) ++per_expert[static_cast<std::size_t>(expert[a])];
  std::vector<Index> cursor(static_cast<std::size_t>(E_) + 1, 0);
  for (int e = 0; e < E_; ++e) cursor[e + 1] = cursor[e] + per_expert[e];
  L.send_token.resize(static_cast<std::size_t>(cursor[E_]));
  L.send_choice.resize(static_cast<std::size_t>(cursor[E_]));
  for (Index t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const Index a = t * K + j;
      if (!kept[static_cast<std::size_t>(a)]) continue;
      const Index row = cursor[static_cast<std::size_t>(expert[a])]++;
      L.send_token[static_cast<std::size_t>(row)] = t;
      L.send_choice[static_cast<std::size_t>(row)] = j;
    }

  L.send_expert_counts = per_expert;
  L.send_counts.assign(static_cast<std::size_t>(P), 0);
  L.send_displs.assign(static_cast<std::size_t>(P), 0);
  for (int e = 0; e < E_; ++e) L.send_counts[static_cast<std::size_t>(e / E_local_)] += per_expert[e];
  for (int q = 1; q < P; ++q) L.send_displs[q] = L.send_displs[q - 1] + L.send_counts[q - 1];

  L.recv_expert_counts.assign(static_cast<std::size_t>(P * E_local_), 0);
  {
    ScopedTimer timer(stats.seconds);
    comm_.alltoall(per_expert.data(), L.recv_expert_counts.data(), E_local_);
  }

  L.recv_counts.assign(static_cast<std::size_t>(P), 0);
  L.recv_displs.assign(static_cast<std::size_t>(P), 0);
  L.block_offset.assign(static_cast<std::size_t>(E_local_) + 1, 0);
  for (int q = 0; q < P; ++q)
    for (int le = 0; le < E_local_; ++le) {
      const int c = L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)];
      L.recv_counts[q] += c;
      L.block_offset[static_cast<std::size_t>(le) + 1] += c;
    }
  for (int q = 1; q < P; ++q) L.recv_displs[q] = L.recv_displs[q - 1] + L.recv_counts[q - 1];
  for (int le = 0; le < E_local_; ++le) L.block_offset[le + 1] += L.block_offset[le];

  L.recv_to_block.resize(static_cast<std::size_t>(L.block_offset[E_local_]));
  std::vector<Index> fill(L.block_offset.begin(), L.block_offset.end() - 1);
  Index i = 0;
  for (int q = 0; q < P; ++q)
    for (int le = 0; le < E_local_; ++le)
      for (int k = 0; k < L.recv_expert_counts[static_cast<std::size_t>(q * E_local_ + le)]; ++k)
        L.recv_to_block[static_cast<std::size_t>(i++)] = fill[static_cast<std::size_t>(le)]++;
  return L;
}

template <class T>
void Dispatcher::exchange(const T* send, const std::vector<int>& send_rows,
                          const std::vector<int>& send_row_displs, T* recv,
                          const std::vector<int>& recv_rows,
                          const std::vector<int>& recv_row_displs, Index width,
                          CommStats& stats) const {
  const int P = comm_.size();
  std::vector<int> sc(P), sd(P), rc(P), rd(P);
  auto elems = [&](int rows) {
    const Index e = static_cast<Index>(rows) * width;
    MOESIM_REQUIRE(e <= std::numeric_limits<int>::max(),
                   "all-to-all message of " << e << " elements exceeds MPI's int counts");
    return static_cast<int>(e);
  };
  for (int q = 0; q < P; ++q) {
    sc[q] = elems(send_rows[q]);
    sd[q] = elems(send_row_displs[q]);
    rc[q] = elems(recv_rows[q]);
    rd[q] = elems(recv_row_displs[q]);
    stats.bytes_to_rank[static_cast<std::size_t>(q)] += static_cast<double>(sc[q]) * sizeof(T);
  }
  ScopedTimer timer(stats.seconds);
  comm_.alltoallv(send, sc, sd, recv, rc, rd);
}

template <class T>
Mat<T> Dispatcher::dispatch(const DispatchLayout& L, const Mat<T>& send_rows,
                            CommStats& stats) const {
  MOESIM_REQUIRE(send_rows.rows() == L.rows_sent(), "dispatch: rows do not match the layout");
  const Index width = send_rows.cols();
  Mat<T> received(L.rows_received(), width);
  exchange(send_rows.data(), L.send_counts, L.send_displs, received.data(), L.recv_counts,
           L.recv_displs, width, stats);
  Mat<T> blocks(L.rows_received(), width);
  for (Index i = 0; i < L.rows_received(); ++i)
    blocks.row(L.recv_to_block[static_cast<std::size_t>(i)]) = received.row(i);
  return blocks;
}

template <class T>
Mat<T> Dispatcher::combine(const DispatchLayout& L, const Mat<T>& block_rows,
                           CommStats& stats) const {
  MOESIM_REQUIRE(block_rows.rows() == L.rows_received(), "combine: rows do not match the layout");
  const Index width = block_rows.cols();
  Mat<T> outgoing(L.rows_received(), width);
  for (Index i = 0; i < L.rows_received(); ++i)
    outgoing.row(i) = block_rows.row(L.recv_to_block[static_cast<std::size_t>(i)]);
  Mat<T> back(L.rows_sent(), width);
  exchange(outgoing.data(), L.recv_counts, L.recv_displs, back.data(), L.send_counts,
           L.send_displs, width, stats);
  return back;
}

template Mat<float> Dispatcher::dispatch(const DispatchLayout&, const Mat<float>&, CommStats&) const;
template Mat<double> Dispatcher::dispatch(const DispatchLayout&, const Mat<double>&, CommStats&) const;
template Mat<float> Dispatcher::combine(const DispatchLayout&, const Mat<float>&, CommStats&) const;
template Mat<double> Dispatcher::combine(const DispatchLayout&, const Mat<double>&, CommStats&) const;
template Mat<std::int64_t> Dispatcher::dispatch(const DispatchLayout&, const Mat<std::int64_t>&, CommStats&) const;
template Mat<std::int64_t> Dispatcher::combine(const DispatchLayout&, const Mat<std::int64_t>&, CommStats&) const;

}  // namespace moesim
