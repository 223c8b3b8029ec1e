#pragma once
#include "learners/learner.hpp"
#include "learners/standardize.hpp"

namespace moesim {

// Ridge on standardised features, solved from the all-reduced Gram matrix. For
// classification it regresses one-hot targets (one vs rest) and turns the scores into
// a distribution by clipping to [0, 1] and normalising.
class RidgeLearner : public Learner {
 public:
  explicit RidgeLearner(double alpha) : alpha_(alpha) {}
  std::string name() const override { return "ridge"; }
  void fit(const LearnerContext& ctx, const TrainRows& rows) override;
  Mat<double> predict(const LearnerContext& ctx, const Mat<double>& X) override;
  std::unique_ptr<Learner> clone() const override { return std::make_unique<RidgeLearner>(alpha_); }
  // Coefficients on the raw (unstandardised) features: p x outputs, then the intercept row.
  Mat<double> raw_coefficients() const;

 private:
  double alpha_;
  int classes_ = 0;
  Standardizer scaler_;
  Mat<double> coef_;
  RowVec<double> intercept_;
};

// Multinomial logistic regression with L2 (scikit-learn's C), Newton's method on the
// all-reduced gradient and Hessian with a backtracking line search.
class LogisticLearner : public Learner {
 public:
  LogisticLearner(double c, int max_iter) : c_(c), max_iter_(max_iter) {}
  std::string name() const override { return "logistic"; }
  void fit(const LearnerContext& ctx, const TrainRows& rows) override;
  Mat<double> predict(const LearnerContext& ctx, const Mat<double>& X) override;
  std::unique_ptr<Learner> clone() const override {
    return std::make_unique<LogisticLearner>(c_, max_iter_);
  }
  int iterations() const { return iterations_; }
  // Coefficients on the raw (unstandardised) features: p x C, then the intercept row.
  Mat<double> raw_coefficients() const;

 private:
  double c_;
  int max_iter_;
  double tol_ = 1e-8;
  int classes_ = 0;
  int iterations_ = 0;
  Standardizer scaler_;
  Mat<double> W_;  // (p + 1) x C, last row the bias
};

}  // namespace moesim
