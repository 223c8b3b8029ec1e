// `moesim stack` and `moesim blend`: stacking and blending of base learners over
// rows sharded across ranks, logged to one HDF5 run file. `moesim synth` writes a
// synthetic table for tests and benchmarks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "cli/commands.hpp"
#include "cli/learner_options.hpp"
#include "cli/options.hpp"
#include "core/blas.hpp"
#include "core/rng.hpp"
#include "core/timer.hpp"
#include "data/readers.hpp"
#include "data/synthetic.hpp"
#include "stacking/stack.hpp"

namespace moesim::cli {

namespace {

using I = std::int64_t;

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

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


struct Inputs {
  Table train, test;
  bool classification = true;
  std::vector<std::int64_t> train_rows;  // global row (in --data) of each local training row
};

// Reads --data (and --test), or splits a test share off --data by global row.
Inputs read_inputs(const Communicator& comm, const po::variables_map& vm, bool split_test) {
  MOESIM_CONFIG_CHECK(vm.count("data"), "--data FILE is required");
  const std::string problem = vm["problem"].as<std::string>();
  MOESIM_CONFIG_CHECK(problem == "classification" || problem == "regression",
                      "--problem must be classification or regression (got '" << problem << "')");
  TableSpec spec;
  spec.classification = problem == "classification";
  spec.target = vm["target"].as<std::string>();
  spec.weight_column = vm["weight-column"].as<std::string>();
  const std::string fold_col = vm["fold-column"].as<std::string>();
  const std::string group_col = vm["group-column"].as<std::string>();
  MOESIM_CONFIG_CHECK(fold_col.empty() || group_col.empty(), "give --fold-column or --group-column, not both");
  spec.group_column = fold_col.empty() ? group_col : fold_col;
  const double tf = vm["test-fraction"].as<double>();
  MOESIM_CONFIG_CHECK(tf >= 0 && tf < 1, "--test-fraction must be in [0, 1) (got " << tf << ")");
  const std::string data = vm["data"].as<std::string>();
  const bool is_h5 = data.size() > 3 && (data.ends_with(".h5") || data.ends_with(".hdf5"));
  MOESIM_CONFIG_CHECK(is_h5 || !spec.target.empty(), "--target COLUMN is required for CSV data");

  Inputs in;
  in.classification = spec.classification;
  Table all = read_table(comm, data, spec);
  const std::string test_path = vm["test"].as<std::string>();
  const std::uint64_t seed = static_cast<std::uint64_t>(vm["seed"].as<I>());
  if (!test_path.empty()) {
    TableSpec ts = spec;
    ts.classes = all.classes;
    in.test = read_table(comm, test_path, ts);
    MOESIM_CONFIG_CHECK(in.test.p() == all.p(), test_path << " has " << in.test.p() << " features, "
                                                          << data << " has " << all.p());
    // Columns are matched by name, so a test file may order them differently.
    if (in.test.features != all.features) {
      std::vector<Index> from;
      for (const std::string& f : all.features) {
        auto it = std::find(in.test.features.begin(), in.test.features.end(), f);
        MOESIM_CONFIG_CHECK(it != in.test.features.end(), test_path << " has no column '" << f << "' (it is in " << data << ")");
        from.push_back(static_cast<Index>(it - in.test.features.begin()));
      }
      Mat<double> X(in.test.n(), all.p());
      for (Index j = 0; j < all.p(); ++j) X.col(j) = in.test.X.col(from[static_cast<std::size_t>(j)]);
      in.test.X = std::move(X);
      in.test.features = all.features;
    }
  }
  std::vector<char> is_test(static_cast<std::size_t>(all.n()), 0);
  if (test_path.empty() && split_test)
    for (Index i = 0; i < all.n(); ++i)
      is_test[static_cast<std::size_t>(i)] =
          Rng(seed, Stream::kTest, 0x7E57, static_cast<std::uint64_t>(all.first + i)).uniform() < tf;
  std::vector<char> keep(is_test.size());
  for (std::size_t i = 0; i < keep.size(); ++i) keep[i] = !is_test[i];
  for (Index i = 0; i < all.n(); ++i)
    if (keep[static_cast<std::size_t>(i)]) in.train_rows.push_back(all.first + i);
  if (test_path.empty()) {
    in.test = select_rows(all, is_test);
    in.train = select_rows(all, keep);
  } else {
    in.train = std::move(all);
  }
  return in;
}

StackOptions common_settings(const po::variables_map& vm, const Inputs& in) {
  StackOptions o;
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
                : in.classification ? FoldMode::kStratified
                                    : FoldMode::kRandom;
  return o;
}

// The rows behind res.oof: their global row in --data, their target, and their fold
// (stacking: one column per repeat; blending: the split code, 1 = validation).
struct OofRows {
  std::vector<std::int64_t> row;
  std::vector<double> target;
  std::vector<std::vector<int>> fold;
};

void write_result(const Communicator& comm, RunFile& rf, const StackResult& res, const OofRows& oof,
                  std::int64_t train_rows, std::int64_t test_rows, double seconds) {
  const bool cls = res.classification;
  const Index L = static_cast<Index>(res.learners.size());
  // Per-learner scores: rows = learners, columns = metrics (out of fold, then test).
  const std::vector<std::string> metrics = cls
      ? std::vector<std::string>{"oof_accuracy", "oof_log_loss", "test_accuracy", "test_log_loss", "fit_seconds", "predict_seconds"}
      : std::vector<std::string>{"oof_rmse", "oof_r2", "test_rmse", "test_r2", "fit_seconds", "predict_seconds"};
  std::vector<double> sl, sf;
  std::string names;
  std::size_t K = 0;
  for (const LearnerReport& r : res.learners) {
    const double a = cls ? r.oof.accuracy : r.oof.rmse, b = cls ? r.oof.log_loss : r.oof.r2;
    const double c = cls ? r.test.accuracy : r.test.rmse, d = cls ? r.test.log_loss : r.test.r2;
    sl.insert(sl.end(), {a, b, c, d, r.fit_seconds, r.predict_seconds});
    sf.insert(sf.end(), r.fold_primary.begin(), r.fold_primary.end());
    K = std::max(K, r.fold_primary.size());
    names += (names.empty() ? "" : ",") + (r.level > 1 ? "L2." + r.name : r.name);
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const std::string& x : v) s += (s.empty() ? "" : ",") + x;
    return s;
  };
  rf.write_array("scores/learner", {static_cast<hsize_t>(L), metrics.size()}, sl.data());
  rf.group_attrs("scores", {{"learners", names}, {"learner_columns", join(metrics)},
                            {"fold_metric", std::string(primary_metric(cls))}});
  if (K > 0) rf.write_array("scores/fold", {static_cast<hsize_t>(L), K}, sf.data());
  std::vector<double> coef(res.meta_coef.data(), res.meta_coef.data() + res.meta_coef.size());
  rf.write_array("meta/coefficients", {static_cast<hsize_t>(res.meta_coef.rows()), static_cast<hsize_t>(res.meta_coef.cols())},
                 coef.data());
  rf.group_attrs("meta", {{"rows", join(res.meta_rows)}, {"columns", join(res.meta_cols)}});
  if (!res.tuning.empty()) {
    std::vector<double> t;
    for (auto [v, s] : res.tuning) t.insert(t.end(), {v, s});
    rf.write_array("meta/tuning", {res.tuning.size(), 2}, t.data());
  }
  rf.group_attrs("oof", {{"columns", join(res.columns)}, {"rows_are", res.split}});
  rf.ensure_group("oof");

  // Row-sharded outputs: every rank writes its own rows (parallel HDF5).
  const Index n = res.oof.rows();
  MOESIM_REQUIRE(static_cast<Index>(oof.row.size()) == n && static_cast<Index>(oof.target.size()) == n,
                 "out-of-fold rows and predictions disagree");
  Mat<std::int64_t> fold_mat(n, static_cast<Index>(std::max<std::size_t>(1, oof.fold.size())));
  fold_mat.setConstant(-1);
  for (std::size_t r = 0; r < oof.fold.size(); ++r)
    for (Index i = 0; i < n; ++i) fold_mat(i, static_cast<Index>(r)) = oof.fold[r][static_cast<std::size_t>(i)];
  rf.write_row_blocks(comm, {
      {"oof/predictions", res.oof.data(), n, {static_cast<hsize_t>(res.oof.cols())}, false},
      {"oof/fold", fold_mat.data(), n, {static_cast<hsize_t>(fold_mat.cols())}, true},
      {"oof/row", oof.row.data(), n, {}, true},
      {"oof/target", oof.target.data(), n, {}, false},
  });

  const CommTally tally = comm.tally();
  double comm_stats[2] = {tally.bytes_sent, tally.seconds};
  comm.allreduce_sum(comm_stats, 2);
  AttrList fin{{"test_score", res.test.primary(cls)},
               {"metric", std::string(primary_metric(cls))},
               {"meta_train_score", res.meta_train.primary(cls)},
               {"train_rows", train_rows},
               {"test_rows", test_rows},
               {"seconds", seconds},
               {"bytes_communicated", comm_stats[0]},
               {"comm_seconds", comm_stats[1]}};
  if (cls) {
    fin.emplace_back("test_accuracy", res.test.accuracy);
    fin.emplace_back("test_log_loss", res.test.log_loss);
  } else {
    fin.emplace_back("test_rmse", res.test.rmse);
    fin.emplace_back("test_r2", res.test.r2);
  }
  if (!res.tuning.empty()) fin.emplace_back("meta_tuned_value", res.tuned_value);
  rf.group_attrs("final", fin);
  rf.mark_complete();
}

void print_summary(const Communicator& comm, const StackResult& res, const std::string& out, double seconds) {
  if (comm.rank() != 0) return;
  const bool cls = res.classification;
  std::printf("meta-learner (%s rows): %s %.4f on its training rows\n", res.split.c_str(),
              primary_metric(cls), res.meta_train.primary(cls));
  for (Index r = 0; r < res.meta_coef.rows(); ++r) {
    std::printf("  %-28s", res.meta_rows[static_cast<std::size_t>(r)].c_str());
    for (Index c = 0; c < res.meta_coef.cols(); ++c) std::printf(" %9.4f", res.meta_coef(r, c));
    std::printf("\n");
  }
  if (cls)
    std::printf("test accuracy %.4f | log loss %.4f\n", res.test.accuracy, res.test.log_loss);
  else
    std::printf("test RMSE %.4f | R^2 %.4f\n", res.test.rmse, res.test.r2);
  std::printf("done in %.1f s on %d ranks; run file: %s\n", seconds, comm.size(), out.c_str());
  std::fflush(stdout);
}

void check_common(const po::variables_map& vm) {
  MOESIM_CONFIG_CHECK(vm["blas-threads"].as<I>() >= 1, "--blas-threads must be >= 1");
  MOESIM_CONFIG_CHECK(!vm["out"].as<std::string>().empty(), "--out must name a file");
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
  check_common(vm);
  set_blas_threads(static_cast<int>(vm["blas-threads"].as<I>()));
  Stopwatch wall;
  comm.reset_tally();
  // Blending splits the whole table itself, so no stacking test share is cut off.
  Inputs in = read_inputs(comm, vm, !blend);
  StackOptions so = common_settings(vm, in);
  MOESIM_CONFIG_CHECK(!so.learners.empty(), "--learners must name at least one learner");
  for (const std::string& l : so.learners) make_learner(l, so.learner);
  make_meta(so.meta, in.classification, so.passthrough);
  if (!blend) {
    so.folds = static_cast<int>(vm["folds"].as<I>());
    so.repeats = static_cast<int>(vm["repeats"].as<I>());
    so.level2 = split_list(vm["level2"].as<std::string>());
    const std::string tp = vm["test-predictions"].as<std::string>();
    MOESIM_CONFIG_CHECK(tp == "refit" || tp == "average", "--test-predictions must be refit or average");
    so.average_fold_models = tp == "average";
    MOESIM_CONFIG_CHECK(so.folds >= 2, "--folds must be >= 2 (got " << so.folds << ")");
    MOESIM_CONFIG_CHECK(so.repeats >= 1, "--repeats must be >= 1 (got " << so.repeats << ")");
    MOESIM_CONFIG_CHECK(so.fold_mode != FoldMode::kGiven || so.repeats == 1,
                        "--fold-column fixes the folds; --repeats must be 1");
    for (const std::string& l : so.level2) make_learner(l, so.learner);
  }
  auto rf = RunFile::create(comm, vm["out"].as<std::string>(), cmd);
  AttrList attrs = options_as_attrs(vm);
  const AttrList prov = provenance_attrs(comm);
  attrs.insert(attrs.end(), prov.begin(), prov.end());
  rf->root_attrs(attrs);
  rf->flush();
  const std::int64_t n_data = comm.allreduce_sum(static_cast<std::int64_t>(in.train.n()));
  const std::int64_t n_test = comm.allreduce_sum(static_cast<std::int64_t>(in.test.n()));
  if (comm.rank() == 0 && !so.quiet) {
    std::printf("moesim %s: %lld %s rows, %lld test rows, %lld features, %d ranks\n", cmd.c_str(),
                static_cast<long long>(n_data), blend ? "data" : "training", static_cast<long long>(n_test),
                static_cast<long long>(in.train.p()), comm.size());
    std::fflush(stdout);
  }

  StackResult res;
  OofRows oof;
  std::int64_t train_rows = 0, test_rows = 0;
  if (blend) {
    BlendOptions bo;
    static_cast<StackOptions&>(bo) = so;
    bo.train_fraction = vm["train-fraction"].as<double>();
    bo.val_fraction = vm["val-fraction"].as<double>();
    bo.holdout_fraction = vm["holdout-fraction"].as<double>();
    std::vector<int> split;
    res = run_blend(comm, in.train, in.test, bo, &split);
    std::vector<int> codes;
    for (std::size_t i = 0; i < split.size(); ++i) {
      if (split[i] != 1) continue;
      oof.row.push_back(in.train_rows[i]);
      oof.target.push_back(in.train.y[i]);
      codes.push_back(1);
    }
    oof.fold = {codes};
    train_rows = comm.allreduce_sum(static_cast<std::int64_t>(std::count(split.begin(), split.end(), 0)));
    test_rows = comm.allreduce_sum(static_cast<std::int64_t>(res.test_pred.rows()));
  } else {
    res = run_stack(comm, in.train, in.test, so);
    oof.row = in.train_rows;
    oof.target = in.train.y;
    oof.fold = res.folds;
    train_rows = comm.allreduce_sum(static_cast<std::int64_t>(in.train.n()));
    test_rows = comm.allreduce_sum(static_cast<std::int64_t>(in.test.n()));
  }
  const double seconds = wall.seconds();
  write_result(comm, *rf, res, oof, train_rows, test_rows, seconds);
  if (!so.quiet) print_summary(comm, res, vm["out"].as<std::string>(), seconds);
  return 0;
}

}  // namespace moesim::cli
