// Rank invariance, bit for bit: the statistics-based learners (standardiser, ridge,
// logistic, naive Bayes, KNN), the meta-learners and the scores fitted on the rows
// sharded over every rank of the world give exactly (==) the coefficients, predictions
// and scores of the same fit on one rank holding all rows. tests/mpi runs this at 1, 2
// and 4 ranks, so it compares P = 2 and 4 with P = 1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.hpp"
#include "core/shard.hpp"
#include "learners/knn.hpp"
#include "learners/linear.hpp"
#include "learners/nb.hpp"
#include "comm/exact_row_sums.hpp"
#include "learners/standardize.hpp"
#include "stacking/meta.hpp"
#include "stacking/metrics.hpp"
#include "support/rows.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::Rows;
using test::world;

// This rank alone: the single-rank fit over all rows.
const Communicator& self() {
  static const Communicator c(world(), world().rank(), 0);
  return c;
}

// Rows [first, first + count) of a table whose row i is a pure function of (seed, i):
// p features on unequal scales around an offset, a label (classes >= 2) or a value,
// weights in [0.5, 2) with every seventh row 0. spread >= 0: row 0 weighs 40 and row
// `spread`'s features are 30 times larger, so the largest weight and the largest features
// lie on different ranks (a bound made of rank-local maxima then moves with the layout).
Rows make_rows(std::uint64_t seed, Index p, int classes, std::int64_t first, std::int64_t count,
               double offset = 0.0, std::int64_t spread = -1) {
  Rows r;
  r.X.resize(count, p);
  for (std::int64_t k = 0; k < count; ++k) {
    const std::int64_t i = first + k;
    Rng rng(seed, Stream::kTest, static_cast<std::uint64_t>(i));
    const int label = classes >= 2 ? static_cast<int>(rng.below(static_cast<std::uint64_t>(classes))) : 0;
    for (Index j = 0; j < p; ++j)
      r.X(k, j) = offset + (1.0 + 0.7 * static_cast<double>(j)) * rng.normal() + 0.8 * label * (j % 2 ? 1 : -1);
    r.y.push_back(classes >= 2 ? label : std::sin(r.X(k, 0)) + 0.3 * r.X(k, p - 1) + 0.1 * rng.normal());
    r.w.push_back(i % 7 == 3 ? 0.0 : rng.uniform(0.5, 2.0));
    if (spread >= 0 && i == 0) r.w.back() = 40.0;
    if (i == spread) r.X.row(k) *= 30.0;
    r.id.push_back(i);
  }
  return r;
}

// This rank's shard of the N rows (uneven when P does not divide N).
Rows shard(std::uint64_t seed, Index p, int classes, std::int64_t N, double offset = 0.0,
           std::int64_t spread = -1) {
  const Shard sh = shard_of(N, world().rank(), world().size());
  return make_rows(seed, p, classes, sh.first, sh.count, offset, spread);
}

template <class A, class B>
long unequal(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return a.size() + b.size() + 1;
  long bad = 0;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) bad += a(i, j) == b(i, j) ? 0 : 1;
  return bad;
}

// Collective: fails on every rank if any element differs on any rank.
#define EXPECT_BITWISE_ALL_RANKS(a, b, what)                                                    \
  do {                                                                                          \
    const long bad_ = unequal((a), (b));                                                        \
    EXPECT_EQ(world().allreduce_sum(bad_), 0) << (what) << ": elements differ (rank "           \
                                              << world().rank() << ": " << bad_ << ")";         \
  } while (0)

Mat<double> as_mat(const Scores& s) {
  Mat<double> m(1, 5);
  m << s.accuracy, s.log_loss, s.rmse, s.r2, s.weight;
  return m;
}

constexpr std::int64_t kRows = 517;  // not a multiple of 2 or 4

TEST(ExactLinear, StandardizerIsRankInvariant) {
  const Rows all = make_rows(3, 6, 0, 0, kRows, 1e5), mine = shard(3, 6, 0, kRows, 1e5);
  Standardizer a, b;
  a.fit(world(), mine.X, mine.w);
  b.fit(self(), all.X, all.w);
  EXPECT_BITWISE_ALL_RANKS(a.mean, b.mean, "mean");
  EXPECT_BITWISE_ALL_RANKS(a.scale, b.scale, "scale");
  EXPECT_BITWISE_ALL_RANKS(a.apply(mine.X), b.apply(mine.X), "standardised rows");
}

// The sums are exact: +-1e16 at the ends of the rows cancel the 1.0 terms in between
// in any double summation order; powers of two over 40 binades.
TEST(ExactLinear, ExactRowSumsAreExact) {
  auto term = [](std::int64_t i, int col) {
    if (col == 1) return std::ldexp(1.0, static_cast<int>(i % 40) - 20);
    return i == 0 ? 1e16 : i == kRows - 1 ? -1e16 : 1.0;
  };
  const Shard sh = shard_of(kRows, world().rank(), world().size());
  Mat<double> t(sh.count, 2);
  for (std::int64_t k = 0; k < sh.count; ++k)
    for (int col = 0; col < 2; ++col) t(k, col) = term(sh.first + k, col);
  const std::vector<double> s = exact_column_sums(world(), t);
  double expect = 0;  // few bits: exact in a double
  for (std::int64_t i = 0; i < kRows; ++i) expect += term(i, 1);
  EXPECT_EQ(s[0], static_cast<double>(kRows - 2));
  EXPECT_EQ(s[1], expect);
}

// add_products (two lanes, or four on AVX CPUs from 8 terms on) takes the same bits into
// every slot as add() term by term: the totals are identical, whatever the run lengths.
TEST(ExactLinear, AddProductsEqualsAddTermByTerm) {
  Rng rng(20261208, Stream::kTest, static_cast<std::uint64_t>(world().rank()));
  const std::size_t slots = 40;
  std::vector<double> bound(slots, 0.0);
  std::vector<std::vector<double>> rows;
  std::vector<std::pair<std::size_t, std::size_t>> runs;  // (first slot, length)
  std::vector<double> coef;
  for (int r = 0; r < 300; ++r) {
    const auto len = static_cast<std::size_t>(1 + rng.below(slots));
    const auto k0 = static_cast<std::size_t>(rng.below(slots - len + 1));
    std::vector<double> b(len);
    for (double& v : b) v = std::ldexp(rng.normal(), static_cast<int>(rng.below(20)) - 10);
    const double a = rng.normal();
    for (std::size_t l = 0; l < len; ++l) bound[k0 + l] = std::max(bound[k0 + l], std::abs(a * b[l]));
    rows.push_back(b);
    runs.emplace_back(k0, len);
    coef.push_back(a);
  }
  ExactRowSums by_run(world(), bound), by_term(world(), bound);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const auto [k0, len] = runs[r];
    by_run.add_products(k0, coef[r], rows[r].data(), len);
    for (std::size_t l = 0; l < len; ++l) by_term.add(k0 + l, coef[r] * rows[r][l]);
    by_run.end_row();
    by_term.end_row();
  }
  const std::vector<double> a = by_run.totals(world()), b = by_term.totals(world());
  for (std::size_t k = 0; k < slots; ++k) EXPECT_EQ(a[k], b[k]) << "slot " << k;
}

struct LinearCase {
  const char* name;
  const char* learner;
  int classes;
  Index p;
  double offset;
  bool spread = false;  // make_rows' spread: the maxima of weight and features apart
};

std::ostream& operator<<(std::ostream& os, const LinearCase& c) { return os << c.name; }

class ExactLearner : public ::testing::TestWithParam<LinearCase> {};

TEST_P(ExactLearner, FitAndPredictionsMatchOneRank) {
  const LinearCase c = GetParam();
  const std::int64_t spread = c.spread ? kRows - 1 : -1;
  const Rows all = make_rows(5, c.p, c.classes, 0, kRows, c.offset, spread);
  const Rows mine = shard(5, c.p, c.classes, kRows, c.offset, spread);
  LearnerOptions opt;
  opt.knn_k = 6;
  std::unique_ptr<Learner> a = make_learner(c.learner, opt), b = make_learner(c.learner, opt);
  a->fit(LearnerContext{world(), c.classes, 1}, mine.view());
  b->fit(LearnerContext{self(), c.classes, 1}, all.view());
  // Training rows and fresh rows: this rank's shard predicted by the sharded model, all
  // rows by the one-rank model (so a row sits elsewhere in its batch).
  const std::int64_t Q = 203;
  const Rows fresh_all = make_rows(6, c.p, c.classes, 0, Q, c.offset), fresh = shard(6, c.p, c.classes, Q, c.offset);
  const Shard st = shard_of(kRows, world().rank(), world().size()), sq = shard_of(Q, world().rank(), world().size());
  const Mat<double> pa_train = a->predict(LearnerContext{world(), c.classes, 1}, mine.X);
  const Mat<double> pb_train = b->predict(LearnerContext{self(), c.classes, 1}, all.X);
  EXPECT_BITWISE_ALL_RANKS(pa_train, pb_train.middleRows(st.first, st.count), std::string(c.name) + " training predictions");
  const Mat<double> pa = a->predict(LearnerContext{world(), c.classes, 1}, fresh.X);
  const Mat<double> pb = b->predict(LearnerContext{self(), c.classes, 1}, fresh_all.X);
  EXPECT_BITWISE_ALL_RANKS(pa, pb.middleRows(sq.first, sq.count), std::string(c.name) + " predictions");
  if (auto* r = dynamic_cast<RidgeLearner*>(a.get()))
    EXPECT_BITWISE_ALL_RANKS(r->raw_coefficients(), dynamic_cast<RidgeLearner*>(b.get())->raw_coefficients(),
                             std::string(c.name) + " coefficients");
  if (auto* l = dynamic_cast<LogisticLearner*>(a.get())) {
    auto* m = dynamic_cast<LogisticLearner*>(b.get());
    EXPECT_BITWISE_ALL_RANKS(l->raw_coefficients(), m->raw_coefficients(), std::string(c.name) + " coefficients");
    EXPECT_EQ(l->iterations(), m->iterations());
  }
  if (auto* n = dynamic_cast<NaiveBayesLearner*>(a.get())) {
    auto* m = dynamic_cast<NaiveBayesLearner*>(b.get());
    EXPECT_BITWISE_ALL_RANKS(n->means(), m->means(), "nb means");
    EXPECT_BITWISE_ALL_RANKS(n->variances(), m->variances(), "nb variances");
    EXPECT_BITWISE_ALL_RANKS(n->log_prior(), m->log_prior(), "nb priors");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ExactLearner,
    ::testing::Values(LinearCase{"ridge_regression", "ridge", 0, 5, 0.0},
                      LinearCase{"ridge_regression_offset", "ridge", 0, 4, 1e4},
                      LinearCase{"ridge_classes3", "ridge", 3, 5, 0.0},
                      LinearCase{"logistic_binary", "logistic", 2, 6, 0.0},
                      LinearCase{"logistic_classes3", "logistic", 3, 5, 3.0},
                      LinearCase{"logistic_classes4", "logistic", 4, 3, 0.0},
                      LinearCase{"nb_classes3", "nb", 3, 5, 0.0},
                      LinearCase{"nb_offset", "nb", 2, 4, 1e6},
                      LinearCase{"knn_regression", "knn", 0, 4, 0.0},
                      LinearCase{"knn_classes3", "knn", 3, 5, 0.0},
                      LinearCase{"ridge_spread", "ridge", 0, 5, 0.0, true},
                      LinearCase{"logistic_classes3_spread", "logistic", 3, 5, 0.0, true},
                      LinearCase{"nb_spread", "nb", 3, 4, 0.0, true}),
    [](const ::testing::TestParamInfo<LinearCase>& param) { return std::string(param.param.name); });

// Meta features: `blocks` blocks of `width` columns, class distributions (width = C) or
// values (width 1), row i a pure function of i.
Mat<double> meta_features(std::int64_t first, std::int64_t count, int blocks, int width, bool cls) {
  Mat<double> Z(count, blocks * width);
  for (std::int64_t k = 0; k < count; ++k) {
    Rng rng(77, Stream::kTest, static_cast<std::uint64_t>(first + k));
    for (int b = 0; b < blocks; ++b) {
      double s = 0;
      for (int c = 0; c < width; ++c) s += (Z(k, b * width + c) = cls ? rng.uniform(0.05, 1.0) : 2.0 * rng.normal());
      if (cls)
        for (int c = 0; c < width; ++c) Z(k, b * width + c) /= s;
    }
  }
  return Z;
}

struct MetaCase {
  const char* name;
  const char* kind;
  int classes;
};

std::ostream& operator<<(std::ostream& os, const MetaCase& c) { return os << c.name; }

class ExactMeta : public ::testing::TestWithParam<MetaCase> {};

TEST_P(ExactMeta, FitPredictionsAndScoresMatchOneRank) {
  const MetaCase c = GetParam();
  const bool cls = c.classes >= 2;
  const int blocks = 3, width = cls ? c.classes : 1;
  const Rows all = make_rows(9, 2, c.classes, 0, kRows), mine = shard(9, 2, c.classes, kRows);
  const Shard sh = shard_of(kRows, world().rank(), world().size());
  const Mat<double> Zall = meta_features(0, kRows, blocks, width, cls);
  const Mat<double> Zmine = meta_features(sh.first, sh.count, blocks, width, cls);
  MetaOptions opt;
  opt.kind = c.kind;
  opt.greedy_iterations = 7;
  std::unique_ptr<MetaLearner> a = make_meta(opt, cls, false), b = make_meta(opt, cls, false);
  a->fit(LearnerContext{world(), c.classes, 1}, Zmine, mine.y, mine.w, blocks, width);
  b->fit(LearnerContext{self(), c.classes, 1}, Zall, all.y, all.w, blocks, width);
  EXPECT_BITWISE_ALL_RANKS(a->coefficients(nullptr), b->coefficients(nullptr), std::string(c.name) + " coefficients");
  // This rank's rows by the sharded model, all rows by the one-rank model.
  const Mat<double> pa = a->predict(LearnerContext{world(), c.classes, 1}, Zmine);
  const Mat<double> pall = b->predict(LearnerContext{self(), c.classes, 1}, Zall);
  EXPECT_BITWISE_ALL_RANKS(pa, pall.middleRows(sh.first, sh.count), std::string(c.name) + " predictions");
  // Scores of the sharded predictions against those of all rows on one rank.
  EXPECT_BITWISE_ALL_RANKS(as_mat(score(world(), pa, mine.y, mine.w, c.classes)),
                           as_mat(score(self(), pall, all.y, all.w, c.classes)), std::string(c.name) + " scores");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ExactMeta,
    ::testing::Values(MetaCase{"logistic", "logistic", 3}, MetaCase{"ridge_classes", "ridge", 3},
                      MetaCase{"ridge_regression", "ridge", 0}, MetaCase{"nnls_classes", "nnls", 3},
                      MetaCase{"nnls_regression", "nnls", 0}, MetaCase{"greedy_classes", "greedy", 3},
                      MetaCase{"greedy_regression", "greedy", 0}),
    [](const ::testing::TestParamInfo<MetaCase>& param) { return std::string(param.param.name); });

}  // namespace
}  // namespace moesim
