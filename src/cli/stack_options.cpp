// The options of `moesim stack` and `moesim blend` (checked in cli/stack_command.cpp).
#include "cli/stack_options.hpp"

#include <cstdint>

#include "cli/learner_options.hpp"

namespace moesim::cli {

namespace {

using I = std::int64_t;

po::options_description data_options() {
  po::options_description d("Data");
  d.add_options()
      ("data", po::value<std::string>(), "training data: CSV with a header row, or HDF5 (.h5) with datasets X, y")
      ("target", po::value<std::string>()->default_value(""), "CSV: name of the target column")
      ("problem", po::value<std::string>()->default_value("classification"), "classification | regression")
      ("test", po::value<std::string>()->default_value(""), "score a separate test set in the same format")
      ("test-fraction", real(0.2),
       "without --test: share of rows held out for testing, chosen by global row")
      ("weight-column", po::value<std::string>()->default_value(""), "CSV: per-row sample weights (HDF5: dataset w)")
      ("group-column", po::value<std::string>()->default_value(""),
       "CSV: group ids; rows of a group never straddle folds (HDF5: dataset group)")
      ("fold-column", po::value<std::string>()->default_value(""), "CSV: the fold id (0..K-1) of each row, used as given")
      ("seed", po::value<I>()->default_value(1), "seed for folds, splits and randomised learners")
      ("out", po::value<std::string>()->default_value("stack_run.h5"), "run file (HDF5) to write")
      ("quiet", po::bool_switch()->default_value(false), "no per-learner lines or summary")
      ("blas-threads", po::value<I>()->default_value(1), "OpenBLAS threads per rank");
  return d;
}

po::options_description learner_options() {
  po::options_description d("Learners");
  d.add_options()
      ("learners", po::value<std::string>()->default_value("ridge,logistic,knn,tree,forest,gbdt,nb"),
       "comma-separated base learners: ridge, logistic, knn, tree, forest, gbdt, nb")
      ("meta", po::value<std::string>()->default_value("logistic"), "meta-learner: logistic | ridge | nnls | greedy")
      ("meta-c", real(1.0), "logistic meta-learner: inverse L2 strength")
      ("meta-alpha", real(1.0), "ridge meta-learner: L2 penalty")
      ("greedy-iterations", po::value<I>()->default_value(50), "greedy meta-learner: selection rounds")
      ("passthrough", po::bool_switch()->default_value(false), "also give the original features to the meta-learner");
  add_learner_hyper_options(d);
  return d;
}

po::options_description stack_only_options() {
  po::options_description d("Stacking");
  d.add_options()
      ("folds", po::value<I>()->default_value(5), "K: folds for out-of-fold predictions")
      ("repeats", po::value<I>()->default_value(1), "repeated K-fold: fold assignments whose out-of-fold predictions are averaged")
      ("level2", po::value<std::string>()->default_value(""),
       "second-level learners trained on the level-1 out-of-fold predictions (multi-layer stacking)")
      ("test-predictions", po::value<std::string>()->default_value("refit"),
       "refit (base learners refitted on all training rows) | average (mean of the fold models)");
  return d;
}

po::options_description blend_only_options() {
  po::options_description d("Blending");
  d.add_options()
      ("train-fraction", real(0.5), "rows for the base learners")
      ("val-fraction", real(0.2), "rows whose predictions train the meta-learner")
      ("holdout-fraction", real(0.1), "rows that choose the meta-learner's regularisation");
  return d;
}

}  // namespace

po::options_description stack_options(bool blend) {
  po::options_description desc;
  desc.add(data_options()).add(learner_options()).add(blend ? blend_only_options() : stack_only_options());
  return desc;
}

}  // namespace moesim::cli
