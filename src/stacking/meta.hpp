#pragma once
// Meta-learners: how the base learners' out-of-fold predictions are combined.
#include <memory>
#include <string>
#include <vector>

#include "learners/learner.hpp"

namespace moesim {

struct MetaOptions {
  std::string kind = "logistic";  // logistic | ridge | nnls | greedy
  double c = 1.0;                 // logistic: inverse L2 strength
  double alpha = 1.0;             // ridge: L2 penalty
  int greedy_iterations = 50;     // greedy: ensemble-selection rounds (with replacement)
};

class MetaLearner {
 public:
  virtual ~MetaLearner() = default;
  // COLLECTIVE. Z: local rows x (blocks * width) meta features; the first `blocks`
  // blocks of `width` columns are base-learner predictions, any further columns are
  // passed-through features.
  virtual void fit(const LearnerContext& ctx, const Mat<double>& Z, const std::vector<double>& y,
                   const std::vector<double>& w, int blocks, int width) = 0;
  virtual Mat<double> predict(const LearnerContext& ctx, const Mat<double>& Z) = 0;
  // Coefficients, one row per meta feature (plus "intercept" where there is one),
  // one column per output; `rows` names them.
  virtual Mat<double> coefficients(std::vector<std::string>* rows) const = 0;
};

// Throws ConfigError for an unknown kind or an impossible combination.
std::unique_ptr<MetaLearner> make_meta(const MetaOptions& opt, bool classification, bool passthrough);

// Non-negative weights summing to one minimising sum_i w_i ||sum_l a_l P_l(i) - Y(i)||^2
// (SuperLearner), from the L x L Gram matrix summed exactly over ranks: projected gradient on the simplex.
std::vector<double> simplex_least_squares(const Mat<double>& gram, const std::vector<double>& rhs);

}  // namespace moesim
