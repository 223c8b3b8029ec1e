// Expert-data parallelism (--ep-size N): P/N groups of N consecutive ranks, each holding
// every expert. The distributed layer against the serial reference for every valid N on
// this P (every gate, E = 1 ... 8), every dispatch algorithm bit for bit, finite
// differences with replicated experts, and a dispatch self-check inside groups in
// DeepEP's style (payloads encode their origin; no row leaves its group).
#include <gtest/gtest.h>

#include <numeric>

#include "comm/expert_groups.hpp"
#include "core/rng.hpp"
#include "core/shard.hpp"
#include "moe/capacity.hpp"
#include "moe/dispatcher.hpp"
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

// Every N that divides both P and E, N = P first when it is valid.
std::vector<int> ep_sizes(int E, int P) {
  std::vector<int> out;
  for (int n = P; n >= 1; --n)
    if (P % n == 0 && E % n == 0) out.push_back(n);
  return out;
}

TEST(ExpertGroups, ConsecutiveRanksFormAGroupSameIndexRanksTheReplicas) {
  const Communicator& comm = world();
  const int P = comm.size(), r = comm.rank();
  for (int N = 1; N <= P; ++N) {
    if (P % N != 0) continue;
    const ExpertGroups g(comm, N);
    EXPECT_EQ(g.group_size(), N);
    EXPECT_EQ(g.groups(), P / N);
    EXPECT_EQ(g.group_index(), r / N);
    EXPECT_EQ(g.group().rank(), r % N);
    EXPECT_EQ(g.first_rank(), (r / N) * N);
    std::vector<int> members(static_cast<std::size_t>(N));
    g.group().allgather(&r, 1, members.data());
    for (int q = 0; q < N; ++q) EXPECT_EQ(members[q], (r / N) * N + q) << "N " << N;
    std::vector<int> replicas(static_cast<std::size_t>(P / N));
    g.replicas().allgather(&r, 1, replicas.data());
    for (int k = 0; k < P / N; ++k) EXPECT_EQ(replicas[k], k * N + r % N) << "N " << N;
  }
}

struct EpCase {
  const char* name;
  GateKind gate;
  int E, K;
  double capacity_factor;
  std::int64_t B;
  int shared = 0;
};
void PrintTo(const EpCase& c, std::ostream* os) { *os << c.name; }

MoeLayerConfig make_cfg(const EpCase& c, int N) {
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
  cfg.router.importance_weight = 0.3;
  cfg.router.load_weight = 0.2;
  cfg.router.sinkhorn_iters = 6;
  cfg.shared_experts = c.shared;
  cfg.ep_size = N;
  return cfg;
}

ReferenceMoe make_reference(MoeLayer<double>& layer, const MoeLayerConfig& cfg, std::int64_t B) {
  if (cfg.gate == GateKind::kNoisyTopK)
    layer.router().noise_weight().value = test::random_matrix(cfg.d_model, cfg.experts, 77, 0.5);
  ReferenceMoe ref = test::make_reference(layer, cfg, kSeed, kLayer);
  if (cfg.gate == GateKind::kNoisyTopK) {
    ref.noise.resize(B, cfg.experts);
    for (Index t = 0; t < B; ++t)
      for (int e = 0; e < cfg.experts; ++e) ref.noise(t, e) = router_noise(kSeed, kLayer, kStep, t, e);
  }
  return ref;
}

class EpLayerVsReference : public ::testing::TestWithParam<EpCase> {};

// The same outputs, losses, kept assignments and (replica-summed) gradients as the serial
// reference, for every group size; exchanges stay inside the group.
TEST_P(EpLayerVsReference, EveryGroupSize) {
  const EpCase c = GetParam();
  const Communicator& comm = world();
  const int P = comm.size();
  const Mat<double> xg = test::random_matrix(c.B, 6, 101), dyg = test::random_matrix(c.B, 6, 102);
  const Shard sh = shard_of(c.B, comm.rank(), P);
  const Mat<double> x = xg.middleRows(sh.first, sh.count), dy = dyg.middleRows(sh.first, sh.count);
  for (int N : ep_sizes(c.E, P)) {
    SCOPED_TRACE("ep_size " + std::to_string(N));
    const MoeLayerConfig cfg = make_cfg(c, N);
    MoeLayer<double> layer(comm, "moe", cfg, kSeed, kLayer);
    layer.set_mode(true, kStep);
    ASSERT_EQ(layer.local_experts(), c.E / N);
    EXPECT_EQ(layer.global_expert(0), (comm.rank() % N) * (c.E / N));
    ReferenceMoe ref = make_reference(layer, cfg, c.B);

    Mat<double> y, dx;
    layer.forward(x, y);
    const ReferenceMoe::Forward fw = ref.forward(xg);
    constexpr double abs_tol = 1e-12, rel_tol = 1e-9;
    test::expect_forward_matches(layer, y, fw, sh, abs_tol, rel_tol);

    layer.router().weight().grad.setZero();
    if (c.gate == GateKind::kNoisyTopK) layer.router().noise_weight().grad.setZero();
    layer.backward(dy, dx);
    const ReferenceMoe::Grads g = ref.backward(xg, fw, dyg);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(dx, g.dx.middleRows(sh.first, sh.count), abs_tol, rel_tol, "dX");
    MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(layer.router().weight().grad), g.drouter, abs_tol, rel_tol,
                                  "dW_router");
    test::expect_expert_grads(layer, g.dexperts, g.dshared, abs_tol, rel_tol);

    // Traffic (indexed by world rank) only inside the group.
    const std::vector<double>& to = layer.comm_stats().bytes_to_rank;
    ASSERT_EQ(static_cast<int>(to.size()), P);
    long outside = 0;
    for (int q = 0; q < P; ++q) outside += q / N != comm.rank() / N && to[q] != 0.0;
    EXPECT_EQ(comm.allreduce_sum(outside), 0) << "bytes sent outside the expert group";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, EpLayerVsReference,
    ::testing::Values(EpCase{"dense_e1", GateKind::kTopK, 1, 1, 1.0, 33},
                      EpCase{"e2_k1_drop", GateKind::kTopK, 2, 1, 0.75, 37},
                      EpCase{"e2_k2_shared", GateKind::kTopK, 2, 2, 1.0, 30, 1},
                      EpCase{"e4_k2_drop", GateKind::kTopK, 4, 2, 0.5, 41},
                      EpCase{"e8_k3_dropless", GateKind::kTopK, 8, 3, 0.0, 50},
                      EpCase{"switch_e8", GateKind::kSwitch, 8, 1, 1.0, 48},
                      EpCase{"noisy_e4", GateKind::kNoisyTopK, 4, 2, 1.0, 37},
                      EpCase{"expert_choice_e2", GateKind::kExpertChoice, 2, 1, 1.0, 41},
                      EpCase{"expert_choice_e8", GateKind::kExpertChoice, 8, 2, 0.5, 50},
                      EpCase{"sbase_e2", GateKind::kSBase, 2, 1, 1.25, 40},
                      EpCase{"sbase_e4", GateKind::kSBase, 4, 2, 0.0, 44},
                      EpCase{"hash_e2", GateKind::kHash, 2, 1, 1.0, 36}),
    [](const ::testing::TestParamInfo<EpCase>& tp) { return std::string(tp.param.name); });

// Every dispatch algorithm inside groups: bit-identical outputs and gradients.
TEST(EpLayerDispatch, AllAlgorithmsAgreeBitForBitInsideGroups) {
  const Communicator& comm = world();
  const EpCase c{"", GateKind::kTopK, 4, 2, 0.75, 61};
  const Mat<double> xg = test::random_matrix(c.B, 6, 301), dyg = test::random_matrix(c.B, 6, 302);
  const Shard sh = shard_of(c.B, comm.rank(), comm.size());
  const Mat<double> x = xg.middleRows(sh.first, sh.count), dy = dyg.middleRows(sh.first, sh.count);
  for (int N : ep_sizes(c.E, comm.size())) {
    SCOPED_TRACE("ep_size " + std::to_string(N));
    Mat<double> y0, dx0, g0;
    for (DispatchAlgo algo : {DispatchAlgo::kAlltoallv, DispatchAlgo::kAllgather, DispatchAlgo::kP2P,
                              DispatchAlgo::kPadded, DispatchAlgo::kHierarchical}) {
      MoeLayerConfig cfg = make_cfg(c, N);
      cfg.dispatch = algo;
      MoeLayer<double> layer(comm, "moe", cfg, kSeed, kLayer);
      ReferenceMoe ref = make_reference(layer, cfg, c.B);
      Mat<double> y, dx;
      layer.forward(x, y);
      layer.backward(dy, dx);
      MOESIM_EXPECT_CLOSE_ALL_RANKS(y, ref.forward(xg).y.middleRows(sh.first, sh.count), 1e-12, 1e-10,
                                    dispatch_name(algo));
      const Mat<double> g = layer.local_expert(0).w1().grad;
      if (algo == DispatchAlgo::kAlltoallv) {
        y0 = y;
        dx0 = dx;
        g0 = g;
      } else {
        const long diff = (y.array() != y0.array()).count() + (dx.array() != dx0.array()).count() +
                          (g.array() != g0.array()).count();
        EXPECT_EQ(comm.allreduce_sum(diff), 0) << dispatch_name(algo) << " differs from alltoallv";
      }
    }
  }
}

// Finite differences with replicated experts: an expert is perturbed on all its replicas
// at once (as Adam moves them together), against the replica-summed gradient.
TEST(EpLayerGradients, FiniteDifferencesWithReplicas) {
  const Communicator& comm = world();
  const EpCase c{"", GateKind::kTopK, 2, 1, 0.75, 20};
  for (int N : ep_sizes(c.E, comm.size())) {
    SCOPED_TRACE("ep_size " + std::to_string(N));
    MoeLayerConfig cfg = make_cfg(c, N);
    cfg.d_model = 4;
    cfg.d_ff = 3;
    cfg.router_init_scale = 2.0;
    MoeLayer<double> layer(comm, "moe", cfg, kSeed, kLayer);
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
    const Mat<double> num = test::numerical_grad(layer.router().weight().value, loss);
    MOESIM_EXPECT_CLOSE_ALL_RANKS(test::summed(layer.router().weight().grad), num, test::kFdAbs, test::kFdRel,
                                  "router dW");
    const int me = layer.expert_groups().group().rank();
    for (int owner = 0; owner < N; ++owner)
      for (Param<double>* p : experts) {
        const Mat<double> grad = test::replica_summed(layer, p->grad);
        Mat<double> g(p->value.rows(), p->value.cols());
        for (Index i = 0; i < p->size(); ++i) {
          const bool mine = owner == me;
          const double keep = p->value.data()[i];
          if (mine) p->value.data()[i] = keep + 1e-6;
          const double up = loss();
          if (mine) p->value.data()[i] = keep - 1e-6;
          const double down = loss();
          p->value.data()[i] = keep;
          g.data()[i] = (up - down) / 2e-6;
        }
        if (owner == me) {
          std::string worst;
          EXPECT_EQ(test::count_mismatches(grad, g, test::kFdAbs, test::kFdRel, &worst), 0) << p->name << ": " << worst;
        }
      }
  }
}

// Deterministic routing of global token g: K distinct experts, skewed towards expert 0 so
// that capacity overflows.
std::vector<int> route(std::int64_t g, int K, int E) {
  Rng rng(91, Stream::kTest, static_cast<std::uint64_t>(g));
  std::vector<int> out;
  while (static_cast<int>(out.size()) < K) {
    const int e = rng.uniform() < 0.3 ? 0 : static_cast<int>(rng.below(static_cast<std::uint64_t>(E)));
    if (std::find(out.begin(), out.end(), e) == out.end()) out.push_back(e);
  }
  return out;
}

struct GroupCase {
  std::int64_t B;
  int E, K;
  double capacity_factor;
};

class GroupDispatch : public ::testing::TestWithParam<std::tuple<GroupCase, DispatchAlgo>> {};

// Capacity over all P ranks, rows exchanged inside the group: every row reaches the right
// expert of its own group, from a rank of that group, in global token order; exactly the
// group's kept assignments arrive; combine returns every row bit for bit; no byte is
// counted outside the group.
TEST_P(GroupDispatch, PayloadsEncodeTheirOrigin) {
  const GroupCase c = std::get<0>(GetParam());
  const DispatchAlgo algo = std::get<1>(GetParam());
  const Communicator& comm = world();
  const int P = comm.size(), r = comm.rank();
  const Shard sh = shard_of(c.B, r, P);
  std::vector<int> expert;
  for (std::int64_t t = 0; t < sh.count; ++t)
    for (int e : route(sh.first + t, c.K, c.E)) expert.push_back(e);
  const std::int64_t cap = expert_capacity(c.capacity_factor, c.B, c.K, c.E);
  const CapacityDecision cd = decide_capacity(comm, expert, sh.count, c.K, c.E, cap);
  // Serial verdict: kept[g][j] in the global (choice, token) order.
  std::vector<std::vector<char>> keep(static_cast<std::size_t>(c.B), std::vector<char>(static_cast<std::size_t>(c.K), 1));
  std::vector<std::int64_t> used(static_cast<std::size_t>(c.E), 0);
  for (int j = 0; j < c.K; ++j)
    for (std::int64_t g = 0; g < c.B; ++g) {
      const int e = route(g, c.K, c.E)[static_cast<std::size_t>(j)];
      if (cap > 0 && used[static_cast<std::size_t>(e)] >= cap) keep[g][j] = 0;
      else ++used[static_cast<std::size_t>(e)];
    }

  for (int N : ep_sizes(c.E, P)) {
    SCOPED_TRACE("ep_size " + std::to_string(N));
    const ExpertGroups groups(comm, N);
    const int gi = groups.group_index();
    Dispatcher disp(groups.group(), c.E, algo);
    CommStats stats;
    stats.first_rank = groups.first_rank();
    stats.reset(P);
    DispatchLayout L = disp.plan(expert, cd.kept, sh.count, c.K, stats, {c.B, cap, P});
    // Payload row: (world rank, global token, choice, expert).
    Mat<std::int64_t> send(L.rows_sent(), 4);
    for (Index s = 0; s < L.rows_sent(); ++s) {
      const std::int64_t t = L.send_token[s];
      send.row(s) << r, sh.first + t, L.send_choice[s], expert[static_cast<std::size_t>(t * c.K + L.send_choice[s])];
    }
    Mat<std::int64_t> blocks = disp.dispatch(L, send, stats);
    long wrong = 0;
    for (int le = 0; le < L.E_local; ++le) {
      const int e = disp.global_expert(le);
      std::int64_t prev = -1, expected = 0;
      for (Index i = L.block_offset[le]; i < L.block_offset[le + 1]; ++i) {
        wrong += blocks(i, 3) != e;                          // right expert
        wrong += blocks(i, 0) / N != gi;                     // from a rank of this group
        wrong += blocks(i, 1) <= prev;                       // global token order
        const Shard src = shard_of(c.B, static_cast<int>(blocks(i, 0)), P);
        wrong += blocks(i, 1) < src.first || blocks(i, 1) >= src.first + src.count;
        wrong += !keep[static_cast<std::size_t>(blocks(i, 1))][static_cast<std::size_t>(blocks(i, 2))];
        prev = blocks(i, 1);
      }
      // Exactly this group's kept assignments of expert e arrive.
      for (int q = gi * N; q < (gi + 1) * N; ++q) {
        const Shard src = shard_of(c.B, q, P);
        for (std::int64_t g = src.first; g < src.first + src.count; ++g) {
          const std::vector<int> ch = route(g, c.K, c.E);
          for (int j = 0; j < c.K; ++j) expected += ch[static_cast<std::size_t>(j)] == e && keep[g][j];
        }
      }
      wrong += (L.block_offset[le + 1] - L.block_offset[le]) != expected;
    }
    EXPECT_EQ(comm.allreduce_sum(wrong), 0) << "rows landed at the wrong expert, group or order";
    Mat<std::int64_t> back = disp.combine(L, blocks, stats);
    EXPECT_EQ(comm.allreduce_sum(static_cast<long>((back.array() != send.array()).count())), 0);
    Mat<float> xs = Mat<float>::Random(L.rows_sent(), 3);
    Mat<float> xb = disp.combine(L, disp.dispatch(L, xs, stats), stats);
    EXPECT_EQ(comm.allreduce_sum(static_cast<long>((xb.array() != xs.array()).count())), 0);
    long outside = 0;
    double inside = 0;
    for (int q = 0; q < P; ++q) {
      if (q / N != gi) outside += stats.bytes_to_rank[static_cast<std::size_t>(q)] != 0.0;
      else inside += stats.bytes_to_rank[static_cast<std::size_t>(q)];
    }
    EXPECT_EQ(comm.allreduce_sum(outside), 0) << "bytes counted outside the group";
    EXPECT_GT(comm.allreduce_sum(inside), 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GroupDispatch,
                         ::testing::Combine(::testing::Values(GroupCase{64, 2, 1, 1.0}, GroupCase{97, 4, 2, 0.5},
                                                              GroupCase{128, 8, 3, 0.0}, GroupCase{3, 4, 2, 1.0},
                                                              GroupCase{40, 1, 1, 0.5}),
                                            ::testing::Values(DispatchAlgo::kAlltoallv, DispatchAlgo::kAllgather,
                                                              DispatchAlgo::kP2P, DispatchAlgo::kPadded)));

}  // namespace
}  // namespace moesim
