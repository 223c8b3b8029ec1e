#include "binned/binned_moe.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "binned/bins.hpp"
#include "comm/exact_sum.hpp"
#include "core/row_order.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/timer.hpp"
#include "stacking/metrics.hpp"

namespace moesim {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Learners that can fit a regression target (logistic and nb are classifiers only).
bool is_regressor(const std::string& name) {
  return name == "ridge" || name == "knn" || name == "tree" || name == "forest" || name == "gbdt";
}

struct Rows {
  Mat<double> X;
  std::vector<double> y, w;
  std::vector<std::int64_t> id;
};

Rows pick(const Table& t, const std::vector<std::int64_t>& id, const std::vector<char>& keep,
          const std::vector<double>& y) {
  Rows r;
  Index n = 0;
  for (char k : keep) n += k ? 1 : 0;
  r.X.resize(n, t.p());
  Index j = 0;
  for (Index i = 0; i < t.n(); ++i) {
    const std::size_t s = static_cast<std::size_t>(i);
    if (!keep[s]) continue;
    r.X.row(j++) = t.X.row(i);
    r.y.push_back(y[s]);
    r.w.push_back(t.w[s]);
    r.id.push_back(id[s]);
  }
  return r;
}

// COLLECTIVE. Weighted RMSE of pred against y over the rows where keep is set; NaN
// when those rows weigh nothing. Every sum over rows in this file is exact (FixedSum,
// comm/exact_sum), so the diagnostics are the same bits on any rank count.
double rmse(const Communicator& comm, const std::vector<double>& pred, const std::vector<double>& y,
            const std::vector<double>& w, const std::vector<char>& keep) {
  std::vector<FixedSum> s(2);
  for (std::size_t i = 0; i < pred.size(); ++i)
    if (keep[i]) {
      const double e = pred[i] - y[i];
      s[0] += w[i] * e * e;
      s[1] += w[i];
    }
  double t[2];
  allreduce_exact(comm, s, t);
  return t[1] > 0 ? std::sqrt(t[0] / t[1]) : kNaN;
}

std::vector<char> where(const std::vector<int>& v, int value) {
  std::vector<char> m(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) m[i] = v[i] == value;
  return m;
}

std::vector<char> both(const std::vector<char>& a, const std::vector<char>& b) {
  std::vector<char> m(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) m[i] = a[i] && b[i];
  return m;
}

std::string range_text(const std::vector<double>& edges, int k) {
  char buf[96];
  const int B = static_cast<int>(edges.size()) + 1;
  if (k == 0) std::snprintf(buf, sizeof buf, "y < %g", edges.front());
  else if (k == B - 1) std::snprintf(buf, sizeof buf, "y >= %g", edges.back());
  else std::snprintf(buf, sizeof buf, "%g <= y < %g", edges[static_cast<std::size_t>(k - 1)], edges[static_cast<std::size_t>(k)]);
  return buf;
}

// One line on rank 0 unless quiet.
template <class... A>
void say(const Communicator& comm, const BinnedOptions& opt, const char* fmt, A... args) {
  if (comm.rank() == 0 && !opt.quiet) {
    std::printf(fmt, args...);
    std::fflush(stdout);
  }
}

struct Splits {
  std::vector<char> train, val, test;
};

// Rows split by a hash of (seed, global row): whatever P, a row lands in the same split.
void assign_splits(const Communicator& comm, const Table& data, const BinnedOptions& opt, Splits& sp,
                   BinnedResult& res) {
  const Index n = data.n();
  const std::size_t N = static_cast<std::size_t>(n);
  res.target = data.y;
  res.row.resize(N);
  res.split.resize(N);
  for (std::size_t i = 0; i < N; ++i) {
    res.row[i] = data.first + static_cast<std::int64_t>(i);
    const double u = Rng(opt.seed, Stream::kTest, 0xB1AAED, static_cast<std::uint64_t>(res.row[i])).uniform();
    res.split[i] = u < opt.test_fraction ? kSplitTest : u < opt.test_fraction + opt.val_fraction ? kSplitValidation : kSplitTrain;
  }
  sp.train = where(res.split, kSplitTrain);
  sp.val = where(res.split, kSplitValidation);
  sp.test = where(res.split, kSplitTest);
  for (const auto& [name, m] : {std::pair<const char*, const std::vector<char>*>{"training", &sp.train},
                                {"validation", &sp.val}, {"test", &sp.test}})
    MOESIM_CONFIG_CHECK(comm.allreduce_sum(static_cast<std::int64_t>(std::count(m->begin(), m->end(), 1))) > 0,
                        "the " << name << " split is empty (" << comm.allreduce_sum(static_cast<std::int64_t>(n))
                               << " rows): give more rows or change --val-fraction / --test-fraction");
}

// Edges (given, or quantiles of the training targets), bin labels, rows per split and bin.
void make_bins(const Communicator& comm, const Table& data, const BinnedOptions& opt, const Splits& sp,
    BinnedResult& res) {
  const Index n = data.n();
  const std::size_t N = static_cast<std::size_t>(n);
  if (opt.edges.empty()) {
    std::vector<double> ytr;
    for (std::size_t i = 0; i < N; ++i)
      if (sp.train[i]) ytr.push_back(data.y[i]);
    res.edges = quantile_edges(comm, ytr, opt.bins);
  } else {
    res.edges = opt.edges;
  }
  const int B = static_cast<int>(res.edges.size()) + 1;
  res.bins = B;
  res.bin.resize(N);
  for (std::size_t i = 0; i < N; ++i) res.bin[i] = bin_of(data.y[i], res.edges);
  res.rows_per_split_bin.assign(static_cast<std::size_t>(3 * B), 0);
  for (std::size_t i = 0; i < N; ++i) ++res.rows_per_split_bin[static_cast<std::size_t>(res.split[i] * B + res.bin[i])];
  comm.allreduce_sum(res.rows_per_split_bin.data(), 3 * B);
  for (int k = 0; k < B; ++k)
    MOESIM_CONFIG_CHECK(res.rows_per_split_bin[static_cast<std::size_t>(k)] > 0,
                        "bin " << k << " (" << range_text(res.edges, k)
                               << ") has no training rows: move --bin-edges inside the target's range");
}

// The gate: a classifier over the bin labels, probabilities for every row.
void fit_gate(const Communicator& comm, const Table& data, const BinnedOptions& opt, const Splits& sp,
    BinnedResult& res) {
  const Index n = data.n();
  const std::size_t N = static_cast<std::size_t>(n);
  const int B = res.bins;
  std::vector<double> label(N);
  for (std::size_t i = 0; i < N; ++i) label[i] = res.bin[i];
  Rows tr = pick(data, res.row, sp.train, label);
  if (opt.gate_balanced) {
    std::int64_t n_train = 0;
    for (int k = 0; k < B; ++k) n_train += res.rows_per_split_bin[static_cast<std::size_t>(k)];
    for (std::size_t i = 0; i < tr.w.size(); ++i)
      tr.w[i] *= static_cast<double>(n_train) /
                 (B * static_cast<double>(res.rows_per_split_bin[static_cast<std::size_t>(tr.y[i])]));
  }
  std::unique_ptr<Learner> gate = make_learner(opt.gate_learner, opt.learner);
  const LearnerContext ctx{comm, B, derive_key(opt.seed, Stream::kLearner, 0xC47E, 0)};
  Stopwatch t;
  gate->fit(ctx, TrainRows{tr.X, tr.y, tr.w, tr.id});
  res.gate = gate->predict(ctx, data.X);
  MOESIM_REQUIRE(res.gate.rows() == n && res.gate.cols() == B, "gate predicted " << res.gate.cols() << " columns");
  for (Index i = 0; i < n; ++i) {
    const double s = ordered_sum(res.gate.data() + i * B, B);  // index order: layout-free bits
    if (s > 0) res.gate.row(i) /= s;
    else res.gate.row(i).setConstant(1.0 / B);
  }
  say(comm, opt, "  gate %-7s over %d bins: fit and predict %.2f s\n", opt.gate_learner.c_str(), B, t.seconds());
}

// One expert per bin, fitted on that bin's training rows only; the single-model baseline.
void fit_experts(const Communicator& comm, const Table& data, const BinnedOptions& opt, const Splits& sp,
    BinnedResult& res) {
  const Index n = data.n();
  const int B = res.bins;
  res.experts.resize(n, B);
  for (int k = 0; k < B; ++k) {
    const Rows tr = pick(data, res.row, both(sp.train, where(res.bin, k)), data.y);
    std::unique_ptr<Learner> ex = make_learner(opt.expert_learner, opt.learner);
    const LearnerContext ctx{comm, 0, derive_key(opt.seed, Stream::kLearner, 0xE4BE, static_cast<std::uint64_t>(k))};
    Stopwatch t;
    ex->fit(ctx, TrainRows{tr.X, tr.y, tr.w, tr.id});
    res.experts.col(k) = ex->predict(ctx, data.X).col(0);
    say(comm, opt, "  expert %d %-7s %-22s %lld training rows, fit and predict %.2f s\n", k, opt.expert_learner.c_str(),
        range_text(res.edges, k).c_str(), static_cast<long long>(res.rows_per_split_bin[static_cast<std::size_t>(k)]),
        t.seconds());
  }
  if (opt.baseline) {
    const Rows tr = pick(data, res.row, sp.train, data.y);
    std::unique_ptr<Learner> one = make_learner(opt.expert_learner, opt.learner);
    const LearnerContext ctx{comm, 0, derive_key(opt.seed, Stream::kLearner, 0xBA5E, 0)};
    one->fit(ctx, TrainRows{tr.X, tr.y, tr.w, tr.id});
    const Mat<double> p = one->predict(ctx, data.X);
    res.baseline.assign(p.data(), p.data() + p.rows());
  }
}

// sum_k p_k f_k, the hard-gate variant, and the isotonic map fitted on the validation rows.
void mix_and_calibrate(const Communicator& comm, const Table& data, const BinnedOptions& opt, const Splits& sp,
    BinnedResult& res) {
  const Index n = data.n();
  const std::size_t N = static_cast<std::size_t>(n);
  res.mixture.resize(N);
  res.hard.resize(N);
  for (Index i = 0; i < n; ++i) {
    Index best = 0;
    res.gate.row(i).maxCoeff(&best);
    res.mixture[static_cast<std::size_t>(i)] =
        ordered_dot(res.gate.data() + i * res.bins, res.experts.data() + i * res.bins, res.bins);
    res.hard[static_cast<std::size_t>(i)] = res.experts(i, best);
  }
  {
    std::vector<double> x, y, w;
    std::vector<std::int64_t> key;
    for (std::size_t i = 0; i < N; ++i)
      if (sp.val[i]) {
        x.push_back(res.mixture[i]);
        y.push_back(data.y[i]);
        w.push_back(data.w[i]);
        key.push_back(res.row[i]);
      }
    res.calibration = fit_isotonic(comm, x, y, w, key);
  }
  res.calibrated.resize(N);
  for (std::size_t i = 0; i < N; ++i) {
    res.calibrated[i] = std::clamp(res.calibration(res.mixture[i]), opt.clip_min, opt.clip_max);
  }
}

// RMSEs of every variant on the validation and test splits; the gate against chance.
void score_splits(const Communicator& comm, const Table& data, const BinnedOptions& opt, const Splits& sp,
    BinnedResult& res) {
  const Index n = data.n();
  const std::size_t N = static_cast<std::size_t>(n);
  const int B = res.bins;
  std::vector<double> clipped(N), oracle(N);
  for (std::size_t i = 0; i < N; ++i) {
    clipped[i] = std::clamp(res.mixture[i], opt.clip_min, opt.clip_max);
    oracle[i] = res.experts(static_cast<Index>(i), res.bin[i]);
  }
  const std::vector<double>& y = data.y;
  const std::vector<double>& w = data.w;
  for (auto [split, mask] : {std::pair<SplitRmse*, const std::vector<char>*>{&res.val, &sp.val}, {&res.test, &sp.test}}) {
    split->mixture = rmse(comm, res.mixture, y, w, *mask);
    split->calibrated = rmse(comm, res.calibrated, y, w, *mask);
    split->clip_only = rmse(comm, clipped, y, w, *mask);
    split->hard = rmse(comm, res.hard, y, w, *mask);
    split->oracle = rmse(comm, oracle, y, w, *mask);
    split->baseline = opt.baseline ? rmse(comm, res.baseline, y, w, *mask) : 0.0;
  }
  {
    std::vector<double> label(N);
    for (std::size_t i = 0; i < N; ++i) label[i] = res.bin[i];
    const Rows te = pick(data, res.row, sp.test, label);
    Mat<double> g(te.X.rows(), B);
    Index j = 0;
    for (Index i = 0; i < n; ++i)
      if (sp.test[static_cast<std::size_t>(i)]) g.row(j++) = res.gate.row(i);
    const Scores s = score(comm, g, te.y, te.w, B);
    res.gate_accuracy = s.accuracy;
    res.gate_log_loss = s.log_loss;
  }
  // Chance: always answering the bin that weighs most among the training rows.
  std::vector<FixedSum> bin_sums(static_cast<std::size_t>(2 * B));  // sp.train, sp.test
  for (std::size_t i = 0; i < N; ++i) {
    if (sp.train[i]) bin_sums[static_cast<std::size_t>(res.bin[i])] += w[i];
    if (sp.test[i]) bin_sums[static_cast<std::size_t>(B + res.bin[i])] += w[i];
  }
  std::vector<double> bin_weight(bin_sums.size());
  allreduce_exact(comm, bin_sums, bin_weight.data());
  const auto majority = std::max_element(bin_weight.begin(), bin_weight.begin() + B) - bin_weight.begin();
  double test_weight = 0;
  for (int k = 0; k < B; ++k) test_weight += bin_weight[static_cast<std::size_t>(B + k)];
  res.gate_chance_accuracy = test_weight > 0 ? bin_weight[static_cast<std::size_t>(B + majority)] / test_weight : 0.0;
}

// Over the test rows: confusion, probability histograms and mean probabilities per true bin.
void gate_diagnostics(const Communicator& comm, const Table& data, const BinnedOptions& opt, const Splits& sp,
    BinnedResult& res) {
  const Index n = data.n();
  const int B = res.bins;
  const std::vector<double>& w = data.w;
  // Gate diagnostics over the sp.test rows.
  const int H = opt.histogram_bins;
  const std::size_t BB = static_cast<std::size_t>(B) * static_cast<std::size_t>(B);
  res.confusion.assign(BB, 0);
  res.histogram.assign(BB * static_cast<std::size_t>(H), 0);
  std::vector<FixedSum> prob_acc(BB + static_cast<std::size_t>(B));  // then the weight per true bin
  for (Index i = 0; i < n; ++i) {
    const std::size_t s = static_cast<std::size_t>(i);
    if (!sp.test[s]) continue;
    const std::size_t k = static_cast<std::size_t>(res.bin[s]);
    Index best = 0;
    res.gate.row(i).maxCoeff(&best);
    ++res.confusion[k * static_cast<std::size_t>(B) + static_cast<std::size_t>(best)];
    for (int j = 0; j < B; ++j) {
      const double p = res.gate(i, j);
      const int h = std::clamp(static_cast<int>(std::floor(p * H)), 0, H - 1);
      ++res.histogram[(k * static_cast<std::size_t>(B) + static_cast<std::size_t>(j)) * static_cast<std::size_t>(H) +
                      static_cast<std::size_t>(h)];
      prob_acc[k * static_cast<std::size_t>(B) + static_cast<std::size_t>(j)] += w[s] * p;
    }
    prob_acc[BB + k] += w[s];
  }
  comm.allreduce_sum(res.confusion.data(), static_cast<int>(BB));
  comm.allreduce_sum(res.histogram.data(), static_cast<int>(res.histogram.size()));
  std::vector<double> prob_sum(prob_acc.size());
  allreduce_exact(comm, prob_acc, prob_sum.data());
  res.mean_probability.assign(BB, kNaN);
  for (std::size_t k = 0; k < static_cast<std::size_t>(B); ++k)
    for (std::size_t j = 0; j < static_cast<std::size_t>(B); ++j)
      if (prob_sum[BB + k] > 0) res.mean_probability[k * static_cast<std::size_t>(B) + j] = prob_sum[k * static_cast<std::size_t>(B) + j] / prob_sum[BB + k];
}

// Per expert: losses on its own bin and on everything, and its gate mass.
void expert_diagnostics(const Communicator& comm, const Table& data, const Splits& sp, BinnedResult& res) {
  const Index n = data.n();
  const std::size_t N = static_cast<std::size_t>(n);
  const int B = res.bins;
  const std::vector<double>& y = data.y;
  const std::vector<double>& w = data.w;
  res.expert_loss.assign(static_cast<std::size_t>(B) * 5, kNaN);
  const std::size_t BB = static_cast<std::size_t>(B) * static_cast<std::size_t>(B);
  res.expert_rmse_by_bin.assign(BB, kNaN);
  std::vector<FixedSum> acc(static_cast<std::size_t>(B) + 1);  // gate mass per expert, then the test weight
  for (Index i = 0; i < n; ++i)
    if (sp.test[static_cast<std::size_t>(i)]) {
      acc[static_cast<std::size_t>(B)] += w[static_cast<std::size_t>(i)];
      for (int k = 0; k < B; ++k) acc[static_cast<std::size_t>(k)] += w[static_cast<std::size_t>(i)] * res.gate(i, k);
    }
  std::vector<double> mass(acc.size());
  allreduce_exact(comm, acc, mass.data());
  const double test_w = mass[static_cast<std::size_t>(B)];
  mass.pop_back();
  for (int k = 0; k < B; ++k) {
    std::vector<double> f(N);
    for (std::size_t i = 0; i < N; ++i) f[i] = res.experts(static_cast<Index>(i), k);
    const std::vector<char> own = where(res.bin, k);
    double* row = &res.expert_loss[static_cast<std::size_t>(k) * 5];
    row[0] = static_cast<double>(res.rows_per_split_bin[static_cast<std::size_t>(k)]);
    row[1] = rmse(comm, f, y, w, both(sp.train, own));
    row[2] = rmse(comm, f, y, w, both(sp.test, own));
    row[3] = rmse(comm, f, y, w, sp.test);
    row[4] = test_w > 0 ? mass[static_cast<std::size_t>(k)] / test_w : kNaN;
    for (int j = 0; j < B; ++j)
      res.expert_rmse_by_bin[static_cast<std::size_t>(k * B + j)] = rmse(comm, f, y, w, both(sp.test, where(res.bin, j)));
  }
}

}  // namespace

void validate_binned(const BinnedOptions& opt) {
  make_learner(opt.gate_learner, opt.learner);    // throws ConfigError for unknown names
  make_learner(opt.expert_learner, opt.learner);
  MOESIM_CONFIG_CHECK(is_regressor(opt.expert_learner),
                      "--expert-learner " << opt.expert_learner
                                          << " cannot fit a regression target (use ridge, knn, tree, forest or gbdt)");
  if (opt.edges.empty()) {
    MOESIM_CONFIG_CHECK(opt.bins >= 2 && opt.bins <= kMaxBins,
                        "--bins must be in 2.." << kMaxBins << " (got " << opt.bins << ")");
  } else {
    MOESIM_CONFIG_CHECK(static_cast<int>(opt.edges.size()) < kMaxBins, "--bin-edges: at most " << kMaxBins - 1 << " edges");
    for (std::size_t j = 0; j < opt.edges.size(); ++j) {
      MOESIM_CONFIG_CHECK(std::isfinite(opt.edges[j]), "--bin-edges must be finite numbers");
      MOESIM_CONFIG_CHECK(j == 0 || opt.edges[j] > opt.edges[j - 1],
                          "--bin-edges must be strictly increasing (" << opt.edges[j - 1] << " is followed by "
                                                                       << opt.edges[j] << ")");
    }
  }
  MOESIM_CONFIG_CHECK(opt.val_fraction > 0 && opt.test_fraction > 0 && opt.val_fraction + opt.test_fraction < 1,
                      "--val-fraction and --test-fraction must be > 0 and leave training rows (sum < 1)");
  MOESIM_CONFIG_CHECK(!(opt.clip_min > opt.clip_max) && !std::isnan(opt.clip_min) && !std::isnan(opt.clip_max),
                      "--clip-min (" << opt.clip_min << ") must not exceed --clip-max (" << opt.clip_max << ")");
  MOESIM_CONFIG_CHECK(opt.histogram_bins >= 1, "--histogram-bins must be >= 1");
}

BinnedResult run_binned(const Communicator& comm, const Table& data, const BinnedOptions& opt) {
  validate_binned(opt);
  MOESIM_REQUIRE(data.first >= 0, "binned: the table needs global row numbers");
  BinnedResult res;
  Splits sp;
  assign_splits(comm, data, opt, sp, res);
  make_bins(comm, data, opt, sp, res);
  Stopwatch sw;
  fit_gate(comm, data, opt, sp, res);
  fit_experts(comm, data, opt, sp, res);
  res.fit_seconds = sw.seconds();
  mix_and_calibrate(comm, data, opt, sp, res);
  score_splits(comm, data, opt, sp, res);
  gate_diagnostics(comm, data, opt, sp, res);
  expert_diagnostics(comm, data, sp, res);
  return res;
}

}  // namespace moesim
