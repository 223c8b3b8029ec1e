#pragma once
// K-fold stacking and blending over rows sharded across ranks.
#include <string>
#include <vector>

#include "data/folds.hpp"
#include "data/table.hpp"
#include "learners/learner.hpp"
#include "stacking/meta.hpp"
#include "stacking/metrics.hpp"

namespace moesim {

struct StackOptions {
  std::vector<std::string> learners;  // level 1
  std::vector<std::string> level2;    // optional second level on level-1 out-of-fold predictions
  LearnerOptions learner;
  MetaOptions meta;
  int folds = 5;                      // K
  int repeats = 1;                    // repeated K-fold; out-of-fold predictions averaged
  FoldMode fold_mode = FoldMode::kStratified;
  bool passthrough = false;
  bool average_fold_models = false;   // test predictions: mean of fold models, not a refit
  std::uint64_t seed = 1;
  bool quiet = false;
};

struct LearnerReport {
  std::string name;
  int level = 1;
  Scores oof;                         // over all training rows (out of fold)
  std::vector<double> fold_primary;   // K: primary score on each held-out fold (repeat 0)
  Scores test;
  double fit_seconds = 0, predict_seconds = 0;
};

struct StackResult {
  bool classification = false;
  int width = 1;                      // prediction columns per learner (C or 1)
  std::vector<std::string> columns;   // names of the out-of-fold columns
  Mat<double> oof;                    // local training rows x columns (last level fed to the meta)
  Mat<double> level1_oof;             // local training rows x level-1 columns
  std::vector<std::vector<int>> folds;  // per repeat: fold of each local training row
  Mat<double> test_pred;              // local test rows x columns
  std::vector<LearnerReport> learners;
  Mat<double> meta_coef;
  std::vector<std::string> meta_rows, meta_cols;
  Scores meta_train, test;
  std::string split;                  // blending: which rows the meta-learner saw
  // Blending: chosen meta hyper-parameter and the hold-out score of every candidate.
  std::vector<std::pair<double, double>> tuning;
  double tuned_value = 0;
};

// COLLECTIVE. `test` may have zero rows everywhere (then test scores are zero).
StackResult run_stack(const Communicator& comm, const Table& train, const Table& test,
                      const StackOptions& opt);

struct BlendOptions : StackOptions {
  double train_fraction = 0.5, val_fraction = 0.2, holdout_fraction = 0.1;
};

// COLLECTIVE. Base learners on the train split, meta-learner on their validation
// predictions, its regularisation chosen on the hold-out split, reported on test.
// `data` is split by global row; `test` is used instead of a test split when it has rows.
StackResult run_blend(const Communicator& comm, const Table& data, const Table& test,
                      const BlendOptions& opt, std::vector<int>* split_of_row);

}  // namespace moesim
