// MoeLayerConfig::validate (the cli's words, identical texts), the gate and dispatch
// registries, and expert choice's preselected slots in decide_capacity.
#include <gtest/gtest.h>

#include "moe/capacity.hpp"
#include "moe/dispatcher.hpp"
#include "moe/moe_layer.hpp"
#include "moe/router.hpp"

namespace moesim {
namespace {

// The ConfigError text of validate(ranks, granularity), or "" if it passes.
std::string rejection(const MoeLayerConfig& c, int ranks = 1, int granularity = 1) {
  try {
    c.validate(ranks, granularity);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

MoeLayerConfig with(GateKind gate, int experts, int top_k) {
  MoeLayerConfig c;
  c.gate = gate;
  c.experts = experts;
  c.top_k = top_k;
  return c;
}

TEST(MoeLayerConfig, ValidConfigurationsPass) {
  EXPECT_EQ(rejection(MoeLayerConfig{}), "");
  EXPECT_EQ(rejection(with(GateKind::kSwitch, 8, 1), 4), "");
  EXPECT_EQ(rejection(with(GateKind::kDense, 4, 4), 2), "");
  MoeLayerConfig ec = with(GateKind::kExpertChoice, 4, 2);
  ec.eval_capacity_factor = -1;  // the training factor, which is > 0
  EXPECT_EQ(rejection(ec), "");
  MoeLayerConfig bias = with(GateKind::kNoisyTopK, 4, 2);
  bias.balance = BalanceKind::kBias;
  EXPECT_EQ(rejection(bias), "");
}

TEST(MoeLayerConfig, TopKAndExpertsInTheUsersValues) {
  EXPECT_EQ(rejection(with(GateKind::kTopK, 2, 3)), "--top-k (3) must not exceed --experts (2)");
  EXPECT_EQ(rejection(with(GateKind::kTopK, 4, 6), 1, 2), "--top-k (3) must not exceed --experts (2)");
  EXPECT_EQ(rejection(with(GateKind::kTopK, 4, 0)), "--top-k must be >= 1 (got 0)");
  EXPECT_EQ(rejection(with(GateKind::kTopK, 0, 1)), "--experts must be >= 1 (got 0)");
}

// Expert-data parallelism: N = --ep-size (default gcd(E, P)) must divide P and E, so any
// E runs on any P by default.
TEST(MoeLayerConfig, EpSizeDividesRanksAndExperts) {
  EXPECT_EQ(rejection(with(GateKind::kTopK, 6, 2), 4), "");  // N = gcd(6, 4) = 2
  EXPECT_EQ(rejection(with(GateKind::kTopK, 1, 1), 4), "");  // a dense model on 4 ranks: N = 1
  EXPECT_EQ(rejection(with(GateKind::kTopK, 3, 1), 2), "");
  EXPECT_EQ(with(GateKind::kTopK, 6, 2).ep_size_for(4), 2);
  EXPECT_EQ(with(GateKind::kTopK, 8, 2).ep_size_for(4), 4);
  EXPECT_EQ(with(GateKind::kTopK, 1, 1).ep_size_for(4), 1);
  EXPECT_EQ(with(GateKind::kTopK, 3, 1).ep_size_for(1), 1);
  MoeLayerConfig c = with(GateKind::kTopK, 8, 2);
  for (int n : {1, 2, 4}) {
    c.ep_size = n;
    EXPECT_EQ(rejection(c, 4), "") << n;
    EXPECT_EQ(c.ep_size_for(4), n);
  }
  c.ep_size = 8;
  EXPECT_EQ(rejection(c, 4), "--ep-size (8) must divide the number of ranks (4): ranks form groups of --ep-size ranks");
  c.ep_size = 3;
  EXPECT_EQ(rejection(c, 6), "--experts (8) must be divisible by --ep-size (3): each rank of an expert group holds "
                             "E / ep-size experts");
  c.experts = 6;
  c.ep_size = 4;
  EXPECT_EQ(rejection(c, 4, 2), "--experts (3 x granularity 2) must be divisible by --ep-size (4): each rank of an "
                                "expert group holds E / ep-size experts");
  c.ep_size = -1;
  EXPECT_EQ(rejection(c, 4), "--ep-size must be >= 1 (got -1)");
}

TEST(MoeLayerConfig, GateRequirements) {
  EXPECT_EQ(rejection(with(GateKind::kSwitch, 4, 2)), "--gate switch routes to one expert: it needs --top-k 1");
  EXPECT_EQ(rejection(with(GateKind::kSwitch, 4, 2), 1, 2),
            "--gate switch routes to one expert: it needs --top-k 1 and --granularity 1");
  const std::string ec_msg =
      "--gate expert-choice needs --capacity-factor and --eval-capacity-factor > 0 "
      "(each expert takes C = factor * B * K / E tokens)";
  MoeLayerConfig ec = with(GateKind::kExpertChoice, 4, 2);
  ec.capacity_factor = 0;
  EXPECT_EQ(rejection(ec), ec_msg);
  ec.capacity_factor = 1;
  ec.eval_capacity_factor = 0;
  EXPECT_EQ(rejection(ec), ec_msg);
  for (GateKind g : {GateKind::kHash, GateKind::kSBase, GateKind::kExpertChoice, GateKind::kDense}) {
    MoeLayerConfig c = with(g, 4, 1);
    c.balance = BalanceKind::kBias;
    EXPECT_EQ(rejection(c), std::string("--balance bias needs a gate that picks experts per token by score (topk, "
                                        "switch, noisy-topk); --gate ") +
                                gate_name(g) + " balances by construction");
  }
  MoeLayerConfig sb = with(GateKind::kSBase, 4, 1);
  sb.router.sinkhorn_iters = 0;
  EXPECT_EQ(rejection(sb), "--sinkhorn-iters must be >= 1 (got 0)");
  MoeLayerConfig sh;
  sh.shared_experts = -1;
  EXPECT_EQ(rejection(sh), "--shared-experts must be >= 0 (got -1)");
}

TEST(MoeLayerConfig, LayerAndRouterValidateWhereTheyAreBuilt) {
  Communicator self(MPI_COMM_SELF);
  EXPECT_THROW(Router<double>("r", 4, 4, 2, GateKind::kSwitch), ConfigError);
  EXPECT_THROW(Router<float>("r", 4, 2, 3), ConfigError);
  MoeLayerConfig c = with(GateKind::kHash, 4, 1);
  c.balance = BalanceKind::kBias;
  EXPECT_THROW(MoeLayer<double>(self, "moe", c, 1, 1), ConfigError);
  EXPECT_NO_THROW(MoeLayer<double>(self, "moe", with(GateKind::kTopK, 4, 2), 1, 1));
}

TEST(GateRegistry, EveryNameRoundTripsAndBuildsARouter) {
#define MOESIM_GATE_ROW(id, name, spec) {GateKind::id, name},
  const std::vector<std::pair<GateKind, std::string>> gates = {MOESIM_GATES(MOESIM_GATE_ROW)};
#undef MOESIM_GATE_ROW
  EXPECT_EQ(gates.size(), 8u);
  for (const auto& [g, name] : gates) {
    EXPECT_EQ(parse_gate(name), g);
    EXPECT_EQ(gate_name(g), name);
    EXPECT_NO_THROW(Router<float>("r", 4, 4, g == GateKind::kSwitch ? 1 : 2, RouterOptions{.gate = g})) << name;
  }
  EXPECT_TRUE(gate_uses_all_experts(GateKind::kDense) && gate_uses_all_experts(GateKind::kConstant));
  EXPECT_FALSE(gate_uses_all_experts(GateKind::kExpertChoice));
  EXPECT_TRUE(gate_is_token_choice(GateKind::kSBase));
  EXPECT_FALSE(gate_is_token_choice(GateKind::kHash));
  EXPECT_EQ(bias_gate_names(), "topk, switch, noisy-topk");
}

TEST(GateRegistry, UnknownNameIsAConfigErrorListingTheGates) {
  try {
    parse_gate("learned");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "--gate must be topk, switch, noisy-topk, expert-choice, hash, sbase, dense or constant "
                 "(got 'learned')");
  }
}

TEST(DispatchRegistry, EveryNameRoundTripsAndBuildsADispatcher) {
  Communicator self(MPI_COMM_SELF);
#define MOESIM_DISPATCH_ROW(id, name, make) {DispatchAlgo::id, name},
  const std::vector<std::pair<DispatchAlgo, std::string>> algos = {MOESIM_DISPATCH_ALGORITHMS(MOESIM_DISPATCH_ROW)};
#undef MOESIM_DISPATCH_ROW
  EXPECT_EQ(algos.size(), 6u);
  for (const auto& [a, name] : algos) {
    EXPECT_EQ(parse_dispatch(name), a);
    EXPECT_EQ(dispatch_name(a), name);
    EXPECT_EQ(Dispatcher(self, 4, a).algorithm(), a);
  }
  try {
    parse_dispatch("ring");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "--dispatch must be alltoallv, allgather, p2p, padded, hierarchical or nccl (got 'ring')");
  }
}

TEST(Capacity, PreselectedSlotsAreKeptExactly) {
  Communicator self(MPI_COMM_SELF);
  // Expert choice: 3 tokens x E = 2 slots, the router kept 4 of them; capacity 1 is
  // already applied by the router, so nothing more is dropped.
  const std::vector<int> expert = {0, 1, 0, 1, 0, 1};
  const std::vector<char> pre = {1, 1, 0, 1, 1, 0};
  const CapacityDecision d = decide_capacity(self, expert, 3, 2, 2, 1, pre);
  EXPECT_EQ(d.kept, pre);
  EXPECT_EQ(d.assigned, (std::vector<std::int64_t>{2, 2}));
  EXPECT_EQ(d.processed, d.assigned);
  EXPECT_EQ(d.dropped, 0);
}

}  // namespace
}  // namespace moesim
