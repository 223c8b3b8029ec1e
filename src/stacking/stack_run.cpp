#include "stacking/stack_run.hpp"

#include <algorithm>
#include <cstdio>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace moesim {

namespace {

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

}  // namespace

std::span<const DatasetInfo> stack_run_datasets() {
  static constexpr DatasetInfo kTable[] = {
      {"scores/learner", "learner x score", "float64", "as the group's `learner_columns`",
       "per base learner (group attribute `learners`): out-of-fold and test scores (accuracy and log loss, or RMSE and R^2), fit and predict seconds (group attribute `learner_columns`)"},
      {"scores/fold", "learner x fold", "float64", "as the group's `fold_metric`",
       "each base learner's primary score (group attribute `fold_metric`) on each held-out fold"},
      {"meta/coefficients", "input x output", "float64", "1",
       "meta-learner coefficients: one row per input column and `intercept`, or per learner (nnls, greedy); group attributes `rows`, `columns`"},
      {"meta/tuning", "candidate x field", "float64", "1",
       "blend: each candidate regularisation value (field 0) and its hold-out score (field 1)"},
      {"oof/predictions", "row x column", "float64", "probability (classification) or the target's unit",
       "out-of-fold predictions the meta-learner fits on (blend: validation predictions); group attribute `columns` names them `learner:class`"},
      {"oof/fold", "row x repeat", "int64", "fold",
       "the fold that held each row out, per repeat (blend: split code, 1 = validation)"},
      {"oof/row", "row", "int64", "row", "global row of each prediction in `--data`"},
      {"oof/target", "row", "float64", "class index or the target's unit", "the target of each row"},
  };
  return kTable;
}

void write_stack_run(const Communicator& comm, RunFile& rf, const StackResult& res, const OofRows& oof,
                     std::int64_t train_rows, std::int64_t test_rows, double seconds) {
  rf.describe_with(stack_run_datasets());
  const bool cls = res.classification;
  const Index L = static_cast<Index>(res.learners.size());
  // Per-learner scores: rows = learners, columns = metrics (out of fold, then test).
  const std::vector<std::string> metrics = cls
      ? std::vector<std::string>{"oof_accuracy", "oof_log_loss", "test_accuracy", "test_log_loss", "fit_seconds", "predict_seconds"}
      : std::vector<std::string>{"oof_rmse", "oof_r2", "test_rmse", "test_r2", "fit_seconds", "predict_seconds"};
  std::vector<double> sl, sf;
  std::vector<std::string> names;
  std::size_t K = 0;
  for (const LearnerReport& r : res.learners) {
    const double a = cls ? r.oof.accuracy : r.oof.rmse, b = cls ? r.oof.log_loss : r.oof.r2;
    const double c = cls ? r.test.accuracy : r.test.rmse, d = cls ? r.test.log_loss : r.test.r2;
    sl.insert(sl.end(), {a, b, c, d, r.fit_seconds, r.predict_seconds});
    sf.insert(sf.end(), r.fold_primary.begin(), r.fold_primary.end());
    K = std::max(K, r.fold_primary.size());
    names.push_back(r.level > 1 ? "L2." + r.name : r.name);
  }
  rf.write_array("scores/learner", {static_cast<hsize_t>(L), metrics.size()}, sl.data());
  rf.group_attrs("scores", {{"learners", join_list(names)}, {"learner_columns", join_list(metrics)},
                            {"fold_metric", std::string(primary_metric(cls))}});
  if (K > 0) rf.write_array("scores/fold", {static_cast<hsize_t>(L), K}, sf.data());
  std::vector<double> coef(res.meta_coef.data(), res.meta_coef.data() + res.meta_coef.size());
  rf.write_array("meta/coefficients", {static_cast<hsize_t>(res.meta_coef.rows()), static_cast<hsize_t>(res.meta_coef.cols())},
                 coef.data());
  rf.group_attrs("meta", {{"rows", join_list(res.meta_rows)}, {"columns", join_list(res.meta_cols)}});
  if (!res.tuning.empty()) {
    std::vector<double> t;
    for (auto [v, s] : res.tuning) t.insert(t.end(), {v, s});
    rf.write_array("meta/tuning", {res.tuning.size(), 2}, t.data());
  }
  rf.group_attrs("oof", {{"columns", join_list(res.columns)}, {"rows_are", res.split}});
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

StackResult run_stacking(const Communicator& comm, const StackingInputs& in, const StackRunSettings& s,
                         const Stopwatch& wall) {
  const std::string cmd = s.blend ? "blend" : "stack";
  // The run file is written only once the results are in: an error on the way (a fold
  // without a class, say) then leaves no half-written file, nor an earlier one emptied.
  RunFile::check_creatable(comm, s.out);
  const AttrList attrs = provenance_attrs(comm);
  const std::int64_t n_data = comm.allreduce_sum(static_cast<std::int64_t>(in.train.n()));
  const std::int64_t n_test = comm.allreduce_sum(static_cast<std::int64_t>(in.test.n()));
  if (comm.rank() == 0 && !s.options.quiet) {
    std::printf("moesim %s: %lld %s rows, %lld test rows, %lld features, %d ranks\n", cmd.c_str(),
                static_cast<long long>(n_data), s.blend ? "data" : "training", static_cast<long long>(n_test),
                static_cast<long long>(in.train.p()), comm.size());
    std::fflush(stdout);
  }

  StackResult res;
  OofRows oof;
  std::int64_t train_rows = 0, test_rows = 0;
  if (s.blend) {
    std::vector<int> split;
    res = run_blend(comm, in.train, in.test, s.options, &split);
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
    res = run_stack(comm, in.train, in.test, s.options);
    oof.row = in.train_rows;
    oof.target = in.train.y;
    oof.fold = res.folds;
    train_rows = comm.allreduce_sum(static_cast<std::int64_t>(in.train.n()));
    test_rows = comm.allreduce_sum(static_cast<std::int64_t>(in.test.n()));
  }
  const double seconds = wall.seconds();
  auto rf = RunFile::create(comm, s.out, cmd);
  rf->option_attrs(s.option_attrs);
  rf->root_attrs(attrs);
  write_stack_run(comm, *rf, res, oof, train_rows, test_rows, seconds);
  if (!s.options.quiet) print_summary(comm, res, s.out, seconds);
  return res;
}

}  // namespace moesim
