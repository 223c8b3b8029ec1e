#pragma once
// Serial reference of the tree learners for tests: the same rules (tree_binning.hpp,
// tree_grow.hpp, trees.hpp) written plainly on the full data set: no histograms
// shared across ranks, no batching, no subtraction, recursive growth, prediction by
// walking raw thresholds, double sums in row order. The distributed learners sum in
// fixed point (tree_binning.hpp) and must match it to rounding.
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "learners/learner.hpp"

namespace moesim::tree_reference {

// Per-feature thresholds from the full data (x <= t[b] iff bin(x) <= b).
std::vector<std::vector<double>> bin_thresholds(const Mat<double>& X, const std::vector<double>& w,
                                                int max_bins);

struct FullData {
  const Mat<double>& X;
  const std::vector<double>& y;
  const std::vector<double>& w;
  const std::vector<std::int64_t>& id;
};

// Fits learner "tree", "forest" or "gbdt" on all rows and predicts Xq, as the
// distributed learner's predict would. gbdt_loss (optional) receives the loss history.
Mat<double> fit_predict(const std::string& learner, const LearnerOptions& opt, int classes,
                        std::uint64_t seed, const FullData& data, const Mat<double>& Xq,
                        std::vector<double>* gbdt_loss = nullptr);

}  // namespace moesim::tree_reference
