#pragma once
// One way of moving the rows of a DispatchLayout between ranks. An algorithm fills the
// layout's receive side (plan) and moves rows both ways (dispatch, combine); every
// algorithm leaves each expert block in the same order, so results are identical.
//
// To add one: derive from DispatchAlgorithmOf<YourClass> in dispatch/<name>.cpp, give it
// plan() and the templates dispatch_rows / combine_rows (rows in, a RowBuffer to write the
// result into, its view returned), define its factory there and
// add one line to MOESIM_DISPATCH_ALGORITHMS (dispatch/registry.hpp).
#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>
#include <tuple>

#include "comm/communicator.hpp"
#include "core/row_buffer.hpp"
#include "core/timer.hpp"
#include "moe/dispatch/comm_stats.hpp"
#include "moe/dispatch/layout.hpp"

namespace moesim {

// Bounds on what one rank sends one expert, known to every rank without communication.
struct DispatchLimits {
  std::int64_t tokens = 0;    // B, global tokens of the batch (a rank holds at most ceil(B/P))
  std::int64_t capacity = 0;  // C, slots per expert (0 = dropless)
  int token_ranks = 0;        // ranks the B tokens are sharded over (0: the exchanging ranks)
};

class DispatchAlgorithm {
 public:
  explicit DispatchAlgorithm(const Communicator& comm) : comm_(comm) {}
  virtual ~DispatchAlgorithm() = default;
  DispatchAlgorithm(const DispatchAlgorithm&) = delete;
  DispatchAlgorithm& operator=(const DispatchAlgorithm&) = delete;

  // Why this algorithm cannot run on its ranks' placement ("" when it can); the layer
  // refuses a run with it on every rank before any exchange.
  virtual std::string unusable() const { return ""; }
  // Whether dispatch and combine honour DispatchLayout::own_in_blocks (leave the rows a rank
  // sends itself to the caller, in the expert blocks).
  virtual bool can_leave_own_rows() const { return false; }
  // COLLECTIVE. `L` has its send side; fill its receive side, or leave recv_known
  // false for the first dispatch to complete.
  virtual void plan(DispatchLayout& L, const DispatchLimits& limits, CommStats& stats) const = 0;
  // COLLECTIVE. Rows in send order -> rows in expert-block order on the owners, written
  // into `out` (its view of rows_received() rows is returned).
  virtual MatMap<float> dispatch(DispatchLayout& L, const ConstMatMap<float>& rows, RowBuffer<float>& out,
                                 CommStats& stats) const = 0;
  virtual MatMap<double> dispatch(DispatchLayout& L, const ConstMatMap<double>& rows, RowBuffer<double>& out,
                                  CommStats& stats) const = 0;
  virtual MatMap<std::int64_t> dispatch(DispatchLayout& L, const ConstMatMap<std::int64_t>& rows,
                                        RowBuffer<std::int64_t>& out, CommStats& stats) const = 0;
  // COLLECTIVE. Rows in expert-block order -> rows in send order on the token owners, into
  // `out` (its view of rows_sent() rows is returned).
  virtual MatMap<float> combine(const DispatchLayout& L, const ConstMatMap<float>& blocks, RowBuffer<float>& out,
                                CommStats& stats) const = 0;
  virtual MatMap<double> combine(const DispatchLayout& L, const ConstMatMap<double>& blocks,
                                 RowBuffer<double>& out, CommStats& stats) const = 0;
  virtual MatMap<std::int64_t> combine(const DispatchLayout& L, const ConstMatMap<std::int64_t>& blocks,
                                       RowBuffer<std::int64_t>& out, CommStats& stats) const = 0;

 protected:
  // Receive counts by one MPI_Alltoall of the per-expert send counts.
  void counts_by_alltoall(DispatchLayout& L, CommStats& stats) const;
  // One alltoallv's element counts and displacements per peer.
  struct ElementCounts {
    std::vector<int> send, send_displs, recv, recv_displs;
  };
  // Those of the next alltoallv over `peers` ranks, each sized `peers`, kept from call to call.
  ElementCounts& element_counts(int peers) const {
    for (auto* v : {&counts_.send, &counts_.send_displs, &counts_.recv, &counts_.recv_displs})
      v->resize(static_cast<std::size_t>(peers));
    return counts_;
  }
  // Temporaries of one call (which = 0, 1), kept from call to call so that MPI moves rows
  // through the same memory every step.
  template <class T>
  RowBuffer<T>& scratch(int which) const {
    return std::get<std::array<RowBuffer<T>, 2>>(scratch_)[static_cast<std::size_t>(which)];
  }

  const Communicator& comm_;

 private:
  mutable std::tuple<std::array<RowBuffer<float>, 2>, std::array<RowBuffer<double>, 2>,
                     std::array<RowBuffer<std::int64_t>, 2>>
      scratch_;
  mutable ElementCounts counts_;
};

// Virtual functions cannot be templates: this routes each element type to the
// algorithm's templates dispatch_rows<T> and combine_rows<T>.
template <class Impl>
class DispatchAlgorithmOf : public DispatchAlgorithm {
 public:
  using DispatchAlgorithm::DispatchAlgorithm;
  MatMap<float> dispatch(DispatchLayout& L, const ConstMatMap<float>& x, RowBuffer<float>& out,
                         CommStats& s) const override {
    return self().dispatch_rows(L, x, out, s);
  }
  MatMap<double> dispatch(DispatchLayout& L, const ConstMatMap<double>& x, RowBuffer<double>& out,
                          CommStats& s) const override {
    return self().dispatch_rows(L, x, out, s);
  }
  MatMap<std::int64_t> dispatch(DispatchLayout& L, const ConstMatMap<std::int64_t>& x,
                                RowBuffer<std::int64_t>& out, CommStats& s) const override {
    return self().dispatch_rows(L, x, out, s);
  }
  MatMap<float> combine(const DispatchLayout& L, const ConstMatMap<float>& x, RowBuffer<float>& out,
                        CommStats& s) const override {
    return self().combine_rows(L, x, out, s);
  }
  MatMap<double> combine(const DispatchLayout& L, const ConstMatMap<double>& x, RowBuffer<double>& out,
                         CommStats& s) const override {
    return self().combine_rows(L, x, out, s);
  }
  MatMap<std::int64_t> combine(const DispatchLayout& L, const ConstMatMap<std::int64_t>& x,
                               RowBuffer<std::int64_t>& out, CommStats& s) const override {
    return self().combine_rows(L, x, out, s);
  }

 private:
  const Impl& self() const { return static_cast<const Impl&>(*this); }
};

// Times an exchange into the total and the current phase.
class PhaseTimer {
 public:
  explicit PhaseTimer(CommStats& s) : s_(s) {}
  ~PhaseTimer() {
    const double t = sw_.seconds();
    s_.seconds += t;
    s_.phase_seconds[s_.phase] += t;
    if (s_.stage >= 0) s_.stage_seconds[s_.stage] += t;
  }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  CommStats& s_;
  Stopwatch sw_;
};

// Counts `bytes` sent from rank `self` to `dest` (ranks of the exchanging group) into the stats.
inline void count_bytes(CommStats& s, int self, int dest, double bytes) {
  s.bytes_to_rank[static_cast<std::size_t>(s.first_rank + dest)] += bytes;
  if (dest == self) return;
  s.phase_bytes[s.phase] += bytes;
  if (s.stage >= 0) s.stage_bytes[s.stage] += bytes;
  if (bytes > 0 && !s.node_of.empty() &&
      s.node_of[static_cast<std::size_t>(self)] != s.node_of[static_cast<std::size_t>(dest)]) {
    s.inter_node_bytes += bytes;
    ++s.inter_node_messages;
  }
}

// An element count as MPI's int, or an error naming what overflowed.
inline int checked_int(Index v, const char* what) {
  MOESIM_REQUIRE(v <= std::numeric_limits<int>::max(), what << " of " << v << " elements exceeds MPI's int counts");
  return static_cast<int>(v);
}

}  // namespace moesim
