#include "stacking/stack.hpp"

#include <cstdio>
#include <functional>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/timer.hpp"

namespace moesim {

namespace {

std::vector<std::int64_t> global_ids(const Communicator& comm, Index n) {
  const std::int64_t before = [&] {
    std::int64_t in = n, out = 0;
    comm.exscan_sum(&in, &out, 1);
    return out;
  }();
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = before + i;
  return ids;
}

// The data one level of learners sees.
struct LevelInput {
  const Mat<double>& X;
  const std::vector<double>& y;
  const std::vector<double>& w;
  const std::vector<std::int64_t>& id;
  const Mat<double>& Xtest;
};

struct LevelOutput {
  Mat<double> oof, test;
  std::vector<LearnerReport> reports;
};

LevelOutput run_level(const Communicator& comm, const LevelInput& in, const std::vector<std::string>& names,
                      int level, const StackOptions& opt, int classes,
                      const std::vector<std::vector<int>>& folds, const std::vector<double>& ytest,
                      const std::vector<double>& wtest) {
  const int W = classes >= 2 ? classes : 1;
  const int K = opt.folds, R = static_cast<int>(folds.size());
  const Index n = in.X.rows();
  LevelOutput out;
  out.oof = Mat<double>::Zero(n, static_cast<Index>(names.size()) * W);
  out.test = Mat<double>::Zero(in.Xtest.rows(), static_cast<Index>(names.size()) * W);
  for (std::size_t l = 0; l < names.size(); ++l) {
    LearnerReport rep;
    rep.name = names[l];
    rep.level = level;
    rep.fold_primary.assign(static_cast<std::size_t>(K), 0.0);
    const LearnerContext ctx{comm, classes, opt.seed + 1000003ULL * l + 7919ULL * static_cast<std::uint64_t>(level)};
    std::unique_ptr<Learner> proto = make_learner(names[l], opt.learner);
    auto block = out.oof.middleCols(static_cast<Index>(l) * W, W);
    auto tblock = out.test.middleCols(static_cast<Index>(l) * W, W);
    const TrainRows rows{in.X, in.y, in.w, in.id};
    for (int r = 0; r < R; ++r) {
      const std::vector<int>& fold = folds[static_cast<std::size_t>(r)];
      // Averaged test predictions need every fold's model.
      double test_seconds = 0;
      std::function<void(Learner&)> each_model;
      if (opt.average_fold_models)
        each_model = [&](Learner& model) {
          Stopwatch sw;
          tblock += model.predict(ctx, in.Xtest) / static_cast<double>(R * K);
          test_seconds += sw.seconds();
        };
      const OutOfFold o = proto->out_of_fold(ctx, rows, fold, K, each_model);
      rep.fit_seconds += o.fit_seconds;
      rep.predict_seconds += o.predict_seconds + test_seconds;
      for (Index i = 0; i < n; ++i) block.row(i) += o.pred.row(i) / static_cast<double>(R);
      if (r == 0)
        for (int k = 0; k < K; ++k) {
          std::vector<char> held(static_cast<std::size_t>(n));
          for (Index i = 0; i < n; ++i) held[static_cast<std::size_t>(i)] = fold[static_cast<std::size_t>(i)] == k;
          rep.fold_primary[static_cast<std::size_t>(k)] =
              score(comm, kept_rows(o.pred, held), kept_values(in.y, held), kept_values(in.w, held), classes)
                  .primary(classes >= 2);
        }
    }
    rep.oof = score(comm, block, in.y, in.w, classes);
    if (!opt.average_fold_models) {
      std::unique_ptr<Learner> model = proto->clone();
      Stopwatch sw;
      model->fit(ctx, TrainRows{in.X, in.y, in.w, in.id});
      rep.fit_seconds += sw.seconds();
      sw.reset();
      tblock = model->predict(ctx, in.Xtest);
      rep.predict_seconds += sw.seconds();
    }
    rep.test = score(comm, tblock, ytest, wtest, classes);
    if (comm.rank() == 0 && !opt.quiet) {
      std::printf("  level %d %-9s oof %s %.4f | fit %.2f s, predict %.2f s\n", level, rep.name.c_str(),
                  primary_metric(classes >= 2), rep.oof.primary(classes >= 2), rep.fit_seconds,
                  rep.predict_seconds);
      std::fflush(stdout);
    }
    out.reports.push_back(rep);
  }
  return out;
}

Mat<double> with_passthrough(const Mat<double>& P, const Mat<double>& X, bool passthrough) {
  if (!passthrough) return P;
  Mat<double> Z(P.rows(), P.cols() + X.cols());
  Z << P, X;
  return Z;
}

std::vector<std::string> column_names(const std::vector<std::string>& learners, const Table& t, int level) {
  std::vector<std::string> cols;
  for (const std::string& l : learners) {
    const std::string base = (level > 1 ? "L" + std::to_string(level) + "." : "") + l;
    if (t.num_classes() >= 2)
      for (const std::string& c : t.classes) cols.push_back(base + ":" + c);
    else
      cols.push_back(base);
  }
  return cols;
}

void fill_meta(StackResult& res, MetaLearner& meta, const std::vector<std::string>& pred_cols,
               const Table& train, const std::vector<std::string>& learners, bool passthrough,
               const std::string& kind) {
  std::vector<std::string> rows;
  res.meta_coef = meta.coefficients(&rows);
  res.meta_rows.clear();
  if (kind == "nnls" || kind == "greedy") {
    res.meta_rows = learners;
  } else {
    std::vector<std::string> zcols = pred_cols;
    if (passthrough)
      for (const std::string& f : train.features) zcols.push_back("passthrough:" + f);
    zcols.push_back("intercept");
    res.meta_rows = zcols;
  }
  res.meta_cols.clear();
  if (res.meta_coef.cols() > 1)
    for (const std::string& c : train.classes) res.meta_cols.push_back(c);
  else
    res.meta_cols.push_back(kind == "nnls" || kind == "greedy" ? "weight" : "coefficient");
}

}  // namespace

StackResult run_stack(const Communicator& comm, const Table& train, const Table& test,
                      const StackOptions& opt) {
  MOESIM_CONFIG_CHECK(!opt.learners.empty(), "--learners must name at least one learner");
  MOESIM_CONFIG_CHECK(opt.folds >= 2, "--folds must be >= 2 (got " << opt.folds << ")");
  MOESIM_CONFIG_CHECK(opt.repeats >= 1, "--repeats must be >= 1 (got " << opt.repeats << ")");
  const int classes = train.num_classes();
  const bool cls = classes >= 2;
  for (const std::string& l : opt.learners) make_learner(l, opt.learner);  // validates names
  for (const std::string& l : opt.level2) make_learner(l, opt.learner);
  auto meta = make_meta(opt.meta, cls, opt.passthrough);
  const std::int64_t n_global = comm.allreduce_sum(static_cast<std::int64_t>(train.n()));
  MOESIM_CONFIG_CHECK(n_global >= opt.folds, "only " << n_global << " training rows for " << opt.folds << " folds");

  StackResult res;
  res.classification = cls;
  res.width = cls ? classes : 1;
  for (int r = 0; r < opt.repeats; ++r)
    res.folds.push_back(assign_folds(comm, train, opt.folds, opt.seed, r, opt.fold_mode));
  const std::vector<std::int64_t> ids = global_ids(comm, train.n());

  LevelOutput l1 = run_level(comm, LevelInput{train.X, train.y, train.w, ids, test.X}, opt.learners, 1,
                             opt, classes, res.folds, test.y, test.w);
  res.level1_oof = l1.oof;
  res.learners = l1.reports;
  res.columns = column_names(opt.learners, train, 1);
  Mat<double> oof = l1.oof, tpred = l1.test;
  std::vector<std::string> last_names = opt.learners;
  if (!opt.level2.empty()) {
    // Level 2 learns from level-1 out-of-fold predictions with the same folds, so no
    // row's own label reaches a model that predicts it.
    const Mat<double> X2 = with_passthrough(l1.oof, train.X, opt.passthrough);
    const Mat<double> T2 = with_passthrough(l1.test, test.X, opt.passthrough);
    LevelOutput l2 = run_level(comm, LevelInput{X2, train.y, train.w, ids, T2}, opt.level2, 2, opt,
                               classes, res.folds, test.y, test.w);
    res.learners.insert(res.learners.end(), l2.reports.begin(), l2.reports.end());
    res.columns = column_names(opt.level2, train, 2);
    oof = l2.oof;
    tpred = l2.test;
    last_names = opt.level2;
  }
  res.oof = oof;
  res.test_pred = tpred;

  const LearnerContext ctx{comm, classes, opt.seed};
  const Mat<double> Z = with_passthrough(oof, train.X, opt.passthrough);
  meta->fit(ctx, Z, train.y, train.w, static_cast<int>(last_names.size()), res.width);
  res.meta_train = score(comm, meta->predict(ctx, Z), train.y, train.w, classes);
  res.test = score(comm, meta->predict(ctx, with_passthrough(tpred, test.X, opt.passthrough)), test.y,
                   test.w, classes);
  fill_meta(res, *meta, res.columns, train, last_names, opt.passthrough, opt.meta.kind);
  res.split = "out-of-fold";
  return res;
}

StackResult run_blend(const Communicator& comm, const Table& data, const Table& test_in,
                      const BlendOptions& opt, std::vector<int>* split_of_row) {
  MOESIM_CONFIG_CHECK(!opt.learners.empty(), "--learners must name at least one learner");
  const bool external_test = comm.allreduce_sum(static_cast<std::int64_t>(test_in.n())) > 0;
  const double f_tr = opt.train_fraction, f_va = opt.val_fraction, f_ho = opt.holdout_fraction;
  MOESIM_CONFIG_CHECK(f_tr > 0 && f_va > 0 && f_ho >= 0 && f_tr + f_va + f_ho <= 1.0 + 1e-12,
                      "blend fractions need train > 0, val > 0, holdout >= 0 and train + val + holdout <= 1");
  MOESIM_CONFIG_CHECK(external_test || f_tr + f_va + f_ho < 1.0 - 1e-12,
                      "no test rows: give --test FILE or leave a test fraction (train + val + holdout < 1)");
  const int classes = data.num_classes();
  const bool cls = classes >= 2;
  for (const std::string& l : opt.learners) make_learner(l, opt.learner);
  make_meta(opt.meta, cls, opt.passthrough);

  // Split by global row (the row's place among all ranks' rows of `data`, which may be a
  // selection without file row numbers): 0 train, 1 validation, 2 hold-out, 3 test.
  const std::vector<std::int64_t> row = global_ids(comm, data.n());
  std::vector<int> split(static_cast<std::size_t>(data.n()));
  for (Index i = 0; i < data.n(); ++i) {
    const double u = Rng(opt.seed, Stream::kTest, 0xB1E9D, static_cast<std::uint64_t>(row[static_cast<std::size_t>(i)])).uniform();
    split[static_cast<std::size_t>(i)] = u < f_tr ? 0 : u < f_tr + f_va ? 1 : u < f_tr + f_va + f_ho ? 2 : 3;
  }
  if (split_of_row) *split_of_row = split;
  auto part = [&](int s) {
    std::vector<char> keep(split.size());
    for (std::size_t i = 0; i < split.size(); ++i) keep[i] = split[i] == s;
    return select_rows(data, keep);
  };
  const Table tr = part(0), va = part(1), ho = part(2);
  const Table te = external_test ? test_in : part(3);
  for (const auto& [name, t] : {std::pair<const char*, const Table*>{"train", &tr}, {"validation", &va}})
    MOESIM_CONFIG_CHECK(comm.allreduce_sum(static_cast<std::int64_t>(t->n())) > 0,
                        "the " << name << " split is empty; raise its fraction or give more rows");

  StackResult res;
  res.classification = cls;
  res.width = cls ? classes : 1;
  res.columns = column_names(opt.learners, data, 1);
  const int W = res.width;
  const Index L = static_cast<Index>(opt.learners.size());
  Mat<double> pva(va.n(), L * W), pho(ho.n(), L * W), pte(te.n(), L * W);
  const std::vector<std::int64_t> ids = global_ids(comm, tr.n());
  for (Index l = 0; l < L; ++l) {
    LearnerReport rep;
    rep.name = opt.learners[static_cast<std::size_t>(l)];
    const LearnerContext ctx{comm, classes, opt.seed + 1000003ULL * static_cast<std::uint64_t>(l) + 7919ULL};
    std::unique_ptr<Learner> model = make_learner(rep.name, opt.learner);
    Stopwatch sw;
    model->fit(ctx, TrainRows{tr.X, tr.y, tr.w, ids});
    rep.fit_seconds = sw.seconds();
    sw.reset();
    pva.middleCols(l * W, W) = model->predict(ctx, va.X);
    pho.middleCols(l * W, W) = model->predict(ctx, ho.X);
    pte.middleCols(l * W, W) = model->predict(ctx, te.X);
    rep.predict_seconds = sw.seconds();
    rep.oof = score(comm, pva.middleCols(l * W, W), va.y, va.w, classes);
    rep.test = score(comm, pte.middleCols(l * W, W), te.y, te.w, classes);
    if (comm.rank() == 0 && !opt.quiet) {
      std::printf("  %-9s validation %s %.4f | fit %.2f s, predict %.2f s\n", rep.name.c_str(),
                  primary_metric(cls), rep.oof.primary(cls), rep.fit_seconds, rep.predict_seconds);
      std::fflush(stdout);
    }
    res.learners.push_back(rep);
  }
  const LearnerContext ctx{comm, classes, opt.seed};
  const Mat<double> Zva = with_passthrough(pva, va.X, opt.passthrough);
  const Mat<double> Zho = with_passthrough(pho, ho.X, opt.passthrough);
  const Mat<double> Zte = with_passthrough(pte, te.X, opt.passthrough);
  const bool has_holdout = comm.allreduce_sum(static_cast<std::int64_t>(ho.n())) > 0;
  // The meta-learner's regularisation (or greedy rounds) is chosen on the hold-out rows.
  std::vector<double> grid;
  if (opt.meta.kind == "logistic" || opt.meta.kind == "ridge") grid = {0.01, 0.1, 1.0, 10.0, 100.0};
  else if (opt.meta.kind == "greedy") grid = {5, 10, 25, 50, 100};
  else grid = {0};
  if (!has_holdout) grid = {opt.meta.kind == "logistic" ? opt.meta.c : opt.meta.kind == "ridge" ? opt.meta.alpha
                                                                                                 : opt.meta.greedy_iterations};
  double best_score = 0;
  std::unique_ptr<MetaLearner> best;
  for (double v : grid) {
    MetaOptions mo = opt.meta;
    if (mo.kind == "logistic") mo.c = v;
    if (mo.kind == "ridge") mo.alpha = v;
    if (mo.kind == "greedy") mo.greedy_iterations = static_cast<int>(v);
    std::unique_ptr<MetaLearner> m = make_meta(mo, cls, opt.passthrough);
    m->fit(ctx, Zva, va.y, va.w, static_cast<int>(L), W);
    const double s = has_holdout ? score(comm, m->predict(ctx, Zho), ho.y, ho.w, classes).primary(cls) : 0.0;
    res.tuning.emplace_back(v, s);
    if (!best || better(cls, s, best_score)) {
      best_score = s;
      best = std::move(m);
      res.tuned_value = v;
    }
  }
  res.meta_train = score(comm, best->predict(ctx, Zva), va.y, va.w, classes);
  res.test = score(comm, best->predict(ctx, Zte), te.y, te.w, classes);
  res.oof = pva;
  res.level1_oof = pva;
  res.test_pred = pte;
  fill_meta(res, *best, res.columns, data, opt.learners, opt.passthrough, opt.meta.kind);
  res.split = "validation";
  return res;
}

}  // namespace moesim
