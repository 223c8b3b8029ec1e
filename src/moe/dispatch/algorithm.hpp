#pragma once
// One way of moving the rows of a DispatchLayout between ranks. An algorithm fills the
// layout's receive side (plan) and moves rows both ways (dispatch, combine); every
// algorithm leaves each expert block in the same order, so results are identical.
//
// To add one: derive from DispatchAlgorithmOf<YourClass> in dispatch/<name>.cpp, give it
// plan() and the templates dispatch_rows / combine_rows, define its factory there and
// add one line to MOESIM_DISPATCH_ALGORITHMS (dispatch/registry.hpp).
#include <cstdint>
#include <limits>
#include <memory>

#include "comm/communicator.hpp"
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

  // COLLECTIVE. `L` has its send side; fill its receive side, or leave recv_known
  // false for the first dispatch to complete.
  virtual void plan(DispatchLayout& L, const DispatchLimits& limits, CommStats& stats) const = 0;
  // COLLECTIVE. Rows in send order -> rows in expert-block order on the owners.
  virtual Mat<float> dispatch(DispatchLayout& L, const Mat<float>& rows, CommStats& stats) const = 0;
  virtual Mat<double> dispatch(DispatchLayout& L, const Mat<double>& rows, CommStats& stats) const = 0;
  virtual Mat<std::int64_t> dispatch(DispatchLayout& L, const Mat<std::int64_t>& rows, CommStats& stats) const = 0;
  // COLLECTIVE. Rows in expert-block order -> rows in send order on the token owners.
  virtual Mat<float> combine(const DispatchLayout& L, const Mat<float>& blocks, CommStats& stats) const = 0;
  virtual Mat<double> combine(const DispatchLayout& L, const Mat<double>& blocks, CommStats& stats) const = 0;
  virtual Mat<std::int64_t> combine(const DispatchLayout& L, const Mat<std::int64_t>& blocks,
                                    CommStats& stats) const = 0;

 protected:
  // Receive counts by one MPI_Alltoall of the per-expert send counts.
  void counts_by_alltoall(DispatchLayout& L, CommStats& stats) const;

  const Communicator& comm_;
};

// Virtual functions cannot be templates: this routes each element type to the
// algorithm's templates dispatch_rows<T> and combine_rows<T>.
template <class Impl>
class DispatchAlgorithmOf : public DispatchAlgorithm {
 public:
  using DispatchAlgorithm::DispatchAlgorithm;
  Mat<float> dispatch(DispatchLayout& L, const Mat<float>& x, CommStats& s) const override {
    return self().dispatch_rows(L, x, s);
  }
  Mat<double> dispatch(DispatchLayout& L, const Mat<double>& x, CommStats& s) const override {
    return self().dispatch_rows(L, x, s);
  }
  Mat<std::int64_t> dispatch(DispatchLayout& L, const Mat<std::int64_t>& x, CommStats& s) const override {
    return self().dispatch_rows(L, x, s);
  }
  Mat<float> combine(const DispatchLayout& L, const Mat<float>& x, CommStats& s) const override {
    return self().combine_rows(L, x, s);
  }
  Mat<double> combine(const DispatchLayout& L, const Mat<double>& x, CommStats& s) const override {
    return self().combine_rows(L, x, s);
  }
  Mat<std::int64_t> combine(const DispatchLayout& L, const Mat<std::int64_t>& x, CommStats& s) const override {
    return self().combine_rows(L, x, s);
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
  if (dest != self) s.phase_bytes[s.phase] += bytes;
}

// An element count as MPI's int, or an error naming what overflowed.
inline int checked_int(Index v, const char* what) {
  MOESIM_REQUIRE(v <= std::numeric_limits<int>::max(), what << " of " << v << " elements exceeds MPI's int counts");
  return static_cast<int>(v);
}

}  // namespace moesim
