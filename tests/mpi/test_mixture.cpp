// Dense and constant gates, shared experts and the mixture of expert predictions on
// P ranks against the serial token-by-token reference (moe/reference_moe.cpp).
#include <gtest/gtest.h>

#include "core/shard.hpp"
#include "data/regimes.hpp"
#include "moe/mixture.hpp"
#include "moe/moe_layer.hpp"
#include "moe/reference_moe.hpp"
#include "support/gradcheck.hpp"
#include "support/moe_expect.hpp"
#include "support/moe_reference.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

constexpr double kAbs = 1e-12, kRel = 1e-10;

struct GateCase {
  GateKind gate;
  int E, shared;
  std::int64_t B;
  double aux, z;
};

MoeLayerConfig layer_cfg(const GateCase& c) {
  MoeLayerConfig cfg;
  cfg.d_model = 5;
  cfg.d_ff = 4;
  cfg.experts = c.E;
  cfg.top_k = 1;              // ignored by the dense and constant gates
  cfg.capacity_factor = 0.5;  // ignored too: these gates never drop
  cfg.aux_loss_weight = c.aux;
  cfg.z_loss_weight = c.z;
  cfg.router_init_scale = 3.0;
  cfg.gate = c.gate;
  cfg.shared_experts = c.shared;
  return cfg;
}

// The shared reference (support/moe_reference.hpp) with random biases on the shared
// experts too.
ReferenceMoe make_reference(MoeLayer<double>& layer, const MoeLayerConfig& cfg, std::uint64_t seed, int layer_id) {
  for (int s = 0; s < cfg.shared_experts; ++s)
    layer.shared_expert(s).b1().value = test::random_matrix(1, cfg.d_ff, 800 + s, 0.2);
  return test::make_reference(layer, cfg, seed, layer_id, 700);
}

class AllExpertGates : public ::testing::TestWithParam<GateCase> {};

TEST_P(AllExpertGates, LayerMatchesReference) {
  const GateCase c = GetParam();
  const Communicator& comm = world();
  if (c.E % comm.size() != 0) GTEST_SKIP() << "E not divisible by P";
  const MoeLayerConfig cfg = layer_cfg(c);
  MoeLayer<double> layer(comm, "moe", cfg, 6, 1);
  const ReferenceMoe ref = make_reference(layer, cfg, 6, 1);
  const Mat<double> xg = test::random_matrix(c.B, cfg.d_model, 111), dyg = test::random_matrix(c.B, cfg.d_model, 112);
  const Shard sh = shard_of(c.B, comm.rank(), comm.size());
  const Mat<double> x = xg.middleRows(sh.first, sh.count), dy = dyg.middleRows(sh.first, sh.count);
  Mat<double> y, dx;
  layer.forward(x, y);
  const ReferenceMoe::Forward fw = ref.forward(xg);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(y, fw.y.middleRows(sh.first, sh.count), kAbs, kRel, "Y");
  EXPECT_EQ(layer.stats().dropped, 0) << "these gates never drop";
  EXPECT_EQ(fw.dropped, 0);
  for (int e = 0; e < c.E; ++e) EXPECT_EQ(layer.stats().expert_tokens[e], c.B) << "every token reaches expert " << e;
  EXPECT_NEAR(layer.stats().aux_loss, fw.aux_loss, 1e-12);
  EXPECT_NEAR(layer.stats().z_loss, fw.z_loss, 1e-12 * std::max(1.0, fw.z_loss));
  layer.backward(dy, dx);
  const ReferenceMoe::Grads g = ref.backward(xg, fw, dyg);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, g.dx.middleRows(sh.first, sh.count), kAbs, kRel, "dX");
  if (c.gate == GateKind::kDense) {
    MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(layer.router().weight().grad), g.drouter, kAbs, kRel, "dW_router");
  }
  test::expect_expert_grads(layer, g.dexperts, g.dshared, kAbs, kRel);
}

INSTANTIATE_TEST_SUITE_P(Cases, AllExpertGates,
                         ::testing::Values(GateCase{GateKind::kDense, 4, 0, 23, 0.01, 0.0},
                                           GateCase{GateKind::kDense, 8, 2, 30, 0.0, 0.1},
                                           GateCase{GateKind::kConstant, 4, 1, 17, 0.01, 0.1}));

// Shared experts beside a sparse top-k gate with dropping.
TEST(SharedExperts, TopKLayerMatchesReference) {
  const Communicator& comm = world();
  MoeLayerConfig cfg = layer_cfg({GateKind::kTopK, 4, 2, 0, 0.05, 0.0});
  cfg.top_k = 2;
  cfg.capacity_factor = 0.75;
  MoeLayer<double> layer(comm, "moe", cfg, 8, 2);
  ReferenceMoe ref = make_reference(layer, cfg, 8, 2);
  const std::int64_t B = 29;
  const Mat<double> xg = test::random_matrix(B, cfg.d_model, 121), dyg = test::random_matrix(B, cfg.d_model, 122);
  const Shard sh = shard_of(B, comm.rank(), comm.size());
  Mat<double> y, dx;
  layer.forward(xg.middleRows(sh.first, sh.count), y);
  const ReferenceMoe::Forward fw = ref.forward(xg);
  EXPECT_GT(fw.dropped, 0) << "case meant to drop";
  MOESIM_EXPECT_CLOSE_ALL_RANKS(y, fw.y.middleRows(sh.first, sh.count), kAbs, kRel, "Y");
  layer.backward(dyg.middleRows(sh.first, sh.count), dx);
  const ReferenceMoe::Grads g = ref.backward(xg, fw, dyg);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, g.dx.middleRows(sh.first, sh.count), kAbs, kRel, "dX");
  MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(layer.router().weight().grad), g.drouter, kAbs, kRel, "dW_router");
  test::expect_expert_grads(layer, g.dexperts, g.dshared, kAbs, kRel);
}

struct MixRefCase {
  GateKind gate;
  bool per_expert;
  int classes, shared;
};

class MixtureVsReference : public ::testing::TestWithParam<MixRefCase> {};

// The distributed MoE layer's branches through MixtureTail (final norm, head, mixture
// loss) against the reference mixture: loss, dX, dh and every parameter gradient.
TEST_P(MixtureVsReference, LossAndGradients) {
  const MixRefCase c = GetParam();
  const Communicator& comm = world();
  const int E = 4;
  if (E % comm.size() != 0) GTEST_SKIP();
  const MoeLayerConfig cfg = layer_cfg({c.gate, E, c.shared, 0, 0.0, 0.0});
  MoeLayer<double> layer(comm, "moe", cfg, 10, 1);
  const ReferenceMoe ref = make_reference(layer, cfg, 10, 1);
  const bool cls = c.classes > 0;
  const Index O = cls ? c.classes : 1;
  RmsNorm<double> norm("final_norm", cfg.d_model, Placement::kReplicated);
  norm.gain().value = test::random_matrix(1, cfg.d_model, 131, 0.3).array() + 1.0;
  Linear<double> head("head", cfg.d_model, O, Placement::kReplicated);
  head.weight().value = test::random_matrix(cfg.d_model, O, 132, 0.5);
  head.bias().value = test::random_matrix(1, O, 133, 0.2);
  ReferenceMixture rmix{norm.gain().value, head.weight().value, head.bias().value, c.per_expert, cls};

  const std::int64_t B = 26;
  RegimesConfig rc;
  rc.d_in = 3;
  rc.classes = c.classes;
  const RegimesTask task(rc);
  const Batch bg = task.batch(Stream::kTrain, 5, 0, B);
  const Shard sh = shard_of(B, comm.rank(), comm.size());
  const Batch b = task.batch(Stream::kTrain, 5, sh.first, sh.count);
  const Mat<double> xg = test::random_matrix(B, cfg.d_model, 134), hg = test::random_matrix(B, cfg.d_model, 135);
  const Mat<double> x = xg.middleRows(sh.first, sh.count), h = hg.middleRows(sh.first, sh.count);

  Mat<double> branches, gates, pred, dh, dbranches, dgates, dx;
  MixtureTail<double> tail;
  layer.forward_branches(x, branches, gates);
  tail.forward(norm, head, h, branches, gates, cls, pred);
  const MixtureLoss kind = c.per_expert ? MixtureLoss::kPerExpert : MixtureLoss::kGlobal;
  const MixtureLossResult r = tail.loss_backward(norm, head, kind, b, cls, B, dh, dbranches, dgates);
  layer.backward_branches(dbranches, dgates, dx);
  const double loss = comm.allreduce_sum(r.objective.value()) / static_cast<double>(B);
  const ReferenceMixture::Result ref_r = rmix.run(ref, xg, hg, bg.y, bg.label);
  EXPECT_NEAR(loss, ref_r.loss, 1e-12 * std::max(1.0, ref_r.loss));
  MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, ref_r.dx.middleRows(sh.first, sh.count), kAbs, kRel, "dX");
  MOESIM_EXPECT_CLOSE_ALL_RANKS(dh, ref_r.dh.middleRows(sh.first, sh.count), kAbs, kRel, "dh");
  MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(norm.gain().grad), ref_r.dgain, kAbs, kRel, "d final norm gain");
  MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(head.weight().grad), ref_r.dhead_w, kAbs, kRel, "d head W");
  MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(head.bias().grad), ref_r.dhead_b, kAbs, kRel, "d head b");
  if (c.gate == GateKind::kDense) {
    MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(layer.router().weight().grad), ref_r.drouter, kAbs, kRel, "dW_router");
  }
  test::expect_expert_grads(layer, ref_r.dexperts, ref_r.dshared, kAbs, kRel);
}

INSTANTIATE_TEST_SUITE_P(Cases, MixtureVsReference,
                         ::testing::Values(MixRefCase{GateKind::kDense, false, 0, 0},
                                           MixRefCase{GateKind::kDense, true, 0, 1},
                                           MixRefCase{GateKind::kDense, false, 3, 1},
                                           MixRefCase{GateKind::kDense, true, 3, 0},
                                           MixRefCase{GateKind::kConstant, false, 0, 1}));

}  // namespace
}  // namespace moesim
