#pragma once
// Rows by one flat all-to-all each way, permuted into expert blocks on arrival (and back
// before the combine's): `FlatDispatch<Derived>` holds that, Derived's `exchange` moves the
// rows. AlltoallvDispatch moves them by MPI_Alltoallv with the counts by MPI_Alltoall
// (allgather.cpp gathers the counts instead; nccl.cpp moves the rows by NCCL).
#include "moe/dispatch/algorithm.hpp"

namespace moesim {

template <class Derived>
class FlatDispatch : public DispatchAlgorithmOf<Derived> {
 public:
  using DispatchAlgorithmOf<Derived>::DispatchAlgorithmOf;

  template <class T>
  MatMap<T> dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                          CommStats& stats) const {
    const Index width = send_rows.cols();
    MatMap<T> received = this->template scratch<T>(0).view(L.rows_received(), width);
    self().exchange(send_rows.data(), L.send_counts, L.send_displs, received.data(), L.recv_counts, L.recv_displs,
                    width, stats);
    MatMap<T> blocks = out.view(L.rows_received(), width);
    for (Index i = 0; i < L.rows_received(); ++i) blocks.row(L.recv_to_block[static_cast<std::size_t>(i)]) = received.row(i);
    return blocks;
  }

  template <class T>
  MatMap<T> combine_rows(const DispatchLayout& L, const ConstMatMap<T>& block_rows, RowBuffer<T>& out,
                         CommStats& stats) const {
    const Index width = block_rows.cols();
    MatMap<T> outgoing = this->template scratch<T>(0).view(L.rows_received(), width);
    for (Index i = 0; i < L.rows_received(); ++i)
      outgoing.row(i) = block_rows.row(L.recv_to_block[static_cast<std::size_t>(i)]);
    MatMap<T> back = out.view(L.rows_sent(), width);
    self().exchange(outgoing.data(), L.recv_counts, L.recv_displs, back.data(), L.send_counts, L.send_displs, width,
                    stats);
    return back;
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

class AlltoallvDispatch : public FlatDispatch<AlltoallvDispatch> {
 public:
  using FlatDispatch::FlatDispatch;
  void plan(DispatchLayout& L, const DispatchLimits& limits, CommStats& stats) const override;
  // Rows per peer and their offsets (send by destination, receive by source), `width` values each.
  template <class T>
  void exchange(const T* send, const std::vector<int>& send_rows, const std::vector<int>& send_row_displs,
                T* recv, const std::vector<int>& recv_rows, const std::vector<int>& recv_row_displs,
                Index width, CommStats& stats) const;
};

}  // namespace moesim
