// KNN and Gaussian naive Bayes fitted on P rank shards against their serial references
// on the whole data set, NB against a hand-computed example, sample weights against
// duplicated rows, and sanity checks of what each learner should be able to learn.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/shard.hpp"
#include "learners/knn.hpp"
#include "learners/knn_reference.hpp"
#include "learners/nb.hpp"
#include "learners/nb_reference.hpp"
#include "support/rows.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

// A data set defined row by row: row i is a pure function of (seed, i), so every rank
// generates exactly its shard and the reference the whole set.
struct DataSpec {
  std::uint64_t seed = 1;
  Index p = 3;
  int classes = 0;              // 0: regression
  int label_classes = 0;        // labels drawn from [0, label_classes); 0: all classes
  double class_shift = 1.0;     // feature offset per class index
  double offset = 0.0;          // added to every feature (tests centring)
  bool duplicates = false;      // row i with i % 5 == 4 repeats row i - 1's features
  bool random_weights = false;  // weights in [0.5, 2), and 0 for i % 7 == 3
  // > 0: rows sit this close to one of 4 fixed centres, so distances are tiny next to
  // norms and the GEMM's rounding reorders neighbours unless the short list allows for it.
  double cluster_spread = 0.0;
};

using test::Rows;

int label_of(const DataSpec& s, std::int64_t i) {
  const int L = s.label_classes > 0 ? s.label_classes : s.classes;
  Rng rng(s.seed, Stream::kTest, static_cast<std::uint64_t>(i), 1);
  return static_cast<int>(rng.below(static_cast<std::uint64_t>(L)));
}

RowVec<double> features_of(const DataSpec& s, std::int64_t i) {
  if (s.duplicates && i % 5 == 4) --i;
  Rng rng(s.seed, Stream::kTest, static_cast<std::uint64_t>(i), 0);
  const double shift = s.classes >= 2 ? s.class_shift * label_of(s, i) : 0.0;
  RowVec<double> x(s.p);
  if (s.cluster_spread > 0) {
    Rng centre(99, Stream::kTest, rng.below(4), 3);
    for (Index j = 0; j < s.p; ++j) x(j) = centre.normal() + s.cluster_spread * rng.normal();
    return x;
  }
  // Unequal scales, so that standardisation changes the neighbours.
  for (Index j = 0; j < s.p; ++j) x(j) = s.offset + (1.0 + static_cast<double>(j)) * rng.normal() + shift;
  return x;
}

Rows make_rows(const DataSpec& s, std::int64_t first, std::int64_t count) {
  Rows r;
  r.X.resize(count, s.p);
  for (std::int64_t k = 0; k < count; ++k) {
    const std::int64_t i = first + k;
    r.X.row(k) = features_of(s, i);
    Rng rng(s.seed, Stream::kTest, static_cast<std::uint64_t>(i), 2);
    const double noise = 0.1 * rng.normal();
    r.y.push_back(s.classes >= 2 ? label_of(s, i) : std::sin(r.X(k, 0)) + 0.3 * r.X(k, s.p - 1) + noise);
    r.w.push_back(!s.random_weights ? 1.0 : (i % 7 == 3 ? 0.0 : rng.uniform(0.5, 2.0)));
    r.id.push_back(i);
  }
  return r;
}

Rows shard_rows(const DataSpec& s, std::int64_t n) {
  const Shard sh = shard_of(n, world().rank(), world().size());
  return make_rows(s, sh.first, sh.count);
}

enum class Queries { kFresh, kTrainingPoints };

// All Q query rows; kTrainingPoints repeats training rows (zero distances, and two of
// them where a row has a duplicate).
Mat<double> make_queries(const DataSpec& s, Queries kind, std::int64_t N, std::int64_t Q) {
  DataSpec fresh = s;
  fresh.seed = s.seed + 1000;
  Mat<double> q(Q, s.p);
  for (std::int64_t i = 0; i < Q; ++i)
    q.row(i) = kind == Queries::kFresh ? features_of(fresh, i) : features_of(s, (7 * i + 3) % N);
  return q;
}

Mat<double> local_rows(const Mat<double>& all) {
  const Shard sh = shard_of(all.rows(), world().rank(), world().size());
  return all.middleRows(sh.first, sh.count);
}

// ------------------------------------------------------------------------------ KNN

struct KnnCase {
  const char* name;
  std::int64_t N, Q;
  Index p;
  int classes, k;
  bool weighted;
  Queries queries;
  bool duplicates, random_weights;
  Index query_block = 512, train_chunk = 4096;
  double cluster_spread = 0.0;
  bool queries_on_last_rank = false;  // as a held-out fold on one rank
};

std::ostream& operator<<(std::ostream& os, const KnnCase& c) { return os << c.name; }

class KnnVsReference : public ::testing::TestWithParam<KnnCase> {};

TEST_P(KnnVsReference, MatchesSerialReference) {
  const KnnCase c = GetParam();
  const Communicator& comm = world();
  DataSpec s;
  s.seed = 11;
  s.p = c.p;
  s.classes = c.classes;
  s.duplicates = c.duplicates;
  s.random_weights = c.random_weights;
  s.cluster_spread = c.cluster_spread;
  const Rows all = make_rows(s, 0, c.N), mine = shard_rows(s, c.N);
  const Mat<double> Q = make_queries(s, c.queries, c.N, c.Q);
  const Mat<double> ref = reference_knn_predict(all.X, all.y, all.w, all.id, c.classes, c.k, c.weighted, Q);
  const bool last = comm.rank() == comm.size() - 1;
  const Mat<double> mine_q = !c.queries_on_last_rank ? local_rows(Q) : last ? Q : Mat<double>(0, 0);
  const Mat<double> mine_ref = !c.queries_on_last_rank ? local_rows(ref) : last ? ref : Mat<double>(0, ref.cols());
  // Every screen short-lists for the same exact distances: the same bits from each.
  std::vector<KnnLearner::Screen> screens = {KnnLearner::Screen::kFloatGemm, KnnLearner::Screen::kDoubleGemm};
  if (screen_kernel_available(ScreenPrecision::kFloat)) screens.push_back(KnnLearner::Screen::kFused);
  if (screen_kernel_available(ScreenPrecision::kBf16)) screens.push_back(KnnLearner::Screen::kFusedBf16);
  Mat<double> first;
  for (KnnLearner::Screen screen : screens) {
    const std::string what = std::string(c.name) + ", screen " + std::to_string(static_cast<int>(screen));
    KnnLearner knn(c.k, c.weighted, c.query_block, c.train_chunk, screen);
    const LearnerContext ctx{comm, c.classes, 1};
    knn.fit(ctx, mine.view());
    EXPECT_EQ(knn.effective_k(), std::min<std::int64_t>(c.k, c.N - (c.random_weights ? (c.N + 3) / 7 : 0)));
    const Mat<double> got = knn.predict(ctx, mine_q);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(got, mine_ref, 1e-9, 1e-9, what);
    if (first.size() == 0) first = got;
    MOESIM_EXPECT_CLOSE_ALL_RANKS(got, first, 0.0, 0.0, what + " against the float GEMM");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, KnnVsReference,
    ::testing::Values(
        KnnCase{"regression_uniform", 60, 25, 3, 0, 5, false, Queries::kFresh, true, true, 7, 11},
        KnnCase{"regression_distance_at_training_points", 60, 25, 3, 0, 5, true,
                Queries::kTrainingPoints, true, true, 7, 11},
        KnnCase{"regression_uniform_at_training_points", 60, 25, 3, 0, 4, false,
                Queries::kTrainingPoints, true, false},
        KnnCase{"classes3_uniform", 80, 30, 4, 3, 7, false, Queries::kFresh, true, true},
        KnnCase{"classes3_distance_at_training_points", 80, 30, 4, 3, 7, true,
                Queries::kTrainingPoints, true, true, 5, 9},
        KnnCase{"k_exceeds_shard", 10, 9, 2, 0, 6, true, Queries::kFresh, false, false, 4, 2},
        KnnCase{"three_rows_k_clipped", 3, 5, 2, 2, 5, true, Queries::kTrainingPoints, false, false},
        KnnCase{"three_rows_two_queries", 3, 2, 2, 0, 3, false, Queries::kFresh, false, false},
        KnnCase{"blocks_and_chunks", 3000, 150, 8, 0, 10, true, Queries::kFresh, true, true, 64, 256},
        KnnCase{"blocks_and_chunks_at_training_points", 3000, 150, 8, 4, 9, false,
                Queries::kTrainingPoints, true, true, 32, 200},
        // Uniform votes: with d ~ 1e-6 distance weights would carry the standardiser's
        // rounding (relative 1e-9) into the output.
        KnnCase{"tight_clusters", 400, 60, 40, 0, 5, false, Queries::kFresh, false, false, 16, 64, 1e-8},
        KnnCase{"queries_on_one_rank", 300, 41, 3, 0, 6, true, Queries::kFresh, true, true, 8, 32, 0, true},
        KnnCase{"classes3_queries_on_one_rank", 80, 7, 4, 3, 7, false, Queries::kTrainingPoints, true,
                true, 512, 4096, 0, true}),
    [](const ::testing::TestParamInfo<KnnCase>& param) { return std::string(param.param.name); });

// An integer weight is the row repeated that many times, and weight 0 the row left out.
// k covers every row, so the neighbour sets of the two data sets are the same.
TEST(KnnSampleWeights, IntegerWeightIsDuplicatedRow) {
  const Communicator& comm = world();
  for (int classes : {0, 3})
    for (bool weighted : {false, true}) {
      DataSpec s;
      s.seed = 21;
      s.classes = classes;
      const std::int64_t N = 13;
      Rows all = make_rows(s, 0, N);
      Rows dup;
      std::vector<RowVec<double>> xs;
      for (std::int64_t i = 0; i < N; ++i) {
        all.w[static_cast<std::size_t>(i)] = static_cast<double>(i % 4);
        for (std::int64_t r = 0; r < i % 4; ++r) {
          xs.push_back(all.X.row(i));
          dup.y.push_back(all.y[static_cast<std::size_t>(i)]);
        }
      }
      const auto M = static_cast<std::int64_t>(xs.size());
      const Shard sw = shard_of(N, comm.rank(), comm.size()), sd = shard_of(M, comm.rank(), comm.size());
      Rows wmine{all.X.middleRows(sw.first, sw.count),
                 {all.y.begin() + sw.first, all.y.begin() + sw.first + sw.count},
                 {all.w.begin() + sw.first, all.w.begin() + sw.first + sw.count},
                 {all.id.begin() + sw.first, all.id.begin() + sw.first + sw.count}};
      Rows dmine;
      dmine.X.resize(sd.count, s.p);
      for (std::int64_t r = 0; r < sd.count; ++r) {
        dmine.X.row(r) = xs[static_cast<std::size_t>(sd.first + r)];
        dmine.y.push_back(dup.y[static_cast<std::size_t>(sd.first + r)]);
        dmine.w.push_back(1.0);
        dmine.id.push_back(sd.first + r);
      }
      const LearnerContext ctx{comm, classes, 1};
      KnnLearner a(100, weighted), b(100, weighted);
      a.fit(ctx, wmine.view());
      b.fit(ctx, dmine.view());
      const Mat<double> Q = local_rows(make_queries(s, Queries::kFresh, N, 9));
      const Mat<double> Qt = local_rows(make_queries(s, Queries::kTrainingPoints, N, 9));
      const std::string what = "classes " + std::to_string(classes) + (weighted ? " distance" : " uniform");
      MOESIM_EXPECT_CLOSE_ALL_RANKS(a.predict(ctx, Q), b.predict(ctx, Q), 1e-12, 1e-9, what);
      MOESIM_EXPECT_CLOSE_ALL_RANKS(a.predict(ctx, Qt), b.predict(ctx, Qt), 1e-12, 1e-9,
                                    what + " at training points");
    }
}

// A smooth function is recovered from dense samples.
TEST(KnnQuality, RecoversSmoothFunction) {
  const Communicator& comm = world();
  auto f = [](double a, double b) { return std::sin(2 * a) + 0.5 * b * b; };
  auto sample = [&](std::int64_t first, std::int64_t count, std::uint64_t seed, double half) {
    Rows r;
    r.X.resize(count, 2);
    for (std::int64_t k = 0; k < count; ++k) {
      Rng rng(seed, Stream::kTest, static_cast<std::uint64_t>(first + k));
      r.X(k, 0) = rng.uniform(-half, half);
      r.X(k, 1) = rng.uniform(-half, half);
      r.y.push_back(f(r.X(k, 0), r.X(k, 1)));
      r.w.push_back(1.0);
      r.id.push_back(first + k);
    }
    return r;
  };
  const std::int64_t N = 4000, Q = 400;
  const Shard st = shard_of(N, comm.rank(), comm.size()), sq = shard_of(Q, comm.rank(), comm.size());
  const Rows train = sample(st.first, st.count, 31, 2.0), query = sample(sq.first, sq.count, 32, 1.5);
  KnnLearner knn(10, true);
  const LearnerContext ctx{comm, 0, 1};
  knn.fit(ctx, train.view());
  const Mat<double> pred = knn.predict(ctx, query.X);
  double sq_err = 0;
  for (Index i = 0; i < pred.rows(); ++i) sq_err += std::pow(pred(i, 0) - query.y[static_cast<std::size_t>(i)], 2);
  const double rmse = std::sqrt(comm.allreduce_sum(sq_err) / static_cast<double>(Q));
  EXPECT_LT(rmse, 0.06) << "rmse " << rmse;
}

// Out-of-fold predictions: KNN's joint pass (one screen of each pair of rows in different
// folds, for both rows) against the default, K fits and predictions, bit for bit, and
// against the serial reference fitted fold by fold.
struct KnnFoldCase {
  const char* name;
  std::int64_t N;
  Index p;
  int classes, k, K;
  bool weighted, duplicates, random_weights;
  enum class Folds { kCycle, kEmptyFold, kBlocks, kSkewedScale } folds = Folds::kCycle;
  Index query_block = 256, train_chunk = 1024;
};

std::ostream& operator<<(std::ostream& os, const KnnFoldCase& c) { return os << c.name; }

class KnnOutOfFold : public ::testing::TestWithParam<KnnFoldCase> {};

// The case's folds of rows `r` (by global row), with fold 0's feature 0 spread out for
// kSkewedScale: fold 0's rows alone then carry its scale, so its model's scale of it is
// far from the others', beyond what one common screen bounds (the joint pass falls back).
std::vector<int> shape_folds(const KnnFoldCase& c, Rows& r) {
  std::vector<int> fold(r.id.size());
  for (std::size_t i = 0; i < fold.size(); ++i) {
    const std::int64_t g = r.id[i];
    switch (c.folds) {
      case KnnFoldCase::Folds::kCycle: fold[i] = static_cast<int>((7 * g + 3) % c.K); break;
      case KnnFoldCase::Folds::kEmptyFold: fold[i] = static_cast<int>(g % (c.K - 1)); break;  // fold K-1 empty
      case KnnFoldCase::Folds::kBlocks: fold[i] = static_cast<int>(g * c.K / c.N); break;    // a fold per rank range
      case KnnFoldCase::Folds::kSkewedScale: fold[i] = static_cast<int>(g % c.K); break;
    }
    if (c.folds == KnnFoldCase::Folds::kSkewedScale && fold[i] == 0) r.X(static_cast<Index>(i), 0) *= 1000;
  }
  return fold;
}

TEST_P(KnnOutOfFold, JointPassEqualsFoldByFoldAndReference) {
  const KnnFoldCase c = GetParam();
  if (!screen_kernel_available(ScreenPrecision::kFloat)) GTEST_SKIP() << "no AVX2 and FMA on this CPU";
  const Communicator& comm = world();
  DataSpec s;
  s.seed = 41;
  s.p = c.p;
  s.classes = c.classes;
  s.duplicates = c.duplicates;
  s.random_weights = c.random_weights;
  Rows mine = shard_rows(s, c.N), all = make_rows(s, 0, c.N);
  const std::vector<int> fold = shape_folds(c, mine), all_fold = shape_folds(c, all);
  // The serial reference of each fold's model on this rank's rows of that fold.
  Mat<double> ref = Mat<double>::Zero(static_cast<Index>(mine.id.size()), c.classes >= 2 ? c.classes : 1);
  for (int k = 0; k < c.K; ++k) {
    std::vector<char> train(all_fold.size()), held(fold.size());
    for (std::size_t i = 0; i < train.size(); ++i) train[i] = all_fold[i] != k;
    for (std::size_t i = 0; i < held.size(); ++i) held[i] = fold[i] == k;
    const Mat<double> Q = kept_rows(mine.X, held);
    if (Q.rows() == 0) continue;
    const Mat<double> r = reference_knn_predict(kept_rows(all.X, train), kept_values(all.y, train),
                                                kept_values(all.w, train), kept_values(all.id, train), c.classes,
                                                c.k, c.weighted, Q);
    for (Index i = 0, j = 0; i < ref.rows(); ++i)
      if (held[static_cast<std::size_t>(i)]) ref.row(i) = r.row(j++);
  }
  const LearnerContext ctx{comm, c.classes, 1};
  for (const KnnLearner::Screen screen : {KnnLearner::Screen::kFused, KnnLearner::Screen::kFusedBf16}) {
    if (screen == KnnLearner::Screen::kFusedBf16 && !screen_kernel_available(ScreenPrecision::kBf16)) continue;
    const std::string what = std::string(c.name) + ", screen " + std::to_string(static_cast<int>(screen));
    const KnnLearner knn(c.k, c.weighted, c.query_block, c.train_chunk, screen);
    const OutOfFold joint = knn.out_of_fold(ctx, mine.view(), fold, c.K, {});
    const OutOfFold by_fold = knn.Learner::out_of_fold(ctx, mine.view(), fold, c.K, {});
    MOESIM_EXPECT_CLOSE_ALL_RANKS(joint.pred, by_fold.pred, 0.0, 0.0, what);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(joint.pred, ref, 1e-9, 1e-9, what + " against the reference");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, KnnOutOfFold,
    ::testing::Values(
        KnnFoldCase{"regression", 700, 3, 0, 5, 5, false, true, true},
        KnnFoldCase{"regression_distance", 700, 3, 0, 6, 3, true, true, true},
        KnnFoldCase{"classes3", 900, 6, 3, 7, 5, false, true, true},
        KnnFoldCase{"classes3_distance_two_folds", 500, 4, 3, 4, 2, true, true, false},
        KnnFoldCase{"k_one", 300, 2, 2, 1, 4, false, false, false},
        KnnFoldCase{"k_exceeds_fold", 23, 2, 0, 30, 3, true, false, true},
        KnnFoldCase{"small_blocks_and_chunks", 1200, 9, 2, 5, 5, false, true, true,
                    KnnFoldCase::Folds::kCycle, 7, 9},
        KnnFoldCase{"empty_fold", 400, 3, 0, 5, 4, false, true, true, KnnFoldCase::Folds::kEmptyFold},
        KnnFoldCase{"folds_in_row_ranges", 800, 5, 2, 5, 5, true, true, true, KnnFoldCase::Folds::kBlocks},
        KnnFoldCase{"skewed_fold_scale", 600, 4, 0, 5, 4, false, false, true,
                    KnnFoldCase::Folds::kSkewedScale}),
    [](const ::testing::TestParamInfo<KnnFoldCase>& param) { return std::string(param.param.name); });

TEST(KnnRegistry, FactoryAndClone) {
  LearnerOptions opt;
  opt.knn_k = 3;
  const std::unique_ptr<Learner> l = make_learner("knn", opt);
  EXPECT_EQ(l->name(), "knn");
  EXPECT_EQ(l->clone()->name(), "knn");
  opt.knn_k = 0;
  EXPECT_THROW(make_learner("knn", opt), ConfigError);
}

// ----------------------------------------------------------------------- naive Bayes

// One feature; class 0 at x = -1, 1 (weight 1), class 1 at x = 3, 5 (weight 3).
// Weighted mean 3 and variance 32 / 8 = 4, so var_smoothing 0.25 adds 1 to each class
// variance (1 + 1 = 2); priors 1/4 and 3/4, so
// log P(1|x) / P(0|x) = log 3 - ((x - 4)^2 - x^2) / 4 = log 3 - 4 + 2x.
TEST(NaiveBayesHandExample, ProbabilitiesAndStatistics) {
  const Communicator& comm = world();
  const std::vector<double> xs{-1, 1, 3, 5}, ys{0, 0, 1, 1}, ws{1, 1, 3, 3};
  const Shard sh = shard_of(4, comm.rank(), comm.size());
  Rows mine;
  mine.X.resize(sh.count, 1);
  for (std::int64_t k = 0; k < sh.count; ++k) {
    const auto i = static_cast<std::size_t>(sh.first + k);
    mine.X(k, 0) = xs[i];
    mine.y.push_back(ys[i]);
    mine.w.push_back(ws[i]);
    mine.id.push_back(sh.first + k);
  }
  NaiveBayesLearner nb(0.25);
  const LearnerContext ctx{comm, 2, 1};
  nb.fit(ctx, mine.view());
  EXPECT_NEAR(nb.epsilon(), 1.0, 1e-15);
  Mat<double> stats(3, 2), stats_ref(3, 2);
  stats << nb.means().transpose(), nb.variances().transpose(), nb.log_prior().array().exp().matrix();
  stats_ref << 0, 4, 2, 2, 0.25, 0.75;
  MOESIM_EXPECT_CLOSE_ALL_RANKS(stats, stats_ref, 1e-14, 1e-14, "means, variances, priors");

  Mat<double> q(4, 1), ref(4, 2);
  for (Index i = 0; i < 4; ++i) {
    const double x = static_cast<double>(i), p1 = 1.0 / (1.0 + std::exp(-(std::log(3.0) - 4 + 2 * x)));
    q(i, 0) = x;
    ref.row(i) << 1 - p1, p1;
  }
  MOESIM_EXPECT_CLOSE_ALL_RANKS(nb.predict(ctx, local_rows(q)), local_rows(ref), 1e-14, 1e-12,
                                "hand-computed probabilities");
}

struct NbCase {
  const char* name;
  std::int64_t N, Q;
  Index p;
  int classes, label_classes;
  double offset, var_smoothing;
  bool random_weights;
};

std::ostream& operator<<(std::ostream& os, const NbCase& c) { return os << c.name; }

class NaiveBayesVsReference : public ::testing::TestWithParam<NbCase> {};

TEST_P(NaiveBayesVsReference, MatchesSerialReference) {
  const NbCase c = GetParam();
  const Communicator& comm = world();
  DataSpec s;
  s.seed = 41;
  s.p = c.p;
  s.classes = c.classes;
  s.label_classes = c.label_classes;
  s.offset = c.offset;
  s.random_weights = c.random_weights;
  const Rows all = make_rows(s, 0, c.N), mine = shard_rows(s, c.N);
  NaiveBayesLearner nb(c.var_smoothing);
  const LearnerContext ctx{comm, c.classes, 1};
  nb.fit(ctx, mine.view());
  for (Queries kind : {Queries::kFresh, Queries::kTrainingPoints}) {
    const Mat<double> Q = make_queries(s, kind, c.N, c.Q);
    const Mat<double> ref = reference_nb_predict(all.X, all.y, all.w, c.classes, c.var_smoothing, Q);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(nb.predict(ctx, local_rows(Q)), local_rows(ref), 1e-9, 1e-9,
                                  std::string(c.name) + (kind == Queries::kFresh ? "" : " at training points"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, NaiveBayesVsReference,
    ::testing::Values(NbCase{"two_classes", 50, 20, 3, 2, 0, 0.0, 1e-9, false},
                      NbCase{"three_classes_weighted", 90, 30, 5, 3, 0, 0.0, 1e-9, true},
                      NbCase{"large_offset_needs_centring", 90, 30, 4, 3, 0, 1e6, 1e-9, true},
                      NbCase{"strong_smoothing", 40, 25, 2, 3, 0, 0.0, 0.5, true},
                      NbCase{"class_without_rows", 30, 15, 3, 4, 3, 0.0, 1e-9, false},
                      NbCase{"three_rows", 3, 6, 2, 2, 0, 0.0, 1e-2, false}),
    [](const ::testing::TestParamInfo<NbCase>& param) { return std::string(param.param.name); });

// Integer weights against repeated rows (weight 0 against a missing row).
TEST(NaiveBayesSampleWeights, IntegerWeightIsDuplicatedRow) {
  const Communicator& comm = world();
  DataSpec s;
  s.seed = 51;
  s.classes = 3;
  s.p = 4;
  const std::int64_t N = 40;
  const Rows all = make_rows(s, 0, N);
  std::vector<std::int64_t> rep;  // row of each duplicated-set entry
  for (std::int64_t i = 0; i < N; ++i)
    for (std::int64_t r = 0; r < i % 4; ++r) rep.push_back(i);
  auto rows_of = [&](bool duplicated) {
    const auto M = duplicated ? static_cast<std::int64_t>(rep.size()) : N;
    const Shard sh = shard_of(M, comm.rank(), comm.size());
    Rows r;
    r.X.resize(sh.count, s.p);
    for (std::int64_t k = 0; k < sh.count; ++k) {
      const std::int64_t i = duplicated ? rep[static_cast<std::size_t>(sh.first + k)] : sh.first + k;
      r.X.row(k) = all.X.row(i);
      r.y.push_back(all.y[static_cast<std::size_t>(i)]);
      r.w.push_back(duplicated ? 1.0 : static_cast<double>(i % 4));
      r.id.push_back(sh.first + k);
    }
    return r;
  };
  const Rows weighted = rows_of(false), duplicated = rows_of(true);
  const LearnerContext ctx{comm, 3, 1};
  NaiveBayesLearner a(1e-9), b(1e-9);
  a.fit(ctx, weighted.view());
  b.fit(ctx, duplicated.view());
  const Mat<double> Q = local_rows(make_queries(s, Queries::kFresh, N, 25));
  MOESIM_EXPECT_CLOSE_ALL_RANKS(a.predict(ctx, Q), b.predict(ctx, Q), 1e-12, 1e-9, "weighted vs duplicated");
}

// Two well separated Gaussian blobs: Bayes error about 0.2%.
TEST(NaiveBayesQuality, SeparatesTwoBlobs) {
  const Communicator& comm = world();
  auto sample = [&](std::int64_t n, std::uint64_t seed) {
    const Shard sh = shard_of(n, comm.rank(), comm.size());
    Rows r;
    r.X.resize(sh.count, 2);
    for (std::int64_t k = 0; k < sh.count; ++k) {
      Rng rng(seed, Stream::kTest, static_cast<std::uint64_t>(sh.first + k));
      const int c = static_cast<int>(rng.below(2));
      r.X(k, 0) = (c ? 2.0 : -2.0) + rng.normal();
      r.X(k, 1) = (c ? 2.0 : -2.0) + 0.5 * rng.normal();
      r.y.push_back(c);
      r.w.push_back(1.0);
      r.id.push_back(sh.first + k);
    }
    return r;
  };
  const Rows train = sample(1000, 61), test = sample(1000, 62);
  NaiveBayesLearner nb(1e-9);
  const LearnerContext ctx{comm, 2, 1};
  nb.fit(ctx, train.view());
  const Mat<double> prob = nb.predict(ctx, test.X);
  long correct = 0;
  for (Index i = 0; i < prob.rows(); ++i)
    correct += (prob(i, 1) > 0.5) == (test.y[static_cast<std::size_t>(i)] == 1) ? 1 : 0;
  const double acc = static_cast<double>(comm.allreduce_sum(correct)) / 1000.0;
  EXPECT_GT(acc, 0.98) << "accuracy " << acc;
}

TEST(NaiveBayesRegistry, FactoryCloneAndRegressionRejected) {
  const Communicator& comm = world();
  LearnerOptions opt;
  std::unique_ptr<Learner> nb = make_learner("nb", opt);
  EXPECT_EQ(nb->name(), "nb");
  EXPECT_EQ(nb->clone()->name(), "nb");
  const Rows mine = shard_rows(DataSpec{}, 10);
  const LearnerContext ctx{comm, 0, 1};
  try {
    nb->fit(ctx, mine.view());
    ADD_FAILURE() << "nb fitted a regression task";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("nb is a classifier"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moesim
