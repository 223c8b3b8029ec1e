#pragma once
// Expert-parallel token exchange: dispatch (tokens to their experts) and combine
// (expert outputs back to the tokens' ranks), two verbs on one layout.
//
// NOTES: the layout is built once per layer and step and reused by all four
// exchanges (forward dispatch/combine, backward dispatch of output gradients and
// combine of input gradients). Rank r owns experts [r*E/P, (r+1)*E/P). Rows leave
// in (expert, token) order and land grouped by (source rank, local expert); they are
// then permuted so that each local expert sees one contiguous block in global token
// order, which makes expert GEMMs identical whatever the rank count.
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim {

struct DispatchLayout {
  int P = 1, E = 1, E_local = 1;
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

// Communication accounting for one rank.
struct CommStats {
  double seconds = 0;                   // time inside exchange calls
  std::vector<double> bytes_to_rank;    // payload bytes this rank sent to each rank
  void reset(int P) { seconds = 0; bytes_to_rank.assign(static_cast<std::size_t>(P), 0.0); }
};

class Dispatcher {
 public:
  explicit Dispatcher(const Communicator& comm, int experts);

  // COLLECTIVE (exchanges counts). `expert` and `kept` hold n*K local assignments.
  DispatchLayout plan(const std::vector<int>& expert, const std::vector<char>& kept, Index n,
                      int K, CommStats& stats) const;
  // COLLECTIVE. Rows in send order -> rows in expert-block order on the owners.
  template <class T>
  Mat<T> dispatch(const DispatchLayout& layout, const Mat<T>& send_rows, CommStats& stats) const;
  // COLLECTIVE. Rows in expert-block order -> rows in send order on the token owners.
  template <class T>
  Mat<T> combine(const DispatchLayout& layout, const Mat<T>& block_rows, CommStats& stats) const;

  int experts_per_rank() const { return E_local_; }
  int first_local_expert() const { return comm_.rank() * E_local_; }

 private:
  template <class T>
  void exchange(const T* send, const std::vector<int>& send_rows,
                const std::vector<int>& send_row_displs, T* recv,
                const std::vector<int>& recv_rows, const std::vector<int>& recv_row_displs,
                Index width, CommStats& stats) const;

  const Communicator& comm_;
  int E_ = 1, E_local_ = 1;
};

}  // namespace moesim
