#pragma once
// Base learners for stacking. Every learner is data-parallel: each rank holds a
// shard of the training rows and learners exchange statistics (Gram matrices,
// gradients, histograms, candidate neighbours), never whole shards.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim {

// Hyper-parameters of every learner, set from the command line (`moesim stack --help`).
struct LearnerOptions {
  double ridge_alpha = 1.0;          // L2 penalty of ridge (on standardised features)
  double logistic_c = 1.0;           // inverse L2 strength, as scikit-learn's C
  int logistic_max_iter = 100;
  int knn_k = 5;
  bool knn_distance_weighted = false;
  int tree_max_depth = 8;            // decision tree
  int tree_min_samples_leaf = 1;
  int max_bins = 64;                 // histogram bins per feature (trees)
  int forest_trees = 100;
  int forest_max_depth = 12;
  double forest_max_features = 0.0;  // fraction of features per split; 0 = sqrt(p)/p (clf), 1 (reg)
  int gbdt_trees = 100;
  double gbdt_learning_rate = 0.1;
  int gbdt_max_depth = 3;
  double nb_var_smoothing = 1e-9;    // as scikit-learn's GaussianNB
};

struct LearnerContext {
  const Communicator& comm;
  int classes = 0;          // 0: regression; >= 2: classification with labels 0..classes-1
  std::uint64_t seed = 1;   // for randomised learners; results must not depend on P
};

struct TrainRows {
  const Mat<double>& X;
  const std::vector<double>& y;
  const std::vector<double>& w;
  const std::vector<std::int64_t>& id;
};

// Out-of-fold predictions of one learner (Learner::out_of_fold).
struct OutOfFold {
  Mat<double> pred;  // local rows x outputs; row i from the model that did not see fold[i]
  double fit_seconds = 0, predict_seconds = 0;
};

class Learner {
 public:
  virtual ~Learner() = default;
  virtual std::string name() const = 0;
  // COLLECTIVE. Fits on the local training rows X (n x p), targets y (class index or
  // value), sample weights w and global row ids (for per-row randomness such as
  // bootstraps, and for tie-breaking, so that results do not depend on the rank
  // count), over all ranks together. Any rank may have n = 0.
  virtual void fit(const LearnerContext& ctx, const TrainRows& rows) = 0;
  // COLLECTIVE (KNN needs every rank's training rows). Local query rows -> n x C class
  // probabilities (classification) or n x 1 values (regression).
  virtual Mat<double> predict(const LearnerContext& ctx, const Mat<double>& X) = 0;
  // An unfitted learner with the same hyper-parameters.
  virtual std::unique_ptr<Learner> clone() const = 0;
  // COLLECTIVE. Out-of-fold predictions of the local rows: row i as predicted by a clone
  // fitted on the rows whose fold differs from fold[i] (folds 0 .. K-1). This default
  // fits and predicts fold by fold and hands each fold's fitted model to `each_model`
  // when that is set. A learner may share work between the folds when no fold model is
  // asked for, as long as its predictions are the same bits.
  virtual OutOfFold out_of_fold(const LearnerContext& ctx, const TrainRows& rows, const std::vector<int>& fold,
                                int K, const std::function<void(Learner&)>& each_model) const;
};

// Rows i of X (entries i of v) with keep[i].
Mat<double> kept_rows(const Mat<double>& X, const std::vector<char>& keep);
template <class V>
V kept_values(const V& v, const std::vector<char>& keep) {
  V out;
  for (std::size_t i = 0; i < v.size(); ++i)
    if (keep[i]) out.push_back(v[i]);
  return out;
}

// Names: ridge, logistic, knn, tree, forest, gbdt, nb. Throws ConfigError for others.
std::unique_ptr<Learner> make_learner(const std::string& name, const LearnerOptions& opt);
const std::vector<std::string>& learner_names();

}  // namespace moesim
