#pragma once
// Expert-parallel token exchange: dispatch (tokens to their experts) and combine
// (expert outputs back to the tokens' ranks), two verbs on one layout
// (dispatch/layout.hpp) that one of the registered algorithms moves
// (dispatch/registry.hpp; identical results):
//   alltoallv  per-destination counts by MPI_Alltoall, then MPI_Alltoallv (default);
//   allgather  the whole P x E count matrix by MPI_Allgather, then MPI_Alltoallv;
//   p2p        counts, then MPI_Isend/Irecv per (rank, local expert);
//   padded     no count exchange: fixed slots of S rows plus a count header per
//              (source, expert), one equal-split MPI_Alltoall;
//   hierarchical  two stages on nodes of consecutive ranks: inside each node, then one
//              aggregated message between the same local ranks of two nodes (Tutel's 2DH).
// The layout is built once per layer and step and reused by all four exchanges
// (forward dispatch/combine, backward dispatch of output gradients and combine of
// input gradients).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/row_buffer.hpp"
#include "core/tensor.hpp"
#include "moe/dispatch/algorithm.hpp"
#include "moe/dispatch/comm_stats.hpp"
#include "moe/dispatch/layout.hpp"
#include "moe/config.hpp"
#include "moe/dispatch/registry.hpp"

namespace moesim {

class Dispatcher {
 public:
  // `comm`: the ranks that exchange tokens (an expert group); its rank r owns experts
  // [r*E/n, (r+1)*E/n) of the n = comm.size() ranks.
  // `node_of`: the node of each rank of `comm` (empty: all on one node).
  Dispatcher(const Communicator& comm, int experts, DispatchAlgo algo = DispatchAlgo::kAlltoallv,
             std::vector<int> node_of = {}, std::vector<int> expert_order = {});

  // COLLECTIVE (exchanges counts, except padded). `expert` and `kept` hold n*K local
  // assignments; `limits` bound the rows one rank sends one expert (padded sizes its
  // slots from them).
  DispatchLayout plan(const std::vector<int>& expert, const std::vector<char>& kept, Index n, int K,
                      CommStats& stats, const DispatchLimits& limits = {}) const;
  // The same into `L`, reusing its memory (a layer plans every step into one layout).
  void plan_into(DispatchLayout& L, const std::vector<int>& expert, const std::vector<char>& kept, Index n, int K,
                 CommStats& stats, const DispatchLimits& limits = {}) const;
  // COLLECTIVE. Rows in send order -> rows in expert-block order on the owners, written into
  // `out` (its view returned). Padded completes the layout's receive side on its first call.
  template <class T>
  MatMap<T> dispatch(DispatchLayout& layout, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                     CommStats& stats) const;
  // COLLECTIVE. Rows in expert-block order -> rows in send order on the token owners, into `out`.
  template <class T>
  MatMap<T> combine(const DispatchLayout& layout, const ConstMatMap<T>& block_rows, RowBuffer<T>& out,
                    CommStats& stats) const;
  // The same into fresh matrices (tests, one-off callers).
  template <class T>
  Mat<T> dispatch(DispatchLayout& layout, const Mat<T>& send_rows, CommStats& stats) const {
    RowBuffer<T> out;
    return dispatch(layout, ConstMatMap<T>(send_rows.data(), send_rows.rows(), send_rows.cols()), out, stats);
  }
  template <class T>
  Mat<T> combine(const DispatchLayout& layout, const Mat<T>& block_rows, CommStats& stats) const {
    RowBuffer<T> out;
    return combine(layout, ConstMatMap<T>(block_rows.data(), block_rows.rows(), block_rows.cols()), out, stats);
  }

  int experts_per_rank() const { return E_local_; }
  // The global expert this rank holds as local expert le.
  int global_expert(int le) const {
    const int slot = comm_.rank() * E_local_ + le;
    return expert_order_.empty() ? slot : expert_order_[static_cast<std::size_t>(slot)];
  }
  DispatchAlgo algorithm() const { return algo_; }
  // Whether the algorithm honours DispatchLayout::own_in_blocks (layout.hpp).
  bool can_leave_own_rows() const { return impl_->can_leave_own_rows(); }
  // This rank in the exchanging group.
  int rank() const { return comm_.rank(); }
  const std::vector<int>& node_of() const { return node_of_; }
  // Why the algorithm cannot run on this placement ("" when it can).
  std::string unusable() const { return impl_->unusable(); }

 private:
  const Communicator& comm_;
  int E_ = 1, E_local_ = 1;
  DispatchAlgo algo_ = DispatchAlgo::kAlltoallv;
  std::vector<int> node_of_;
  std::vector<int> expert_order_;  // slot -> expert (MoeLayerConfig::expert_order); empty: the identity
  std::vector<int> expert_slot_;   // its inverse
  // Copies share it: it holds only per-call scratch buffers (single-threaded use).
  std::shared_ptr<const DispatchAlgorithm> impl_;
};

}  // namespace moesim
