// The expert-parallel MoE layer on P ranks against the serial token-by-token
// reference, and finite differences of the distributed layer's gradients.
#include <gtest/gtest.h>

#include "core/shard.hpp"
#include "moe/moe_layer.hpp"
#include "moe/reference_moe.hpp"
#include "support/gradcheck.hpp"
#include "support/moe_expect.hpp"
#include "support/moe_reference.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

struct LayerCase {
  int E, K;
  double capacity_factor, aux_weight;
  std::int64_t B;
  bool switch_gate = false;
  double z_loss = 0.0;
};

MoeLayerConfig make_cfg(const LayerCase& c) {
  MoeLayerConfig cfg;
  cfg.d_model = 6;
  cfg.d_ff = 5;
  cfg.experts = c.E;
  cfg.top_k = c.K;
  cfg.capacity_factor = c.capacity_factor;
  cfg.aux_loss_weight = c.aux_weight;
  cfg.router_init_scale = 4.0;  // decisive routing so capacity matters
  cfg.gate = c.switch_gate ? GateKind::kSwitch : GateKind::kTopK;
  cfg.z_loss_weight = c.z_loss;
  return cfg;
}

// The shared reference (support/moe_reference.hpp), and a check of what it relies on:
// an expert's initial weights depend on (seed, layer, e) alone, not on its placement.
ReferenceMoe make_reference(MoeLayer<double>& layer, const MoeLayerConfig& cfg,
                            std::uint64_t seed, int layer_id) {
  ReferenceMoe ref = test::make_reference(layer, cfg, seed, layer_id);
  for (int le = 0; le < layer.local_experts(); ++le) {
    const ReferenceExpert& re = ref.experts[static_cast<std::size_t>(layer.global_expert(le))];
    EXPECT_EQ(layer.local_expert(le).w1().value, re.w1) << "expert init depends on its placement";
    EXPECT_EQ(layer.local_expert(le).w2().value, re.w2);
  }
  return ref;
}

class MoeLayerVsReference : public ::testing::TestWithParam<LayerCase> {};

TEST_P(MoeLayerVsReference, ForwardBackwardAndStats) {
  const LayerCase c = GetParam();
  const Communicator& comm = world();
  if (c.E % comm.size() != 0) GTEST_SKIP() << "E not divisible by P";
  const MoeLayerConfig cfg = make_cfg(c);
  MoeLayer<double> layer(comm, "moe", cfg, 5, 1);
  ReferenceMoe ref = make_reference(layer, cfg, 5, 1);

  const Mat<double> xg = test::random_matrix(c.B, cfg.d_model, 101);
  const Mat<double> dyg = test::random_matrix(c.B, cfg.d_model, 102);
  const Shard sh = shard_of(c.B, comm.rank(), comm.size());
  const Mat<double> x = xg.middleRows(sh.first, sh.count), dy = dyg.middleRows(sh.first, sh.count);

  Mat<double> y, dx;
  layer.forward(x, y);
  const ReferenceMoe::Forward fw = ref.forward(xg);
  constexpr double abs_tol = 1e-12, rel_tol = 1e-10;
  test::expect_forward_matches(layer, y, fw, sh, abs_tol, rel_tol);
  if (c.capacity_factor > 0 && c.capacity_factor < 1) {
    EXPECT_GT(fw.dropped, 0) << "case meant to drop tokens";
  }

  layer.router().weight().grad.setZero();
  layer.backward(dy, dx);
  const ReferenceMoe::Grads g = ref.backward(xg, fw, dyg);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, g.dx.middleRows(sh.first, sh.count), abs_tol, rel_tol, "dX");
  MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(layer.router().weight().grad), g.drouter, abs_tol, rel_tol, "dW_router");
  test::expect_expert_grads(layer, g.dexperts, g.dshared, abs_tol, rel_tol);
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeLayerVsReference,
                         ::testing::Values(LayerCase{4, 1, 1.0, 0.01, 40},
                                           LayerCase{4, 2, 0.5, 0.1, 37},
                                           LayerCase{8, 2, 0.0, 0.0, 50},
                                           LayerCase{8, 3, 1.25, 0.05, 64},
                                           LayerCase{4, 4, 0.75, 0.01, 16},
                                           LayerCase{8, 1, 1.0, 0.01, 48, true},
                                           LayerCase{4, 2, 1.0, 0.01, 33, false, 0.1}));

// The logged gate entropy is the mean over the global batch of -sum_e p log p of the router's
// probabilities: from the logits and lse (no log per expert) while they are the softmax, by
// the logs where the sigmoid scores replace them. fp32, the production precision: the two
// forms differ by the rounding of p.
TEST(MoeLayerStats, GateEntropyIsThatOfTheRoutersProbabilities) {
  const Communicator& comm = world();
  for (const ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
    SCOPED_TRACE(score == ScoreFunction::kSoftmax ? "softmax" : "sigmoid");
    MoeLayerConfig cfg = make_cfg(LayerCase{8, 2, 1.25, 0.01, 64});
    cfg.router_init_scale = 1.0;  // neither uniform nor one-hot
    cfg.router.score = score;
    if (cfg.experts % comm.size() != 0) GTEST_SKIP();
    MoeLayer<float> layer(comm, "moe", cfg, 5, 1);
    const std::int64_t B = 64;
    const Mat<float> xg = test::random_matrix(B, cfg.d_model, 401).cast<float>();
    const Shard sh = shard_of(B, comm.rank(), comm.size());
    Mat<float> y;
    layer.forward(xg.middleRows(sh.first, sh.count), y);
    const Mat<float>& p = layer.routing().probs;
    double h = 0;
    for (Index t = 0; t < p.rows(); ++t)
      for (Index e = 0; e < p.cols(); ++e)
        if (p(t, e) > 0) h -= double(p(t, e)) * std::log(double(p(t, e)));
    const double want = comm.allreduce_sum(h) / static_cast<double>(B);
    EXPECT_GT(want, 0.1);
    EXPECT_LT(want, std::log(8.0) - 0.01);
    EXPECT_NEAR(layer.stats().gate_entropy, want, 1e-6);
  }
}

// Every dispatch algorithm gives bit-identical outputs and gradients (each expert sees
// the same rows in the same order), and they match the reference.
TEST(MoeLayerDispatch, AllAlgorithmsAgreeBitForBit) {
  const Communicator& comm = world();
  const LayerCase c{8, 2, 0.75, 0.05, 61};
  if (c.E % comm.size() != 0) GTEST_SKIP();
  const Mat<double> xg = test::random_matrix(c.B, 6, 301), dyg = test::random_matrix(c.B, 6, 302);
  const Shard sh = shard_of(c.B, comm.rank(), comm.size());
  const Mat<double> x = xg.middleRows(sh.first, sh.count), dy = dyg.middleRows(sh.first, sh.count);
  Mat<double> y0, dx0, g0;
  for (DispatchAlgo algo : {DispatchAlgo::kAlltoallv, DispatchAlgo::kAllgather, DispatchAlgo::kP2P,
                            DispatchAlgo::kPadded}) {
    MoeLayerConfig cfg = make_cfg(c);
    cfg.dispatch = algo;
    MoeLayer<double> layer(comm, "moe", cfg, 5, 1);
    ReferenceMoe ref = make_reference(layer, cfg, 5, 1);
    Mat<double> y, dx;
    layer.forward(x, y);
    layer.backward(dy, dx);
    const ReferenceMoe::Forward fw = ref.forward(xg);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(y, fw.y.middleRows(sh.first, sh.count), 1e-12, 1e-10, dispatch_name(algo));
    Mat<double> g = layer.local_expert(0).w1().grad;
    if (algo == DispatchAlgo::kAlltoallv) {
      y0 = y;
      dx0 = dx;
      g0 = g;
    } else {
      long diff = (y.array() != y0.array()).count() + (dx.array() != dx0.array()).count() +
                  (g.array() != g0.array()).count();
      EXPECT_EQ(comm.allreduce_sum(diff), 0) << dispatch_name(algo) << " differs from alltoallv";
    }
    if (algo == DispatchAlgo::kPadded && comm.size() > 1) {
      EXPECT_GT(comm.allreduce_sum(layer.comm_stats().padding_bytes), 0.0);
    }
  }
}

// Finite differences through the whole distributed layer: the loss is global,
// replicated parameters are perturbed on every rank, an expert's only on its owner.
TEST(MoeLayerGradients, FiniteDifferencesAcrossRanks) {
  const Communicator& comm = world();
  const LayerCase c{4, 2, 0.75, 0.1, 24, false, 0.05};
  if (c.E % comm.size() != 0) GTEST_SKIP();
  MoeLayerConfig cfg = make_cfg(c);
  cfg.d_model = 4;
  cfg.d_ff = 3;
  MoeLayer<double> layer(comm, "moe", cfg, 9, 2);
  const Mat<double> xg = test::random_matrix(c.B, cfg.d_model, 201);
  const Mat<double> rg = test::random_matrix(c.B, cfg.d_model, 202);
  const Shard sh = shard_of(c.B, comm.rank(), comm.size());
  Mat<double> x = xg.middleRows(sh.first, sh.count);
  const Mat<double> r = rg.middleRows(sh.first, sh.count);
  Mat<double> y, dx;
  auto loss = [&] {
    layer.forward(x, y);
    return comm.allreduce_sum(y.cwiseProduct(r).sum()) + cfg.aux_loss_weight * layer.stats().aux_loss +
           cfg.z_loss_weight * layer.stats().z_loss;
  };
  loss();
  ParamList<double> experts;
  layer.expert_params(experts);
  for (auto* p : experts) p->grad.setZero();
  layer.router().weight().grad.setZero();
  layer.backward(r, dx);

  Mat<double>& w = layer.router().weight().value;
  Mat<double> num = test::numerical_grad(w, loss);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(layer.router().weight().grad), num, test::kFdAbs, test::kFdRel, "router dW");

  // Input gradient: perturb one rank's tokens at a time.
  const Mat<double> dx_num = test::distributed_numerical_grad(comm, x, loss);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, dx_num, test::kFdAbs, test::kFdRel, "dX");

  // Expert parameters: ranks take turns so that one expert changes at a time.
  for (int owner = 0; owner < comm.size(); ++owner)
    for (Param<double>* p : experts) {
      Mat<double> g(p->value.rows(), p->value.cols());
      for (Index i = 0; i < p->size(); ++i) {
        const bool mine = owner == comm.rank();
        const double keep = p->value.data()[i];
        if (mine) p->value.data()[i] = keep + 1e-6;
        const double up = loss();
        if (mine) p->value.data()[i] = keep - 1e-6;
        const double down = loss();
        p->value.data()[i] = keep;
        g.data()[i] = (up - down) / 2e-6;
      }
      if (owner == comm.rank()) {
        std::string worst;
        EXPECT_EQ(test::count_mismatches(p->grad, g, test::kFdAbs, test::kFdRel, &worst), 0)
            << p->name << ": " << worst;
      }
    }
}

}  // namespace
}  // namespace moesim
