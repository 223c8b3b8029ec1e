// --router-pre-softmax (the topk gate weighted by the softmax over all E logits, Megatron's
// pre-softmax): finite differences through the router, the gate values, the check that it
// needs --gate topk, and which configurations warn that the router gets no task gradient.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "moe/config.hpp"
#include "moe/router.hpp"
#include "support/gradcheck.hpp"
#include "support/router_check.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::numerical_grad;
using test::random_matrix;

RouterOptions pre_softmax() {
  RouterOptions o;
  o.gate = GateKind::kTopK;
  o.pre_softmax = true;
  return o;
}

class PreSoftmaxGradients : public ::testing::TestWithParam<int> {};

TEST_P(PreSoftmaxGradients, GatesAndProbabilities) {
  const int K = GetParam(), E = 5;
  Router<double> router("r", 4, E, K, pre_softmax());
  test::expect_router_grads(router, K, E, 41, [&](const Routing<double>& routing) {
    // The gate is the chosen expert's probability over all E, not renormalised.
    for (Index t = 0; t < 7; ++t) {
      double sum = 0;
      for (int j = 0; j < K; ++j) {
        EXPECT_EQ(routing.gate(t, j), routing.probs(t, routing.expert_of(t, j)));
        sum += routing.gate(t, j);
      }
      if (K < E) {
        EXPECT_LT(sum, 1.0) << "token " << t;
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(TopK, PreSoftmaxGradients, ::testing::Values(1, 2, 5));

// The same experts as without pre-softmax; with K = 1 the weights equal the switch gate's.
TEST(PreSoftmax, ChoosesAsTopKAndWeighsAsSwitch) {
  const int E = 6;
  Router<double> plain("r", 4, E, 1, GateKind::kTopK), pre("r", 4, E, 1, pre_softmax()),
      sw("r", 4, E, 1, GateKind::kSwitch);
  Rng rng(7);
  plain.init(rng, 2.0);
  pre.weight().value = sw.weight().value = plain.weight().value;
  const Mat<double> x = random_matrix(9, 4, 8);
  Routing<double> a, b, c;
  plain.forward(x, a);
  pre.forward(x, b);
  sw.forward(x, c);
  EXPECT_EQ(a.expert, b.expert);
  EXPECT_EQ(b.expert, c.expert);
  EXPECT_EQ(a.gate, Mat<double>::Ones(9, 1));
  EXPECT_EQ(b.gate, c.gate);
}

TEST(PreSoftmax, NeedsTheTopKGate) {
  for (GateKind g : {GateKind::kSwitch, GateKind::kNoisyTopK, GateKind::kSBase, GateKind::kHash}) {
    MoeLayerConfig c;
    c.gate = g;
    c.top_k = 1;
    c.router.pre_softmax = true;
    try {
      c.validate(1);
      FAIL() << gate_name(g) << " accepted --router-pre-softmax";
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()), std::string("--router-pre-softmax applies to --gate topk only (got '") +
                                           gate_name(g) + "'): the other gates fix their own gate weights");
    }
  }
}

MoeLayerConfig layer(GateKind g, int E, int K, bool pre = false) {
  MoeLayerConfig c;
  c.gate = g;
  c.experts = E;
  c.top_k = K;
  c.router.pre_softmax = pre;
  return c;
}

// Which configurations leave the router without a task gradient.
TEST(PreSoftmax, RouterWarning) {
  EXPECT_NE(layer(GateKind::kTopK, 8, 1).router_warning(), "");
  EXPECT_NE(layer(GateKind::kNoisyTopK, 8, 1).router_warning(), "");
  EXPECT_NE(layer(GateKind::kTopK, 2, 1).router_warning().find("--gate topk"), std::string::npos);
  EXPECT_NE(layer(GateKind::kNoisyTopK, 2, 1).router_warning().find("its load loss"), std::string::npos);
  EXPECT_EQ(layer(GateKind::kTopK, 8, 1, true).router_warning(), "");
  EXPECT_EQ(layer(GateKind::kTopK, 8, 2).router_warning(), "");
  EXPECT_EQ(layer(GateKind::kNoisyTopK, 8, 2).router_warning(), "");
  EXPECT_EQ(layer(GateKind::kTopK, 1, 1).router_warning(), "") << "E = 1: nothing to route";
  for (GateKind g : {GateKind::kSwitch, GateKind::kSBase, GateKind::kExpertChoice, GateKind::kHash,
                     GateKind::kDense, GateKind::kConstant})
    EXPECT_EQ(layer(g, 8, 1).router_warning(), "") << gate_name(g);
}

}  // namespace
}  // namespace moesim
