// Counter-based RNG, the regimes task, capacity arithmetic and parameter counting.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/shard.hpp"
#include "data/regimes.hpp"
#include "moe/capacity.hpp"
#include "moe/model.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

TEST(Rng, PureFunctionOfKey) {
  Rng a(5, Stream::kTrain, 3, 9), b(5, Stream::kTrain, 3, 9), c(5, Stream::kTrain, 3, 10);
  for (int i = 0; i < 10; ++i) {
    const auto va = a.next_u64();
    EXPECT_EQ(va, b.next_u64());
    EXPECT_NE(va, c.next_u64());
  }
  EXPECT_NE(derive_key(1, Stream::kTrain, 0, 0), derive_key(1, Stream::kValidation, 0, 0));
}

TEST(Rng, MomentsOfUniformAndNormal) {
  Rng rng(123);
  const int n = 200000;
  double su = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    su += u;
    const double z = rng.normal();
    sn += z;
    sn2 += z * z;
  }
  // Five standard errors.
  EXPECT_NEAR(su / n, 0.5, 5 * std::sqrt(1.0 / 12 / n));
  EXPECT_NEAR(sn / n, 0.0, 5 / std::sqrt(n));
  EXPECT_NEAR(sn2 / n, 1.0, 5 * std::sqrt(2.0 / n));
}

TEST(Regimes, ShardsAreSlicesOfTheGlobalBatch) {
  RegimesConfig rc;
  rc.classes = 0;
  RegimesTask task(rc);
  Batch whole = task.batch(Stream::kTrain, 4, 0, 100);
  Batch part = task.batch(Stream::kTrain, 4, 37, 10);
  EXPECT_EQ(whole.x.middleRows(37, 10), part.x);
  EXPECT_EQ(whole.y.middleRows(37, 10), part.y);
  Batch other_step = task.batch(Stream::kTrain, 5, 37, 10);
  EXPECT_NE(other_step.x, part.x);
}

TEST(Regimes, NoiseGrowsAcrossClustersAndTargetsFollowIt) {
  RegimesConfig rc;
  rc.clusters = 4;
  rc.noise_min = 0.01;
  rc.noise_max = 1.0;
  RegimesTask task(rc);
  EXPECT_NEAR(task.noise(0), 0.01, 1e-12);
  EXPECT_NEAR(task.noise(3), 1.0, 1e-12);
  EXPECT_LT(task.noise(1), task.noise(2));
  // Each cluster's inputs sit around their own centre: within-cluster spread ~1.
  Batch b = task.batch(Stream::kTrain, 1, 0, 4000);
  std::set<int> seen(b.cluster.begin(), b.cluster.end());
  EXPECT_EQ(seen.size(), 4u);
}

TEST(Regimes, ClassificationLabelsInRange) {
  RegimesConfig rc;
  rc.classes = 5;
  RegimesTask task(rc);
  Batch b = task.batch(Stream::kTrain, 1, 0, 2000);
  std::set<int> labels(b.label.begin(), b.label.end());
  EXPECT_EQ(*labels.begin(), 0);
  EXPECT_EQ(*labels.rbegin(), 4);
}

TEST(Capacity, Formula) {
  EXPECT_EQ(expert_capacity(1.0, 1024, 2, 8), 256);
  EXPECT_EQ(expert_capacity(1.25, 1000, 1, 8), 157);  // ceil(156.25)
  EXPECT_EQ(expert_capacity(0.0, 1000, 1, 8), 0);     // dropless
  EXPECT_EQ(expert_capacity(4.0, 1000, 2, 4), 1000);  // room for every token, not 2000
  EXPECT_EQ(expert_capacity(1e17, 1000, 1, 8), 1000); // no overflow of the cast
  EXPECT_EQ(expert_capacity(0.001, 10, 1, 8), 1);
  // --min-capacity raises a capacity, never above B, and leaves dropless dropless.
  EXPECT_EQ(expert_capacity(1.0, 1024, 2, 8, 300), 300);
  EXPECT_EQ(expert_capacity(1.0, 1024, 2, 8, 100), 256);
  EXPECT_EQ(expert_capacity(1.0, 1024, 2, 8, 5000), 1024);
  EXPECT_EQ(expert_capacity(0.0, 1024, 2, 8, 300), 0);
}

TEST(Capacity, ProbsPolicyKeepsTheLargestGates) {
  Communicator self(MPI_COMM_SELF);
  // The assignments of the test below: expert 0 (capacity 2) is wanted by tokens 0, 1
  // (second choices) and 2, 3 (first choices). Its (gate, token) pairs: (0.4, 0), (0.7, 1),
  // (0.7, 2), (0.7, 3): ties go to the lower token, so token 3's first choice drops.
  const std::vector<int> expert = {1, 0, 2, 0, 0, 1, 0, 2};
  const std::vector<double> gate = {0.6, 0.4, 0.3, 0.7, 0.7, 0.3, 0.7, 0.3};
  const DropByPriority by{&gate, 0};
  CapacityDecision d = decide_capacity(self, expert, 4, 2, 3, 2, {}, &by);
  EXPECT_EQ(d.kept, (std::vector<char>{1, 0, 1, 1, 1, 1, 0, 1}));
  const std::vector<double> gate2 = {0.6, 0.9, 0.5, 0.5, 0.7, 0.3, 0.4, 0.3};
  const DropByPriority by2{&gate2, 10};
  d = decide_capacity(self, expert, 4, 2, 3, 2, {}, &by2);
  // (0.9, 10), (0.5, 11), (0.7, 12), (0.4, 13): tokens 10 and 12; the first choice of 13 drops.
  EXPECT_EQ(d.kept, (std::vector<char>{1, 1, 1, 0, 1, 1, 0, 1}));
  EXPECT_EQ(d.assigned, (std::vector<std::int64_t>{4, 2, 2}));
  EXPECT_EQ(d.processed, (std::vector<std::int64_t>{2, 2, 2}));
  EXPECT_EQ(d.dropped, 2);
}

TEST(Capacity, FirstChoicesWinThenTokenOrder) {
  Communicator self(MPI_COMM_SELF);
  // 4 tokens, K = 2, E = 3, capacity 2. Expert 0 is wanted as first choice by
  // tokens 2 and 3 and as second choice by tokens 0 and 1.
  const std::vector<int> expert = {1, 0, 2, 0, 0, 1, 0, 2};
  CapacityDecision d = decide_capacity(self, expert, 4, 2, 3, 2);
  const std::vector<char> kept = {1, 0, 1, 0, 1, 1, 1, 1};
  EXPECT_EQ(d.kept, kept);
  EXPECT_EQ(d.assigned, (std::vector<std::int64_t>{4, 2, 2}));
  EXPECT_EQ(d.processed, (std::vector<std::int64_t>{2, 2, 2}));
  EXPECT_EQ(d.dropped, 2);
}

TEST(Shard, ContiguousAndCovering) {
  for (int P : {1, 2, 3, 4, 7})
    for (std::int64_t n : {0, 1, 5, 64, 1001}) {
      std::int64_t next = 0;
      for (int r = 0; r < P; ++r) {
        const Shard s = shard_of(n, r, P);
        EXPECT_EQ(s.first, next);
        next += s.count;
      }
      EXPECT_EQ(next, n);
    }
}

TEST(ParamCounts, MatchTheParametersTheModelHolds) {
  Communicator self(MPI_COMM_SELF);
  ModelConfig mc;
  mc.d_in = 5;
  mc.d_out = 3;
  mc.d_model = 8;
  mc.d_ff = 12;
  mc.layers = 3;
  mc.moe_every = 2;
  mc.moe.experts = 6;
  mc.moe.top_k = 2;
  Model<float> model(self, mc);
  std::int64_t held = 0;
  for (auto* p : model.replicated_params()) held += p->size();
  for (auto* p : model.expert_params()) held += p->size();
  const ParamCounts pc = count_params(mc);
  EXPECT_EQ(pc.total, held);
  const std::int64_t expert = 2 * 8 * 12 + 12 + 8;
  EXPECT_EQ(pc.total - pc.active, (6 - 2) * expert);  // one MoE layer, E - K idle experts
  // FLOPs: adapter, head, two dense FFNs, one router and K experts.
  EXPECT_EQ(pc.flops_per_token, 2 * 5 * 8 + 2 * 8 * 3 + 2 * (4 * 8 * 12) + 2 * 8 * 6 + 2 * 4 * 8 * 12);
  EXPECT_DOUBLE_EQ(pc.param_utilization(), static_cast<double>(pc.total) / pc.flops_per_token);
}

}  // namespace
}  // namespace moesim
