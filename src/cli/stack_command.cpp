// `moesim stack` and `moesim blend`: options of stacking and blending (stacking/stack_run)
// on the tables data/stacking_inputs reads.
#include <cmath>

#include "cli/commands.hpp"
#include "cli/learner_options.hpp"
#include "cli/options.hpp"
#include "core/blas.hpp"
#include "core/strings.hpp"
#include "core/timer.hpp"
#include "data/stacking_inputs.hpp"
#include "stacking/stack_run.hpp"

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
      ("test-fraction", po::value<double>()->default_value(0.2),
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
      ("meta-c", po::value<double>()->default_value(1.0), "logistic meta-learner: inverse L2 strength")
      ("meta-alpha", po::value<double>()->default_value(1.0), "ridge meta-learner: L2 penalty")
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
      ("train-fraction", po::value<double>()->default_value(0.5), "rows for the base learners")
      ("val-fraction", po::value<double>()->default_value(0.2), "rows whose predictions train the meta-learner")
      ("holdout-fraction", po::value<double>()->default_value(0.1), "rows that choose the meta-learner's regularisation");
  return d;
}


// The input options, checked in the order a user reads them.
StackingInputSpec input_spec(const po::variables_map& vm, bool split_test) {
  MOESIM_CONFIG_CHECK(vm.count("data"), "--data FILE is required");
  const std::string problem = vm["problem"].as<std::string>();
  MOESIM_CONFIG_CHECK(problem == "classification" || problem == "regression",
                      "--problem must be classification or regression (got '" << problem << "')");
  const std::string fold_col = vm["fold-column"].as<std::string>();
  const std::string group_col = vm["group-column"].as<std::string>();
  MOESIM_CONFIG_CHECK(fold_col.empty() || group_col.empty(), "give --fold-column or --group-column, not both");
  StackingInputSpec spec;
  spec.data = vm["data"].as<std::string>();
  spec.test = vm["test"].as<std::string>();
  spec.table.classification = problem == "classification";
  spec.table.target = vm["target"].as<std::string>();
  spec.table.weight_column = vm["weight-column"].as<std::string>();
  spec.table.group_column = fold_col.empty() ? group_col : fold_col;
  spec.test_fraction = vm["test-fraction"].as<double>();
  spec.split_test = split_test;
  spec.seed = static_cast<std::uint64_t>(vm["seed"].as<I>());
  return spec;
}

BlendOptions settings(const po::variables_map& vm, bool blend, bool classification) {
  BlendOptions o;
  o.learners = split_list(vm["learners"].as<std::string>());
  o.learner = learner_settings(vm);
  for (const char* k : {"meta-c", "meta-alpha"})
    MOESIM_CONFIG_CHECK(vm[k].as<double>() > 0 && std::isfinite(vm[k].as<double>()), "--" << k << " must be a finite number > 0");
  o.meta.kind = vm["meta"].as<std::string>();
  o.meta.c = vm["meta-c"].as<double>();
  o.meta.alpha = vm["meta-alpha"].as<double>();
  o.meta.greedy_iterations = static_cast<int>(vm["greedy-iterations"].as<I>());
  o.passthrough = vm["passthrough"].as<bool>();
  o.seed = static_cast<std::uint64_t>(vm["seed"].as<I>());
  o.quiet = vm["quiet"].as<bool>();
  o.fold_mode = !vm["fold-column"].as<std::string>().empty() ? FoldMode::kGiven
                : !vm["group-column"].as<std::string>().empty() ? FoldMode::kGroups
                : classification ? FoldMode::kStratified
                                 : FoldMode::kRandom;
  MOESIM_CONFIG_CHECK(!o.learners.empty(), "--learners must name at least one learner");
  for (const std::string& l : o.learners) make_learner(l, o.learner);
  make_meta(o.meta, classification, o.passthrough);
  if (blend) {
    o.train_fraction = vm["train-fraction"].as<double>();
    o.val_fraction = vm["val-fraction"].as<double>();
    o.holdout_fraction = vm["holdout-fraction"].as<double>();
    return o;
  }
  o.folds = static_cast<int>(vm["folds"].as<I>());
  o.repeats = static_cast<int>(vm["repeats"].as<I>());
  o.level2 = split_list(vm["level2"].as<std::string>());
  const std::string tp = vm["test-predictions"].as<std::string>();
  MOESIM_CONFIG_CHECK(tp == "refit" || tp == "average", "--test-predictions must be refit or average");
  o.average_fold_models = tp == "average";
  MOESIM_CONFIG_CHECK(o.folds >= 2, "--folds must be >= 2 (got " << o.folds << ")");
  MOESIM_CONFIG_CHECK(o.repeats >= 1, "--repeats must be >= 1 (got " << o.repeats << ")");
  MOESIM_CONFIG_CHECK(o.fold_mode != FoldMode::kGiven || o.repeats == 1,
                      "--fold-column fixes the folds; --repeats must be 1");
  for (const std::string& l : o.level2) make_learner(l, o.learner);
  return o;
}

}  // namespace

int run_stack(const Communicator& comm, const std::vector<std::string>& args, bool blend,
              const std::string& preset) {
  po::options_description desc;
  desc.add(data_options()).add(learner_options()).add(blend ? blend_only_options() : stack_only_options());
  const std::string cmd = blend ? "blend" : "stack";
  const Parsed p = parse(cmd, args, desc, preset);
  if (p.help) {
    if (comm.rank() == 0)
      print_help(cmd, blend ? "Blending: base learners on a train split, a meta-learner on their validation "
                              "predictions, tuned on a hold-out split, scored on test."
                            : "K-fold stacking of heterogeneous base learners over rows sharded across ranks.",
                 desc);
    return 0;
  }
  const po::variables_map& vm = p.vm;
  MOESIM_CONFIG_CHECK(vm["blas-threads"].as<I>() >= 1, "--blas-threads must be >= 1");
  MOESIM_CONFIG_CHECK(!vm["out"].as<std::string>().empty(), "--out must name a file");
  set_blas_threads(static_cast<int>(vm["blas-threads"].as<I>()));
  Stopwatch wall;
  comm.reset_tally();
  // Blending splits the whole table itself, so no stacking test share is cut off.
  const StackingInputs in = read_stacking_inputs(comm, input_spec(vm, !blend));
  StackRunSettings s;
  s.blend = blend;
  s.options = settings(vm, blend, in.classification);
  s.out = vm["out"].as<std::string>();
  s.option_attrs = options_as_attrs(vm);
  run_stacking(comm, in, s, wall);
  return 0;
}

}  // namespace moesim::cli
