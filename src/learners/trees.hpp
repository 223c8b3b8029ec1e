#pragma once
// Tree learners: a decision tree, a random forest and gradient-boosted trees, all
// trained from all-reduced histograms of binned features (tree_binning.hpp,
// tree_grow.hpp). The fitted model is replicated on every rank; predict is local.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "learners/learner.hpp"

namespace moesim {

// L2 penalty on GBDT leaf values, -G / (H + lambda): XGBoost's default reg_lambda, which
// keeps leaves with a tiny Hessian (confident classes, few rows) from exploding.
inline constexpr double kGbdtLambda = 1.0;

// Trees flattened into shared arrays for prediction.
struct TreeEnsemble {
  struct Node {
    std::int32_t feature;  // -1: leaf
    std::int32_t next;     // internal: left child (right is next + 1); leaf: offset in values
    double threshold;      // x <= threshold goes left
  };
  int dim = 1;                       // values per leaf
  int features = 0;                  // p of the training rows
  std::vector<Node> nodes;
  std::vector<std::int32_t> roots;   // per tree
  std::vector<std::int32_t> column;  // per tree: first output column its leaves add to
  std::vector<double> values;

  int trees() const { return static_cast<int>(roots.size()); }
  // out(i, column[t] + d) += leaf value d of row i in tree t, for every tree.
  void accumulate(const Mat<double>& X, Mat<double>& out) const;
};

// One CART-style tree: Gini (classification) or variance (regression), leaves holding
// class frequencies or the weighted mean.
class TreeLearner : public Learner {
 public:
  explicit TreeLearner(const LearnerOptions& opt) : opt_(opt) {}
  std::string name() const override { return "tree"; }
  void fit(const LearnerContext& ctx, const TrainRows& rows) override;
  Mat<double> predict(const LearnerContext& ctx, const Mat<double>& X) override;
  std::unique_ptr<Learner> clone() const override { return std::make_unique<TreeLearner>(opt_); }
  const TreeEnsemble& model() const { return model_; }

 private:
  LearnerOptions opt_;
  int classes_ = 0;
  TreeEnsemble model_;
};

// Random forest: Poisson(1) bootstrap weights per (tree, global row id), features
// sampled per node; prediction is the mean of the trees.
class ForestLearner : public Learner {
 public:
  explicit ForestLearner(const LearnerOptions& opt) : opt_(opt) {}
  std::string name() const override { return "forest"; }
  void fit(const LearnerContext& ctx, const TrainRows& rows) override;
  Mat<double> predict(const LearnerContext& ctx, const Mat<double>& X) override;
  std::unique_ptr<Learner> clone() const override { return std::make_unique<ForestLearner>(opt_); }
  const TreeEnsemble& model() const { return model_; }

 private:
  LearnerOptions opt_;
  int classes_ = 0;
  TreeEnsemble model_;
};

// Gradient boosting with Newton leaves -G / (H + kGbdtLambda) and the XGBoost gain:
// squared error (regression, starting from the weighted mean), logistic loss with one
// tree per round (two classes, starting from the log prior odds), softmax with one
// tree per class per round (more classes, starting from the log priors).
class GbdtLearner : public Learner {
 public:
  explicit GbdtLearner(const LearnerOptions& opt) : opt_(opt) {}
  std::string name() const override { return "gbdt"; }
  void fit(const LearnerContext& ctx, const TrainRows& rows) override;
  Mat<double> predict(const LearnerContext& ctx, const Mat<double>& X) override;
  std::unique_ptr<Learner> clone() const override { return std::make_unique<GbdtLearner>(opt_); }
  const TreeEnsemble& model() const { return model_; }
  // Weighted mean training loss (squared error / 2, or cross-entropy) before each round
  // and after the last: gbdt_trees + 1 values.
  const std::vector<double>& loss_history() const { return loss_history_; }

 private:
  LearnerOptions opt_;
  int classes_ = 0;
  std::vector<double> init_;  // initial score per output
  TreeEnsemble model_;
  std::vector<double> loss_history_;
};

}  // namespace moesim
