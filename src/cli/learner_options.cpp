#include "cli/learner_options.hpp"

#include <cmath>
#include <cstdint>

namespace moesim::cli {

using I = std::int64_t;

void add_learner_hyper_options(po::options_description& d) {
  d.add_options()
      ("ridge-alpha", real(1.0), "ridge: L2 penalty on standardised features")
      ("logistic-c", real(1.0), "logistic: inverse L2 strength (scikit-learn's C)")
      ("logistic-max-iter", po::value<I>()->default_value(100), "logistic: Newton iterations at most")
      ("knn-k", po::value<I>()->default_value(5), "knn: neighbours")
      ("knn-weights", po::value<std::string>()->default_value("uniform"), "knn: uniform | distance")
      ("tree-max-depth", po::value<I>()->default_value(8), "tree: maximum depth")
      ("tree-min-samples-leaf", po::value<I>()->default_value(1), "trees: minimum rows per leaf (rows of positive weight, whatever their weight)")
      ("max-bins", po::value<I>()->default_value(64), "trees: histogram bins per feature (2..255)")
      ("forest-trees", po::value<I>()->default_value(100), "forest: trees")
      ("forest-max-depth", po::value<I>()->default_value(12), "forest: maximum depth")
      ("forest-max-features", real(0.0),
       "forest: share of features tried per split (0 = sqrt(p)/p for classification, 1 for regression)")
      ("gbdt-trees", po::value<I>()->default_value(100), "gbdt: boosting rounds")
      ("gbdt-learning-rate", real(0.1), "gbdt: shrinkage")
      ("gbdt-max-depth", po::value<I>()->default_value(3), "gbdt: depth of each tree")
      ("nb-var-smoothing", real(1e-9), "nb: variance smoothing (share of the largest variance)");
}

LearnerOptions learner_settings(const po::variables_map& vm) {
  auto i = [&](const char* k) { return vm[k].as<I>(); };
  auto d = [&](const char* k) { return vm[k].as<double>(); };
  LearnerOptions o;
  o.ridge_alpha = d("ridge-alpha");
  o.logistic_c = d("logistic-c");
  o.logistic_max_iter = static_cast<int>(i("logistic-max-iter"));
  o.knn_k = static_cast<int>(i("knn-k"));
  const std::string kw = vm["knn-weights"].as<std::string>();
  MOESIM_CONFIG_CHECK(kw == "uniform" || kw == "distance", "--knn-weights must be uniform or distance (got '" << kw << "')");
  o.knn_distance_weighted = kw == "distance";
  o.tree_max_depth = static_cast<int>(i("tree-max-depth"));
  o.tree_min_samples_leaf = static_cast<int>(i("tree-min-samples-leaf"));
  o.max_bins = static_cast<int>(i("max-bins"));
  o.forest_trees = static_cast<int>(i("forest-trees"));
  o.forest_max_depth = static_cast<int>(i("forest-max-depth"));
  o.forest_max_features = d("forest-max-features");
  o.gbdt_trees = static_cast<int>(i("gbdt-trees"));
  o.gbdt_learning_rate = d("gbdt-learning-rate");
  o.gbdt_max_depth = static_cast<int>(i("gbdt-max-depth"));
  o.nb_var_smoothing = d("nb-var-smoothing");
  for (const char* k : {"logistic-max-iter", "knn-k", "tree-max-depth", "tree-min-samples-leaf", "forest-trees",
                        "forest-max-depth", "gbdt-trees", "gbdt-max-depth"})
    MOESIM_CONFIG_CHECK(i(k) >= 1, "--" << k << " must be >= 1 (got " << i(k) << ")");
  MOESIM_CONFIG_CHECK(o.max_bins >= 2 && o.max_bins <= 255, "--max-bins must be in 2..255 (got " << o.max_bins << ")");
  for (const char* k : {"ridge-alpha", "logistic-c", "gbdt-learning-rate"})
    MOESIM_CONFIG_CHECK(d(k) > 0 && std::isfinite(d(k)), "--" << k << " must be a finite number > 0");
  MOESIM_CONFIG_CHECK(o.forest_max_features >= 0 && o.forest_max_features <= 1, "--forest-max-features must be in [0, 1]");
  MOESIM_CONFIG_CHECK(o.nb_var_smoothing >= 0, "--nb-var-smoothing must be >= 0");
  return o;
}

}  // namespace moesim::cli
