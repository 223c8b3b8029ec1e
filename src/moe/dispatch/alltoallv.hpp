#pragma once
// Rows by one flat all-to-all each way, permuted into expert blocks on arrival (and back
// before the combine's): `FlatDispatch<Derived>` holds that, Derived's `exchange` moves the
// rows. AlltoallvDispatch moves them by MPI_Alltoallv with the counts by MPI_Alltoall
// (allgather.cpp gathers the counts instead; nccl.cpp moves the rows by NCCL).
#include <algorithm>

#include "moe/dispatch/algorithm.hpp"

namespace moesim {

template <class Derived>
class FlatDispatch : public DispatchAlgorithmOf<Derived> {
 public:
  using DispatchAlgorithmOf<Derived>::DispatchAlgorithmOf;
  bool can_leave_own_rows() const override { return true; }

  // A rank's rows to itself skip the exchange: each is copied once, straight between the send
  // order and its block, where MPI would copy it into the receive buffer first (not at all
  // with L.own_in_blocks: the caller put them there). Their bytes still count to this rank in
  // the traffic matrix; the transfer seconds are the other ranks'.
  template <class T>
  MatMap<T> dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                          CommStats& stats) const {
    const Index width = send_rows.cols();
    const Own own = own_rows(L, width * static_cast<Index>(sizeof(T)), stats);
    MatMap<T> received = this->template scratch<T>(0).view(L.rows_received(), width);
    self().exchange(send_rows.data(), others_send_, L.send_displs, received.data(), others_recv_, L.recv_displs,
                    width, stats);
    MatMap<T> blocks = out.view(L.rows_received(), width);
    own.for_each_other_run(L, [&](Index i, Index n, Index block_row) {
      std::copy_n(received.data() + i * width, n * width, blocks.data() + block_row * width);
    });
    if (!L.own_in_blocks)
      own.for_each_run(L, [&](Index i, Index n, Index block_row) {
        std::copy_n(send_rows.data() + own.send_row(i) * width, n * width, blocks.data() + block_row * width);
      });
    return blocks;
  }

  template <class T>
  MatMap<T> combine_rows(const DispatchLayout& L, const ConstMatMap<T>& block_rows, RowBuffer<T>& out,
                         CommStats& stats) const {
    const Index width = block_rows.cols();
    const Own own = own_rows(L, width * static_cast<Index>(sizeof(T)), stats);
    MatMap<T> outgoing = this->template scratch<T>(0).view(L.rows_received(), width);
    MatMap<T> back = out.view(L.rows_sent(), width);
    own.for_each_other_run(L, [&](Index i, Index n, Index block_row) {
      std::copy_n(block_rows.data() + block_row * width, n * width, outgoing.data() + i * width);
    });
    self().exchange(outgoing.data(), others_recv_, L.recv_displs, back.data(), others_send_, L.send_displs, width,
                    stats);
    // The own rows after the exchange: NCCL's host staging copies the whole receive range back.
    if (!L.own_in_blocks)
      own.for_each_run(L, [&](Index i, Index n, Index block_row) {
        std::copy_n(block_rows.data() + block_row * width, n * width, back.data() + own.send_row(i) * width);
      });
    return back;
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  // Where this rank's rows to itself sit in the send and the receive order.
  struct Own {
    Index send_first, recv_first, rows;
    // The send row of own received row i.
    Index send_row(Index i) const { return send_first + i - recv_first; }
    // f(i, n, block_row) for each run of n received rows from row i that land on consecutive
    // block rows from block_row (a source's rows for one expert): one copy per run, not per
    // row. The own rows, or the other ranks' (those before them and after).
    template <class F>
    void for_each_run(const DispatchLayout& L, F f) const { runs(L, recv_first, recv_first + rows, f); }
    template <class F>
    void for_each_other_run(const DispatchLayout& L, F f) const {
      runs(L, 0, recv_first, f);
      runs(L, recv_first + rows, L.rows_received(), f);
    }
    template <class F>
    static void runs(const DispatchLayout& L, Index begin, Index end, F f) {
      const Index* to = L.recv_to_block.data();
      for (Index i = begin; i < end;) {
        Index j = i + 1;
        while (j < end && to[j] == to[i] + (j - i)) ++j;
        f(i, j - i, to[i]);
        i = j;
      }
    }
  };
  // The layout's row counts with this rank's own set to 0 (others_send_, others_recv_), and
  // the own rows' bytes counted.
  Own own_rows(const DispatchLayout& L, Index row_bytes, CommStats& stats) const {
    const int me = this->comm_.rank();
    const auto m = static_cast<std::size_t>(me);
    others_send_ = L.send_counts;
    others_recv_ = L.recv_counts;
    others_send_[m] = others_recv_[m] = 0;
    count_bytes(stats, me, me, static_cast<double>(L.send_counts[m]) * static_cast<double>(row_bytes));
    return {L.send_displs[m], L.recv_displs[m], L.recv_counts[m]};
  }
  mutable std::vector<int> others_send_, others_recv_;  // kept from call to call
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
