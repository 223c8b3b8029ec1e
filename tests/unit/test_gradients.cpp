// Finite-difference checks of every layer's backward pass, and of the whole model.
#include <gtest/gtest.h>

#include "data/regimes.hpp"
#include "moe/loss.hpp"
#include "moe/model.hpp"
#include "moe/router.hpp"
#include "nn/layers.hpp"
#include "support/gradcheck.hpp"
#include "support/router_check.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::kFdAbs;
using test::kFdRel;
using test::numerical_grad;
using test::random_matrix;

TEST(Gradients, Linear) {
  Linear<double> lin("lin", 5, 3, Placement::kReplicated);
  Rng rng(11);
  lin.init(rng, 0.7);
  lin.bias().value = random_matrix(1, 3, 12);
  Mat<double> x = random_matrix(6, 5, 13), r = random_matrix(6, 3, 14), y, dx;
  auto loss = [&] { lin.forward(x, y); return y.cwiseProduct(r).sum(); };
  loss();
  lin.backward(r, dx);
  EXPECT_GRAD_CLOSE(dx, numerical_grad(x, loss), "dX");
  EXPECT_GRAD_CLOSE(lin.weight().grad, numerical_grad(lin.weight().value, loss), "dW");
  EXPECT_GRAD_CLOSE(lin.bias().grad, numerical_grad(lin.bias().value, loss), "db");
}

TEST(Gradients, ExpertFfn) {
  Ffn<double> ffn("ffn", 4, 7, Placement::kExpertLocal);
  Rng rng(21);
  ffn.init(rng);
  ffn.b1().value = random_matrix(1, 7, 22, 0.3);
  ffn.b2().value = random_matrix(1, 4, 23, 0.3);
  Mat<double> x = random_matrix(5, 4, 24), r = random_matrix(5, 4, 25), y(5, 4), dx(5, 4);
  auto loss = [&] {
    ffn.forward(ConstMatMap<double>(x.data(), 5, 4), MatMap<double>(y.data(), 5, 4));
    return y.cwiseProduct(r).sum();
  };
  loss();
  ffn.backward(ConstMatMap<double>(r.data(), 5, 4), MatMap<double>(dx.data(), 5, 4));
  EXPECT_GRAD_CLOSE(dx, numerical_grad(x, loss), "dX");
  EXPECT_GRAD_CLOSE(ffn.w1().grad, numerical_grad(ffn.w1().value, loss), "dW1");
  EXPECT_GRAD_CLOSE(ffn.b1().grad, numerical_grad(ffn.b1().value, loss), "db1");
  EXPECT_GRAD_CLOSE(ffn.w2().grad, numerical_grad(ffn.w2().value, loss), "dW2");
  EXPECT_GRAD_CLOSE(ffn.b2().grad, numerical_grad(ffn.b2().value, loss), "db2");
}

TEST(Gradients, RmsNorm) {
  RmsNorm<double> norm("n", 6, Placement::kReplicated);
  norm.gain().value = random_matrix(1, 6, 31);
  Mat<double> x = random_matrix(4, 6, 32), r = random_matrix(4, 6, 33), y, dx;
  auto loss = [&] { norm.forward(x, y); return y.cwiseProduct(r).sum(); };
  loss();
  norm.backward(r, dx);
  EXPECT_GRAD_CLOSE(dx, numerical_grad(x, loss), "dX");
  EXPECT_GRAD_CLOSE(norm.gain().grad, numerical_grad(norm.gain().value, loss), "dg");
}

class RouterGradients : public ::testing::TestWithParam<int> {};

TEST_P(RouterGradients, GatesAndProbabilities) {
  const int K = GetParam(), E = 5;
  TopKRouter<double> router("r", 4, E, K);
  test::expect_router_grads(router, K, E, 41);
}

INSTANTIATE_TEST_SUITE_P(TopK, RouterGradients, ::testing::Values(1, 2, 5));

// --score-function sigmoid: the chosen sigmoid scores, normalised for K > 1, and the
// probabilities s / sum(s) (the Switch loss's), through sigmoid(x W).
class SigmoidRouterGradients : public ::testing::TestWithParam<int> {};

TEST_P(SigmoidRouterGradients, GatesAndProbabilities) {
  const int K = GetParam(), E = 5;
  RouterOptions o;
  o.score = ScoreFunction::kSigmoid;
  Router<double> router("r", 4, E, K, o);
  test::expect_router_grads(router, K, E, 43, [&](const Routing<double>& routing) {
    for (Index t = 0; t < routing.n; ++t) {
      EXPECT_NEAR(routing.probs.row(t).sum(), 1.0, 1e-12);
      if (K > 1) {
        EXPECT_NEAR(routing.gate.row(t).sum(), 1.0, 1e-12);
      } else {
        EXPECT_LT(routing.gate(t, 0), 1.0) << "K = 1: the gate is sigmoid(logit), not normalised to 1";
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Sigmoid, SigmoidRouterGradients, ::testing::Values(1, 2, 5));

TEST(Gradients, SwitchGate) {
  const int E = 5;
  TopKRouter<double> router("r", 4, E, 1, GateKind::kSwitch);
  test::expect_router_grads(router, 1, E, 61, [](const Routing<double>& routing) {
    for (Index t = 0; t < 7; ++t) EXPECT_LT(routing.gate(t, 0), 1.0) << "switch gate is the probability, not 1";
  });
}

TEST(Gradients, TaskLosses) {
  for (int classes : {0, 3}) {
    RegimesConfig rc;
    rc.d_in = 3;
    rc.clusters = 2;
    rc.classes = classes;
    RegimesTask task(rc);
    Batch b = task.batch(Stream::kTrain, 1, 0, 6);
    Mat<double> out = random_matrix(6, task.output_width(), 51), dout;
    const std::int64_t B = 10;  // as if the global batch were larger than this shard
    task_loss<double>(out, b, task.classification(), B, &dout);
    auto loss = [&] { return task_loss<double>(out, b, task.classification(), B, nullptr).sum.value() / B; };
    EXPECT_GRAD_CLOSE(dout, numerical_grad(out, loss), classes ? "cross-entropy" : "MSE");
  }
}

// The whole network on one rank: adapter, dense and MoE blocks, norms, head, the
// task loss and the load-balancing loss.
TEST(Gradients, WholeModelOneRank) {
  Communicator self(MPI_COMM_SELF);
  for (int classes : {0, 3}) {
    ModelConfig mc;
    mc.d_in = 3;
    mc.d_out = classes ? classes : 1;
    mc.d_model = 6;
    mc.d_ff = 5;
    mc.layers = 3;
    mc.moe_every = 2;  // dense, MoE, dense
    mc.moe.experts = 4;
    mc.moe.top_k = 2;
    mc.moe.capacity_factor = 1.0;
    mc.moe.aux_loss_weight = 0.1;
    mc.moe.z_loss_weight = 0.05;
    mc.moe.router_init_scale = 5.0;
    mc.seed = 3;
    Model<double> model(self, mc);
    RegimesConfig rc;
    rc.d_in = 3;
    rc.classes = classes;
    RegimesTask task(rc);
    Batch b = task.batch(Stream::kTrain, 2, 0, 9);
    Mat<double> out, dout;
    auto loss = [&] {
      model.forward(b.x, out);
      double aux = 0, z = 0;
      for (auto* l : model.moe_layers()) {
        aux += l->stats().aux_loss;
        z += l->stats().z_loss;
      }
      return task_loss<double>(out, b, task.classification(), 9, nullptr).sum.value() / 9 +
             mc.moe.aux_loss_weight * aux + mc.moe.z_loss_weight * z;
    };
    loss();
    task_loss<double>(out, b, task.classification(), 9, &dout);
    for (auto* p : model.replicated_params()) p->grad.setZero();
    for (auto* p : model.expert_params()) p->grad.setZero();
    model.backward(dout);
    ParamList<double> all = model.replicated_params();
    for (auto* p : model.expert_params()) all.push_back(p);
    for (Param<double>* p : all) {
      // Aux loss's f (token fractions) is piecewise constant; FD sees only P's part.
      EXPECT_GRAD_CLOSE(p->grad, numerical_grad(p->value, loss), p->name);
    }
  }
}

}  // namespace
}  // namespace moesim
