// Merge arithmetic: SLERP, pairing, groups; checkpoint names of expert parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "core/rng.hpp"
#include "train/checkpoint.hpp"
#include "moe/merge.hpp"

namespace moesim {
namespace {

double norm(const std::vector<double>& v) { return std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0)); }

std::vector<double> random_unit(Rng& rng, int n) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (double& x : v) x = rng.normal();
  const double s = norm(v);
  for (double& x : v) x /= s;
  return v;
}

TEST(Slerp, UnitVectorsStayUnitNorm) {
  Rng rng(3, Stream::kTest, 0, 0);
  for (int trial = 0; trial < 50; ++trial) {
    const auto a = random_unit(rng, 37), b = random_unit(rng, 37);
    for (double t : {0.0, 0.1, 0.5, 0.9, 1.0}) {
      const auto s = slerp(a, b, t);
      EXPECT_NEAR(norm(s), 1.0, 1e-12) << "t = " << t;
    }
    // Lerp shrinks the midpoint of two unit vectors; slerp does not.
    std::vector<double> mid(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) mid[i] = 0.5 * (a[i] + b[i]);
    EXPECT_LT(norm(mid), 1.0 - 1e-3);
    EXPECT_NEAR(norm(merge_pair(a, b, MergeMethod::kSlerp)), 1.0, 1e-12);
  }
}

TEST(Slerp, EndpointsAndAngle) {
  const std::vector<double> a{1, 0}, b{0, 1};
  const auto s0 = slerp(a, b, 0), s1 = slerp(a, b, 1), h = slerp(a, b, 0.5), q = slerp(a, b, 1.0 / 3);
  EXPECT_NEAR(s0[0], 1, 1e-15);
  EXPECT_NEAR(s0[1], 0, 1e-15);
  EXPECT_NEAR(s1[0], 0, 1e-15);
  EXPECT_NEAR(s1[1], 1, 1e-15);
  EXPECT_NEAR(h[0], std::sqrt(0.5), 1e-15);
  EXPECT_NEAR(h[1], std::sqrt(0.5), 1e-15);
  // A third of the way along the arc: 30 degrees.
  EXPECT_NEAR(q[0], std::cos(M_PI / 6), 1e-15);
  EXPECT_NEAR(q[1], std::sin(M_PI / 6), 1e-15);
}

TEST(Slerp, NearlyParallelFallsBackToLerp) {
  const std::vector<double> a{1, 0, 0}, b{1, 1e-4, 0}, c{2, 0, 0}, z{0, 0, 0};
  const auto s = slerp(a, b, 0.5);
  EXPECT_DOUBLE_EQ(s[0], 1.0);
  EXPECT_DOUBLE_EQ(s[1], 0.5e-4);
  const auto p = slerp(a, c, 0.5);  // parallel, different lengths: the plain midpoint
  EXPECT_DOUBLE_EQ(p[0], 1.5);
  const auto w = slerp(a, z, 0.5);  // a zero vector has no direction
  EXPECT_DOUBLE_EQ(w[0], 0.5);
  const auto avg = merge_pair(a, c, MergeMethod::kAverage);
  EXPECT_DOUBLE_EQ(avg[0], 1.5);
}

TEST(Pairing, GreedyByDescendingSimilarity) {
  // 0~2 most similar, then 1~2 (taken), then 1~3.
  const int n = 4;
  std::vector<double> sim(16, 0.0);
  auto set = [&](int i, int j, double v) { sim[i * n + j] = sim[j * n + i] = v; };
  set(0, 2, 0.9);
  set(1, 2, 0.8);
  set(1, 3, 0.5);
  set(0, 1, 0.1);
  const auto one = greedy_pairs(sim, n, 1);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0], std::make_pair(0, 2));
  const auto two = greedy_pairs(sim, n, 2);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[1], std::make_pair(1, 3));
  const auto groups = merge_groups(n, two);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0], (std::vector<int>{0, 2}));
  EXPECT_EQ(groups[1], (std::vector<int>{1, 3}));
  const auto g1 = merge_groups(n, one);
  ASSERT_EQ(g1.size(), 3u);
  EXPECT_EQ(g1[1], (std::vector<int>{1}));
  EXPECT_EQ(g1[2], (std::vector<int>{3}));
}

TEST(Pairing, CosineOfIdenticalAndOpposite) {
  const auto c = cosine_matrix({{1, 2, 3}, {2, 4, 6}, {-1, -2, -3}, {0, 0, 0}});
  EXPECT_NEAR(c[0 * 4 + 1], 1.0, 1e-15);
  EXPECT_NEAR(c[0 * 4 + 2], -1.0, 1e-15);
  EXPECT_EQ(c[0 * 4 + 3], 0.0);
}

TEST(CheckpointNames, ExpertKeyDropsTheIndex) {
  const ExpertKey k = expert_key("block0.moe.expert13.w1");
  EXPECT_EQ(k.key, "block0.moe.expert.w1");
  EXPECT_EQ(k.index, 13);
  EXPECT_EQ(expert_key("expert2.b").index, 2);
  EXPECT_EQ(expert_key("block1.moe.router.w").index, -1);
  EXPECT_EQ(expert_key("block1.moe.shared_expert0.w1").index, -1);
  EXPECT_EQ(expert_key("block1.moe.expertise.w1").index, -1);
}

}  // namespace
}  // namespace moesim
