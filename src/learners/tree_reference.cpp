// Serial reference of the tree learners (see tree_reference.hpp). Written for clarity,
// not speed: every statistic is summed directly from the rows it covers.
#include "learners/tree_reference.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "core/error.hpp"
#include "learners/tree_binning.hpp"
#include "learners/tree_grow.hpp"
#include "learners/trees.hpp"

namespace moesim::tree_reference {

namespace {

using Stats = std::vector<double>;

Stats add(const Stats& a, const Stats& b) {
  Stats r(a.size());
  for (std::size_t s = 0; s < a.size(); ++s) r[s] = a[s] + b[s];
  return r;
}
Stats sub(const Stats& a, const Stats& b) {
  Stats r(a.size());
  for (std::size_t s = 0; s < a.size(); ++s) r[s] = a[s] - b[s];
  return r;
}

struct Node {
  int feature = -1;
  double threshold = 0;
  int left = -1, right = -1;
  std::vector<double> value;
};
using Tree = std::vector<Node>;

const std::vector<double>& leaf_of(const Tree& t, const double* x) {
  int k = 0;
  while (t[static_cast<std::size_t>(k)].feature >= 0) {
    const Node& nd = t[static_cast<std::size_t>(k)];
    k = x[nd.feature] <= nd.threshold ? nd.left : nd.right;
  }
  return t[static_cast<std::size_t>(k)].value;
}

// One tree grown recursively from per-row statistics.
struct Grower {
  const std::vector<std::vector<int>>& bin;           // bin[f][i]
  const std::vector<std::vector<double>>& thresholds;
  const std::vector<Stats>& stat;                     // per row
  SplitScore score;
  int max_depth;
  double min_leaf, lambda, leaf_scale;
  int m;
  std::uint64_t seed, tree;
  Tree nodes;

  double weight(const Stats& s) const { return stats_weight(score, s.data(), static_cast<int>(s.size())); }

  double term(const Stats& s) const {
    switch (score) {
      case SplitScore::kGini: {
        double sq = 0;
        for (double c : s) sq += c * c;
        return sq / weight(s);
      }
      case SplitScore::kVariance: return s[1] * s[1] / s[0];
      case SplitScore::kNewton: return s[0] * s[0] / (s[1] + lambda);
    }
    return 0;
  }

  // min_leaf counts rows (tree_grow.hpp), here counted directly.
  bool splittable(const Stats& T, std::size_t rows) const {
    const double W = weight(T);
    if (!(W > 0) || static_cast<double>(rows) < 2 * min_leaf) return false;
    if (score == SplitScore::kGini && *std::max_element(T.begin(), T.end()) >= (1 - kPureRel) * W)
      return false;
    return true;
  }

  std::vector<double> leaf_value(const Stats& T) const {
    switch (score) {
      case SplitScore::kGini: {
        std::vector<double> v(T.size());
        for (std::size_t c = 0; c < T.size(); ++c) v[c] = T[c] / weight(T);
        return v;
      }
      case SplitScore::kVariance: return {T[1] / T[0]};
      case SplitScore::kNewton: return {leaf_scale * (-T[0] / (T[1] + lambda))};
    }
    return {};
  }

  int grow(const std::vector<int>& rows, int depth, std::uint64_t heap) {
    const std::size_t S = stat.front().size();
    Stats T(S, 0.0);
    for (int i : rows) T = add(T, stat[static_cast<std::size_t>(i)]);
    const int me = static_cast<int>(nodes.size());
    nodes.push_back({});
    if (weight(T) > 0) nodes.back().value = leaf_value(T);
    else nodes.back().value.assign(score == SplitScore::kGini ? S : 1,
                                   score == SplitScore::kGini ? 1.0 / static_cast<double>(S) : 0.0);
    if (depth >= max_depth || !splittable(T, rows.size())) return me;

    const int p = static_cast<int>(bin.size());
    const std::vector<int> feats = sample_features(seed, tree, heap, p, m);
    const double minw = kSplitMinChildRel * weight(T);
    bool have = false;
    double best = 0;
    int best_f = -1, best_b = -1;
    for (int f : feats) {
      const int nb = static_cast<int>(thresholds[static_cast<std::size_t>(f)].size()) + 1;
      // Statistics per bin of this node's rows, then every "bin <= b" cut in order.
      std::vector<Stats> per_bin(static_cast<std::size_t>(nb), Stats(S, 0.0));
      std::vector<std::size_t> rows_in(static_cast<std::size_t>(nb), 0);
      for (int i : rows) {
        const std::size_t bi = static_cast<std::size_t>(bin[static_cast<std::size_t>(f)][static_cast<std::size_t>(i)]);
        per_bin[bi] = add(per_bin[bi], stat[static_cast<std::size_t>(i)]);
        ++rows_in[bi];
      }
      Stats L(S, 0.0);
      std::size_t nl = 0;
      for (int b = 0; b + 1 < nb; ++b) {
        L = add(L, per_bin[static_cast<std::size_t>(b)]);
        nl += rows_in[static_cast<std::size_t>(b)];
        const Stats R = sub(T, L);
        const std::size_t nr = rows.size() - nl;
        if (weight(L) < minw || static_cast<double>(nl) < min_leaf || nl == 0) continue;
        if (weight(R) < minw || static_cast<double>(nr) < min_leaf || nr == 0) break;
        const double s = term(L) + term(R);
        if (!have || s > best + kSplitTieRel * std::abs(best)) {
          have = true;
          best = s;
          best_f = f;
          best_b = b;
        }
      }
    }
    if (!have || !(best - term(T) > kSplitMinGainRel * std::abs(best))) return me;

    std::vector<int> left, right;
    for (int i : rows)
      (bin[static_cast<std::size_t>(best_f)][static_cast<std::size_t>(i)] <= best_b ? left : right).push_back(i);
    const int l = grow(left, depth + 1, 2 * heap);
    const int r = grow(right, depth + 1, 2 * heap + 1);
    Node& nd = nodes[static_cast<std::size_t>(me)];
    nd.feature = best_f;
    nd.threshold = thresholds[static_cast<std::size_t>(best_f)][static_cast<std::size_t>(best_b)];
    nd.left = l;
    nd.right = r;
    return me;
  }
};

std::vector<int> positive(const std::vector<double>& w) {
  std::vector<int> r;
  for (std::size_t i = 0; i < w.size(); ++i)
    if (w[i] > 0) r.push_back(static_cast<int>(i));
  return r;
}

double sigmoid(double s) { return 1.0 / (1.0 + std::exp(-s)); }

}  // namespace

std::vector<std::vector<double>> bin_thresholds(const Mat<double>& X, const std::vector<double>& w,
                                                int max_bins) {
  const int K1 = kBinCoarseCells, K2 = kBinFineCells, B = max_bins;
  std::vector<std::vector<double>> out(static_cast<std::size_t>(X.cols()));
  for (Index f = 0; f < X.cols(); ++f) {
    double lo = INFINITY, hi = -INFINITY;
    for (Index i = 0; i < X.rows(); ++i)
      if (!std::isnan(X(i, f))) {
        lo = std::min(lo, X(i, f));
        hi = std::max(hi, X(i, f));
      }
    if (!(std::isfinite(lo) && std::isfinite(hi) && hi > lo)) continue;
    const double scale = K1 / (hi - lo);
    auto pos_of = [&](double x) { return (x - lo) * scale; };
    auto cell_of = [&](double pos) { return std::min(K1 - 1, static_cast<int>(pos)); };

    // Pass 1: mass per uniform cell; the cells holding a cut k W / B are refined.
    std::vector<double> cell(static_cast<std::size_t>(K1), 0.0);
    for (Index i = 0; i < X.rows(); ++i)
      if (!std::isnan(X(i, f))) cell[static_cast<std::size_t>(cell_of(pos_of(X(i, f))))] += w[static_cast<std::size_t>(i)];
    const double W = std::accumulate(cell.begin(), cell.end(), 0.0);
    if (!(W > 0)) continue;
    std::map<int, std::vector<double>> fine;  // refined cell -> mass per fine cell
    double cum = 0;
    int k = 1;
    for (int c = 0; c < K1 && k < B; ++c) {
      cum += cell[static_cast<std::size_t>(c)];
      bool cut = false;
      while (k < B && W * k / B <= cum) {
        cut = true;
        ++k;
      }
      if (cut) fine[c].assign(static_cast<std::size_t>(K2), 0.0);
    }
    // Pass 2: mass per fine cell of the refined cells.
    for (Index i = 0; i < X.rows(); ++i) {
      if (std::isnan(X(i, f))) continue;
      const double pos = pos_of(X(i, f));
      const int c = cell_of(pos);
      auto it = fine.find(c);
      if (it == fine.end()) continue;
      const int s = std::min(K2 - 1, static_cast<int>((pos - c) * K2));
      it->second[static_cast<std::size_t>(s)] += w[static_cast<std::size_t>(i)];
    }
    // Cut k at the upper edge of the first piece whose cumulative mass reaches k W / B.
    std::vector<double>& t = out[static_cast<std::size_t>(f)];
    cum = 0;
    k = 1;
    auto piece = [&](double mass, std::int64_t num) {
      if (!(mass > 0)) return;
      cum += mass;
      bool cut = false;
      while (k < B && W * k / B <= cum) {
        cut = true;
        ++k;
      }
      const double e = lo + (hi - lo) * (static_cast<double>(num) / (static_cast<double>(K1) * K2));
      if (cut && e < hi && (t.empty() || e > t.back())) t.push_back(e);
    };
    for (int c = 0; c < K1 && k < B; ++c) {
      auto it = fine.find(c);
      if (it == fine.end()) piece(cell[static_cast<std::size_t>(c)], std::int64_t{c + 1} * K2);
      else
        for (int s = 0; s < K2; ++s) piece(it->second[static_cast<std::size_t>(s)], std::int64_t{c} * K2 + s + 1);
    }
  }
  return out;
}

Mat<double> fit_predict(const std::string& learner, const LearnerOptions& opt, int classes,
                        std::uint64_t seed, const FullData& data, const Mat<double>& Xq,
                        std::vector<double>* gbdt_loss) {
  const Mat<double>& X = data.X;
  const std::size_t n = static_cast<std::size_t>(X.rows());
  const int p = static_cast<int>(X.cols());
  const int C = classes;
  const auto thresholds = bin_thresholds(X, data.w, opt.max_bins);
  std::vector<std::vector<int>> bin(static_cast<std::size_t>(p), std::vector<int>(n));
  for (int f = 0; f < p; ++f)
    for (std::size_t i = 0; i < n; ++i)
      bin[static_cast<std::size_t>(f)][i] = bin_of(thresholds[static_cast<std::size_t>(f)], X(static_cast<Index>(i), f));

  if (learner == "tree" || learner == "forest") {
    const bool forest = learner == "forest";
    const int trees = forest ? opt.forest_trees : 1;
    const int out_dim = C >= 2 ? C : 1;
    Mat<double> out = Mat<double>::Zero(Xq.rows(), out_dim);
    for (int t = 0; t < trees; ++t) {
      std::vector<double> wt = data.w;
      if (forest)
        for (std::size_t i = 0; i < n; ++i)
          if (wt[i] > 0) wt[i] *= bootstrap_count(seed, static_cast<std::uint64_t>(t), data.id[i]);
      std::vector<Stats> stat(n);
      for (std::size_t i = 0; i < n; ++i) {
        if (C >= 2) {
          stat[i].assign(static_cast<std::size_t>(C), 0.0);
          stat[i][static_cast<std::size_t>(data.y[i])] = wt[i];
        } else {
          stat[i] = {wt[i], wt[i] * data.y[i]};
        }
      }
      Grower g{bin, thresholds, stat, C >= 2 ? SplitScore::kGini : SplitScore::kVariance,
               forest ? opt.forest_max_depth : opt.tree_max_depth,
               static_cast<double>(opt.tree_min_samples_leaf), 0.0, 1.0,
               forest ? forest_features_per_split(opt.forest_max_features, p, C >= 2) : p,
               seed, static_cast<std::uint64_t>(t), {}};
      g.grow(positive(wt), 0, 1);
      for (Index i = 0; i < Xq.rows(); ++i) {
        const std::vector<double>& v = leaf_of(g.nodes, Xq.row(i).data());
        for (int d = 0; d < out_dim; ++d) out(i, d) += v[static_cast<std::size_t>(d)] / trees;
      }
    }
    return out;
  }

  MOESIM_REQUIRE(learner == "gbdt", "unknown learner " << learner);
  const int K = C >= 3 ? C : 1;
  // Initial scores.
  std::vector<double> init(static_cast<std::size_t>(K), 0.0);
  double W = 0;
  for (double wi : data.w) W += wi;
  if (C == 0) {
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += data.w[i] * data.y[i];
    init[0] = W > 0 ? s / W : 0.0;
  } else {
    std::vector<double> prior(static_cast<std::size_t>(C), 0.0);
    for (std::size_t i = 0; i < n; ++i) prior[static_cast<std::size_t>(data.y[i])] += data.w[i];
    for (double& q : prior) q = std::log(std::max(W > 0 ? q / W : 1.0 / C, 1e-15));
    if (C == 2) init[0] = prior[1] - prior[0];
    else init = prior;
  }
  std::vector<std::vector<double>> F(n, init), Fq(static_cast<std::size_t>(Xq.rows()), init);

  auto loss_and_stats = [&](std::vector<std::vector<Stats>>& stat) {
    double loss = 0;
    stat.assign(static_cast<std::size_t>(K), std::vector<Stats>(n, Stats(3, 0.0)));
    for (std::size_t i = 0; i < n; ++i) {
      const double wi = data.w[i], yi = data.y[i];
      if (!(wi > 0)) continue;
      if (C == 0) {
        const double g = F[i][0] - yi;
        stat[0][i] = {wi * g, wi, 1.0};
        loss += 0.5 * wi * g * g;
      } else if (C == 2) {
        const double q = sigmoid(F[i][0]);
        stat[0][i] = {wi * (q - yi), wi * std::max(q * (1 - q), 1e-16), 1.0};
        loss -= wi * std::log(yi == 1 ? q : 1 - q);
      } else {
        double z = 0;
        for (double fk : F[i]) z += std::exp(fk);
        for (int k = 0; k < K; ++k) {
          const double q = std::exp(F[i][static_cast<std::size_t>(k)]) / z;
          stat[static_cast<std::size_t>(k)][i] = {wi * (q - (k == yi ? 1.0 : 0.0)), wi * std::max(q * (1 - q), 1e-16), 1.0};
        }
        loss -= wi * (F[i][static_cast<std::size_t>(yi)] - std::log(z));
      }
    }
    return loss / (W > 0 ? W : 1.0);
  };

  std::vector<double> history;
  std::vector<std::vector<Stats>> stat;
  for (int round = 0; round < opt.gbdt_trees; ++round) {
    history.push_back(loss_and_stats(stat));
    std::vector<Tree> trees;
    for (int k = 0; k < K; ++k) {
      Grower g{bin, thresholds, stat[static_cast<std::size_t>(k)], SplitScore::kNewton, opt.gbdt_max_depth,
               static_cast<double>(opt.tree_min_samples_leaf), kGbdtLambda, opt.gbdt_learning_rate, p,
               seed, 0, {}};
      g.grow(positive(data.w), 0, 1);
      trees.push_back(std::move(g.nodes));
    }
    for (int k = 0; k < K; ++k) {
      const std::size_t ks = static_cast<std::size_t>(k);
      for (std::size_t i = 0; i < n; ++i) F[i][ks] += leaf_of(trees[ks], X.row(static_cast<Index>(i)).data())[0];
      for (Index i = 0; i < Xq.rows(); ++i) Fq[static_cast<std::size_t>(i)][ks] += leaf_of(trees[ks], Xq.row(i).data())[0];
    }
  }
  history.push_back(loss_and_stats(stat));
  if (gbdt_loss) *gbdt_loss = history;

  Mat<double> out(Xq.rows(), C == 0 ? 1 : C);
  for (Index i = 0; i < Xq.rows(); ++i) {
    const std::vector<double>& f = Fq[static_cast<std::size_t>(i)];
    if (C == 0) out(i, 0) = f[0];
    else if (C == 2) {
      out(i, 1) = sigmoid(f[0]);
      out(i, 0) = 1 - out(i, 1);
    } else {
      double z = 0;
      for (double fk : f) z += std::exp(fk);
      for (int k = 0; k < C; ++k) out(i, k) = std::exp(f[static_cast<std::size_t>(k)]) / z;
    }
  }
  return out;
}

}  // namespace moesim::tree_reference
