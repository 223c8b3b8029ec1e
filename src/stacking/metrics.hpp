#pragma once
// Scores of predictions over rows sharded across ranks (weighted by sample weight).
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim {

struct Scores {
  double accuracy = 0, log_loss = 0;  // classification
  double rmse = 0, r2 = 0;            // regression
  double weight = 0;                  // total weight scored
  // The headline number: accuracy for classification, RMSE for regression.
  double primary(bool classification) const { return classification ? accuracy : rmse; }
};

inline const char* primary_metric(bool classification) { return classification ? "accuracy" : "rmse"; }
// Whether a is a better primary score than b.
inline bool better(bool classification, double a, double b) { return classification ? a > b : a < b; }

// COLLECTIVE. pred: n x C probabilities (classification) or n x 1 values.
Scores score(const Communicator& comm, const Mat<double>& pred, const std::vector<double>& y,
             const std::vector<double>& w, int classes);

}  // namespace moesim
