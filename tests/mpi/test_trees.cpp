// The histogram tree learners (tree, forest, gbdt) on P ranks against the serial
// reference on the full data, plus quality, weight and probability checks. Every rank
// generates its own shard from a counter-based RNG keyed by the global row id.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/rng.hpp"
#include "core/shard.hpp"
#include "learners/tree_binning.hpp"
#include "learners/tree_grow.hpp"
#include "learners/tree_reference.hpp"
#include "learners/trees.hpp"
#include "support/rows.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

struct Data : test::Rows {
  tree_reference::FullData full() const { return {X, y, w, id}; }
};

enum class Weights { kUnit, kReal, kSmallInt };

// Rows [first, first + count) of a fixed problem: normal, uniform, log-normal (skewed),
// small-integer and noise features; classes = 0 is regression.
Data make_data(std::int64_t first, std::int64_t count, int classes, std::uint64_t seed,
               Weights weights = Weights::kReal) {
  constexpr int p = 6;
  Data d;
  d.X.resize(count, p);
  for (std::int64_t k = 0; k < count; ++k) {
    const std::int64_t g = first + k;
    Rng rng(seed, Stream::kTest, static_cast<std::uint64_t>(g));
    double* x = d.X.row(k).data();
    x[0] = rng.normal();
    x[1] = rng.uniform();
    x[2] = std::exp(2 * rng.normal());
    x[3] = static_cast<double>(rng.below(4));
    x[4] = rng.normal();
    x[5] = rng.uniform(-1, 1);
    const double s = x[0] + 2.0 * (x[1] > 0.6) - 0.5 * std::log(x[2]) + 0.7 * x[3] - 1.0 + 0.5 * rng.normal();
    double y = s;
    if (classes == 2) y = s > 0 ? 1 : 0;
    if (classes >= 3) y = static_cast<double>(std::clamp(static_cast<int>(std::floor(s / 1.5 + 1.5)), 0, classes - 1));
    d.y.push_back(y);
    switch (weights) {
      case Weights::kUnit: d.w.push_back(1.0); break;
      case Weights::kReal: d.w.push_back(0.25 + rng.uniform()); break;
      case Weights::kSmallInt: d.w.push_back(static_cast<double>(1 + rng.below(2))); break;
    }
    d.id.push_back(g);
  }
  return d;
}

Data shard(const Data& all, std::int64_t first, std::int64_t count) {
  Data d;
  d.X = all.X.middleRows(first, count);
  for (std::int64_t i = first; i < first + count; ++i) {
    d.y.push_back(all.y[static_cast<std::size_t>(i)]);
    d.w.push_back(all.w[static_cast<std::size_t>(i)]);
    d.id.push_back(all.id[static_cast<std::size_t>(i)]);
  }
  return d;
}

Data my_shard(const Data& all) {
  const Shard sh = shard_of(all.X.rows(), world().rank(), world().size());
  return shard(all, sh.first, sh.count);
}

LearnerOptions small_options() {
  LearnerOptions o;
  o.max_bins = 16;  // fewer bins than distinct values: exercises the quantile cuts
  o.tree_max_depth = 6;
  o.tree_min_samples_leaf = 2;
  o.forest_trees = 6;
  o.forest_max_depth = 6;
  o.gbdt_trees = 6;
  o.gbdt_max_depth = 3;
  o.gbdt_learning_rate = 0.3;
  return o;
}

Mat<double> fit_predict(const std::string& name, const LearnerOptions& opt, int classes,
                        const Data& local, const Mat<double>& Xq, std::uint64_t seed = 11) {
  LearnerContext ctx{world(), classes, seed};
  std::unique_ptr<Learner> l = make_learner(name, opt);
  l->fit(ctx, local.view());
  return l->predict(ctx, Xq);
}

// Against the serial reference, which sums doubles in row order: the learners sum
// statistics exactly in fixed point (a row's statistic rounded to about 2^-62 N of the
// largest, a sum of N rows to 2^-62 N^2), so the two differ by rounding, far below this.
constexpr double kAbs = 1e-9, kRel = 1e-9;

// ------------------------------------------------------------------- binning

TEST(TreeBinning, EdgesMatchSerialReference) {
  const Data all = make_data(0, 700, 0, 3);
  const Data local = my_shard(all);
  for (int bins : {2, 16, 64, 300}) {
    const FeatureBins fb = fit_feature_bins(world(), local.X, local.w, bins);
    const auto ref = tree_reference::bin_thresholds(all.X, all.w, bins);
    long bad = 0;
    for (std::size_t f = 0; f < ref.size(); ++f) {
      if (fb.thresholds[f].size() != ref[f].size()) {
        ++bad;
        continue;
      }
      for (std::size_t b = 0; b < ref[f].size(); ++b) bad += fb.thresholds[f][b] != ref[f][b];
      bad += static_cast<long>(ref[f].size()) + 1 > bins;
    }
    EXPECT_EQ(world().allreduce_sum(bad), 0) << "bins " << bins;
    EXPECT_EQ(fb.rows, 700.0);
  }
  // Skewed feature 2: quantile edges keep the bins roughly balanced.
  const FeatureBins fb = fit_feature_bins(world(), local.X, local.w, 16);
  EXPECT_EQ(fb.bins(3), 4) << "a 4-valued feature gets one bin per value";
  EXPECT_GE(fb.bins(2), 14) << "log-normal feature collapsed into few bins";
}

// --------------------------------------------------- distributed == serial reference

struct RefCase {
  const char* learner;
  int classes;
};

void PrintTo(const RefCase& c, std::ostream* os) { *os << c.learner << " classes=" << c.classes; }

class TreeVsReference : public ::testing::TestWithParam<RefCase> {};

TEST_P(TreeVsReference, PredictionsMatchOnAnyRankCount) {
  const RefCase c = GetParam();
  const LearnerOptions opt = small_options();
  const Data all = make_data(0, 400, c.classes, 21);
  const Data query = make_data(10000, 60, c.classes, 21);
  const Mat<double> got = fit_predict(c.learner, opt, c.classes, my_shard(all), query.X);
  const Mat<double> ref = tree_reference::fit_predict(c.learner, opt, c.classes, 11, all.full(), query.X);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(got, ref, kAbs, kRel, std::string(c.learner) + " predictions");
  // A model with a handful of distinct outputs would make the comparison vacuous.
  std::vector<double> v(ref.data(), ref.data() + ref.rows());
  std::sort(v.begin(), v.end());
  EXPECT_GE(std::unique(v.begin(), v.end()) - v.begin(), 8) << "model nearly constant";
}

// Some ranks hold no rows at all; subsampling features on the forest.
TEST_P(TreeVsReference, RowsOnOneRankOnly) {
  const RefCase c = GetParam();
  LearnerOptions opt = small_options();
  opt.forest_max_features = 0.5;
  const Data all = make_data(0, 250, c.classes, 22);
  const Data query = make_data(20000, 40, c.classes, 22);
  const bool holder = world().rank() == world().size() - 1;
  const Data local = shard(all, 0, holder ? 250 : 0);
  const Mat<double> got = fit_predict(c.learner, opt, c.classes, local, query.X, 5);
  const Mat<double> ref = tree_reference::fit_predict(c.learner, opt, c.classes, 5, all.full(), query.X);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(got, ref, kAbs, kRel, std::string(c.learner) + " predictions");
}

// Each tree learner on binary, 3-class and regression problems.
const auto kEveryLearnerAndProblem =
    ::testing::Values(RefCase{"tree", 2}, RefCase{"tree", 3}, RefCase{"tree", 0}, RefCase{"forest", 2},
                      RefCase{"forest", 3}, RefCase{"forest", 0}, RefCase{"gbdt", 2}, RefCase{"gbdt", 3},
                      RefCase{"gbdt", 0});

std::string case_name(const ::testing::TestParamInfo<RefCase>& pi) {
  return std::string(pi.param.learner) + "_c" + std::to_string(pi.param.classes);
}

INSTANTIATE_TEST_SUITE_P(Cases, TreeVsReference,
                         kEveryLearnerAndProblem, case_name);

// More than 256 bins: two-byte bins throughout.
TEST(TreeVsReferenceWideBins, PredictionsMatch) {
  LearnerOptions opt = small_options();
  opt.max_bins = 400;
  const Data all = make_data(0, 600, 2, 25);
  const Data query = make_data(60000, 50, 2, 25);
  const FeatureBins fb = fit_feature_bins(world(), my_shard(all).X, my_shard(all).w, opt.max_bins);
  EXPECT_GT(fb.bins(0), 256);
  for (const char* name : {"tree", "forest", "gbdt"}) {
    const Mat<double> got = fit_predict(name, opt, 2, my_shard(all), query.X);
    const Mat<double> ref = tree_reference::fit_predict(name, opt, 2, 11, all.full(), query.X);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(got, ref, kAbs, kRel, std::string(name) + " predictions, wide bins");
  }
}

TEST(GbdtVsReference, LossHistoryMatches) {
  const LearnerOptions opt = small_options();
  const Data all = make_data(0, 300, 3, 23);
  const Data local = my_shard(all);
  GbdtLearner g(opt);
  LearnerContext ctx{world(), 3, 11};
  g.fit(ctx, local.view());
  std::vector<double> ref;
  tree_reference::fit_predict("gbdt", opt, 3, 11, all.full(), all.X.topRows(1), &ref);
  const Eigen::Map<const RowVec<double>> a(g.loss_history().data(), static_cast<Index>(g.loss_history().size()));
  const Eigen::Map<const RowVec<double>> r(ref.data(), static_cast<Index>(ref.size()));
  MOESIM_EXPECT_CLOSE_ALL_RANKS(a, r, kAbs, kRel, "gbdt loss history");
}

// The memory bounds only regroup all-reduces: one pair per all-reduce and no retained
// parents (every node accumulated) grow the same trees as the defaults.
TEST(TreeGrow, ChunkingAndRetentionDoNotChangeTrees) {
  const Data all = make_data(0, 500, 3, 24);
  const Data local = my_shard(all);
  const FeatureBins fb = fit_feature_bins(world(), local.X, local.w, 32);
  const BinnedMatrix bm = bin_matrix(fb, local.X);
  const std::size_t n = local.y.size();
  std::vector<std::int32_t> lab(n);
  std::vector<double> st(3 * n);
  for (std::size_t i = 0; i < n; ++i) {
    lab[i] = static_cast<std::int32_t>(local.y[i]);
    st[3 * i] = local.y[i] - 1 + 0.1 * local.X(static_cast<Index>(i), 0);  // gradient-like
    st[3 * i + 1] = 0.5 + 0.1 * local.w[i];
    st[3 * i + 2] = local.w[i];
  }
  for (const bool newton : {false, true})
    for (const int m : {6, 3}) {
      auto grow = [&](std::size_t reduce, std::size_t retain) {
        GrowParams prm;
        prm.score = newton ? SplitScore::kNewton : SplitScore::kGini;
        prm.stats = 3;
        prm.max_depth = 5;
        prm.lambda = 1;
        prm.features_per_split = m;
        prm.seed = 9;
        prm.reduce_doubles = reduce;
        prm.retain_doubles = retain;
        std::vector<GrowTree> trees(3);
        for (std::size_t k = 0; k < trees.size(); ++k) {
          trees[k].key = k;
          trees[k].label = lab.data();
          trees[k].weight = local.w.data();
          trees[k].stat = st.data();
          for (std::size_t i = 0; i < n; ++i)
            if ((i + k) % 4 != 0) trees[k].rows.push_back(static_cast<std::uint32_t>(i));
        }
        grow_trees(world(), bm, prm, trees);
        return trees;
      };
      const std::vector<GrowTree> a = grow(GrowParams{}.reduce_doubles, GrowParams{}.retain_doubles);
      const std::vector<GrowTree> b = grow(1, 0);
      long bad = 0;
      // Rows grouped by leaf: each leaf's range holds exactly the rows routed to it.
      for (const GrowTree& t : a) {
        std::size_t covered = 0;
        for (std::size_t q = 0; q < t.nodes.size(); ++q) {
          if (t.nodes[q].feature >= 0) continue;
          covered += t.nodes[q].end - t.nodes[q].begin;
          for (std::uint32_t j = t.nodes[q].begin; j < t.nodes[q].end; ++j) {
            const std::size_t r = t.rows[j];
            std::size_t k = 0;
            while (t.nodes[k].feature >= 0) {
              const int bin = bm.cols8[static_cast<std::size_t>(t.nodes[k].feature) * n + r];
              k = static_cast<std::size_t>(t.nodes[k].left + (bin <= t.nodes[k].bin ? 0 : 1));
            }
            bad += k != q;
          }
        }
        bad += covered != t.rows.size();
      }
      for (std::size_t k = 0; k < a.size(); ++k) {
        bad += a[k].nodes.size() != b[k].nodes.size() || a[k].nodes.size() < 7;
        for (std::size_t q = 0; q < std::min(a[k].nodes.size(), b[k].nodes.size()); ++q)
          bad += a[k].nodes[q].feature != b[k].nodes[q].feature || a[k].nodes[q].bin != b[k].nodes[q].bin;
        if (a[k].totals.size() == b[k].totals.size())
          for (std::size_t q = 0; q < a[k].totals.size(); ++q)
            bad += std::abs(a[k].totals[q] - b[k].totals[q]) > 1e-12 * (1 + std::abs(a[k].totals[q]));
      }
      EXPECT_EQ(world().allreduce_sum(bad), 0) << (newton ? "newton" : "gini") << " m=" << m;
    }
}

// Integer weights: the forest's histograms sum unscaled and travel as int32
// (narrow_integers) and give exactly the trees of scaled int64 sums, and the serial
// reference's predictions.
TEST(TreeGrow, Int32TransportOfIntegerHistogramsIsExact) {
  const Data all = make_data(0, 500, 3, 28, Weights::kSmallInt);
  const Data local = my_shard(all);
  const FeatureBins fb = fit_feature_bins(world(), local.X, local.w, 32);
  const BinnedMatrix bm = bin_matrix(fb, local.X);
  const std::size_t n = local.y.size();
  std::vector<std::int32_t> lab(n);
  for (std::size_t i = 0; i < n; ++i) lab[i] = static_cast<std::int32_t>(local.y[i]);
  for (const int m : {6, 3}) {
    auto grow = [&](bool narrow) {
      GrowParams prm;
      prm.score = SplitScore::kGini;
      prm.stats = 3;
      prm.max_depth = 7;
      prm.features_per_split = m;
      prm.narrow_integers = narrow;
      std::vector<GrowTree> trees(2);
      for (std::size_t k = 0; k < trees.size(); ++k) {
        trees[k].key = k;
        trees[k].label = lab.data();
        trees[k].weight = local.w.data();
        for (std::size_t i = 0; i < n; ++i) trees[k].rows.push_back(static_cast<std::uint32_t>(i));
      }
      grow_trees(world(), bm, prm, trees);
      return trees;
    };
    const std::vector<GrowTree> a = grow(false), b = grow(true);
    long bad = 0;
    for (std::size_t k = 0; k < a.size(); ++k) {
      bad += a[k].nodes.size() != b[k].nodes.size() || a[k].nodes.size() < 15;
      for (std::size_t q = 0; q < std::min(a[k].nodes.size(), b[k].nodes.size()); ++q)
        bad += a[k].nodes[q].feature != b[k].nodes[q].feature || a[k].nodes[q].bin != b[k].nodes[q].bin;
      bad += a[k].totals != b[k].totals;  // bit for bit
    }
    EXPECT_EQ(world().allreduce_sum(bad), 0) << "m=" << m;
  }
  LearnerOptions opt = small_options();
  for (const int classes : {2, 3})
    for (const char* name : {"tree", "forest"}) {
      const Data q = make_data(70000, 50, classes, 28);
      const Data d = make_data(0, 400, classes, 28, Weights::kSmallInt);
      const Mat<double> got = fit_predict(name, opt, classes, my_shard(d), q.X);
      const Mat<double> ref = tree_reference::fit_predict(name, opt, classes, 11, d.full(), q.X);
      MOESIM_EXPECT_CLOSE_ALL_RANKS(got, ref, kAbs, kRel, std::string(name) + " with integer weights");
    }
}

// ------------------------------------------------------------ min_samples_leaf

// min_leaf counts rows, not weight: weights / 128 (exact; sums far below 1 per leaf)
// grow the same trees as the weights themselves, as Gini and variance are scale-free.
TEST(TreeMinLeaf, CountsRowsNotWeight) {
  for (const int classes : {2, 0})
    for (const int min_leaf : {1, 4}) {
      LearnerOptions opt = small_options();
      opt.tree_min_samples_leaf = min_leaf;
      const Data all = make_data(0, 400, classes, 26);
      const Data query = make_data(30000, 60, classes, 26);
      Data tiny = my_shard(all);
      for (double& w : tiny.w) w /= 128;
      for (const char* name : {"tree", "forest"}) {
        const std::string what = std::string(name) + " classes=" + std::to_string(classes) +
                                 " min_leaf=" + std::to_string(min_leaf);
        const Mat<double> a = fit_predict(name, opt, classes, my_shard(all), query.X);
        const Mat<double> b = fit_predict(name, opt, classes, tiny, query.X);
        MOESIM_EXPECT_CLOSE_ALL_RANKS(b, a, kAbs, kRel, what + ": weights / 128 vs x 1");
        std::vector<double> v(a.data(), a.data() + a.rows());
        std::sort(v.begin(), v.end());
        EXPECT_GE(std::unique(v.begin(), v.end()) - v.begin(), 5) << what << ": no splits";
      }
    }
}

// Every leaf holds at least min_leaf rows over all ranks, whatever the weights, and
// the row count statistic is exact.
TEST(TreeMinLeaf, EveryLeafHoldsMinLeafRows) {
  const Data all = make_data(0, 500, 3, 27);
  const Data local = my_shard(all);
  const FeatureBins fb = fit_feature_bins(world(), local.X, local.w, 32);
  const BinnedMatrix bm = bin_matrix(fb, local.X);
  const std::size_t n = local.y.size();
  for (const int m : {6, 3})
    for (const double min_leaf : {7.0, 20.0}) {
      GrowParams prm;
      prm.score = SplitScore::kGini;
      prm.count_rows = true;
      prm.stats = 4;  // 3 classes + rows
      prm.max_depth = 8;
      prm.min_leaf = min_leaf;
      prm.features_per_split = m;
      std::vector<double> st(4 * n, 0.0);
      for (std::size_t i = 0; i < n; ++i) {
        st[4 * i + static_cast<std::size_t>(local.y[i])] = 0.003 * local.w[i];
        st[4 * i + 3] = 1;
      }
      std::vector<GrowTree> trees(1);
      trees[0].stat = st.data();
      for (std::size_t i = 0; i < n; ++i) trees[0].rows.push_back(static_cast<std::uint32_t>(i));
      grow_trees(world(), bm, prm, trees);
      const GrowTree& t = trees[0];
      std::vector<double> held;  // rows of each leaf on this rank, summed below
      std::vector<double> counted;
      for (std::size_t q = 0; q < t.nodes.size(); ++q)
        if (t.nodes[q].feature < 0) {
          held.push_back(t.nodes[q].end - t.nodes[q].begin);
          counted.push_back(t.totals[4 * q + 3]);
        }
      world().allreduce_sum(held.data(), static_cast<int>(held.size()));
      long bad = 0;
      for (std::size_t k = 0; k < held.size(); ++k) bad += held[k] < min_leaf || held[k] != counted[k];
      EXPECT_EQ(bad, 0) << "m=" << m << " min_leaf=" << min_leaf;
      EXPECT_GE(held.size(), 6u) << "too few leaves to mean anything";
    }
}

// ------------------------------------------------------------------------ quality

// Axis-aligned checkerboard on integer grid features, plus noise features.
TEST(TreeQuality, SeparatesCheckerboardPerfectly) {
  auto make = [](std::int64_t first, std::int64_t count) {
    Data d;
    d.X.resize(count, 4);
    for (std::int64_t k = 0; k < count; ++k) {
      Rng rng(7, Stream::kTest, static_cast<std::uint64_t>(first + k));
      const double a = static_cast<double>(rng.below(10)), b = static_cast<double>(rng.below(10));
      d.X.row(k) << rng.uniform(), a, rng.normal(), b;
      d.y.push_back(((a >= 3) != (b >= 6)) ? 1 : 0);
      d.w.push_back(1);
      d.id.push_back(first + k);
    }
    return d;
  };
  const Shard sh = shard_of(1500, world().rank(), world().size());
  const Data local = make(sh.first, sh.count);
  const Data query = make(50000, 300);
  LearnerOptions opt;
  opt.tree_max_depth = 4;
  opt.tree_min_samples_leaf = 1;
  long wrong = 0;
  for (const Data* d : {&local, &query}) {
    const Mat<double> prob = fit_predict("tree", opt, 2, local, d->X);
    for (Index i = 0; i < prob.rows(); ++i) wrong += (prob(i, 1) > 0.5) != (d->y[static_cast<std::size_t>(i)] == 1);
  }
  EXPECT_EQ(world().allreduce_sum(wrong), 0);
}

TEST(GbdtQuality, TrainingLossDecreasesMonotonically) {
  for (int classes : {0, 2, 3}) {
    LearnerOptions opt;
    opt.gbdt_trees = 25;
    opt.gbdt_max_depth = 3;
    const Data all = make_data(0, 600, classes, 31, Weights::kReal);
    GbdtLearner g(opt);
    LearnerContext ctx{world(), classes, 1};
    g.fit(ctx, my_shard(all).view());
    const std::vector<double>& h = g.loss_history();
    ASSERT_EQ(h.size(), 26u);
    for (std::size_t r = 1; r < h.size(); ++r)
      EXPECT_LE(h[r], h[r - 1] * (1 + 1e-12)) << "classes " << classes << " round " << r;
    EXPECT_LT(h.back(), 0.6 * h.front()) << "classes " << classes;
  }
}

TEST(ForestQuality, BeatsSingleTreeOnNoisyData) {
  auto make = [](std::int64_t first, std::int64_t count, double noise) {
    Data d;
    d.X.resize(count, 5);
    for (std::int64_t k = 0; k < count; ++k) {
      Rng rng(41, Stream::kTest, static_cast<std::uint64_t>(first + k));
      for (int j = 0; j < 5; ++j) d.X(k, j) = rng.uniform(-1, 1);
      d.y.push_back(std::sin(3 * d.X(k, 0)) + d.X(k, 1) * d.X(k, 1) + 0.5 * d.X(k, 2) + noise * rng.normal());
      d.w.push_back(1);
      d.id.push_back(first + k);
    }
    return d;
  };
  const Shard sh = shard_of(1500, world().rank(), world().size());
  const Data local = make(sh.first, sh.count, 0.7);
  const Data query = make(90000, 400, 0.0);
  LearnerOptions opt;
  opt.tree_max_depth = 10;
  opt.forest_max_depth = 10;
  opt.forest_trees = 30;
  auto mse = [&](const std::string& name) {
    const Mat<double> pred = fit_predict(name, opt, 0, local, query.X);
    double s = 0;
    for (Index i = 0; i < pred.rows(); ++i) s += std::pow(pred(i, 0) - query.y[static_cast<std::size_t>(i)], 2);
    return s / static_cast<double>(pred.rows());
  };
  const double tree = mse("tree"), forest = mse("forest");
  EXPECT_LT(forest, 0.6 * tree) << "forest " << forest << " vs tree " << tree;
}

// ------------------------------------------------------------------------ weights

// Weight 2 on a row equals the row twice (tree and gbdt; the forest's bootstrap draws
// differ between one row of weight 2 and two rows of weight 1). With min_leaf = 1 only:
// min_leaf counts rows, so above 1 a row of weight 2 is one row (TreeMinLeaf below).
TEST(TreeWeights, DoubleWeightEqualsDuplicateRow) {
  LearnerOptions opt = small_options();
  opt.tree_min_samples_leaf = 1;
  const Data base = make_data(0, 300, 0, 51, Weights::kSmallInt);
  Data dup;
  dup.X.resize(static_cast<Index>(std::count(base.w.begin(), base.w.end(), 2.0)) + base.X.rows(), base.X.cols());
  Index r = 0;
  for (Index i = 0; i < base.X.rows(); ++i)
    for (int c = 0; c < static_cast<int>(base.w[static_cast<std::size_t>(i)]); ++c) {
      dup.X.row(r++) = base.X.row(i);
      dup.y.push_back(base.y[static_cast<std::size_t>(i)]);
      dup.w.push_back(1);
      dup.id.push_back(2 * i + c);
    }
  const Data query = make_data(30000, 50, 0, 51);
  for (int classes : {0, 2, 3}) {
    Data a = base, b = dup;
    for (Data* d : {&a, &b})
      for (double& y : d->y)
        y = classes == 0 ? y : classes == 2 ? (y > 0.3 ? 1 : 0) : std::clamp(std::floor(y + 1), 0.0, 2.0);
    for (const char* name : {"tree", "gbdt"}) {
      const Mat<double> pa = fit_predict(name, opt, classes, my_shard(a), query.X);
      const Mat<double> pb = fit_predict(name, opt, classes, my_shard(b), query.X);
      MOESIM_EXPECT_CLOSE_ALL_RANKS(pa, pb, kAbs, kRel, std::string(name) + " weighted vs duplicated, classes " + std::to_string(classes));
    }
  }
}

// --------------------------------------------------------------- probabilities

TEST(TreeProbabilities, ValidDistributionsWithAnAbsentClass) {
  const Data all = make_data(0, 300, 3, 61);  // labels 0..2 of 4 classes
  const Data query = make_data(40000, 80, 3, 61);
  long bad = 0;
  for (const char* name : {"tree", "forest", "gbdt"}) {
    const Mat<double> p = fit_predict(name, small_options(), 4, my_shard(all), query.X);
    bad += p.cols() != 4;
    for (Index i = 0; i < p.rows(); ++i) {
      bad += std::abs(p.row(i).sum() - 1.0) > 1e-12;
      bad += (p.row(i).array() < 0).any() || (p.row(i).array() > 1).any();
      bad += p(i, 3) > 1e-6;
    }
  }
  EXPECT_EQ(world().allreduce_sum(bad), 0);
}

TEST(TreeLearners, NamesCloneAndEmptyQueries) {
  const Data all = make_data(0, 100, 2, 71);
  const Data local = my_shard(all);
  for (const char* name : {"tree", "forest", "gbdt"}) {
    std::unique_ptr<Learner> l = make_learner(name, small_options());
    EXPECT_EQ(l->name(), name);
    std::unique_ptr<Learner> c = l->clone();
    EXPECT_EQ(c->name(), name);
    LearnerContext ctx{world(), 2, 3};
    c->fit(ctx, local.view());
    const Mat<double> none = c->predict(ctx, Mat<double>(0, 6));
    EXPECT_EQ(none.rows(), 0);
    EXPECT_EQ(none.cols(), 2);
  }
}

}  // namespace
}  // namespace moesim

namespace moesim {
namespace {

// ------------------------------------------------- rank-count invariance, bit for bit

// Every rank alone: a communicator of one rank.
const Communicator& solo() {
  static const Communicator c(world(), world().rank(), 0);
  return c;
}

struct Fitted {
  TreeEnsemble model;
  Mat<double> pred;
  Mat<double> pred_shifted;  // the queries but the first: each row at another address
  std::vector<double> loss;
};

Fitted fit_on(const Communicator& comm, const std::string& name, const LearnerOptions& opt,
              int classes, const Data& rows, const Mat<double>& Xq) {
  LearnerContext ctx{comm, classes, 13};
  std::unique_ptr<Learner> l = make_learner(name, opt);
  l->fit(ctx, rows.view());
  Fitted f;
  f.pred = l->predict(ctx, Xq);
  f.pred_shifted = l->predict(ctx, Xq.bottomRows(Xq.rows() - 1));
  if (const auto* t = dynamic_cast<const TreeLearner*>(l.get())) f.model = t->model();
  if (const auto* t = dynamic_cast<const ForestLearner*>(l.get())) f.model = t->model();
  if (const auto* g = dynamic_cast<const GbdtLearner*>(l.get())) {
    f.model = g->model();
    f.loss = g->loss_history();
  }
  return f;
}

// Differences between two fits, every value compared with == (bit for bit).
long count_differences(const Fitted& a, const Fitted& b) {
  long bad = a.model.nodes.size() != b.model.nodes.size() || a.model.values.size() != b.model.values.size() ||
             a.model.roots != b.model.roots || a.loss.size() != b.loss.size() ||
             a.pred.rows() != b.pred.rows() || a.pred.cols() != b.pred.cols();
  if (bad) return bad;
  for (std::size_t k = 0; k < a.model.nodes.size(); ++k) {
    const TreeEnsemble::Node &x = a.model.nodes[k], &y = b.model.nodes[k];
    bad += x.feature != y.feature || x.next != y.next || x.threshold != y.threshold;
  }
  for (std::size_t k = 0; k < a.model.values.size(); ++k) bad += a.model.values[k] != b.model.values[k];
  for (std::size_t k = 0; k < a.loss.size(); ++k) bad += a.loss[k] != b.loss[k];
  for (Index i = 0; i < a.pred.size(); ++i) bad += a.pred.data()[i] != b.pred.data()[i];
  // A row's prediction does not depend on where it sits in the query matrix.
  for (const Fitted* f : {&a, &b})
    for (Index i = 0; i < f->pred_shifted.size(); ++i)
      bad += f->pred_shifted.data()[i] != f->pred.data()[f->pred.cols() + i];
  return bad;
}

class TreeRankInvariance : public ::testing::TestWithParam<RefCase> {};

// A fit on P ranks equals, bit for bit, the fit of the same rows on one rank: splits,
// thresholds, leaf values, the GBDT loss history and the predictions (real weights, so
// every sum is inexact in double).
TEST_P(TreeRankInvariance, BitIdenticalToOneRank) {
  const RefCase c = GetParam();
  const Data all = make_data(0, 500, c.classes, 81);
  const Data query = make_data(80000, 80, c.classes, 81);
  for (const int min_leaf : {1, 3}) {
    LearnerOptions opt = small_options();
    opt.tree_min_samples_leaf = min_leaf;
    opt.forest_max_features = min_leaf == 1 ? 0.5 : 0.0;
    opt.max_bins = min_leaf == 1 ? 300 : 32;  // two-byte bins, then one-byte
    const Fitted p = fit_on(world(), c.learner, opt, c.classes, my_shard(all), query.X);
    const Fitted one = fit_on(solo(), c.learner, opt, c.classes, all, query.X);
    EXPECT_GE(p.model.nodes.size(), 7u) << "too few splits to mean anything";
    EXPECT_EQ(world().allreduce_sum(count_differences(p, one)), 0)
        << c.learner << " classes=" << c.classes << " min_leaf=" << min_leaf << " on "
        << world().size() << " ranks vs 1";
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, TreeRankInvariance,
                         kEveryLearnerAndProblem, case_name);

// A near tie: feature 1 copies feature 0 except that one row of weight eps crosses the
// best cut, so splitting on feature 1 gains a score proportional to eps. Bisecting eps
// (on one rank) to where feature 1 starts to beat feature 0 by the tie rule's 1e-12
// puts the two candidates as close as doubles can; summation order would decide them.
TEST(TreeRankInvariance, NearTiedSplitDoesNotFlip) {
  const std::int64_t n = 400;
  auto make = [&](double eps) {
    Data d;
    d.X.resize(n, 3);
    for (std::int64_t i = 0; i < n; ++i) {
      Rng rng(91, Stream::kTest, static_cast<std::uint64_t>(i));
      const double x = rng.uniform();
      d.X.row(i) << x, x, rng.uniform();
      d.y.push_back((x > 0.5 ? 1.0 : 0.0) + 0.3 * rng.normal());
      d.w.push_back(0.5 + rng.uniform());
      d.id.push_back(i);
    }
    // The moved row: left of the cut on feature 0, right on feature 1, target right-like.
    d.X.row(0) << 0.1, 0.95, 0.5;
    d.y[0] = 3.0;
    d.w[0] = eps;
    return d;
  };
  LearnerOptions opt;
  opt.tree_max_depth = 1;
  opt.tree_min_samples_leaf = 1;
  opt.max_bins = 64;
  const Mat<double> q = make(1).X.topRows(20);
  auto feature_on = [&](const Communicator& comm, const Data& d) {
    return fit_on(comm, "tree", opt, 0, d, q).model.nodes[0].feature;
  };
  double lo = 1e-14, hi = 1e-4;  // feature 0 at lo, feature 1 at hi
  ASSERT_EQ(feature_on(solo(), make(lo)), 0);
  ASSERT_EQ(feature_on(solo(), make(hi)), 1);
  for (int it = 0; it < 200 && std::nextafter(lo, hi) < hi; ++it) {
    const double mid = std::sqrt(lo * hi) > lo && std::sqrt(lo * hi) < hi ? std::sqrt(lo * hi) : lo + (hi - lo) / 2;
    (feature_on(solo(), make(mid)) == 0 ? lo : hi) = mid;
  }
  long bad = 0;
  for (double eps : {lo, hi, std::nextafter(lo, 0.0), std::nextafter(hi, 1.0)}) {
    const Data all = make(eps);
    const Fitted p = fit_on(world(), "tree", opt, 0, my_shard(all), q);
    const Fitted one = fit_on(solo(), "tree", opt, 0, all, q);
    bad += count_differences(p, one);
    for (const char* name : {"gbdt", "forest"}) {
      LearnerOptions o = small_options();
      o.max_bins = 64;
      bad += count_differences(fit_on(world(), name, o, 0, my_shard(all), q), fit_on(solo(), name, o, 0, all, q));
    }
  }
  EXPECT_EQ(world().allreduce_sum(bad), 0) << "near tie at eps " << lo;
}

}  // namespace
}  // namespace moesim
