#pragma once
// What KnnLearner's predict (knn.cpp) and its joint out-of-fold pass (knn_folds.cpp)
// share: the row checks, the ordering of neighbours, the sorted slot lists and the vote.
#include <cstdint>
#include <limits>

#include "learners/knn.hpp"

namespace moesim::knn {

inline constexpr std::int64_t kNoId = std::numeric_limits<std::int64_t>::max();
inline constexpr double kInf = std::numeric_limits<double>::infinity();

// Neighbours are ordered by (squared distance, global row id), so that the order does
// not depend on where the rows are.
inline bool closer(double da, std::int64_t ia, double db, std::int64_t ib) {
  return da < db || (da == db && ia < ib);
}

// COLLECTIVE. Checks every rank's rows together, so that bad input throws on all ranks
// instead of hanging the ones that passed. Returns the global feature count.
Index check_rows(const Communicator& comm, const TrainRows& rows, int classes, const char* who);

// Slots [base, base + K) of c are sorted by closer(), empty ones (+inf, kNoId) last.
// Inserts (d2, id, y, w) in order if it is closer than the last slot (which it drops);
// returns whether it did.
bool insert_slot(KnnLearner::Candidates& c, std::size_t base, std::size_t K, double d2, std::int64_t id,
                 double y, double w);

// Row i of out: the vote of the K sorted slots at `base` (C columns of class
// probabilities, or one value when C = 1), weights w x (1 / d, or only the d = 0
// neighbours when there is one, with distance weights).
void vote(const KnnLearner::Candidates& c, std::size_t base, std::size_t K, bool distance_weighted,
          Mat<double>& out, Index i);

}  // namespace moesim::knn
