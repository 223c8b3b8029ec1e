#pragma once
#include "learners/learner.hpp"

namespace moesim {

// Gaussian naive Bayes (scikit-learn's GaussianNB with sample weights): weighted class
// priors, per-class weighted means and variances, each variance plus
// var_smoothing x (largest feature variance over all training rows). That variance is
// weighted here (scikit-learn ignores the weights in it), so that a weight-2 row is
// exactly a repeated row.
// Statistics come from two exact reductions (the same bits on any number of ranks):
// weights and weighted sums first, then sums of squares centred on those means, which
// keeps them accurate when |mean| >> spread.
// A class without training weight gets probability 0.
class NaiveBayesLearner : public Learner {
 public:
  explicit NaiveBayesLearner(double var_smoothing);
  std::string name() const override { return "nb"; }
  void fit(const LearnerContext& ctx, const TrainRows& rows) override;
  // Local: needs no other rank.
  Mat<double> predict(const LearnerContext& ctx, const Mat<double>& X) override;
  std::unique_ptr<Learner> clone() const override {
    return std::make_unique<NaiveBayesLearner>(var_smoothing_);
  }
  const Mat<double>& means() const { return theta_; }    // C x p
  const Mat<double>& variances() const { return var_; }  // C x p, smoothing included
  const RowVec<double>& log_prior() const { return log_prior_; }
  double epsilon() const { return epsilon_; }

 private:
  double var_smoothing_;
  bool fitted_ = false;
  Mat<double> theta_, var_;
  RowVec<double> log_prior_, log_norm_;  // log_norm_(c) = log prior - 0.5 sum_j log(2 pi var)
  double epsilon_ = 0;
};

}  // namespace moesim
