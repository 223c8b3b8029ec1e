#pragma once
// A learner's training rows held by value; TrainRows (learners/learner.hpp) views them.
// No GoogleTest here: bench/ includes it too.
#include <cstdint>
#include <vector>

#include "core/tensor.hpp"
#include "learners/learner.hpp"

namespace moesim::test {

struct Rows {
  Mat<double> X;
  std::vector<double> y, w;           // targets (class index or value), sample weights
  std::vector<std::int64_t> id;       // global row ids
  TrainRows view() const { return {X, y, w, id}; }
};

}  // namespace moesim::test
