// The rank-count invariant sums: exact fixed-point sums (core/fixed_sum, comm/exact_sum)
// and the fixed binary tree over chunks (comm/ordered_sum). Each test computes the same
// global sum split over however many ranks run it and compares bit for bit with the
// serial result, so the np1, np2 and np4 runs check that the layout does not matter.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "comm/exact_sum.hpp"
#include "comm/ordered_sum.hpp"
#include "core/rng.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

// Terms of very different magnitudes and signs, where float order matters.
std::vector<double> terms(int n) {
  Rng rng(11, Stream::kTrain, 0, 0);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[i] = rng.normal() * std::ldexp(1.0, static_cast<int>(rng.uniform() * 60) - 30);
  return v;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

TEST(FixedSum, ExactWhateverTheOrder) {
  FixedSum a, b;
  a += 1e16;
  a += 1.0;
  a -= 1e16;
  b -= 1e16;
  b += 1e16;
  b += 1.0;
  EXPECT_EQ(a.value(), 1.0);  // a double sum would give 0 in the first order
  EXPECT_EQ(b.value(), 1.0);
  const std::vector<double> t = terms(1000);
  FixedSum fwd, rev;
  for (double x : t) fwd += x;
  for (auto it = t.rbegin(); it != t.rend(); ++it) rev += *it;
  EXPECT_TRUE(same_bits(fwd.value(), rev.value()));
  EXPECT_NEAR(fwd.value(), [&] {
    long double s = 0;
    for (double x : t) s += x;
    return static_cast<double>(s);
  }(), 1e-9);
}

TEST(FixedSum, OutOfRangeOrNotFiniteGivesNaN) {
  FixedSum s(1.0);
  s += std::ldexp(1.0, 62);
  EXPECT_TRUE(std::isnan(s.value()));
  FixedSum t(1.0);
  t += std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(std::isnan(t.value()));
  FixedSum u;
  u += t;
  EXPECT_TRUE(std::isnan(u.value()));
  EXPECT_EQ(FixedSum(-2.5).value(), -2.5);
  EXPECT_EQ(FixedSum(std::ldexp(1.0, -64)).value(), std::ldexp(1.0, -64));
}

TEST(ExactSum, AllreduceEqualsTheSerialSumBitForBit) {
  const Communicator& comm = world();
  const int n = 997;  // not a multiple of the rank count
  const std::vector<double> t = terms(n);
  std::vector<FixedSum> serial(3), mine(3);
  for (int i = 0; i < n; ++i) {
    serial[static_cast<std::size_t>(i % 3)] += t[i];
    if (i % comm.size() == comm.rank()) mine[static_cast<std::size_t>(i % 3)] += t[i];
  }
  mine[2] += comm.rank() == comm.size() - 1 ? std::numeric_limits<double>::infinity() : 0.0;
  std::vector<double> got(3);
  allreduce_exact(comm, mine, got.data());
  EXPECT_TRUE(same_bits(got[0], serial[0].value()));
  EXPECT_TRUE(same_bits(got[1], serial[1].value()));
  EXPECT_TRUE(std::isnan(got[2])) << "one rank's bad value makes the total NaN on every rank";
}

// The global tree over 16 chunks of 5 values, some chunks empty, in float.
std::vector<float> chunk(int c) {
  Rng rng(12, Stream::kTrain, static_cast<std::uint64_t>(c), 0);
  std::vector<float> v(5);
  for (float& x : v) x = static_cast<float>(rng.normal() * std::ldexp(1.0, static_cast<int>(rng.uniform() * 40) - 20));
  if (c == 3) v.assign(5, -0.0f);  // a signed zero must survive like every other value
  return v;
}
bool empty_chunk(int c) { return c == 5 || c == 6 || c == 7 || c == 12; }

std::vector<float> pairwise(int lo, int hi, bool* empty) {
  if (hi - lo == 1) {
    *empty = empty_chunk(lo);
    return *empty ? std::vector<float>(5, 0.0f) : chunk(lo);
  }
  bool el = false, er = false;
  std::vector<float> l = pairwise(lo, (lo + hi) / 2, &el), r = pairwise((lo + hi) / 2, hi, &er);
  *empty = el && er;
  if (el) return r;
  if (er) return l;
  for (int i = 0; i < 5; ++i) l[i] += r[i];
  return l;
}

TEST(OrderedSum, ChunksOnAnyPowerOfTwoOfRanksGiveTheSerialTreeBitForBit) {
  const Communicator& comm = world();
  const int chunks = 16, P = comm.size();
  if (!is_power_of_two(P)) GTEST_SKIP() << "the tree needs a power of two of ranks";
  bool all_empty = false;
  const std::vector<float> want = pairwise(0, chunks, &all_empty);
  const int m = chunks / P;
  TreeSum<float> t;
  t.reset(5);
  for (int c = comm.rank() * m; c < (comm.rank() + 1) * m; ++c) {
    if (empty_chunk(c)) {
      t.push_empty();
      continue;
    }
    const std::vector<float> v = chunk(c);
    std::copy(v.begin(), v.end(), t.leaf());
    t.push();
  }
  ASSERT_TRUE(t.complete());
  std::vector<float> got(5);
  const bool nonempty = t.result(got.data());
  tree_allreduce(comm, got.data(), got.size(), nonempty);
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0) << "value " << i << ": " << got[i] << " vs " << want[i];
}

TEST(OrderedSum, ResultNeedsWholeSubtrees) {
  TreeSum<double> t;
  t.reset(2);
  for (int i = 0; i < 3; ++i) {
    t.leaf()[0] = t.leaf()[1] = 1.0;
    t.push();
  }
  EXPECT_FALSE(t.complete());
  std::vector<double> out(2);
  EXPECT_THROW(t.result(out.data()), std::exception);
  t.push_empty();
  ASSERT_TRUE(t.complete());
  EXPECT_TRUE(t.result(out.data()));
  EXPECT_EQ(out[0], 3.0);
}

}  // namespace
}  // namespace moesim
