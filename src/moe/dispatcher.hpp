#pragma once
// Expert-parallel token exchange: dispatch (tokens to their experts) and combine
// (expert outputs back to the tokens' ranks), two verbs on one layout.
//
// Four ways to move the rows, as production systems do (identical results):
//   kAlltoallv  per-destination counts by MPI_Alltoall, then MPI_Alltoallv (default);
//   kAllgather  the whole P x E count matrix by MPI_Allgather, then MPI_Alltoallv;
//   kP2P        counts, then MPI_Isend/Irecv per (rank, local expert): rows land
//               directly in their expert's block, no permutation;
//   kPadded     no count exchange: each (source, expert) pair owns a fixed slot of
//               S rows plus a header row holding the count, moved by one equal-split
//               MPI_Alltoall; the unused rows are padding.
//
// NOTES: the layout is built once per layer and step and reused by all four
// exchanges (forward dispatch/combine, backward dispatch of output gradients and
// combine of input gradients). Rank r owns experts [r*E/P, (r+1)*E/P). Rows leave
// in (expert, token) order and land grouped by (source rank, local expert); they are
// then permuted so that each local expert sees one contiguous block in global token
// order, which makes expert GEMMs identical whatever the rank count.
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim {

enum class DispatchAlgo { kAlltoallv, kAllgather, kP2P, kPadded };
DispatchAlgo parse_dispatch(const std::string& name);  // ConfigError on unknown names
const char* dispatch_name(DispatchAlgo a);

struct DispatchLayout {
  int P = 1, E = 1, E_local = 1;
  Index slot_rows = 0;             // kPadded: rows per (source, expert) slot
  bool recv_known = false;         // kPadded learns the receive side from the first dispatch
  // Token-owner side: one row per kept assignment, ordered by (expert, token).
  std::vector<Index> send_token;   // local token of each send row
  std::vector<int> send_choice;    // which of the token's K choices
  std::vector<int> send_counts, send_displs;  // rows per destination rank
  std::vector<int> send_expert_counts;        // E: rows this rank sends to each expert
  // Expert-owner side.
  std::vector<int> recv_counts, recv_displs;  // rows per source rank
  std::vector<int> recv_expert_counts;        // P x E_local, rows per (source, local expert)
  std::vector<Index> recv_to_block;           // received row -> row in expert-block order
  std::vector<Index> block_offset;            // E_local + 1 prefix over expert blocks
  Index rows_sent() const { return static_cast<Index>(send_token.size()); }
  Index rows_received() const { return static_cast<Index>(recv_to_block.size()); }
};

// The four exchanges of a layer and step, in order.
enum Phase { kForwardDispatch = 0, kForwardCombine = 1, kBackwardDispatch = 2, kBackwardCombine = 3 };

// Communication accounting for one rank.
struct CommStats {
  double seconds = 0;                   // time inside exchange calls (counts included)
  std::vector<double> bytes_to_rank;    // bytes this rank sent to each rank (padding included)
  double padding_bytes = 0;             // kPadded: bytes of unused slot rows and headers sent
  double phase_seconds[4] = {0, 0, 0, 0};
  double phase_bytes[4] = {0, 0, 0, 0};  // bytes sent to other ranks, per phase
  int phase = kForwardDispatch;
  void reset(int P) {
    seconds = padding_bytes = 0;
    bytes_to_rank.assign(static_cast<std::size_t>(P), 0.0);
    for (int i = 0; i < 4; ++i) phase_seconds[i] = phase_bytes[i] = 0;
    phase = kForwardDispatch;
  }
};

class Dispatcher {
 public:
  Dispatcher(const Communicator& comm, int experts, DispatchAlgo algo = DispatchAlgo::kAlltoallv);

  // COLLECTIVE (exchanges counts, except kPadded). `expert` and `kept` hold n*K local
  // assignments. `slot_rows` (kPadded) bounds the rows one rank sends one expert.
  DispatchLayout plan(const std::vector<int>& expert, const std::vector<char>& kept, Index n,
                      int K, CommStats& stats, Index slot_rows = 0) const;
  // COLLECTIVE. Rows in send order -> rows in expert-block order on the owners.
  // kPadded completes the layout's receive side on its first call.
  template <class T>
  Mat<T> dispatch(DispatchLayout& layout, const Mat<T>& send_rows, CommStats& stats) const;
  // COLLECTIVE. Rows in expert-block order -> rows in send order on the token owners.
  template <class T>
  Mat<T> combine(const DispatchLayout& layout, const Mat<T>& block_rows, CommStats& stats) const;

  int experts_per_rank() const { return E_local_; }
  int first_local_expert() const { return comm_.rank() * E_local_; }
  DispatchAlgo algorithm() const { return algo_; }

 private:
  void finish_receive_side(DispatchLayout& L) const;
  template <class T>
  Mat<T> dispatch_p2p(const DispatchLayout& L, const Mat<T>& send_rows, CommStats& stats) const;
  template <class T>
  Mat<T> combine_p2p(const DispatchLayout& L, const Mat<T>& blocks, CommStats& stats) const;
  template <class T>
  Mat<T> dispatch_padded(DispatchLayout& L, const Mat<T>& send_rows, CommStats& stats) const;
  template <class T>
  Mat<T> combine_padded(const DispatchLayout& L, const Mat<T>& blocks, CommStats& stats) const;
  template <class T>
  void exchange(const T* send, const std::vector<int>& send_rows,
                const std::vector<int>& send_row_displs, T* recv,
                const std::vector<int>& recv_rows, const std::vector<int>& recv_row_displs,
                Index width, CommStats& stats) const;

  const Communicator& comm_;
  int E_ = 1, E_local_ = 1;
  DispatchAlgo algo_ = DispatchAlgo::kAlltoallv;
};

}  // namespace moesim
