#pragma once
// Fold assignment by global row, so that folds do not depend on the rank count.
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "data/table.hpp"

namespace moesim {

enum class FoldMode {
  kRandom,      // regression: every block of K consecutive rows spread over the K folds
  kStratified,  // classification: the same within each class
  kGroups,      // rows with equal group id share a fold (group ids from the data)
  kGiven,       // the group column holds the fold id itself, 0..K-1
};

// COLLECTIVE. Fold id (0..K-1) of each local row of `t` for repeat `repeat`.
//
// NOTES: random/stratified: the i-th row of class c in global order (i from an
// exclusive prefix sum of class counts over ranks) falls in block i / K; each block
// of K rows gets a random permutation of the K folds from (seed, repeat, c, block).
// Each fold therefore receives floor or ceil of n_c / K rows of every class.
std::vector<int> assign_folds(const Communicator& comm, const Table& t, int K, std::uint64_t seed,
                              int repeat, FoldMode mode);

}  // namespace moesim
