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

  // A rank's rows to itself skip the exchange: each is copied once, straight between the send
  // order and its block, where MPI would copy it into the receive buffer first. Their bytes
  // still count to this rank in the traffic matrix; the transfer seconds are the other ranks'.
  template <class T>
  MatMap<T> dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                          CommStats& stats) const {
    const Index width = send_rows.cols();
    const Own own = own_rows(L, width * static_cast<Index>(sizeof(T)), stats);
    MatMap<T> received = this->template scratch<T>(0).view(L.rows_received(), width);
    self().exchange(send_rows.data(), others_send_, L.send_displs, received.data(), others_recv_, L.recv_displs,
                    width, stats);
    MatMap<T> blocks = out.view(L.rows_received(), width);
    for_each_run(L, own, [&](Index i, Index n, Index block_row, bool is_own) {
      const T* from = is_own ? send_rows.data() + (own.send_first + i - own.recv_first) * width
                             : received.data() + i * width;
      std::copy_n(from, n * width, blocks.data() + block_row * width);
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
    auto gather = [&](bool own_rows) {
      for_each_run(L, own, [&](Index i, Index n, Index block_row, bool is_own) {
        if (is_own != own_rows) return;
        T* to = is_own ? back.data() + (own.send_first + i - own.recv_first) * width : outgoing.data() + i * width;
        std::copy_n(block_rows.data() + block_row * width, n * width, to);
      });
    };
    gather(false);
    self().exchange(outgoing.data(), others_recv_, L.recv_displs, back.data(), others_send_, L.send_displs, width,
                    stats);
    // The own rows after the exchange: NCCL's host staging copies the whole receive range back.
    gather(true);
    return back;
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  // Where this rank's rows to itself sit in the send and the receive order.
  struct Own {
    Index send_first, recv_first, rows;
  };
  // f(i, n, block_row, own) for each run of n received rows from row i that land on
  // consecutive block rows from block_row, all this rank's own or all another's: one copy
  // per (source, expert) run instead of one per row.
  template <class F>
  static void for_each_run(const DispatchLayout& L, const Own& own, F f) {
    const Index rows = L.rows_received(), own_end = own.recv_first + own.rows;
    const Index* to = L.recv_to_block.data();
    for (Index i = 0; i < rows;) {
      const bool is_own = i >= own.recv_first && i < own_end;
      const Index stop = is_own ? own_end : i < own.recv_first ? std::min(own.recv_first, rows) : rows;
      Index j = i + 1;
      while (j < stop && to[j] == to[i] + (j - i)) ++j;
      f(i, j - i, to[i], is_own);
      i = j;
    }
  }
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
