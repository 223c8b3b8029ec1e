#pragma once
// Serial reference for KnnLearner: the whole training set in one place, explicit
// loops and a full sort. For tests only.
#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

// Standardises with the weighted mean and variance of all rows (two passes), drops
// rows of weight 0, orders every row by (squared distance, id) and votes with the
// first min(k, rows) of them. n x C probabilities (classes >= 2) or n x 1 values.
Mat<double> reference_knn_predict(const Mat<double>& X, const std::vector<double>& y,
                                  const std::vector<double>& w, const std::vector<std::int64_t>& id,
                                  int classes, int k, bool distance_weighted, const Mat<double>& Q);

}  // namespace moesim
