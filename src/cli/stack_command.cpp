// `moesim stack` and `moesim blend`: options of stacking and blending (stacking/stack_run)
// on the tables data/stacking_inputs reads.
#include <cmath>

#include "cli/commands.hpp"
#include "cli/learner_options.hpp"
#include "cli/options.hpp"
#include "cli/stack_options.hpp"
#include "core/blas.hpp"
#include "core/strings.hpp"
#include "core/timer.hpp"
#include "data/stacking_inputs.hpp"
#include "stacking/stack_run.hpp"

namespace moesim::cli {

namespace {

using I = std::int64_t;

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
  o.meta.greedy_iterations = int_option(vm, "greedy-iterations");
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
  o.folds = int_option(vm, "folds");
  o.repeats = int_option(vm, "repeats");
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

// The checks run_stack makes before it reads any data.
void check_general(const po::variables_map& vm) {
  MOESIM_CONFIG_CHECK(vm["blas-threads"].as<I>() >= 1, "--blas-threads must be >= 1");
  MOESIM_CONFIG_CHECK(!vm["out"].as<std::string>().empty(), "--out must name a file");
}

}  // namespace

void check_stack(const std::vector<std::string>& args, bool blend, const std::string& preset) {
  const Parsed p = parse(blend ? "blend" : "stack", args, stack_options(blend), preset);
  if (p.help) return;
  check_general(p.vm);
  const StackingInputSpec spec = input_spec(p.vm, !blend);
  settings(p.vm, blend, spec.table.classification);
}

std::vector<OptionSetting> stack_settings(const std::vector<std::string>& args, bool blend, const std::string& preset) {
  const po::options_description desc = stack_options(blend);
  return option_settings(parse(blend ? "blend" : "stack", args, desc, preset).vm, desc);
}

int run_stack(const Communicator& comm, const std::vector<std::string>& args, bool blend,
              const std::string& preset) {
  const po::options_description desc = stack_options(blend);
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
  check_general(vm);
  set_blas_threads(int_option(vm, "blas-threads"));
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
