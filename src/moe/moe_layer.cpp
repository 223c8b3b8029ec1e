#include "moe/moe_layer.hpp"

#include <algorithm>
#include <cmath>

#include "comm/exact_sum.hpp"
#include "core/fixed_sum_columns.hpp"
#include "device/runtime.hpp"

namespace moesim {

namespace {

const MoeLayerConfig& validated(const MoeLayerConfig& cfg, int ranks) {
  cfg.validate(ranks);
  return cfg;
}

// Checked first, so that a bad --ep-size is a ConfigError, not a failed split.
std::shared_ptr<const ExpertGroups> groups_for(const Communicator& comm, const MoeLayerConfig& cfg) {
  cfg.validate(comm.size());
  return std::make_shared<const ExpertGroups>(comm, cfg.ep_size_for(comm.size()));
}

// The node of each rank of this rank's expert group: virtual nodes of --ranks-per-node
// consecutive world ranks, else the ranks that share memory. COLLECTIVE over the world.
std::vector<int> group_nodes(const ExpertGroups& groups, const MoeLayerConfig& cfg) {
  const int N = groups.group_size(), first = groups.first_rank();
  std::vector<int> ids(static_cast<std::size_t>(N));
  if (cfg.ranks_per_node > 0) {
    for (int r = 0; r < N; ++r) ids[static_cast<std::size_t>(r)] = (first + r) / cfg.ranks_per_node;
    return ids;
  }
  const std::vector<int> world = groups.world().node_ids();
  for (int r = 0; r < N; ++r) ids[static_cast<std::size_t>(r)] = world[static_cast<std::size_t>(first + r)];
  return ids;
}

const ExpertGroups& checked(const std::shared_ptr<const ExpertGroups>& g, const MoeLayerConfig& cfg) {
  MOESIM_REQUIRE(g && g->group_size() == cfg.ep_size_for(g->world().size()),
                 "MoE layer given expert groups of another size than its --ep-size");
  return *g;
}

// --device cuda: every rank must see a GPU (agreed, so all ranks stop with the same line before
// any file is written); each binds the GPU of its local rank, one GPU per rank. COLLECTIVE.
void bind_gpu(const Communicator& world) {
  const std::string why = device::unavailable();
  world.agree_or_throw(why.empty(), "--device cuda: rank " + std::to_string(world.rank()) + ": " + why);
  device::bind_local_device(world);
}

}  // namespace

template <class T>
MoeLayer<T>::MoeLayer(const Communicator& comm, const std::string& name,
                      const MoeLayerConfig& cfg, std::uint64_t seed, int layer_id)
    : MoeLayer(groups_for(comm, cfg), name, cfg, seed, layer_id) {}

template <class T>
MoeLayer<T>::MoeLayer(std::shared_ptr<const ExpertGroups> groups, const std::string& name,
                      const MoeLayerConfig& cfg, std::uint64_t seed, int layer_id)
    : groups_(std::move(groups)),
      comm_(groups_->world()),
      cfg_(validated(cfg, comm_.size())),
      dispatcher_(checked(groups_, cfg_).group(), cfg.experts, cfg.dispatch, group_nodes(*groups_, cfg_),
                  cfg.expert_order),
      router_(name + ".router", cfg.d_model, cfg.experts, cfg.top_k, [&] {
        RouterOptions o = cfg.router;
        o.gate = cfg.gate;
        o.bias_selection = cfg.balance == BalanceKind::kBias;
        if (cfg.balance != BalanceKind::kAux) o.importance_weight = o.load_weight = 0;
        o.seed = seed;
        o.layer_id = layer_id;
        return o;
      }()) {
  Rng rrng(seed, Stream::kReplicatedInit, static_cast<std::uint64_t>(layer_id), 1000);
  router_.init(rrng, cfg.router_init_scale);
  for (int se = 0; se < cfg.shared_experts; ++se) {
    shared_.emplace_back(name + ".shared" + std::to_string(se), cfg.d_model, cfg.d_ff,
                         Placement::kReplicated);
    Rng srng(seed, Stream::kReplicatedInit, static_cast<std::uint64_t>(layer_id),
             static_cast<std::uint64_t>(3000 + se));
    shared_.back().init(srng);
  }
  if (cfg.on_gpu) bind_gpu(comm_);
  const int El = dispatcher_.experts_per_rank();
  experts_.reserve(static_cast<std::size_t>(El));
  for (int le = 0; le < El; ++le) {
    const int e = dispatcher_.global_expert(le);
    experts_.emplace_back(name + ".expert" + std::to_string(e), cfg.d_model, cfg.d_ff,
                          Placement::kExpertLocal);
    Rng erng(seed, Stream::kExpertInit, static_cast<std::uint64_t>(layer_id),
             static_cast<std::uint64_t>(e));
    experts_.back().init(erng);
    // An expert's input is its block of blocks_buf_, which only the next forward rewrites.
    experts_.back().borrow_input(true);
    experts_.back().share_backward_scratch(dpre_scratch_);
    if (cfg.on_gpu) experts_.back().use_device();
  }
  comm_stats_.first_rank = groups_->first_rank();
  comm_stats_.node_of = dispatcher_.node_of();
  // An algorithm the placement cannot carry is refused on every rank (groups may differ).
  comm_.agree_or_throw(dispatcher_.unusable().empty(), dispatcher_.unusable());
  comm_stats_.reset(comm_.size());
}

template <class T>
void MoeLayer<T>::run_experts(const Mat<T>& x) {
  const Index n = x.rows(), D = x.cols();
  const int E = cfg_.experts;
  const std::int64_t B = comm_.allreduce_sum(static_cast<std::int64_t>(n));
  const double cf = !training_ && cfg_.eval_capacity_factor >= 0 ? cfg_.eval_capacity_factor
                                                                 : cfg_.capacity_factor;
  const std::int64_t cap =
      gate_uses_all_experts(cfg_.gate) ? 0 : expert_capacity(cf, B, cfg_.top_k, E, cfg_.min_capacity);
  RouteContext ctx{&comm_, B, 0, step_, training_, cap};
  // An expert processes at most `cap` rows: the experts' kept rows and backward temporary
  // sized for them now, so that a load that keeps moving does not grow them (and allocate)
  // long after the first steps. Up to twice the mean load only: a capacity near B would keep
  // B rows per expert for good.
  const std::int64_t reserve = std::min<std::int64_t>(cap, 2 * ((B * cfg_.top_k + E - 1) / E));
  if (reserve > reserved_rows_) {
    const Index F = cfg_.d_ff, r = static_cast<Index>(reserve);
    dpre_scratch_->view(r, F);
    for (RowBuffer<T>* b : {&hidden_buf_, &slope_buf_}) b->view(r * local_experts(), F);
    reserved_rows_ = reserve;
  }
  const bool by_probs = cfg_.drop_policy == DropPolicy::kProbs && cap > 0;
  if (router_.needs_token_index() || by_probs) {
    const std::int64_t local = n;
    comm_.exscan_sum(&local, &ctx.first_token, 1);
  }
  router_.forward(x, ctx, routing_);
  const int K = routing_.K;  // choice slots per token (E for expert choice)
  // This rank's kept assignments (the send side's rows) move with the routing too: at most
  // n K, and with a capacity at most E C in all; sized at the first step for up to twice
  // their mean, as the experts' buffers (expert choice's vary around E C / P).
  std::int64_t sent = static_cast<std::int64_t>(n) * K;
  if (cap > 0) sent = std::min({sent, E * cap, 2 * ((E * cap + comm_.size() - 1) / comm_.size())});
  if (sent > reserved_sent_) {
    for (RowBuffer<T>* b : {&send_buf_, &combined_buf_}) b->view(static_cast<Index>(sent), D);
    reserved_sent_ = sent;
  }

  // --drop-policy probs: an expert over capacity keeps its assignments with the largest gate.
  DropByPriority by_gate;
  if (by_probs) {
    drop_priority_.resize(static_cast<std::size_t>(n * K));
    for (Index t = 0; t < n; ++t)
      for (int j = 0; j < K; ++j) drop_priority_[static_cast<std::size_t>(t * K + j)] = static_cast<double>(routing_.gate(t, j));
    by_gate = {&drop_priority_, ctx.first_token};
  }
  decide_capacity_into(capacity_, comm_, routing_.expert, n, K, E, cap, routing_.preselected,
                       by_probs ? &by_gate : nullptr);
  const CapacityDecision& cd = capacity_;

  // Load-balancing loss (Switch): E * sum_e f_e P_e over the global batch.
  // One all-reduce for P_e (load balance), the z-loss sum and the gate entropy sum.
  // The next slot counts tokens with no kept assignment, then tokens per top expert
  // (largest gate).
  // Exact sums (comm/exact_sum), so that the statistics do not depend on the layout.
  std::vector<FixedSum>& S = stat_sums_;
  S.assign(2 * static_cast<std::size_t>(E) + 3, FixedSum{});
  for (Index t = 0; t < n; ++t) {
    S[static_cast<std::size_t>(E + 3 + routing_.top_expert(t))] += 1.0;
    bool routed = false;
    for (int j = 0; j < K; ++j) routed |= cd.kept[static_cast<std::size_t>(t * K + j)] != 0;
    S[static_cast<std::size_t>(E) + 2] += routed ? 0.0 : 1.0;
    if (!routing_.entropy.empty()) {
      S[static_cast<std::size_t>(E) + 1] += routing_.entropy[static_cast<std::size_t>(t)];
    } else {
      for (int e = 0; e < E; ++e) {
        const double p = routing_.probs(t, e);
        if (p > 0) S[static_cast<std::size_t>(E) + 1] -= p * std::log(p);
      }
    }
    S[static_cast<std::size_t>(E)] += routing_.lse[static_cast<std::size_t>(t)] * routing_.lse[static_cast<std::size_t>(t)];
  }
  // Each expert's probability mass (exact: in any order; fp32 eight experts at a time).
  add_columns(routing_.probs.data(), n, E, S.data());
  // Chunked runs also count kept assignments per (global token chunk, expert), in the same
  // all-reduce: the expert owners cut their blocks at chunk boundaries with them.
  std::vector<std::int64_t>& chunk_counts = chunk_counts_;
  if (chunk_ > 0) {
    const std::int64_t first = comm_.rank() * ((n + chunk_ - 1) / chunk_);
    chunk_counts.assign(static_cast<std::size_t>((B + chunk_ - 1) / chunk_ * E), 0);
    for (Index t = 0; t < n; ++t)
      for (int j = 0; j < K; ++j)
        if (cd.kept[static_cast<std::size_t>(t * K + j)])
          ++chunk_counts[static_cast<std::size_t>((first + t / chunk_) * E + routing_.expert[static_cast<std::size_t>(t * K + j)])];
  }
  allreduce_exact(comm_, S.data(), static_cast<int>(S.size()), chunk_ > 0 ? &chunk_counts : nullptr, stat_limbs_);
  std::vector<double>& P = stat_totals_;
  P.resize(S.size());
  for (std::size_t i = 0; i < S.size(); ++i) P[i] = S[i].value();
  stats_.top_expert_tokens.assign(static_cast<std::size_t>(E), 0);
  for (int e = 0; e < E; ++e)
    stats_.top_expert_tokens[static_cast<std::size_t>(e)] =
        static_cast<std::int64_t>(P[static_cast<std::size_t>(E + 3 + e)]);
  stats_.unrouted_tokens = static_cast<std::int64_t>(P[static_cast<std::size_t>(E) + 2]);
  stats_.importance_loss = routing_.importance_loss;
  stats_.load_loss = routing_.load_loss;
  const double inv_b = B > 0 ? 1.0 / static_cast<double>(B) : 0.0;
  stats_.z_loss = P[static_cast<std::size_t>(E)] * inv_b;
  stats_.gate_entropy = P[static_cast<std::size_t>(E) + 1] * inv_b;
  stats_.gate_mass.assign(P.begin(), P.begin() + E);
  for (double& v : stats_.gate_mass) v *= inv_b;
  f_.assign(static_cast<std::size_t>(E), 0.0);
  double aux = 0;
  std::int64_t total_assigned = 0;
  for (int e = 0; e < E; ++e) total_assigned += cd.assigned[e];
  for (int e = 0; e < E; ++e) {
    f_[e] = total_assigned > 0 ? static_cast<double>(cd.assigned[e]) / static_cast<double>(total_assigned) : 0.0;
    aux += f_[e] * (B > 0 ? P[e] / static_cast<double>(B) : 0.0);
  }
  stats_.aux_loss = aux * E;
  stats_.tokens = B;
  stats_.assignments = total_assigned;
  stats_.dropped = cd.dropped;
  stats_.expert_tokens = cd.processed;

  dispatcher_.plan_into(layout_, routing_.expert, cd.kept, n, K, comm_stats_, DispatchLimits{B, cap, comm_.size()});
  layout_.own_in_blocks = layout_.recv_known && dispatcher_.can_leave_own_rows();
  MatMap<T> send = send_buf_.view(layout_.rows_sent(), D);
  // The dispatch returns its blocks in blocks_buf_: this rank's own rows go there directly.
  const MatMap<T> own_blocks = blocks_buf_.view(layout_.rows_received(), D);
  rows_by_slot([&](Index s, Index b) { row_at(send, own_blocks, s, b) = x.row(layout_.send_token[s]); });
  comm_stats_.phase = kForwardDispatch;
  const MatMap<T> blocks = dispatcher_.dispatch(layout_, ConstMatMap<T>(send.data(), send.rows(), D), blocks_buf_,
                                                comm_stats_);
  MatMap<T> out_blocks = out_blocks_buf_.view(blocks.rows(), D);
  const Index F = cfg_.d_ff;
  T* const hidden = hidden_buf_.view(blocks.rows(), F).data();
  T* const slopes = slope_buf_.view(blocks.rows(), F).data();
  if (chunk_ > 0) plan_expert_chunks(chunk_counts);
  for (int le = 0; le < local_experts(); ++le) {
    const Index off = layout_.block_offset[le];
    const Index rows = layout_.block_offset[le + 1] - off;
    const ConstMatMap<T> in(blocks.data() + off * D, rows, D);
    const MatMap<T> out(out_blocks.data() + off * D, rows, D);
    experts_[le].keep_rows_at(hidden + off * F, slopes + off * F);
    if (chunk_ > 0) experts_[le].forward(in, out, expert_chunks_[static_cast<std::size_t>(le)]);
    else experts_[le].forward(in, out);
  }
  comm_stats_.phase = kForwardCombine;
  dispatcher_.combine(layout_, ConstMatMap<T>(out_blocks.data(), out_blocks.rows(), D), combined_buf_, comm_stats_);
  if (sums_by_token()) index_token_rows();
  if (shared_.empty()) return;  // forward and forward_branches then start from zero
  shared_out_.setZero(n, D);
  Mat<T>& s_out = shared_tmp_;
  s_out.resize(n, D);
  for (auto& se : shared_) {
    se.forward(ConstMatMap<T>(x.data(), n, D), MatMap<T>(s_out.data(), n, D), chunk_);
    shared_out_ += s_out;
  }
}

// A block holds the expert's rows from each source rank of the group in turn, each in
// token order, so the rows of a token chunk are contiguous, and the group's ranks hold
// consecutive chunks. The expert computes and sums per leaf: a run of consecutive chunks
// that is the same on every layout, whatever group it landed in. A batch of L chunks has
// min(expert_leaves_, largest power of two dividing L) leaves, so the validation's last,
// shorter batch is cut the same way on every layout too; a group holds whole leaves as long
// as the replica groups G divide that count (rank_invariance() sees to it).
template <class T>
void MoeLayer<T>::plan_expert_chunks(const std::vector<std::int64_t>& counts) {
  const int E = cfg_.experts;
  const std::int64_t chunks = static_cast<std::int64_t>(counts.size()) / E, G = groups_->groups();
  std::int64_t leaves = chunks & -chunks;
  if (expert_leaves_ > 0) leaves = std::min<std::int64_t>(leaves, expert_leaves_);
  leaves = std::max(leaves, G);
  MOESIM_REQUIRE(chunks % leaves == 0 && leaves % G == 0,
                 "expert leaves: " << leaves << " for " << chunks << " token chunks and " << G << " replica groups");
  const std::int64_t span = chunks / leaves, per_group = leaves / G;
  const std::int64_t first = groups_->group_index() * per_group * span;
  expert_chunks_.assign(static_cast<std::size_t>(local_experts()), {});
  for (int le = 0; le < local_experts(); ++le) {
    const int e = dispatcher_.global_expert(le);
    auto& rows = expert_chunks_[static_cast<std::size_t>(le)];
    for (std::int64_t l = 0; l < per_group; ++l) {
      Index r = 0;
      for (std::int64_t c = first + l * span; c < first + (l + 1) * span; ++c)
        r += static_cast<Index>(counts[static_cast<std::size_t>(c * E + e)]);
      rows.push_back(r);
    }
  }
}

template <class T>
void MoeLayer<T>::index_token_rows() {
  const int K = routing_.K;
  token_rows_.assign(static_cast<std::size_t>(routing_.n * K), {Index{-1}, Index{-1}});
  rows_by_slot([&](Index s, Index b) {
    token_rows_[static_cast<std::size_t>(layout_.send_token[s] * K + layout_.send_choice[s])] = {s, b};
  });
}

template <class T>
void MoeLayer<T>::forward(const Mat<T>& x, Mat<T>& y) {
  run_experts(x);
  const MatMap<T> comb = combined(), outs = expert_outputs();
  if (sums_by_token()) {
    y.resize(x.rows(), x.cols());
    for (Index t = 0; t < x.rows(); ++t) {
      auto yt = y.row(t);
      yt.setZero();
      token_rows(t, [&](int j, Index s, Index b) { yt += routing_.gate(t, j) * row_at(comb, outs, s, b); });
    }
    return;
  }
  if (shared_.empty()) y.setZero(x.rows(), x.cols());
  else y = shared_out_;
  rows_by_expert([&](Index s, Index b) {
    const Index t = layout_.send_token[s];
    y.row(t) += routing_.gate(t, layout_.send_choice[s]) * row_at(comb, outs, s, b);
  });
}

template <class T>
void MoeLayer<T>::forward_branches(const Mat<T>& x, Mat<T>& rows, Mat<T>& gates) {
  MOESIM_REQUIRE(gate_uses_all_experts(cfg_.gate), "a mixture of expert predictions needs the dense or constant gate");
  run_experts(x);
  const int K = routing_.K;
  if (shared_.empty()) {
    rows.setZero(x.rows() * K, x.cols());
  } else {
    rows.resize(x.rows() * K, x.cols());
    for (Index t = 0; t < x.rows(); ++t)
      for (int j = 0; j < K; ++j) rows.row(t * K + j) = shared_out_.row(t);
  }
  const MatMap<T> comb = combined(), outs = expert_outputs();
  rows_by_slot([&](Index s, Index b) {
    rows.row(layout_.send_token[s] * K + layout_.send_choice[s]) += row_at(comb, outs, s, b);
  });
  gates = routing_.gate;
}

template <class T>
void MoeLayer<T>::backward(const Mat<T>& dy, Mat<T>& dx) {
  const Index n = dy.rows(), D = dy.cols();
  Mat<T>& dgate = dgate_;
  dgate.setZero(n, routing_.K);
  MatMap<T> dsend = send_buf_.view(layout_.rows_sent(), D);
  // An own row's gradient overwrites its output in the blocks, where the backward dispatch
  // leaves it (the same row, read first).
  const MatMap<T> comb = combined(), outs = expert_outputs();
  rows_by_slot([&](Index s, Index b) {
    const Index t = layout_.send_token[s];
    const int j = layout_.send_choice[s];
    dgate(t, j) = dy.row(t).dot(row_at(comb, outs, s, b).row(0));
    row_at(dsend, outs, s, b) = routing_.gate(t, j) * dy.row(t);
  });
  backprop(dsend, dgate, dy, dx);
}

template <class T>
void MoeLayer<T>::backward_branches(const Mat<T>& drows, const Mat<T>& dgates, Mat<T>& dx) {
  const Index n = dgates.rows(), D = drows.cols();
  const int K = routing_.K;
  MatMap<T> dsend = send_buf_.view(layout_.rows_sent(), D);
  const MatMap<T> own_blocks = expert_outputs();  // where the backward dispatch leaves own rows
  rows_by_slot([&](Index s, Index b) {
    row_at(dsend, own_blocks, s, b) = drows.row(layout_.send_token[s] * K + layout_.send_choice[s]);
  });
  Mat<T> dshared = Mat<T>::Zero(n, D);
  for (Index t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) dshared.row(t) += drows.row(t * K + j);
  backprop(dsend, dgates, dshared, dx);
}

template <class T>
void MoeLayer<T>::backprop(const MatMap<T>& dsend, const Mat<T>& dgate, const Mat<T>& dshared,
                           Mat<T>& dx) {
  const Index n = dgate.rows(), D = dsend.cols();
  const int E = cfg_.experts;
  comm_stats_.phase = kBackwardDispatch;
  const MatMap<T> dblocks = dispatcher_.dispatch(layout_, ConstMatMap<T>(dsend.data(), dsend.rows(), D),
                                                 out_blocks_buf_, comm_stats_);
  MatMap<T> dx_blocks = dx_blocks_buf_.view(dblocks.rows(), D);
  // Last expert first: the forward left its weights and kept rows the most recently in cache.
  for (int le = local_experts() - 1; le >= 0; --le) {
    const Index off = layout_.block_offset[le];
    const Index rows = layout_.block_offset[le + 1] - off;
    const ConstMatMap<T> dy(dblocks.data() + off * D, rows, D);
    const MatMap<T> dxb(dx_blocks.data() + off * D, rows, D);
    if (chunk_ > 0) experts_[le].backward(dy, dxb, expert_chunks_[static_cast<std::size_t>(le)]);
    else experts_[le].backward(dy, dxb);
  }
  comm_stats_.phase = kBackwardCombine;
  // Into send_buf_: dsend, which it holds, is no longer needed.
  const MatMap<T> dx_rows = dispatcher_.combine(layout_, ConstMatMap<T>(dx_blocks.data(), dx_blocks.rows(), D),
                                                send_buf_, comm_stats_);
  // The router's gradient first (it reads no dx): token by token it is added in the same pass.
  router_backward(dgate);
  if (sums_by_token()) {
    dx.resize(n, D);
    for (Index t = 0; t < n; ++t) {
      auto dt = dx.row(t);
      dt.setZero();
      token_rows(t, [&](int, Index s, Index b) { dt += row_at(dx_rows, dx_blocks, s, b); });
      dt += dx_router_.row(t);
    }
  } else {
    dx = Mat<T>::Zero(n, D);
    rows_by_expert([&](Index s, Index b) { dx.row(layout_.send_token[s]) += row_at(dx_rows, dx_blocks, s, b); });
    dx += dx_router_;
  }
  Mat<T>& ds = shared_tmp_;
  if (!shared_.empty()) ds.resize(n, D);
  for (auto& se : shared_) {
    se.backward(ConstMatMap<T>(dshared.data(), n, D), MatMap<T>(ds.data(), n, D), chunk_);
    dx += ds;
  }

  if (cfg_.balance == BalanceKind::kBias) {
    // DeepSeek-V3: raise the bias of underloaded experts, lower it for overloaded ones,
    // from the global load before dropping (identical on every rank).
    double mean = 0;
    for (std::int64_t a : capacity_.assigned) mean += static_cast<double>(a) / E;
    std::vector<double>& b = router_.bias();
    for (int e = 0; e < E; ++e) {
      const double load = static_cast<double>(capacity_.assigned[static_cast<std::size_t>(e)]);
      b[static_cast<std::size_t>(e)] += cfg_.bias_update_rate * (load < mean ? 1.0 : load > mean ? -1.0 : 0.0);
    }
  }
}

// The router's backward into dx_router_: the Switch loss's and the z-loss's gradients through
// the probabilities and the lse, and the gates' dgate.
template <class T>
void MoeLayer<T>::router_backward(const Mat<T>& dgate) {
  const Index n = dgate.rows();
  const int E = cfg_.experts;
  Mat<T>& dprobs = dprobs_;  // empty: no gradient through the probabilities
  // Noisy top-k's own losses replace the Switch loss; gates without a learned
  // per-token choice are balanced by construction.
  const bool switch_aux = cfg_.balance == BalanceKind::kAux && gate_traits(cfg_.gate).switch_loss;
  if (switch_aux && cfg_.aux_loss_weight != 0.0 && stats_.tokens > 0) {
    // d(w * E * sum_e f_e P_e) / d p_e(t) = w * E * f_e / B; f is not differentiable.
    dprobs.resize(n, E);
    for (int e = 0; e < E; ++e)
      dprobs.col(e).setConstant(static_cast<T>(cfg_.aux_loss_weight * E * f_[e] / static_cast<double>(stats_.tokens)));
  } else {
    dprobs.resize(0, 0);
  }
  std::vector<double>& dlse = dlse_;
  dlse.clear();
  if (cfg_.z_loss_weight != 0.0 && stats_.tokens > 0) {
    // d(w * mean_t lse_t^2) / d lse_t = 2 w lse_t / B.
    dlse.resize(static_cast<std::size_t>(n));
    for (Index t = 0; t < n; ++t)
      dlse[static_cast<std::size_t>(t)] =
          2.0 * cfg_.z_loss_weight * routing_.lse[static_cast<std::size_t>(t)] / static_cast<double>(stats_.tokens);
  }
  router_.backward(routing_, dgate, dprobs, dx_router_, dlse);
}

template class MoeLayer<float>;
template class MoeLayer<double>;

}  // namespace moesim
