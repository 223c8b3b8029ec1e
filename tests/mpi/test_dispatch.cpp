// Dispatch/combine on P ranks with payloads that encode their origin, in the
// style of DeepEP's tests: every row must land at the right expert, in global
// token order, and come back bit-identical.
#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "core/shard.hpp"
#include "moe/capacity.hpp"
#include "moe/dispatcher.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

using test::world;

// Deterministic routing of global token g: K distinct experts, skewed towards
// expert 0 so that capacity overflows.
std::vector<int> route(std::int64_t g, int K, int E, std::uint64_t seed) {
  Rng rng(seed, Stream::kTest, static_cast<std::uint64_t>(g));
  std::vector<int> out;
  while (static_cast<int>(out.size()) < K) {
    const int e = rng.uniform() < 0.3 ? 0 : static_cast<int>(rng.below(static_cast<std::uint64_t>(E)));
    if (std::find(out.begin(), out.end(), e) == out.end()) out.push_back(e);
  }
  return out;
}

struct Case {
  std::int64_t B;
  int E, K;
  double capacity_factor;
};

class DispatchRoundTrip : public ::testing::TestWithParam<std::tuple<Case, DispatchAlgo>> {};

TEST_P(DispatchRoundTrip, RowsReachTheirExpertsAndReturnExactly) {
  const Case c = std::get<0>(GetParam());
  const DispatchAlgo algo = std::get<1>(GetParam());
  const Communicator& comm = world();
  const int P = comm.size(), r = comm.rank();
  if (c.E % P != 0) GTEST_SKIP() << "E not divisible by P";
  const Shard sh = shard_of(c.B, r, P);
  std::vector<int> expert;
  for (std::int64_t t = 0; t < sh.count; ++t)
    for (int e : route(sh.first + t, c.K, c.E, 77)) expert.push_back(e);

  // Serial verdict over the global batch, computed identically on every rank.
  const std::int64_t cap = expert_capacity(c.capacity_factor, c.B, c.K, c.E);
  std::vector<std::vector<int>> global(static_cast<std::size_t>(c.B));
  for (std::int64_t g = 0; g < c.B; ++g) global[g] = route(g, c.K, c.E, 77);
  std::vector<std::vector<char>> keep(static_cast<std::size_t>(c.B), std::vector<char>(c.K, 1));
  std::vector<std::int64_t> used(static_cast<std::size_t>(c.E), 0), dropped_ref(1, 0);
  for (int j = 0; j < c.K; ++j)
    for (std::int64_t g = 0; g < c.B; ++g) {
      const int e = global[g][j];
      if (cap > 0 && used[e] >= cap) { keep[g][j] = 0; ++dropped_ref[0]; }
      else ++used[e];
    }

  CapacityDecision cd = decide_capacity(comm, expert, sh.count, c.K, c.E, cap);
  long wrong = 0;
  for (std::int64_t t = 0; t < sh.count; ++t)
    for (int j = 0; j < c.K; ++j) wrong += cd.kept[t * c.K + j] != keep[sh.first + t][j];
  EXPECT_EQ(comm.allreduce_sum(wrong), 0) << "kept flags differ from the serial global order";
  EXPECT_EQ(cd.dropped, dropped_ref[0]);
  EXPECT_EQ(cd.processed, used);

  Dispatcher disp(comm, c.E, algo);
  CommStats stats;
  stats.reset(P);
  const std::int64_t n_max = (c.B + P - 1) / P;
  const Index slot = static_cast<Index>(cap > 0 ? std::min(cap, n_max) : n_max);
  DispatchLayout L = disp.plan(expert, cd.kept, sh.count, c.K, stats, {c.B, cap});
  // Payload row: (source rank, global token, choice, expert).
  Mat<std::int64_t> send(L.rows_sent(), 4);
  for (Index s = 0; s < L.rows_sent(); ++s) {
    const std::int64_t t = L.send_token[s];
    send.row(s) << r, sh.first + t, L.send_choice[s], expert[t * c.K + L.send_choice[s]];
  }
  Mat<std::int64_t> blocks = disp.dispatch(L, send, stats);
  wrong = 0;
  for (int le = 0; le < L.E_local; ++le) {
    std::int64_t prev = -1;
    for (Index i = L.block_offset[le]; i < L.block_offset[le + 1]; ++i) {
      wrong += blocks(i, 3) != disp.global_expert(le);  // right expert
      wrong += blocks(i, 1) <= prev;                            // global token order
      const Shard src = shard_of(c.B, static_cast<int>(blocks(i, 0)), P);
      wrong += blocks(i, 1) < src.first || blocks(i, 1) >= src.first + src.count;
      prev = blocks(i, 1);
    }
    // Exactly the kept assignments of this expert arrive.
    wrong += (L.block_offset[le + 1] - L.block_offset[le]) != used[disp.global_expert(le)];
  }
  EXPECT_EQ(comm.allreduce_sum(wrong), 0) << "rows landed at the wrong expert or out of order";

  // Identity experts: combine returns exactly what was sent.
  Mat<std::int64_t> back = disp.combine(L, blocks, stats);
  EXPECT_EQ(comm.allreduce_sum(static_cast<long>((back.array() != send.array()).count())), 0);

  // Float payload: identity experts give back the input bit for bit.
  Mat<float> xs = Mat<float>::Random(L.rows_sent(), 5);
  Mat<float> xb = disp.combine(L, disp.dispatch(L, xs, stats), stats);
  EXPECT_EQ(comm.allreduce_sum(static_cast<long>((xb.array() != xs.array()).count())), 0);

  // Own rows left to the caller (DispatchLayout::own_in_blocks): it writes them into their
  // blocks before dispatch and finds them there after combine; the algorithm neither reads
  // them from the send order nor writes them back into it.
  EXPECT_EQ(disp.can_leave_own_rows(), algo != DispatchAlgo::kPadded);
  if (disp.can_leave_own_rows()) {
    CommStats own_stats;
    own_stats.reset(P);
    DispatchLayout O = disp.plan(expert, cd.kept, sh.count, c.K, own_stats, {c.B, cap});
    ASSERT_TRUE(O.recv_known);
    O.own_in_blocks = true;
    constexpr std::int64_t kUnread = -9, kUnwritten = -5;
    Mat<std::int64_t> send_others = send;
    RowBuffer<std::int64_t> block_buf, back_buf;
    MatMap<std::int64_t> placed = block_buf.view(O.rows_received(), 4);
    placed.setConstant(kUnwritten);
    for (int le = 0; le < O.E_local; ++le) {
      const Index shift = own_block_shift(O, r, le);
      for (Index s = send_start(O, r * O.E_local + le); s < send_start(O, r * O.E_local + le + 1); ++s) {
        placed.row(s + shift) = send.row(s);
        send_others.row(s).setConstant(kUnread);
      }
    }
    const MatMap<std::int64_t> got_blocks =
        disp.dispatch(O, ConstMatMap<std::int64_t>(send_others.data(), send_others.rows(), 4), block_buf, own_stats);
    EXPECT_EQ(comm.allreduce_sum(static_cast<long>((got_blocks.array() != blocks.array()).count())), 0)
        << "own rows placed by the caller: other blocks than the plain dispatch's";
    back_buf.view(O.rows_sent(), 4).setConstant(kUnwritten);
    const MatMap<std::int64_t> got_back =
        disp.combine(O, ConstMatMap<std::int64_t>(got_blocks.data(), got_blocks.rows(), 4), back_buf, own_stats);
    long bad = 0;
    for (Index s = 0; s < O.rows_sent(); ++s) {
      const bool own = s >= O.send_displs[r] && s < O.send_displs[r] + O.send_counts[r];
      bad += own ? (got_back.row(s).array() != kUnwritten).count() : (got_back.row(s).array() != send.row(s).array()).count();
    }
    EXPECT_EQ(comm.allreduce_sum(bad), 0) << "combine wrote own rows back, or lost another rank's";
  }

  // Traffic accounting: what this rank sent per destination, in bytes (the padded
  // exchange sends whole slots: S rows plus a header per (rank, expert) pair).
  double expect_bytes = 0, useful_remote = 0;
  const double row_bytes = 4.0 * 8 + 5.0 * 4;
  if (algo == DispatchAlgo::kPadded) {
    expect_bytes = 4.0 * static_cast<double>(P) * L.E_local * static_cast<double>(slot + 1) * row_bytes / 2.0;
  } else {
    for (int q = 0; q < P; ++q) expect_bytes += (L.send_counts[q] + L.recv_counts[q]) * row_bytes;
  }
  for (int q = 0; q < P; ++q)
    if (q != r) useful_remote += (L.send_counts[q] + L.recv_counts[q]) * row_bytes;
  double got = 0;
  for (double b : stats.bytes_to_rank) got += b;
  EXPECT_DOUBLE_EQ(got, expect_bytes);
  const double remote = stats.phase_bytes[0] + stats.phase_bytes[1] + stats.phase_bytes[2] + stats.phase_bytes[3];
  if (algo == DispatchAlgo::kPadded) {
    EXPECT_NEAR(remote - stats.padding_bytes, useful_remote, 1e-6) << "padding accounting";
  } else {
    EXPECT_DOUBLE_EQ(remote, useful_remote);
    EXPECT_EQ(stats.padding_bytes, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DispatchRoundTrip,
                         ::testing::Combine(::testing::Values(Case{64, 4, 1, 1.0}, Case{64, 4, 2, 1.0},
                                                              Case{97, 8, 2, 0.5}, Case{128, 8, 3, 0.0},
                                                              Case{3, 4, 2, 1.0}, Case{200, 4, 4, 1.25}),
                                            ::testing::Values(DispatchAlgo::kAlltoallv, DispatchAlgo::kAllgather,
                                                              DispatchAlgo::kP2P, DispatchAlgo::kPadded)));

// The hierarchical exchange over nodes of G consecutive ranks: the expert blocks of a flat
// exchange, the inputs back bit for bit, every row across nodes once (the flat exchange's
// inter-node bytes) in no more messages, each stage's bytes apart, and MPI seconds only in
// stages of more than one rank.
class HierarchicalRoundTrip : public ::testing::TestWithParam<std::tuple<Case, int>> {};

TEST_P(HierarchicalRoundTrip, SameBlocksAsFlatAndFewerMessagesAcrossNodes) {
  const Case c = std::get<0>(GetParam());
  const int G = std::get<1>(GetParam());
  const Communicator& comm = world();
  const int P = comm.size(), r = comm.rank();
  if (c.E % P != 0) GTEST_SKIP() << "E not divisible by P";
  if (P % G != 0) GTEST_SKIP() << "G does not divide P";
  const Shard sh = shard_of(c.B, r, P);
  std::vector<int> expert;
  for (std::int64_t t = 0; t < sh.count; ++t)
    for (int e : route(sh.first + t, c.K, c.E, 91)) expert.push_back(e);
  const std::int64_t cap = expert_capacity(c.capacity_factor, c.B, c.K, c.E);
  const CapacityDecision cd = decide_capacity(comm, expert, sh.count, c.K, c.E, cap);
  std::vector<int> node_of(static_cast<std::size_t>(P));
  for (int q = 0; q < P; ++q) node_of[static_cast<std::size_t>(q)] = q / G;

  auto run = [&](DispatchAlgo algo, CommStats& stats, Mat<float>& blocks, Mat<float>& back) {
    Dispatcher disp(comm, c.E, algo, node_of);
    EXPECT_EQ(disp.unusable(), "");
    stats.reset(P);
    stats.node_of = node_of;
    DispatchLayout L = disp.plan(expert, cd.kept, sh.count, c.K, stats, {c.B, cap});
    Mat<float> xs(L.rows_sent(), 3);
    for (Index s = 0; s < L.rows_sent(); ++s)
      xs.row(s) << static_cast<float>(r), static_cast<float>(sh.first + L.send_token[s]),
          static_cast<float>(L.send_choice[s]) + 0.25f;
    blocks = disp.dispatch(L, xs, stats);
    back = disp.combine(L, blocks, stats);
    EXPECT_EQ(comm.allreduce_sum(static_cast<long>((back.array() != xs.array()).count())), 0) << dispatch_name(algo);
  };
  CommStats flat, hier;
  Mat<float> flat_blocks, flat_back, hier_blocks, hier_back;
  run(DispatchAlgo::kAlltoallv, flat, flat_blocks, flat_back);
  run(DispatchAlgo::kHierarchical, hier, hier_blocks, hier_back);
  ASSERT_EQ(hier_blocks.rows(), flat_blocks.rows());
  EXPECT_EQ(comm.allreduce_sum(static_cast<long>((hier_blocks.array() != flat_blocks.array()).count())), 0);
  double sums[4] = {flat.inter_node_bytes, hier.inter_node_bytes, static_cast<double>(flat.inter_node_messages),
                    static_cast<double>(hier.inter_node_messages)};
  comm.allreduce_sum(sums, 4);
  EXPECT_EQ(sums[1], sums[0]) << "every row crosses nodes once";
  EXPECT_LE(sums[3], sums[2]);
  if (G == P) {
    EXPECT_EQ(sums[1], 0.0);
  }
  // A stage of one rank (the inter stage on one node, the intra stage at one rank per node)
  // moves its rows by a copy, not through MPI: no seconds in it.
  if (G == P) {
    EXPECT_EQ(hier.stage_seconds[1], 0.0);
  }
  if (G == 1) {
    EXPECT_EQ(hier.stage_seconds[0], 0.0);
  } else {
    EXPECT_GT(comm.allreduce_max(hier.stage_seconds[0]), 0.0);
  }
  // Inter-node bytes are the inter stage's; the stages' bytes add up to the bytes sent.
  EXPECT_DOUBLE_EQ(hier.stage_bytes[1], hier.inter_node_bytes);
  const double remote = hier.phase_bytes[0] + hier.phase_bytes[1] + hier.phase_bytes[2] + hier.phase_bytes[3];
  EXPECT_DOUBLE_EQ(hier.stage_bytes[0] + hier.stage_bytes[1], remote);
  EXPECT_EQ(flat.stage_bytes[0] + flat.stage_bytes[1], 0.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, HierarchicalRoundTrip,
                         ::testing::Combine(::testing::Values(Case{64, 4, 1, 1.0}, Case{97, 8, 2, 0.5},
                                                              Case{128, 8, 3, 0.0}, Case{3, 4, 2, 1.0},
                                                              Case{200, 4, 4, 1.25}),
                                            ::testing::Values(1, 2, 4)));

}  // namespace
}  // namespace moesim
