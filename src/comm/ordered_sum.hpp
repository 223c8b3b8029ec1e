#pragma once
// Sums of per-chunk partial results in one fixed binary-tree order over the global
// chunk index, so that the rounded total is the same bits whatever number of ranks the
// chunks are spread over. This is how gradients become rank-count invariant: each rank
// computes one partial gradient per chunk of global tokens it holds (same rows, same
// GEMM, same bits on any layout), pushes them in chunk order into a TreeSum, whose local
// result is the node of the global tree above its chunks, and tree_allreduce combines
// the ranks' nodes in the same tree (recursive doubling).
//
// NOTES: this needs aligned subtrees: a power of two of chunks per rank and a power of
// two of ranks, rank r holding chunks [r m, (r+1) m). It costs one addition per value
// and chunk and no conversions, which is why gradients use it (measured in
// bench/bench_moe --repro) rather than the exact fixed-point sums of comm/exact_sum
// that statistics use. Chunks with no rows are "empty" nodes: combining an empty node
// with x gives x without an addition, on every layout alike (so -0 stays -0).
#include <cstddef>
#include <vector>

#include "comm/communicator.hpp"

namespace moesim {

template <class T>
class TreeSum {
 public:
  // Forgets every pushed chunk; chunks will hold n values.
  void reset(std::size_t n);
  // A buffer of n values for the next chunk; fill it, then push().
  T* leaf();
  // Adds the filled leaf as the next chunk, or an empty chunk.
  void push();
  void push_empty();
  std::size_t pushed() const { return pushed_; }
  // True when the pushes form one aligned subtree (a power of two of them, or none).
  bool complete() const { return pushed_ == 0 || (pushed_ & (pushed_ - 1)) == 0; }
  // Copies the subtree's sum to out (zeros if empty); returns false if it is empty.
  // Needs complete().
  bool result(T* out) const;

 private:
  struct Node {
    std::vector<T> v;
    bool full = false;   // holds a pending subtree
    bool empty = true;   // that subtree has no rows
  };
  void carry(std::size_t level, bool empty);
  std::size_t n_ = 0, pushed_ = 0;
  std::vector<Node> levels_;
  std::vector<T> leaf_;
};

// COLLECTIVE. Rank r's `data` (n values, `nonempty` as above) is node r of a tree level;
// every rank gets the sum of all nodes in the tree order. comm.size() a power of two.
template <class T>
void tree_allreduce(const Communicator& comm, T* data, std::size_t n, bool nonempty);
// The same for consecutive segments of data (sizes), each with its own nonempty flag
// (updated: whether any rank's node was nonempty), in one message per tree level.
template <class T>
void tree_allreduce(const Communicator& comm, T* data, const std::vector<std::size_t>& sizes,
                    std::vector<char>& nonempty);

// True if x is a power of two (x >= 1).
inline bool is_power_of_two(long long x) { return x > 0 && (x & (x - 1)) == 0; }

}  // namespace moesim
