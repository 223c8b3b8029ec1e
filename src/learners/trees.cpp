// Decision tree, random forest and gradient boosting on the histogram tree builder.
// Each fit bins the features once (all-reduced quantile histograms), then grows trees
// from all-reduced per-level histograms; rows never leave their rank.
#include "learners/trees.hpp"

#include <algorithm>
#include <cmath>

#include "comm/exact_sum.hpp"
#include "core/row_order.hpp"
#include "core/error.hpp"
#include "learners/tree_binning.hpp"
#include "learners/tree_grow.hpp"

namespace moesim {

namespace {

// Forest trees grown together share each level's all-reduce; the batch is bounded by
// the per-tree copies of the local rows it holds (indices, statistics, weights and,
// with sampled features, the rows' bins).
constexpr double kForestBatchBytes = 128.0 * (1 << 20);
constexpr int kForestMaxBatch = 32;

// COLLECTIVE. Labels must be class indices, targets finite, weights finite and >= 0.
void validate_rows(const LearnerContext& ctx, const TrainRows& rows) {
  const Index n = rows.X.rows();
  bool ok = static_cast<Index>(rows.y.size()) == n && static_cast<Index>(rows.w.size()) == n &&
            static_cast<Index>(rows.id.size()) == n;
  for (Index i = 0; ok && i < n; ++i) {
    const double y = rows.y[static_cast<std::size_t>(i)], w = rows.w[static_cast<std::size_t>(i)];
    ok = std::isfinite(y) && std::isfinite(w) && w >= 0;
    if (ok && ctx.classes >= 2) ok = y >= 0 && y < ctx.classes && y == std::floor(y);
  }
  ctx.comm.agree_or_throw(ok, "tree learners: labels must be class indices in [0, classes), "
                              "targets finite and weights finite and non-negative");
}

std::vector<std::uint32_t> rows_with_weight(const std::vector<double>& w) {
  std::vector<std::uint32_t> r;
  r.reserve(w.size());
  for (std::size_t i = 0; i < w.size(); ++i)
    if (w[i] > 0) r.push_back(static_cast<std::uint32_t>(i));
  return r;
}

std::vector<std::int32_t> labels_of(const std::vector<double>& y) {
  std::vector<std::int32_t> l(y.size());
  for (std::size_t i = 0; i < y.size(); ++i) l[i] = static_cast<std::int32_t>(y[i]);
  return l;
}

// Leaf value(s) from a leaf's global statistics; C = classes (kGini).
void leaf_value(SplitScore score, const double* T, int C, double scale, double* out) {
  switch (score) {
    case SplitScore::kGini: {
      // Clamped: subtraction can leave -1e-17 where a class is absent.
      double W = 0;
      for (int c = 0; c < C; ++c) W += std::max(T[c], 0.0);
      for (int c = 0; c < C; ++c) out[c] = W > 0 ? std::max(T[c], 0.0) / W : 1.0 / C;
      break;
    }
    case SplitScore::kVariance: out[0] = T[0] > 0 ? T[1] / T[0] : 0.0; break;
    case SplitScore::kNewton: out[0] = scale * (-T[0] / (T[1] + kGbdtLambda)); break;
  }
}

// Appends a grown tree; returns the leaf value offset of every grown node (-1: internal).
std::vector<std::int32_t> append_tree(TreeEnsemble& m, const GrowTree& g, const FeatureBins& fb,
                                      SplitScore score, int S, double scale, int column) {
  const std::int32_t base = static_cast<std::int32_t>(m.nodes.size());
  m.roots.push_back(base);
  m.column.push_back(column);
  std::vector<std::int32_t> leaf(g.nodes.size(), -1);
  for (std::size_t k = 0; k < g.nodes.size(); ++k) {
    const GrowTree::Node& nd = g.nodes[k];
    if (nd.feature >= 0) {
      const double thr = fb.thresholds[static_cast<std::size_t>(nd.feature)][static_cast<std::size_t>(nd.bin)];
      m.nodes.push_back({nd.feature, base + nd.left, thr});
    } else {
      leaf[k] = static_cast<std::int32_t>(m.values.size());
      m.values.resize(m.values.size() + static_cast<std::size_t>(m.dim));
      leaf_value(score, g.totals.data() + k * static_cast<std::size_t>(S), m.dim, scale,
                 m.values.data() + leaf[k]);
      m.nodes.push_back({-1, leaf[k], 0.0});
    }
  }
  return leaf;
}

void check_predict_input(const TreeEnsemble& m, const Mat<double>& X) {
  MOESIM_REQUIRE(m.features > 0 || !m.roots.empty(), "predict before fit");
  MOESIM_REQUIRE(X.cols() == m.features, "predict on " << X.cols() << " features, fitted on " << m.features);
}

// The forest and the single tree: `trees` bootstrapped (or plain) trees on one binning.
void fit_bagged(const LearnerContext& ctx, const TrainRows& rows, const FeatureBins& fb,
                const BinnedMatrix& bm, int trees, bool bootstrap, int max_depth, int m,
                double min_leaf, TreeEnsemble& model) {
  const bool clf = ctx.classes >= 2;
  const Index n = rows.X.rows();
  const std::size_t nz = static_cast<std::size_t>(n);
  GrowParams prm;
  prm.score = clf ? SplitScore::kGini : SplitScore::kVariance;
  // min_leaf counts rows (tree_grow.hpp): with min_leaf <= 1 a positive weight is a row.
  prm.count_rows = min_leaf > 1;
  const std::size_t cnt = prm.count_rows ? 1 : 0;
  prm.stats = (clf ? ctx.classes : 2) + static_cast<int>(cnt);
  prm.max_depth = max_depth;
  prm.min_leaf = min_leaf;
  prm.features_per_split = m;
  prm.seed = ctx.seed;
  prm.keep_leaf_rows = false;
  const int S = prm.stats;
  model = TreeEnsemble{};
  model.dim = clf ? ctx.classes : 1;
  model.features = static_cast<int>(rows.X.cols());
  const std::vector<std::int32_t> labels = clf ? labels_of(rows.y) : std::vector<std::int32_t>{};
  if (clf) {
    // Integer weights (unit weights included): class counts x bootstrap draws (at most
    // 32 a row) are integers, so histograms can travel as int32 if their sums fit.
    double integer = 1;
    FixedSum wsum;  // exact, so that every rank count takes the same decision
    for (double w : rows.w) {
      integer = integer > 0 && w == std::floor(w) && w <= 1e6 ? 1 : 0;
      wsum += w;
    }
    const double all_integer = -ctx.comm.allreduce_max(-integer);
    allreduce_exact(ctx.comm, &wsum, 1);
    const double bound = (bootstrap ? 32.0 : 1.0) * std::max(wsum.value(), fb.rows);
    prm.narrow_integers = all_integer > 0 && bound < 16777216.0;  // 2^24
  }

  // From global counts, so that every rank forms the same batches.
  const double per_rank = std::ceil(fb.rows / ctx.comm.size()) + 1;
  const double stat_bytes = clf && !cnt ? 16.0 : 4.0 + 8.0 * S;  // (label, weight) or S stats, + row id
  const double row_bytes = m < bm.p ? 2 * (stat_bytes + 8.0 * std::ceil(bm.p / 8.0)) + 8
                                    : stat_bytes + 12.0;
  const double bytes = row_bytes * per_rank;
  const int batch = std::clamp(static_cast<int>(kForestBatchBytes / bytes), 1, kForestMaxBatch);
  for (int t0 = 0; t0 < trees; t0 += batch) {
    const int nt = std::min(batch, trees - t0);
    std::vector<std::vector<double>> weight(static_cast<std::size_t>(nt)), stat(static_cast<std::size_t>(nt));
    std::vector<GrowTree> grow(static_cast<std::size_t>(nt));
    for (int k = 0; k < nt; ++k) {
      const std::size_t ks = static_cast<std::size_t>(k);
      const std::uint64_t t = static_cast<std::uint64_t>(t0 + k);
      std::vector<double>& wt = weight[ks];
      wt = rows.w;
      if (bootstrap)
        for (std::size_t i = 0; i < nz; ++i)
          if (wt[i] > 0) wt[i] *= bootstrap_count(ctx.seed, t, rows.id[i]);
      GrowTree& g = grow[ks];
      g.key = t;
      g.rows = rows_with_weight(wt);
      const std::size_t Sz = static_cast<std::size_t>(S);
      if (clf && !prm.count_rows) {
        g.label = labels.data();
        g.weight = wt.data();
      } else {
        // (class weights | w, w y) and, with count_rows, 1 for the row count.
        stat[ks].assign(Sz * nz, 0.0);
        for (std::size_t i = 0; i < nz; ++i) {
          double* st = stat[ks].data() + Sz * i;
          if (clf) st[labels[i]] = wt[i];
          else {
            st[0] = wt[i];
            st[1] = wt[i] * rows.y[i];
          }
          if (cnt) st[Sz - 1] = 1.0;
        }
        g.stat = stat[ks].data();
      }
    }
    grow_trees(ctx.comm, bm, prm, grow);
    for (const GrowTree& g : grow) append_tree(model, g, fb, prm.score, S, 1.0, 0);
  }
}

inline double sigmoid(double s) {
  if (s >= 0) return 1.0 / (1.0 + std::exp(-s));
  const double e = std::exp(s);
  return e / (1.0 + e);
}

}  // namespace

void TreeEnsemble::accumulate(const Mat<double>& X, Mat<double>& out) const {
  const std::size_t d = static_cast<std::size_t>(dim);
  // A descent is a chain of dependent loads from a model larger than the caches: a block
  // of rows descends each tree together, so that their loads overlap. Each row still adds
  // the trees' values in tree order.
  constexpr Index kBlock = 8;
  for (Index i0 = 0; i0 < X.rows(); i0 += kBlock) {
    const Index nb = std::min(kBlock, X.rows() - i0);
    for (std::size_t t = 0; t < roots.size(); ++t) {
      std::int32_t k[kBlock];
      for (Index b = 0; b < nb; ++b) k[b] = roots[t];
      for (bool moving = true; moving;) {
        moving = false;
        for (Index b = 0; b < nb; ++b) {
          const Node& nd = nodes[static_cast<std::size_t>(k[b])];
          if (nd.feature < 0) continue;
          k[b] = nd.next + (X(i0 + b, nd.feature) <= nd.threshold ? 0 : 1);
          moving = true;
        }
      }
      for (Index b = 0; b < nb; ++b) {
        const double* v = values.data() + nodes[static_cast<std::size_t>(k[b])].next;
        double* ot = out.data() + (i0 + b) * out.cols() + column[t];
        for (std::size_t j = 0; j < d; ++j) ot[j] += v[j];
      }
    }
  }
}

// ------------------------------------------------------------------------------ tree

void TreeLearner::fit(const LearnerContext& ctx, const TrainRows& rows) {
  validate_rows(ctx, rows);
  classes_ = ctx.classes;
  const FeatureBins fb = fit_feature_bins(ctx.comm, rows.X, rows.w, opt_.max_bins);
  const BinnedMatrix bm = bin_matrix(fb, rows.X);
  const int p = static_cast<int>(rows.X.cols());
  fit_bagged(ctx, rows, fb, bm, 1, false, opt_.tree_max_depth, p, opt_.tree_min_samples_leaf, model_);
}

Mat<double> TreeLearner::predict(const LearnerContext&, const Mat<double>& X) {
  check_predict_input(model_, X);
  Mat<double> out = Mat<double>::Zero(X.rows(), model_.dim);
  if (X.rows() == 0) return out;
  model_.accumulate(X, out);
  return out;
}

// ---------------------------------------------------------------------------- forest

void ForestLearner::fit(const LearnerContext& ctx, const TrainRows& rows) {
  MOESIM_CONFIG_CHECK(opt_.forest_trees >= 1, "forest_trees must be >= 1");
  validate_rows(ctx, rows);
  classes_ = ctx.classes;
  const FeatureBins fb = fit_feature_bins(ctx.comm, rows.X, rows.w, opt_.max_bins);
  const BinnedMatrix bm = bin_matrix(fb, rows.X);
  const int p = static_cast<int>(rows.X.cols());
  const int m = forest_features_per_split(opt_.forest_max_features, p, classes_ >= 2);
  fit_bagged(ctx, rows, fb, bm, opt_.forest_trees, true, opt_.forest_max_depth, m,
             opt_.tree_min_samples_leaf, model_);
}

Mat<double> ForestLearner::predict(const LearnerContext&, const Mat<double>& X) {
  check_predict_input(model_, X);
  Mat<double> out = Mat<double>::Zero(X.rows(), model_.dim);
  if (X.rows() == 0) return out;
  model_.accumulate(X, out);
  out /= static_cast<double>(model_.trees());
  return out;
}

// ------------------------------------------------------------------------------ gbdt

void GbdtLearner::fit(const LearnerContext& ctx, const TrainRows& rows) {
  MOESIM_CONFIG_CHECK(opt_.gbdt_trees >= 0, "gbdt_trees must be >= 0");
  validate_rows(ctx, rows);
  classes_ = ctx.classes;
  const FeatureBins fb = fit_feature_bins(ctx.comm, rows.X, rows.w, opt_.max_bins);
  const BinnedMatrix bm = bin_matrix(fb, rows.X);
  const Index n = rows.X.rows();
  const std::size_t nz = static_cast<std::size_t>(n);
  const std::vector<double>& y = rows.y;
  const std::vector<double>& w = rows.w;
  const int C = classes_;
  const int K = C >= 3 ? C : 1;  // outputs, and trees per round
  const std::size_t Ks = static_cast<std::size_t>(K);

  // Initial scores from the global weighted mean or class priors (exact sums).
  std::vector<FixedSum> sums(static_cast<std::size_t>(std::max(C, 2)));
  FixedSum total;
  for (std::size_t i = 0; i < nz; ++i) {
    total += w[i];
    if (C >= 2) sums[static_cast<std::size_t>(y[i])] += w[i];
    else sums[1] += w[i] * y[i];
  }
  sums.push_back(total);
  allreduce_exact(ctx.comm, sums);
  std::vector<double> buf(sums.size());
  for (std::size_t c = 0; c < sums.size(); ++c) buf[c] = sums[c].value();
  double wsum = buf.back();
  init_.assign(Ks, 0.0);
  if (C >= 2) {
    auto log_prior = [&](int c) {
      return std::log(std::max(wsum > 0 ? buf[static_cast<std::size_t>(c)] / wsum : 1.0 / C, 1e-15));
    };
    if (C == 2) init_[0] = log_prior(1) - log_prior(0);
    else
      for (int c = 0; c < C; ++c) init_[static_cast<std::size_t>(c)] = log_prior(c);
  } else {
    init_[0] = wsum > 0 ? buf[1] / wsum : 0.0;
  }

  model_ = TreeEnsemble{};
  model_.dim = 1;
  model_.features = static_cast<int>(rows.X.cols());
  loss_history_.clear();
  GrowParams prm;
  prm.score = SplitScore::kNewton;
  prm.stats = 3;
  prm.max_depth = opt_.gbdt_max_depth;
  prm.min_leaf = opt_.tree_min_samples_leaf;
  prm.lambda = kGbdtLambda;
  prm.features_per_split = static_cast<int>(rows.X.cols());
  prm.seed = ctx.seed;

  std::vector<double> F(nz * Ks);
  for (std::size_t i = 0; i < nz; ++i) std::copy(init_.begin(), init_.end(), F.begin() + static_cast<std::ptrdiff_t>(i * Ks));
  std::vector<std::vector<double>> stat(Ks, std::vector<double>(3 * nz));
  std::vector<double> prob(Ks);
  const std::vector<std::uint32_t> active = rows_with_weight(w);

  // Gradients and Hessians (weighted) of the current scores; returns the local loss,
  // summed exactly so that the history does not depend on the rank count.
  auto gradients = [&]() {
    FixedSum loss;
    for (std::uint32_t r : active) {
      const std::size_t i = r;
      const double* f = F.data() + i * Ks;
      if (C == 0) {
        const double g = f[0] - y[i];
        stat[0][3 * i] = w[i] * g;
        stat[0][3 * i + 1] = w[i];
        loss += 0.5 * w[i] * g * g;
      } else if (C == 2) {
        // One exp serves the probability and the loss: e = exp(-|F|).
        const double e = std::exp(-std::abs(f[0]));
        const double p1 = f[0] >= 0 ? 1 / (1 + e) : e / (1 + e);
        stat[0][3 * i] = w[i] * (p1 - y[i]);
        stat[0][3 * i + 1] = w[i] * std::max(p1 * (1 - p1), 1e-16);
        loss += w[i] * (std::log1p(e) + std::max(f[0], 0.0) - y[i] * f[0]);
      } else {
        const double mx = *std::max_element(f, f + K);
        double z = 0;
        for (std::size_t k = 0; k < Ks; ++k) z += prob[k] = std::exp(f[k] - mx);
        const std::size_t yi = static_cast<std::size_t>(y[i]);
        for (std::size_t k = 0; k < Ks; ++k) {
          const double pk = prob[k] / z;
          stat[k][3 * i] = w[i] * (pk - (k == yi ? 1.0 : 0.0));
          stat[k][3 * i + 1] = w[i] * std::max(pk * (1 - pk), 1e-16);
        }
        loss += w[i] * (std::log(z) + mx - f[yi]);
      }
      for (std::size_t k = 0; k < Ks; ++k) stat[k][3 * i + 2] = 1.0;  // rows, for min_leaf
    }
    return loss;
  };

  const double norm = wsum > 0 ? wsum : 1.0;
  std::vector<GrowTree> grow(Ks);
  for (int round = 0; round < opt_.gbdt_trees; ++round) {
    FixedSum loss = gradients();
    for (std::size_t k = 0; k < Ks; ++k) {
      grow[k].stat = stat[k].data();
      grow[k].key = static_cast<std::uint64_t>(round) * Ks + k;
      grow[k].rows = active;
    }
    // The loss of the previous round rides on this round's first all-reduce.
    grow_trees(ctx.comm, bm, prm, grow, &loss, 1);
    loss_history_.push_back(loss.value() / norm);
    for (std::size_t k = 0; k < Ks; ++k) {
      const GrowTree& g = grow[k];
      const std::vector<std::int32_t> leaf =
          append_tree(model_, g, fb, SplitScore::kNewton, 3, opt_.gbdt_learning_rate, static_cast<int>(k));
      // Training scores move by the leaf values through the leaves' row ranges.
      for (std::size_t q = 0; q < g.nodes.size(); ++q) {
        if (leaf[q] < 0) continue;
        const double v = model_.values[static_cast<std::size_t>(leaf[q])];
        for (std::uint32_t j = g.nodes[q].begin; j < g.nodes[q].end; ++j) F[g.rows[j] * Ks + k] += v;
      }
    }
  }
  FixedSum last = gradients();
  allreduce_exact(ctx.comm, &last, 1);
  loss_history_.push_back(last.value() / norm);
}

Mat<double> GbdtLearner::predict(const LearnerContext&, const Mat<double>& X) {
  const Index n = X.rows();
  const int K = static_cast<int>(init_.size());
  MOESIM_REQUIRE(K >= 1, "predict before fit");
  check_predict_input(model_, X);
  Mat<double> s(n, K);
  for (Index i = 0; i < n; ++i)
    for (int k = 0; k < K; ++k) s(i, k) = init_[static_cast<std::size_t>(k)];
  if (n > 0 && !model_.roots.empty()) model_.accumulate(X, s);
  if (classes_ == 0) return s;
  if (classes_ == 2) {
    Mat<double> out(n, 2);
    for (Index i = 0; i < n; ++i) {
      out(i, 1) = sigmoid(s(i, 0));
      out(i, 0) = 1.0 - out(i, 1);
    }
    return out;
  }
  // In index order (core/row_order.hpp): the same row gives the same bits at any position.
  for (Index i = 0; i < n; ++i) ordered_softmax(s.data() + i * K, K);
  return s;
}

std::unique_ptr<Learner> make_tree_learner(const LearnerOptions& opt) {
  return std::make_unique<TreeLearner>(opt);
}
std::unique_ptr<Learner> make_forest_learner(const LearnerOptions& opt) {
  return std::make_unique<ForestLearner>(opt);
}
std::unique_ptr<Learner> make_gbdt_learner(const LearnerOptions& opt) {
  return std::make_unique<GbdtLearner>(opt);
}

}  // namespace moesim
