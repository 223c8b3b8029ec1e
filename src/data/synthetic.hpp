#pragma once
// Synthetic tables for large tests and benchmarks, in the spirit of scikit-learn's
// make_classification / make_regression: informative features around cluster
// centres, redundant features (linear mixes of the informative ones) and noise
// features. Every row is a pure function of (seed, row), so each rank makes its shard.
#include <cstdint>

#include "comm/communicator.hpp"
#include "data/table.hpp"

namespace moesim {

struct SyntheticSpec {
  bool classification = true;
  std::int64_t rows = 1000;
  int features = 20;
  int informative = 5;
  int redundant = 2;         // the rest of the features are noise
  int classes = 2;
  int clusters_per_class = 2;
  double class_sep = 1.0;    // distance scale between cluster centres
  double label_noise = 0.01; // classification: probability of a random label
  double noise = 0.1;        // regression: target noise std
  std::uint64_t seed = 1;
};

// COLLECTIVE (only for the shard bounds).
Table make_synthetic(const Communicator& comm, const SyntheticSpec& spec);

}  // namespace moesim
