#pragma once
// Serial reference for NaiveBayesLearner: the whole training set in one place and the
// textbook formulas, one loop per quantity. For tests only.
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

// Gaussian naive Bayes probabilities (n x classes) for the queries Q.
Mat<double> reference_nb_predict(const Mat<double>& X, const std::vector<double>& y,
                                 const std::vector<double>& w, int classes, double var_smoothing,
                                 const Mat<double>& Q);

}  // namespace moesim
