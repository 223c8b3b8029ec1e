// The binned mixture's collective pieces on P ranks against serial answers on the whole
// data: exact order statistics and quantile edges (bisection over all ranks' values),
// and the isotonic map fitted from every rank's rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "binned/bins.hpp"
#include "binned/isotonic.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/shard.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

// Value of global row i: negatives, positives, zeros of both signs and many ties.
double value(std::uint64_t seed, std::int64_t i) {
  Rng r(seed, Stream::kTest, 0x0D, static_cast<std::uint64_t>(i));
  const std::uint64_t kind = r.below(5);
  if (kind == 0) return static_cast<double>(r.below(3)) - 1.0;  // -1, 0, 1 repeated
  if (kind == 1) return -0.0;
  return 1e3 * r.normal();
}

std::vector<double> local_values(std::uint64_t seed, std::int64_t n) {
  const Shard sh = shard_of(n, world().rank(), world().size());
  std::vector<double> v;
  for (std::int64_t i = 0; i < sh.count; ++i) v.push_back(value(seed, sh.first + i));
  return v;
}

TEST(BinnedCollective, OrderStatisticsAreExact) {
  for (const std::int64_t n : {1, 2, 7, 1000}) {
    std::vector<double> all;
    for (std::int64_t i = 0; i < n; ++i) all.push_back(value(3, i));
    std::sort(all.begin(), all.end());
    std::vector<std::int64_t> ks;
    for (std::int64_t k = 0; k < n; k += std::max<std::int64_t>(1, n / 37)) ks.push_back(k);
    ks.push_back(n - 1);
    const std::vector<double> got = order_statistics(world(), local_values(3, n), ks);
    long bad = 0;
    for (std::size_t j = 0; j < ks.size(); ++j) {
      // Compare as numbers: -0 and +0 are the same statistic.
      if (got[j] != all[static_cast<std::size_t>(ks[j])]) ++bad;
    }
    EXPECT_EQ(bad, 0) << "n = " << n;
    EXPECT_EQ(world().allreduce_sum(bad), 0);
  }
}

TEST(BinnedCollective, QuantileEdgesAndTies) {
  const std::int64_t n = 999;
  std::vector<double> all;
  for (std::int64_t i = 0; i < n; ++i) all.push_back(1e3 * Rng(8, Stream::kTest, 1, static_cast<std::uint64_t>(i)).normal());
  const Shard sh = shard_of(n, world().rank(), world().size());
  std::vector<double> mine(all.begin() + sh.first, all.begin() + sh.first + sh.count);
  std::sort(all.begin(), all.end());
  const std::vector<double> e = quantile_edges(world(), mine, 4);
  ASSERT_EQ(e.size(), 3u);
  for (int j = 1; j < 4; ++j) EXPECT_EQ(e[static_cast<std::size_t>(j - 1)], all[static_cast<std::size_t>(j * n / 4)]);
  // Every bin gets floor or ceil of n / 4 rows (no ties here).
  std::vector<std::int64_t> count(4, 0);
  for (double v : mine) ++count[static_cast<std::size_t>(bin_of(v, e))];
  world().allreduce_sum(count.data(), 4);
  for (std::int64_t c : count) EXPECT_TRUE(c == n / 4 || c == n / 4 + 1) << c;
  // Mostly tied values: the edges coincide and every rank gets the same ConfigError.
  std::vector<double> tied(mine.size(), 5.0);
  EXPECT_THROW(quantile_edges(world(), tied, 3), ConfigError);
}

TEST(BinnedCollective, IsotonicFromShardsEqualsTheSerialFit) {
  const std::int64_t n = 500;
  auto row = [](std::int64_t i, double* x, double* y, double* w) {
    Rng r(4, Stream::kTest, 2, static_cast<std::uint64_t>(i));
    *x = std::round(4.0 * r.normal()) / 4.0;  // ties in x
    *y = *x + r.normal();
    *w = 0.5 + r.uniform();
  };
  std::vector<double> X, Y, W, x, y, w;
  std::vector<std::int64_t> K, k;
  const Shard sh = shard_of(n, world().rank(), world().size());
  for (std::int64_t i = 0; i < n; ++i) {
    double a, b, c;
    row(i, &a, &b, &c);
    X.push_back(a), Y.push_back(b), W.push_back(c), K.push_back(i);
    if (i >= sh.first && i < sh.first + sh.count) x.push_back(a), y.push_back(b), w.push_back(c), k.push_back(i);
  }
  const IsotonicMap serial = fit_isotonic(X, Y, W, K);
  const IsotonicMap parallel = fit_isotonic(world(), x, y, w, k);
  // Same rows in the same (x, key) order: bit-identical whatever P.
  const long bad = (serial.x == parallel.x && serial.y == parallel.y) ? 0 : 1;
  EXPECT_EQ(world().allreduce_sum(bad), 0);
  for (std::size_t j = 1; j < parallel.y.size(); ++j) EXPECT_LE(parallel.y[j - 1], parallel.y[j]);
  for (std::size_t j = 1; j < parallel.x.size(); ++j) EXPECT_LT(parallel.x[j - 1], parallel.x[j]);
}

}  // namespace
}  // namespace moesim
