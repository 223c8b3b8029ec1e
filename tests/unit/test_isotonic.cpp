// Pool-adjacent-violators: the O(n) stack version and the O(n^2) reference against a
// brute-force formula and hand-worked cases; the fitted map (ties, interpolation,
// clipping); bins of a target.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "binned/bins.hpp"
#include "binned/isotonic.hpp"
#include "core/rng.hpp"

namespace moesim {
namespace {

// The isotonic least-squares solution in closed form (Barlow et al. 1972, the min-max
// formula): f_i = max_{j <= i} min_{k >= i} mean_w(y_j..y_k). O(n^3), nothing shared
// with either PAV.
std::vector<double> brute_force(const std::vector<double>& y, const std::vector<double>& w) {
  const std::size_t n = y.size();
  std::vector<double> f(n);
  for (std::size_t i = 0; i < n; ++i) {
    double best = -std::numeric_limits<double>::infinity();
    for (std::size_t j = 0; j <= i; ++j) {
      double lo = std::numeric_limits<double>::infinity();
      for (std::size_t k = i; k < n; ++k) {
        double swy = 0, sw = 0;
        for (std::size_t t = j; t <= k; ++t) {
          swy += w[t] * y[t];
          sw += w[t];
        }
        lo = std::min(lo, swy / sw);
      }
      best = std::max(best, lo);
    }
    f[i] = best;
  }
  return f;
}

void expect_near_all(const std::vector<double>& got, const std::vector<double>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 1e-12 + 1e-12 * std::abs(want[i])) << what << " at " << i;
}

TEST(Pav, KnownCases) {
  const std::vector<double> one(4, 1.0);
  expect_near_all(pav({1, 3, 2, 4}, one), {1, 2.5, 2.5, 4}, "one violator");
  expect_near_all(pav({3, 2, 1}, {1, 1, 1}), {2, 2, 2}, "decreasing pools everything");
  expect_near_all(pav({1, 2, 2, 5}, one), {1, 2, 2, 5}, "already monotone");
  expect_near_all(pav({2, 1}, {3, 1}), {1.75, 1.75}, "weights");
  // A violation that cascades back two blocks: 4 | 5 | 1 -> (4, 5, 1) pooled = 10/3.
  expect_near_all(pav({4, 5, 1}, {1, 1, 1}), {10.0 / 3, 10.0 / 3, 10.0 / 3}, "cascade");
  expect_near_all(pav({1, 4, 5, 1, 6}, {1, 1, 1, 1, 1}), {1, 10.0 / 3, 10.0 / 3, 10.0 / 3, 6}, "cascade inside");
  expect_near_all(pav({7}, {2}), {7}, "one value");
  EXPECT_TRUE(pav({}, {}).empty());
  for (const auto& f : {pav_reference({1, 3, 2, 4}, one), pav_reference({4, 5, 1, 0}, one)})
    for (std::size_t i = 1; i < f.size(); ++i) EXPECT_LE(f[i - 1], f[i]);
  expect_near_all(pav_reference({4, 5, 1, 0}, one), {2.5, 2.5, 2.5, 2.5}, "reference pools everything");
}

TEST(Pav, MatchesBruteForceAndReferenceOnRandomSequences) {
  for (std::uint64_t trial = 0; trial < 300; ++trial) {
    Rng rng(11, Stream::kTest, trial);
    const std::size_t n = 1 + rng.below(24);
    const bool ties = trial % 3 == 0, weighted = trial % 2 == 0;
    std::vector<double> y(n), w(n);
    for (std::size_t i = 0; i < n; ++i) {
      // A noisy upward trend, so both long pooled blocks and monotone stretches occur.
      y[i] = ties ? static_cast<double>(rng.below(4)) : 0.2 * static_cast<double>(i) + rng.normal();
      w[i] = weighted ? 0.1 + 3.0 * rng.uniform() : 1.0;
    }
    const std::vector<double> want = brute_force(y, w);
    expect_near_all(pav(y, w), want, "pav vs brute force");
    expect_near_all(pav_reference(y, w), want, "reference vs brute force");
    // The fit keeps the weighted total (each block is a weighted mean).
    double a = 0, b = 0;
    const std::vector<double> f = pav(y, w);
    for (std::size_t i = 0; i < n; ++i) {
      a += w[i] * y[i];
      b += w[i] * f[i];
    }
    EXPECT_NEAR(a, b, 1e-10 * (1 + std::abs(a)));
  }
}

TEST(Pav, RejectsNonPositiveWeights) {
  EXPECT_ANY_THROW(pav({1, 2}, {1, 0}));
  EXPECT_ANY_THROW(pav_reference({1, 2}, {1, -1}));
  EXPECT_ANY_THROW(pav({1, 2}, {1}));
}

TEST(IsotonicMap, TiesPooledInterpolationAndClipping) {
  // x = 2 appears twice: its rows pool to y = 2 before PAV, as scikit-learn does.
  const IsotonicMap m = fit_isotonic({3, 2, 1, 2}, {2, 3, 1, 1}, {1, 1, 1, 1}, {0, 1, 2, 3});
  ASSERT_EQ(m.x, (std::vector<double>{1, 2, 3}));
  ASSERT_EQ(m.y, (std::vector<double>{1, 2, 2}));
  EXPECT_DOUBLE_EQ(m(1.5), 1.5);  // linear between breakpoints
  EXPECT_DOUBLE_EQ(m(0.0), 1.0);  // held at the ends
  EXPECT_DOUBLE_EQ(m(9.0), 2.0);
  EXPECT_DOUBLE_EQ(m(2.5), 2.0);
  // Inside a pooled block only its ends are kept.
  const IsotonicMap p = fit_isotonic({1, 2, 3, 4, 5}, {0, 3, 2, 1, 9}, {1, 1, 1, 1, 1}, {0, 1, 2, 3, 4});
  EXPECT_EQ(p.x, (std::vector<double>{1, 2, 4, 5}));
  EXPECT_EQ(p.y, (std::vector<double>{0, 2, 2, 9}));
  // Weight-0 rows do not count; no rows at all leaves the identity.
  const IsotonicMap z = fit_isotonic({1, 2}, {5, 0}, {1, 0}, {0, 1});
  EXPECT_EQ(z.x, (std::vector<double>{1}));
  EXPECT_DOUBLE_EQ(z(-3), 5.0);
  const IsotonicMap id = fit_isotonic({}, {}, {}, {});
  EXPECT_DOUBLE_EQ(id(0.25), 0.25);
}

TEST(IsotonicMap, FitAtTheDataEqualsPavOfSortedRows) {
  Rng rng(5, Stream::kTest, 99);
  const std::size_t n = 40;
  std::vector<double> x(n), y(n), w(n, 1.0);
  std::vector<std::int64_t> key(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = rng.normal();
    y[i] = x[i] + 0.5 * rng.normal();
    key[i] = static_cast<std::int64_t>(i);
  }
  const IsotonicMap m = fit_isotonic(x, y, w, key);
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
  std::vector<double> ys;
  for (std::size_t i : order) ys.push_back(y[i]);
  const std::vector<double> want = brute_force(ys, std::vector<double>(n, 1.0));
  for (std::size_t r = 0; r < n; ++r) EXPECT_NEAR(m(x[order[r]]), want[r], 1e-12) << r;
}

TEST(Bins, EdgesAreLowerBoundsOfTheirBin) {
  const std::vector<double> e = {4, 8};  // three bins: y >= 4 -> 1, y >= 8 -> 2
  EXPECT_EQ(bin_of(-1, e), 0);
  EXPECT_EQ(bin_of(3.999, e), 0);
  EXPECT_EQ(bin_of(4, e), 1);
  EXPECT_EQ(bin_of(7.5, e), 1);
  EXPECT_EQ(bin_of(8, e), 2);
  EXPECT_EQ(bin_of(100, e), 2);
}

}  // namespace
}  // namespace moesim
