// Two-stage (Tutel's 2D-hierarchical) exchange for ranks on nodes of G consecutive ranks:
// group rank r = n*G + l sits on node n at local index l.
//   intra stage: inside each node, rank (n, l) hands local rank (n, l') every row bound for
//                the ranks (m, l') of every node m;
//   inter stage: rank (n, l') sends rank (m, l') the rows of all of node n's ranks bound for
//                it: between two nodes G messages travel instead of G * G, each aggregated.
// The counts travel the same way first (one equal-split alltoall per stage). Rows arrive in
// the order of a flat exchange (by source rank), so the expert blocks, and every result,
// are those of the other algorithms.
#include <algorithm>

#include "moe/dispatch/algorithm.hpp"

namespace moesim {

namespace {

enum Stage { kIntra = 0, kInter = 1 };

// Node size when every node holds the same number of consecutive ranks, else 0.
int consecutive_node_size(const std::vector<int>& node_of) {
  const int P = static_cast<int>(node_of.size());
  int G = 0;
  while (G < P && node_of[static_cast<std::size_t>(G)] == node_of[0]) ++G;
  if (G == 0 || P % G != 0) return 0;
  for (int r = 0; r < P; ++r)
    if (node_of[static_cast<std::size_t>(r)] != node_of[static_cast<std::size_t>(r - r % G)] ||
        (r % G == 0 && r > 0 && node_of[static_cast<std::size_t>(r)] == node_of[static_cast<std::size_t>(r - 1)]))
      return 0;
  return G;
}

class HierarchicalDispatch : public DispatchAlgorithmOf<HierarchicalDispatch> {
 public:
  HierarchicalDispatch(const Communicator& comm, const std::vector<int>& node_of)
      : DispatchAlgorithmOf(comm), G_(consecutive_node_size(node_of)) {
    if (G_ == 0) {
      unusable_ = "--dispatch hierarchical needs every node to hold the same number of consecutive ranks of an "
                  "expert group; give --ranks-per-node G to exchange over virtual nodes of G ranks";
      return;
    }
    nodes_ = comm.size() / G_;
    node_ = comm.rank() / G_;
    local_ = comm.rank() % G_;
    intra_ = std::make_unique<Communicator>(comm, node_, local_);
    inter_ = std::make_unique<Communicator>(comm, local_, node_);
  }

  std::string unusable() const override { return unusable_; }

  void plan(DispatchLayout& L, const DispatchLimits&, CommStats& stats) const override {
    const int El = L.E_local;
    // Intra: to local l' the per-expert counts for the ranks (m, l'), [m][le].
    to_local_.resize(static_cast<std::size_t>(G_ * nodes_ * El));
    from_local_.resize(to_local_.size());
    for (int lp = 0; lp < G_; ++lp)
      for (int m = 0; m < nodes_; ++m)
        for (int le = 0; le < El; ++le)
          to_local_[static_cast<std::size_t>((lp * nodes_ + m) * El + le)] =
              L.send_expert_counts[static_cast<std::size_t>((m * G_ + lp) * El + le)];
    {
      StageScope s(stats, kIntra);
      count_exchange(*intra_, to_local_.data(), from_local_.data(), nodes_ * El, stats);
    }
    // Relay: rows from local source ls for node m, and to node m the [ls][le] counts.
    L.relay_counts.assign(static_cast<std::size_t>(G_ * nodes_), 0);
    to_node_.resize(static_cast<std::size_t>(nodes_ * G_ * El));
    for (int ls = 0; ls < G_; ++ls)
      for (int m = 0; m < nodes_; ++m)
        for (int le = 0; le < El; ++le) {
          const int c = from_local_[static_cast<std::size_t>((ls * nodes_ + m) * El + le)];
          L.relay_counts[static_cast<std::size_t>(ls * nodes_ + m)] += c;
          to_node_[static_cast<std::size_t>((m * G_ + ls) * El + le)] = c;
        }
    // From node n: the counts of its ranks (n, ls) for this rank's experts, source-major as a
    // flat count exchange delivers them.
    {
      StageScope s(stats, kInter);
      count_exchange(*inter_, to_node_.data(), L.recv_expert_counts.data(), G_ * El, stats);
    }
    complete_receive_side(L);
  }

  template <class T>
  MatMap<T> dispatch_rows(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                          CommStats& stats) const {
    const Index width = send_rows.cols();
    // Send order is by destination q = m*G + l'; the intra stage wants it by [l'][m].
    MatMap<T> packed = scratch<T>(0).view(L.rows_sent(), width);
    std::vector<int>& s1_send = stage_send_[kIntra];
    std::vector<int>& s1_recv = stage_recv_[kIntra];
    std::vector<int>& s2_send = stage_send_[kInter];
    std::vector<int>& s2_recv = stage_recv_[kInter];
    s1_send.assign(static_cast<std::size_t>(G_), 0);
    {
      Index at = 0;
      for (int lp = 0; lp < G_; ++lp)
        for (int m = 0; m < nodes_; ++m) {
          const int q = m * G_ + lp;
          const int c = L.send_counts[static_cast<std::size_t>(q)];
          if (c > 0) packed.middleRows(at, c) = send_rows.middleRows(L.send_displs[static_cast<std::size_t>(q)], c);
          at += c;
          s1_send[static_cast<std::size_t>(lp)] += c;
        }
    }
    relayed_per_local(L, s1_recv);
    const Index relayed = sum(s1_recv);
    MatMap<T> relay_rows = scratch<T>(1).view(relayed, width);
    exchange(*intra_, kIntra, packed.data(), s1_send, relay_rows.data(), s1_recv, width, stats);
    // [ls][m] -> [m][ls] for the inter stage.
    MatMap<T> repacked = scratch<T>(0).view(relayed, width);
    s2_send.assign(static_cast<std::size_t>(nodes_), 0);
    repack(L, relay_rows, repacked, false, s2_send);
    MatMap<T> received = scratch<T>(1).view(L.rows_received(), width);
    received_per_node(L, s2_recv);
    exchange(*inter_, kInter, repacked.data(), s2_send, received.data(), s2_recv, width, stats);
    MatMap<T> blocks = out.view(L.rows_received(), width);
    for (Index i = 0; i < L.rows_received(); ++i) blocks.row(L.recv_to_block[static_cast<std::size_t>(i)]) = received.row(i);
    return blocks;
  }

  template <class T>
  MatMap<T> combine_rows(const DispatchLayout& L, const ConstMatMap<T>& block_rows, RowBuffer<T>& out,
                         CommStats& stats) const {
    const Index width = block_rows.cols();
    MatMap<T> outgoing = scratch<T>(0).view(L.rows_received(), width);
    for (Index i = 0; i < L.rows_received(); ++i)
      outgoing.row(i) = block_rows.row(L.recv_to_block[static_cast<std::size_t>(i)]);
    std::vector<int>& s1_send = stage_send_[kIntra];
    std::vector<int>& s1_recv = stage_recv_[kIntra];
    std::vector<int>& s2_send = stage_send_[kInter];
    std::vector<int>& s2_recv = stage_recv_[kInter];
    relayed_per_node(L, s2_recv);
    const Index relayed = sum(s2_recv);
    MatMap<T> repacked = scratch<T>(1).view(relayed, width);
    received_per_node(L, s2_send);
    exchange(*inter_, kInter, outgoing.data(), s2_send, repacked.data(), s2_recv, width, stats);
    // [m][ls] -> [ls][m] for the intra stage back.
    MatMap<T> relay_rows = scratch<T>(0).view(relayed, width);
    s1_send.assign(static_cast<std::size_t>(G_), 0);
    repack(L, repacked, relay_rows, true, s1_send);
    s1_recv.assign(static_cast<std::size_t>(G_), 0);
    for (int lp = 0; lp < G_; ++lp)
      for (int m = 0; m < nodes_; ++m) s1_recv[static_cast<std::size_t>(lp)] += L.send_counts[static_cast<std::size_t>(m * G_ + lp)];
    MatMap<T> packed = scratch<T>(1).view(L.rows_sent(), width);
    exchange(*intra_, kIntra, relay_rows.data(), s1_send, packed.data(), s1_recv, width, stats);
    MatMap<T> back = out.view(L.rows_sent(), width);
    Index at = 0;
    for (int lp = 0; lp < G_; ++lp)
      for (int m = 0; m < nodes_; ++m) {
        const int q = m * G_ + lp;
        const int c = L.send_counts[static_cast<std::size_t>(q)];
        if (c > 0) back.middleRows(L.send_displs[static_cast<std::size_t>(q)], c) = packed.middleRows(at, c);
        at += c;
      }
    return back;
  }

 private:
  // Marks the exchanges inside it as one stage's (their seconds and bytes per stage).
  class StageScope {
   public:
    StageScope(CommStats& s, int stage) : s_(s) { s_.stage = stage; }
    ~StageScope() { s_.stage = -1; }
    StageScope(const StageScope&) = delete;
    StageScope& operator=(const StageScope&) = delete;

   private:
    CommStats& s_;
  };

  int relay(const DispatchLayout& L, int ls, int m) const {
    return L.relay_counts[static_cast<std::size_t>(ls * nodes_ + m)];
  }
  // Rows this rank relays, into v: from each local rank (intra stage in), or to each node (inter
  // stage out).
  void relayed_per_local(const DispatchLayout& L, std::vector<int>& v) const {
    v.assign(static_cast<std::size_t>(G_), 0);
    for (int ls = 0; ls < G_; ++ls)
      for (int m = 0; m < nodes_; ++m) v[static_cast<std::size_t>(ls)] += relay(L, ls, m);
  }
  void relayed_per_node(const DispatchLayout& L, std::vector<int>& v) const {
    v.assign(static_cast<std::size_t>(nodes_), 0);
    for (int m = 0; m < nodes_; ++m)
      for (int ls = 0; ls < G_; ++ls) v[static_cast<std::size_t>(m)] += relay(L, ls, m);
  }
  // Rows this rank receives from each node's ranks in the inter stage (their flat counts), into v.
  void received_per_node(const DispatchLayout& L, std::vector<int>& v) const {
    v.assign(static_cast<std::size_t>(nodes_), 0);
    for (int n = 0; n < nodes_; ++n)
      for (int ls = 0; ls < G_; ++ls) v[static_cast<std::size_t>(n)] += L.recv_counts[static_cast<std::size_t>(n * G_ + ls)];
  }
  static Index sum(const std::vector<int>& v) {
    Index s = 0;
    for (int x : v) s += x;
    return s;
  }

  // Relayed rows between [ls][m] order (the intra stage's) and [m][ls] order (the inter
  // stage's); `back` goes from [m][ls] to [ls][m]. `counts` gets the rows per target of
  // the stage that follows (per node m going forward, per local rank ls going back).
  template <class T>
  void repack(const DispatchLayout& L, const MatMap<T>& from, MatMap<T>& to, bool back,
              std::vector<int>& counts) const {
    by_ls_.resize(static_cast<std::size_t>(G_ * nodes_));
    by_m_.resize(by_ls_.size());
    Index a = 0;
    for (int ls = 0; ls < G_; ++ls)
      for (int m = 0; m < nodes_; ++m) {
        by_ls_[static_cast<std::size_t>(ls * nodes_ + m)] = a;
        a += relay(L, ls, m);
      }
    a = 0;
    for (int m = 0; m < nodes_; ++m)
      for (int ls = 0; ls < G_; ++ls) {
        by_m_[static_cast<std::size_t>(ls * nodes_ + m)] = a;
        a += relay(L, ls, m);
      }
    for (int ls = 0; ls < G_; ++ls)
      for (int m = 0; m < nodes_; ++m) {
        const std::size_t k = static_cast<std::size_t>(ls * nodes_ + m);
        const int c = relay(L, ls, m);
        counts[static_cast<std::size_t>(back ? ls : m)] += c;
        if (c == 0) continue;
        if (back) to.middleRows(by_ls_[k], c) = from.middleRows(by_m_[k], c);
        else to.middleRows(by_m_[k], c) = from.middleRows(by_ls_[k], c);
      }
  }

  // One stage's equal-split count exchange over `sub`, `per_peer` ints to each rank.
  static void count_exchange(const Communicator& sub, const int* send, int* recv, int per_peer, CommStats& stats) {
    if (sub.size() == 1) {  // a stage of one rank: see exchange
      std::copy_n(send, per_peer, recv);
      return;
    }
    PhaseTimer timer(stats);
    sub.alltoall(send, recv, per_peer);
  }

  // One stage's alltoallv over `sub` (intra: the node's ranks; inter: the same local index on
  // every node), rows contiguous per peer in peer order.
  template <class T>
  void exchange(const Communicator& sub, int stage, const T* send, const std::vector<int>& send_rows, T* recv,
                const std::vector<int>& recv_rows, Index width, CommStats& stats) const {
    const int n = sub.size();
    auto& [sc, sd, rc, rd] = element_counts(n);
    int s_at = 0, r_at = 0;
    for (int p = 0; p < n; ++p) {
      sc[p] = checked_int(static_cast<Index>(send_rows[p]) * width, "all-to-all message");
      rc[p] = checked_int(static_cast<Index>(recv_rows[p]) * width, "all-to-all message");
      sd[p] = s_at;
      rd[p] = r_at;
      s_at = checked_int(static_cast<Index>(s_at) + sc[p], "all-to-all offset");
      r_at = checked_int(static_cast<Index>(r_at) + rc[p], "all-to-all offset");
    }
    StageScope scope(stats, stage);
    const int self = comm_.rank();
    for (int p = 0; p < n; ++p) {
      const int dest = stage == kIntra ? node_ * G_ + p : p * G_ + local_;  // as a group rank
      count_bytes(stats, self, dest, static_cast<double>(sc[p]) * sizeof(T));
    }
    // A stage of one rank (one node, or one rank per node) moves nothing between ranks: its
    // rows are copied, outside the MPI seconds, as the flat algorithms copy a rank's own rows.
    if (n == 1) {
      std::copy_n(send, static_cast<std::size_t>(sc[0]), recv);
      return;
    }
    PhaseTimer timer(stats);
    sub.alltoallv(send, sc, sd, recv, rc, rd);
  }

  int G_ = 0, nodes_ = 1, node_ = 0, local_ = 0;
  std::string unusable_;
  std::unique_ptr<Communicator> intra_, inter_;
  // Per-call counts, kept from call to call: plan's per-expert counts of the two stages, the
  // rows per peer that an exchange sends and receives in each stage, and repack's offsets.
  mutable std::vector<int> to_local_, from_local_, to_node_;
  mutable std::vector<int> stage_send_[2], stage_recv_[2];
  mutable std::vector<Index> by_ls_, by_m_;
};

}  // namespace

std::unique_ptr<DispatchAlgorithm> make_hierarchical_dispatch(const Communicator& comm, const std::vector<int>& node_of) {
  return std::make_unique<HierarchicalDispatch>(comm, node_of);
}

}  // namespace moesim
