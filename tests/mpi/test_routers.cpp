// Every gate of the expert-parallel MoE layer on P ranks against the serial reference
// (noisy top-k with its losses, expert choice, hash, S-BASE, bias balancing, sigmoid scores,
// router jitter, the probs drop policy, a minimum capacity, an fp64 router), and finite differences through the distributed layer for the gates that
// learn.
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

constexpr std::uint64_t kSeed = 5;
constexpr int kLayer = 1;
constexpr std::int64_t kStep = 3;

struct GateCase {
  const char* name;
  GateKind gate;
  int E, K;
  double capacity_factor;
  std::int64_t B;
  BalanceKind balance = BalanceKind::kAux;
  HashKey key = HashKey::kInput;
  bool training = true;
  bool pre_softmax = false;  // topk: --router-pre-softmax
  bool sigmoid = false;      // --score-function sigmoid
  double jitter = 0;         // --router-jitter
  bool drop_probs = false;   // --drop-policy probs
  std::int64_t min_capacity = 0;
};

MoeLayerConfig make_cfg(const GateCase& c) {
  MoeLayerConfig cfg;
  cfg.d_model = 6;
  cfg.d_ff = 5;
  cfg.experts = c.E;
  cfg.top_k = c.K;
  cfg.capacity_factor = c.capacity_factor;
  cfg.aux_loss_weight = 0.05;
  cfg.z_loss_weight = 0.02;
  cfg.router_init_scale = 4.0;  // decisive routing so capacity matters
  cfg.gate = c.gate;
  cfg.balance = c.balance;
  cfg.bias_update_rate = 0.01;
  cfg.router.importance_weight = 0.3;
  cfg.router.load_weight = 0.2;
  cfg.router.sinkhorn_iters = 6;
  cfg.router.hash_key = c.key;
  cfg.router.pre_softmax = c.pre_softmax;
  cfg.router.score = c.sigmoid ? ScoreFunction::kSigmoid : ScoreFunction::kSoftmax;
  cfg.router.jitter = c.jitter;
  cfg.drop_policy = c.drop_probs ? DropPolicy::kProbs : DropPolicy::kPosition;
  cfg.min_capacity = c.min_capacity;
  return cfg;
}

// The shared reference (support/moe_reference.hpp) of a layer given a random W_noise and
// selection biases; noise draws from the documented key (seed, step, global token, expert).
ReferenceMoe make_reference(MoeLayer<double>& layer, const MoeLayerConfig& cfg, const GateCase& c) {
  if (cfg.gate == GateKind::kNoisyTopK)
    layer.router().noise_weight().value = test::random_matrix(cfg.d_model, cfg.experts, 77, 0.5);
  if (cfg.balance == BalanceKind::kBias)
    for (int e = 0; e < cfg.experts; ++e) layer.router().bias()[static_cast<std::size_t>(e)] = 0.7 * ((e * 5) % 3 - 1);
  ReferenceMoe ref = test::make_reference(layer, cfg, kSeed, kLayer);
  if (cfg.gate == GateKind::kNoisyTopK && c.training) {
    ref.noise.resize(c.B, cfg.experts);
    for (Index t = 0; t < c.B; ++t)
      for (int e = 0; e < cfg.experts; ++e) ref.noise(t, e) = router_noise(kSeed, kLayer, kStep, t, e);
  }
  if (c.jitter > 0 && c.training) {  // the documented key: (seed, layer, step, global token, feature)
    ref.jitter.resize(c.B, cfg.d_model);
    for (Index t = 0; t < c.B; ++t)
      for (Index d = 0; d < cfg.d_model; ++d) ref.jitter(t, d) = router_jitter(kSeed, kLayer, kStep, t, d, c.jitter);
  }
  return ref;
}

void PrintTo(const GateCase& c, std::ostream* os) { *os << c.name; }

class GateVsReference : public ::testing::TestWithParam<GateCase> {};

TEST_P(GateVsReference, ForwardBackwardAndStats) {
  const GateCase c = GetParam();
  const Communicator& comm = world();
  if (c.E % comm.size() != 0) GTEST_SKIP() << "E not divisible by P";
  const MoeLayerConfig cfg = make_cfg(c);
  MoeLayer<double> layer(comm, "moe", cfg, kSeed, kLayer);
  layer.set_mode(c.training, kStep);
  ReferenceMoe ref = make_reference(layer, cfg, c);

  const Mat<double> xg = test::random_matrix(c.B, cfg.d_model, 101);
  const Mat<double> dyg = test::random_matrix(c.B, cfg.d_model, 102);
  const Shard sh = shard_of(c.B, comm.rank(), comm.size());
  const Mat<double> x = xg.middleRows(sh.first, sh.count), dy = dyg.middleRows(sh.first, sh.count);

  Mat<double> y, dx;
  layer.forward(x, y);
  const ReferenceMoe::Forward fw = ref.forward(xg);
  constexpr double abs_tol = 1e-12, rel_tol = 1e-9;
  test::expect_forward_matches(layer, y, fw, sh, abs_tol, rel_tol);
  if (c.gate == GateKind::kNoisyTopK && c.training) {
    EXPECT_GT(fw.importance_loss, 0.0);
    if (c.K < c.E) {
      EXPECT_GT(fw.load_loss, 0.0);
    }
  }
  if (c.drop_probs || c.min_capacity > 0) {
    EXPECT_GT(fw.dropped, 0) << "the case must drop for the policy to matter";
  }
  if (c.drop_probs) {
    // Every expert kept its largest gates: no dropped assignment beats a kept one.
    for (int e = 0; e < c.E; ++e) {
      double min_kept = 2, max_dropped = -1;
      for (Index t = 0; t < c.B; ++t)
        for (std::size_t j = 0; j < fw.chosen[t].size(); ++j)
          if (fw.chosen[t][j] == e) {
            double& v = fw.kept[t][j] ? min_kept : max_dropped;
            v = fw.kept[t][j] ? std::min(v, fw.gate[t][j]) : std::max(v, fw.gate[t][j]);
          }
      EXPECT_LE(max_dropped, min_kept) << "expert " << e;
    }
  }
  if (c.min_capacity > 0) {
    const std::int64_t C = expert_capacity(c.capacity_factor, c.B, c.K, c.E, c.min_capacity);
    for (int e = 0; e < c.E; ++e) EXPECT_LE(layer.stats().expert_tokens[e], C);
    EXPECT_EQ(*std::max_element(fw.expert_tokens.begin(), fw.expert_tokens.end()), C) << "the minimum must bind";
  }
  if (c.sigmoid && c.K > 1) {
    for (Index t = 0; t < layer.routing().n; ++t) EXPECT_NEAR(layer.routing().gate.row(t).sum(), 1.0, 1e-12);
  }
  if (c.gate == GateKind::kExpertChoice) {
    const std::int64_t C = expert_capacity(c.capacity_factor, c.B, c.K, c.E);
    for (int e = 0; e < c.E; ++e) EXPECT_EQ(layer.stats().expert_tokens[e], std::min<std::int64_t>(C, c.B));
  }

  const std::vector<double> bias_before = layer.router().bias();
  layer.router().weight().grad.setZero();
  if (c.gate == GateKind::kNoisyTopK) layer.router().noise_weight().grad.setZero();
  layer.backward(dy, dx);
  const ReferenceMoe::Grads g = ref.backward(xg, fw, dyg);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, g.dx.middleRows(sh.first, sh.count), abs_tol, rel_tol, "dX");
  MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(layer.router().weight().grad), g.drouter, abs_tol, rel_tol, "dW_router");
  if (c.gate == GateKind::kNoisyTopK && c.training) {
    // With K = 1 and no noisy losses the gate is constant: W_noise gets no gradient.
    const bool learns_noise = c.K > 1 || c.balance == BalanceKind::kAux;
    const Mat<double> dn = test::summed(layer.router().noise_weight().grad);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(dn, g.drouter_noise, abs_tol, rel_tol, "dW_noise");
    if (learns_noise) {
      EXPECT_GT(dn.norm(), 0.0);
    }
  }
  test::expect_expert_grads(layer, g.dexperts, g.dshared, abs_tol, rel_tol);
  if (c.balance == BalanceKind::kBias) {
    // One update step: +rate below the mean load, -rate above, from the global load.
    std::vector<double> load(static_cast<std::size_t>(c.E), 0.0);
    for (const auto& ch : fw.chosen)
      for (int e : ch) load[static_cast<std::size_t>(e)] += 1;
    const double mean = static_cast<double>(c.B * c.K) / c.E;
    for (int e = 0; e < c.E; ++e) {
      const double step = load[e] < mean ? 0.01 : load[e] > mean ? -0.01 : 0.0;
      EXPECT_DOUBLE_EQ(layer.router().bias()[e], bias_before[e] + step) << "expert " << e;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Gates, GateVsReference,
    ::testing::Values(GateCase{"noisy_k2", GateKind::kNoisyTopK, 4, 2, 1.0, 37},
                      GateCase{"noisy_k1_drop", GateKind::kNoisyTopK, 8, 1, 0.75, 40},
                      GateCase{"noisy_eval", GateKind::kNoisyTopK, 4, 2, 1.0, 30, BalanceKind::kAux,
                               HashKey::kInput, false},
                      GateCase{"noisy_none", GateKind::kNoisyTopK, 4, 2, 0.0, 29, BalanceKind::kNone},
                      GateCase{"expert_choice_k2", GateKind::kExpertChoice, 4, 2, 1.0, 41},
                      GateCase{"expert_choice_half", GateKind::kExpertChoice, 8, 1, 0.5, 50},
                      GateCase{"hash_input", GateKind::kHash, 4, 1, 0.0, 36},
                      GateCase{"hash_position_k2", GateKind::kHash, 8, 2, 1.0, 45, BalanceKind::kAux,
                               HashKey::kPosition},
                      GateCase{"sbase_k1", GateKind::kSBase, 4, 1, 1.25, 48},
                      GateCase{"sbase_k2", GateKind::kSBase, 8, 2, 0.0, 40},
                      GateCase{"topk_bias", GateKind::kTopK, 4, 2, 1.0, 39, BalanceKind::kBias},
                      GateCase{"switch_bias", GateKind::kSwitch, 8, 1, 1.0, 33, BalanceKind::kBias},
                      GateCase{"noisy_bias", GateKind::kNoisyTopK, 4, 1, 1.0, 31, BalanceKind::kBias},
                      GateCase{"topk_pre_softmax_k1", GateKind::kTopK, 4, 1, 1.0, 38, BalanceKind::kAux,
                               HashKey::kInput, true, true},
                      GateCase{"topk_pre_softmax_k2_drop", GateKind::kTopK, 8, 2, 0.75, 42, BalanceKind::kAux,
                               HashKey::kInput, true, true},
                      GateCase{"topk_pre_softmax_bias", GateKind::kTopK, 4, 2, 1.0, 35, BalanceKind::kBias,
                               HashKey::kInput, true, true},
                      GateCase{.name = "topk_sigmoid_k2_drop", .gate = GateKind::kTopK, .E = 8, .K = 2,
                               .capacity_factor = 0.75, .B = 42, .sigmoid = true},
                      GateCase{.name = "topk_sigmoid_k1", .gate = GateKind::kTopK, .E = 4, .K = 1,
                               .capacity_factor = 1.0, .B = 37, .sigmoid = true},
                      GateCase{.name = "topk_sigmoid_bias", .gate = GateKind::kTopK, .E = 4, .K = 2,
                               .capacity_factor = 1.0, .B = 35, .balance = BalanceKind::kBias, .sigmoid = true},
                      GateCase{.name = "topk_drop_probs_k2", .gate = GateKind::kTopK, .E = 8, .K = 2,
                               .capacity_factor = 0.75, .B = 42, .drop_probs = true},
                      GateCase{.name = "topk_sigmoid_drop_probs", .gate = GateKind::kTopK, .E = 4, .K = 2,
                               .capacity_factor = 0.5, .B = 44, .sigmoid = true, .drop_probs = true},
                      GateCase{.name = "sbase_drop_probs", .gate = GateKind::kSBase, .E = 4, .K = 2,
                               .capacity_factor = 0.5, .B = 40, .drop_probs = true},
                      GateCase{.name = "hash_drop_probs_k2", .gate = GateKind::kHash, .E = 4, .K = 2,
                               .capacity_factor = 0.5, .B = 38, .key = HashKey::kPosition, .drop_probs = true},
                      GateCase{.name = "noisy_drop_probs_jitter", .gate = GateKind::kNoisyTopK, .E = 4, .K = 2,
                               .capacity_factor = 0.75, .B = 37, .jitter = 0.2, .drop_probs = true},
                      GateCase{.name = "topk_jitter_k2", .gate = GateKind::kTopK, .E = 4, .K = 2,
                               .capacity_factor = 1.0, .B = 39, .jitter = 0.3},
                      GateCase{.name = "topk_jitter_eval", .gate = GateKind::kTopK, .E = 4, .K = 2,
                               .capacity_factor = 1.0, .B = 39, .training = false, .jitter = 0.3},
                      GateCase{.name = "topk_min_capacity", .gate = GateKind::kTopK, .E = 4, .K = 2,
                               .capacity_factor = 0.25, .B = 40, .min_capacity = 15}),
    [](const ::testing::TestParamInfo<GateCase>& tp) { return std::string(tp.param.name); });

// S-BASE's plan balances the load: on a batch where top-1 crowds the experts, the
// balanced assignment's max/mean load is far lower.
TEST(SBase, BalancesWhereTopOneCrowds) {
  const Communicator& comm = world();
  const int E = 4;
  if (E % comm.size() != 0) GTEST_SKIP();
  const std::int64_t B = 400;
  Mat<double> xg = test::random_matrix(B, 6, 601);
  xg.col(0).array() += 3.0;  // a shared direction pushes most tokens to one expert
  const Shard sh = shard_of(B, comm.rank(), comm.size());
  const Mat<double> x = xg.middleRows(sh.first, sh.count);
  auto max_over_mean = [&](GateKind g) {
    GateCase c{"", g, E, 1, 0.0, B};
    MoeLayerConfig cfg = make_cfg(c);
    cfg.router.sinkhorn_iters = 20;
    MoeLayer<double> layer(comm, "moe", cfg, kSeed, kLayer);
    Mat<double> y;
    layer.forward(x, y);
    std::int64_t mx = 0;
    for (std::int64_t v : layer.stats().expert_tokens) mx = std::max(mx, v);
    return static_cast<double>(mx) / (static_cast<double>(B) / E);
  };
  const double top1 = max_over_mean(GateKind::kSwitch), sbase = max_over_mean(GateKind::kSBase);
  EXPECT_GT(top1, 1.5) << "the batch should crowd top-1 routing";
  EXPECT_LT(sbase, 1.25) << "top-1 " << top1;
  EXPECT_LT(sbase, 0.5 * top1);
}

// The fp64 router in an fp32 layer matches an all-fp64 router to float rounding of its
// outputs, closer than the fp32 router does.
TEST(RouterPrecision, Fp64RouterInFp32Model) {
  const int E = 8, D = 32;
  const Mat<double> x64 = test::random_matrix(64, D, 701, 3.0);
  const Mat<float> x32 = x64.cast<float>();
  Router<double> exact("r", D, E, 2, GateKind::kTopK);
  Rng rng(702);
  exact.init(rng, 30.0);
  const Mat<float> w32 = exact.weight().value.cast<float>();
  exact.weight().value = w32.cast<double>();  // both see the same (float) weights
  auto run = [&](bool fp64) {
    RouterOptions o;
    o.fp64 = fp64;
    Router<float> r("r", D, E, 2, o);
    r.weight().value = w32;
    Routing<float> out;
    r.forward(x32, out);
    return out.probs.cast<double>().eval();
  };
  Routing<double> ref;
  Router<double> exact_x(exact);
  exact_x.forward(x32.cast<double>(), ref);
  const double err64 = (run(true) - ref.probs).cwiseAbs().maxCoeff();
  const double err32 = (run(false) - ref.probs).cwiseAbs().maxCoeff();
  EXPECT_LE(err64, 6e-8) << "fp64 router should only round its outputs";
  EXPECT_LT(err64, err32) << "fp32 " << err32;
}

// A router that borrows its input (the model's MoE layers) gives the gradients of one that
// copies it; one that copies keeps them when the caller's x changes before backward.
TEST(RouterInput, BorrowedGivesTheCopysGradientsCopiedOutlivesTheCaller) {
  const int E = 8, D = 16, K = 2;
  const Mat<float> x0 = test::random_matrix(64, D, 703, 2.0).cast<float>();
  Router<float> lent("r", D, E, K, GateKind::kTopK), copied("r", D, E, K, GateKind::kTopK);
  Rng rng(704);
  lent.init(rng, 10.0);
  copied.weight().value = lent.weight().value;
  lent.borrow_input(true);
  Mat<float> x_lent = x0, x_copied = x0;
  Routing<float> r_lent, r_copied;
  lent.forward(x_lent, r_lent);
  copied.forward(x_copied, r_copied);
  x_copied.setConstant(1e6f);  // the caller reuses its matrix before backward
  const Mat<float> dgate = test::random_matrix(64, K, 705, 1.0).cast<float>();
  Mat<float> dx_lent, dx_copied;
  lent.backward(r_lent, dgate, Mat<float>(), dx_lent);
  copied.backward(r_copied, dgate, Mat<float>(), dx_copied);
  EXPECT_TRUE(dx_lent == dx_copied);
  EXPECT_TRUE(lent.weight().grad == copied.weight().grad) << "the weight gradient reads forward's x";
  EXPECT_GT(lent.weight().grad.cwiseAbs().maxCoeff(), 0.0f);
}

// Finite differences through the distributed layer: noisy top-k (both router matrices,
// importance and load losses), expert choice and S-BASE.
class GateGradients : public ::testing::TestWithParam<GateCase> {};

TEST_P(GateGradients, FiniteDifferencesAcrossRanks) {
  const GateCase c = GetParam();
  const Communicator& comm = world();
  if (c.E % comm.size() != 0) GTEST_SKIP();
  MoeLayerConfig cfg = make_cfg(c);
  cfg.d_model = 4;
  cfg.d_ff = 3;
  cfg.router_init_scale = 2.0;
  MoeLayer<double> layer(comm, "moe", cfg, kSeed, kLayer);
  layer.set_mode(true, kStep);
  if (c.gate == GateKind::kNoisyTopK)
    layer.router().noise_weight().value = test::random_matrix(cfg.d_model, c.E, 78, 0.5);
  const Mat<double> xg = test::random_matrix(c.B, cfg.d_model, 201);
  const Mat<double> rg = test::random_matrix(c.B, cfg.d_model, 202);
  const Shard sh = shard_of(c.B, comm.rank(), comm.size());
  Mat<double> x = xg.middleRows(sh.first, sh.count);
  const Mat<double> r = rg.middleRows(sh.first, sh.count);
  Mat<double> y, dx;
  const bool switch_aux = c.gate == GateKind::kSBase || c.gate == GateKind::kTopK;
  auto loss = [&] {
    layer.forward(x, y);
    const MoeLayerStats& s = layer.stats();
    return comm.allreduce_sum(y.cwiseProduct(r).sum()) + (switch_aux ? cfg.aux_loss_weight * s.aux_loss : 0.0) +
           cfg.z_loss_weight * s.z_loss + cfg.router.importance_weight * s.importance_loss +
           cfg.router.load_weight * s.load_loss;
  };
  loss();
  layer.router().weight().grad.setZero();
  if (c.gate == GateKind::kNoisyTopK) layer.router().noise_weight().grad.setZero();
  layer.backward(r, dx);

  ParamList<double> router;
  layer.router().params(router);
  for (Param<double>* p : router) {
    const Mat<double> num = test::numerical_grad(p->value, loss);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(p->grad), num, test::kFdAbs, test::kFdRel, p->name);
  }
  const Mat<double> dx_num = test::distributed_numerical_grad(comm, x, loss);
  MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, dx_num, test::kFdAbs, test::kFdRel, "dX");
}

INSTANTIATE_TEST_SUITE_P(
    Gates, GateGradients,
    ::testing::Values(GateCase{"noisy_k2", GateKind::kNoisyTopK, 4, 2, 1.0, 20},
                      GateCase{"noisy_k1", GateKind::kNoisyTopK, 4, 1, 0.0, 16},
                      GateCase{"expert_choice", GateKind::kExpertChoice, 4, 2, 1.0, 18},
                      GateCase{"sbase_k2", GateKind::kSBase, 4, 2, 1.0, 20},
                      GateCase{"topk_pre_softmax_k1", GateKind::kTopK, 4, 1, 1.0, 18, BalanceKind::kAux,
                               HashKey::kInput, true, true},
                      GateCase{"topk_pre_softmax_k2", GateKind::kTopK, 4, 2, 0.0, 17, BalanceKind::kAux,
                               HashKey::kInput, true, true},
                      GateCase{.name = "topk_sigmoid_k2", .gate = GateKind::kTopK, .E = 4, .K = 2,
                               .capacity_factor = 1.0, .B = 20, .sigmoid = true},
                      GateCase{.name = "topk_sigmoid_k1_jitter", .gate = GateKind::kTopK, .E = 4, .K = 1,
                               .capacity_factor = 0.0, .B = 17, .sigmoid = true, .jitter = 0.3},
                      GateCase{.name = "noisy_k2_jitter", .gate = GateKind::kNoisyTopK, .E = 4, .K = 2,
                               .capacity_factor = 1.0, .B = 18, .jitter = 0.2}),
    [](const ::testing::TestParamInfo<GateCase>& tp) { return std::string(tp.param.name); });

// --router-pre-softmax with K = 1: the gate is the chosen expert's softmax probability,
// below 1, so the task loss reaches the router; without it the gate is 1 and the router's
// gradient is the balancing loss's alone.
TEST(PreSoftmax, TopOneGateCarriesTheTaskGradient) {
  const Communicator& comm = world();
  const std::int64_t B = 24;
  auto router_grad = [&](bool pre_softmax, double aux_weight, double* max_gate) {
    GateCase c{"", GateKind::kTopK, 4, 1, 0.0, B};
    c.pre_softmax = pre_softmax;
    MoeLayerConfig cfg = make_cfg(c);
    cfg.aux_loss_weight = aux_weight;
    cfg.z_loss_weight = 0;
    MoeLayer<double> layer(comm, "moe", cfg, kSeed, kLayer);
    const Mat<double> xg = test::random_matrix(B, cfg.d_model, 301), dyg = test::random_matrix(B, cfg.d_model, 302);
    const Shard sh = shard_of(B, comm.rank(), comm.size());
    Mat<double> y, dx;
    layer.forward(xg.middleRows(sh.first, sh.count), y);
    *max_gate = comm.allreduce_max(layer.routing().gate.size() > 0 ? layer.routing().gate.maxCoeff() : 0.0);
    layer.router().weight().grad.setZero();
    layer.backward(dyg.middleRows(sh.first, sh.count), dx);
    return test::summed(layer.router().weight().grad).norm();
  };
  if (4 % comm.size() != 0) GTEST_SKIP();
  double gate_max = 0;
  EXPECT_EQ(router_grad(false, 0.0, &gate_max), 0.0) << "top-1 without pre-softmax: no task gradient";
  EXPECT_EQ(gate_max, 1.0);
  EXPECT_GT(router_grad(true, 0.0, &gate_max), 0.0);
  EXPECT_LT(gate_max, 1.0);
}

}  // namespace
}  // namespace moesim
