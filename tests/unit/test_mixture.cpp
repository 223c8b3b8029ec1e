// Dense and constant gates, the mixture losses (global, per-expert), shared and
// fine-grained experts: finite differences on one rank and parameter counts.
#include <gtest/gtest.h>

#include "data/regimes.hpp"
#include "moe/mixture.hpp"
#include "moe/model.hpp"
#include "moe/router.hpp"
#include "support/gradcheck.hpp"
#include "support/router_check.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::kFdAbs;
using test::kFdRel;
using test::numerical_grad;
using test::random_matrix;

TEST(DenseGate, GatesAreTheSoftmaxAndGradientsMatch) {
  const int E = 5;
  TopKRouter<double> router("r", 4, E, 2, GateKind::kDense);
  test::expect_router_grads(router, E, E, 71, [&](const Routing<double>& routing) {
    ASSERT_EQ(routing.K, E) << "the dense gate routes every token to every expert, whatever --top-k";
    for (Index t = 0; t < 7; ++t)
      for (int j = 0; j < E; ++j) {
        EXPECT_EQ(routing.expert_of(t, j), j);
        EXPECT_DOUBLE_EQ(routing.gate(t, j), routing.probs(t, j));
      }
  });
}

TEST(ConstantGate, EqualWeightsAndNothingToTrain) {
  const int E = 4;
  TopKRouter<double> router("r", 3, E, 1, GateKind::kConstant);
  Rng rng(81);
  router.init(rng, 3.0);
  ParamList<double> ps;
  router.params(ps);
  EXPECT_TRUE(ps.empty());
  Mat<double> x = random_matrix(5, 3, 82);
  Routing<double> routing;
  router.forward(x, routing);
  EXPECT_EQ(routing.K, E);
  EXPECT_TRUE((routing.gate.array() == 0.25).all());
  EXPECT_TRUE((routing.probs.array() == 0.25).all());
  Mat<double> dx;
  router.backward(routing, random_matrix(5, E, 83), random_matrix(5, E, 84), dx);
  EXPECT_EQ(dx, Mat<double>::Zero(5, 3)) << "the gate does not depend on the input";
}

struct MixCase {
  MixtureLoss kind;
  int classes;  // 0: regression
};

class MixtureLossGradients : public ::testing::TestWithParam<MixCase> {};

TEST_P(MixtureLossGradients, ExpertPredictionsAndGates) {
  const auto [kind, classes] = GetParam();
  RegimesConfig rc;
  rc.d_in = 3;
  rc.clusters = 2;
  rc.classes = classes;
  RegimesTask task(rc);
  const Index n = 6, K = 3, O = task.output_width();
  const Batch b = task.batch(Stream::kTrain, 1, 0, n);
  Mat<double> F = random_matrix(n * K, O, 91);
  // Positive gates summing to one per token.
  Mat<double> G = random_matrix(n, K, 92).array().exp().matrix();
  for (Index t = 0; t < n; ++t) G.row(t) /= G.row(t).sum();
  const std::int64_t B = 10;
  const bool cls = classes > 0;
  Mat<double> dF, dG, pred;
  const MixtureLossResult r = mixture_loss<double>(kind, F, G, b, cls, B, &pred, &dF, &dG);
  auto loss = [&] { return mixture_loss<double>(kind, F, G, b, cls, B, nullptr, nullptr, nullptr).objective.value() / B; };
  EXPECT_GRAD_CLOSE(dF, numerical_grad(F, loss), "dF");
  EXPECT_GRAD_CLOSE(dG, numerical_grad(G, loss), "dG");
  // The prediction's ordinary task loss is the mixture's loss (global objective).
  const LossResult tl = task_loss<double>(pred, b, cls, B, nullptr);
  const double obj = r.objective.value(), prediction = r.prediction.value(), spread = r.spread.value();
  EXPECT_NEAR(tl.sum.value(), prediction, 1e-12 * std::max(1.0, prediction));
  if (kind == MixtureLoss::kGlobal) {
    EXPECT_NEAR(obj, prediction, 1e-12 * std::max(1.0, prediction));
  }
  // Regression: per-expert = global + gate-weighted spread of the predictions.
  if (!cls && kind == MixtureLoss::kPerExpert) {
    EXPECT_NEAR(obj, prediction + spread, 1e-12 * obj);
  }
  // Classification: the mixture's log-likelihood is at least the mean of the experts' (Jensen).
  if (cls && kind == MixtureLoss::kPerExpert) {
    EXPECT_GE(obj, prediction - 1e-12);
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, MixtureLossGradients,
                         ::testing::Values(MixCase{MixtureLoss::kGlobal, 0}, MixCase{MixtureLoss::kPerExpert, 0},
                                           MixCase{MixtureLoss::kGlobal, 3}, MixCase{MixtureLoss::kPerExpert, 3}));

struct ModelCase {
  GateKind gate;
  MixtureLoss mixture;
  int classes, shared, granularity;
};

class WholeModelVariants : public ::testing::TestWithParam<ModelCase> {};

// The whole network on one rank with the new gates, losses, shared and fine-grained experts.
TEST_P(WholeModelVariants, FiniteDifferences) {
  const ModelCase c = GetParam();
  Communicator self(MPI_COMM_SELF);
  ModelConfig mc;
  mc.d_in = 3;
  mc.d_out = c.classes ? c.classes : 1;
  mc.classification = c.classes > 0;
  mc.d_model = 5;
  mc.d_ff = 4;
  mc.layers = 2;
  mc.moe_every = 1;
  mc.granularity = c.granularity;
  mc.moe.experts = 3 * c.granularity;
  mc.moe.top_k = 2 * c.granularity;
  mc.moe.capacity_factor = 0.0;
  mc.moe.aux_loss_weight = c.gate == GateKind::kTopK ? 0.1 : 0.0;
  mc.moe.z_loss_weight = 0.05;
  mc.moe.router_init_scale = 2.0;
  mc.moe.gate = c.gate;
  mc.moe.shared_experts = c.shared;
  mc.mixture = c.mixture;
  mc.seed = 4;
  Model<double> model(self, mc);
  RegimesConfig rc;
  rc.d_in = 3;
  rc.classes = c.classes;
  RegimesTask task(rc);
  const Batch b = task.batch(Stream::kTrain, 3, 0, 7);
  const bool cls = task.classification();
  Mat<double> out;
  ParamList<double> all = model.replicated_params();
  for (auto* p : model.expert_params()) all.push_back(p);
  // The mixture's objective comes from loss_and_backward (it holds the expert
  // predictions); its gradients are put back so that FD does not accumulate them.
  auto loss = [&] {
    model.forward(b.x, out);
    double extra = 0;
    for (auto* l : model.moe_layers())
      extra += mc.moe.aux_loss_weight * l->stats().aux_loss + mc.moe.z_loss_weight * l->stats().z_loss;
    if (c.mixture == MixtureLoss::kNone) return task_loss<double>(out, b, cls, 7, nullptr).sum.value() / 7 + extra;
    std::vector<Mat<double>> keep;
    for (auto* p : all) keep.push_back(p->grad);
    const double obj = model.loss_and_backward(out, b, cls, 7).objective.value();
    for (std::size_t i = 0; i < all.size(); ++i) all[i]->grad = keep[i];
    return obj / 7 + extra;
  };
  model.forward(b.x, out);
  for (auto* p : all) p->grad.setZero();
  model.loss_and_backward(out, b, cls, 7);
  std::vector<Mat<double>> analytic;
  for (auto* p : all) analytic.push_back(p->grad);
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_GRAD_CLOSE(analytic[i], numerical_grad(all[i]->value, loss), all[i]->name);
  bool has_shared = false;
  for (auto* p : all) has_shared |= p->name.find("shared") != std::string::npos;
  EXPECT_EQ(has_shared, c.shared > 0);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, WholeModelVariants,
    ::testing::Values(ModelCase{GateKind::kDense, MixtureLoss::kNone, 0, 0, 1},
                      ModelCase{GateKind::kDense, MixtureLoss::kGlobal, 0, 1, 1},
                      ModelCase{GateKind::kDense, MixtureLoss::kPerExpert, 0, 0, 1},
                      ModelCase{GateKind::kDense, MixtureLoss::kGlobal, 3, 0, 1},
                      ModelCase{GateKind::kDense, MixtureLoss::kPerExpert, 3, 1, 1},
                      ModelCase{GateKind::kConstant, MixtureLoss::kGlobal, 0, 0, 1},
                      ModelCase{GateKind::kConstant, MixtureLoss::kNone, 3, 1, 1},
                      ModelCase{GateKind::kTopK, MixtureLoss::kNone, 0, 2, 2}));

TEST(ParamCounts, SharedFineGrainedAndDenseGates) {
  ModelConfig c;
  c.d_in = 4;
  c.d_out = 1;
  c.d_model = 8;
  c.d_ff = 12;
  c.layers = 1;
  c.moe.experts = 4;
  c.moe.top_k = 2;
  const std::int64_t D = 8, outer = (4 + 1) * D + D + (D + 1) + D;  // adapter, final norm, head, block norm
  const std::int64_t expert = 2 * D * 12 + 12 + D;
  ParamCounts p = count_params(c);
  EXPECT_EQ(p.total, outer + D * 4 + 4 * expert);
  EXPECT_EQ(p.active, outer + D * 4 + 2 * expert);
  // Granularity 3: E = 12, K = 6 experts of F / 3 = 4; shared experts 1 of the same size.
  ModelConfig g = c;
  g.granularity = 3;
  g.moe.experts = 12;
  g.moe.top_k = 6;
  g.moe.shared_experts = 1;
  const std::int64_t small = 2 * D * 4 + 4 + D;
  p = count_params(g);
  EXPECT_EQ(p.total, outer + D * 12 + 13 * small);
  EXPECT_EQ(p.active, outer + D * 12 + 7 * small);
  EXPECT_EQ(p.flops_per_token, 2 * 4 * D + 2 * D + 2 * D * 12 + 7 * 4 * D * 4);
  // Dense gate: every expert is active; constant gate: no router.
  ModelConfig d = c;
  d.moe.gate = GateKind::kDense;
  EXPECT_EQ(count_params(d).active, count_params(d).total);
  d.moe.gate = GateKind::kConstant;
  EXPECT_EQ(count_params(d).total, outer + 4 * expert);
  // The mixture runs the head once per expert.
  d.mixture = MixtureLoss::kGlobal;
  EXPECT_EQ(count_params(d).flops_per_token, 2 * 4 * D + 4 * 2 * D + 4 * 4 * D * 12);
}

}  // namespace
}  // namespace moesim
