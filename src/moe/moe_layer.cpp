#include "moe/moe_layer.hpp"

#include <cmath>

namespace moesim {

template <class T>
MoeLayer<T>::MoeLayer(const Communicator& comm, const std::string& name,
                      const MoeLayerConfig& cfg, std::uint64_t seed, int layer_id)
    : comm_(comm),
      cfg_(cfg),
      dispatcher_(comm, cfg.experts, cfg.dispatch),
      router_(name + ".router", cfg.d_model, cfg.experts, cfg.top_k, cfg.gate) {
  MOESIM_REQUIRE(cfg.top_k >= 1 && cfg.top_k <= cfg.experts, "top-k must be in [1, E]");
  Rng rrng(seed, Stream::kReplicatedInit, static_cast<std::uint64_t>(layer_id), 1000);
  router_.init(rrng, cfg.router_init_scale);
  const int El = dispatcher_.experts_per_rank();
  experts_.reserve(static_cast<std::size_t>(El));
  for (int le = 0; le < El; ++le) {
    const int e = dispatcher_.first_local_expert() + le;
    experts_.emplace_back(name + ".expert" + std::to_string(e), cfg.d_model, cfg.d_ff,
                          Placement::kExpertLocal);
    Rng erng(seed, Stream::kExpertInit, static_cast<std::uint64_t>(layer_id),
             static_cast<std::uint64_t>(e));
    experts_.back().init(erng);
  }
  comm_stats_.reset(comm.size());
}

template <class T>
void MoeLayer<T>::forward(const Mat<T>& x, Mat<T>& y) {
  const Index n = x.rows(), D = x.cols();
  const int E = cfg_.experts, K = cfg_.top_k;
  router_.forward(x, routing_);

  const std::int64_t B = comm_.allreduce_sum(static_cast<std::int64_t>(n));
  const std::int64_t cap = expert_capacity(cfg_.capacity_factor, B, K, E);
  CapacityDecision cd = decide_capacity(comm_, routing_.expert, n, K, E, cap);

  // Load-balancing loss (Switch): E * sum_e f_e P_e over the global batch.
  // One all-reduce for P_e (load balance), the z-loss sum and the gate entropy sum.
  std::vector<double> P(static_cast<std::size_t>(E) + 2, 0.0);
  for (Index t = 0; t < n; ++t) {
    for (int e = 0; e < E; ++e) {
      const double p = routing_.probs(t, e);
      P[static_cast<std::size_t>(e)] += p;
      if (p > 0) P[static_cast<std::size_t>(E) + 1] -= p * std::log(p);
    }
    P[static_cast<std::size_t>(E)] += routing_.lse[static_cast<std::size_t>(t)] * routing_.lse[static_cast<std::size_t>(t)];
  }
  comm_.allreduce_sum(P.data(), E + 2);
  const double inv_b = B > 0 ? 1.0 / static_cast<double>(B) : 0.0;
  stats_.z_loss = P[static_cast<std::size_t>(E)] * inv_b;
  stats_.gate_entropy = P[static_cast<std::size_t>(E) + 1] * inv_b;
  stats_.gate_mass.assign(P.begin(), P.begin() + E);
  for (double& v : stats_.gate_mass) v *= inv_b;
  f_.assign(static_cast<std::size_t>(E), 0.0);
  double aux = 0;
  for (int e = 0; e < E; ++e) {
    f_[e] = B > 0 ? static_cast<double>(cd.assigned[e]) / static_cast<double>(B * K) : 0.0;
    aux += f_[e] * (B > 0 ? P[e] / static_cast<double>(B) : 0.0);
  }
  stats_.aux_loss = aux * E;
  stats_.tokens = B;
  stats_.assignments = B * K;
  stats_.dropped = cd.dropped;
  stats_.expert_tokens = cd.processed;

  // Padded dispatch: no rank sends one expert more than the capacity or its own tokens.
  const std::int64_t n_max = (B + comm_.size() - 1) / comm_.size();
  const Index slot = static_cast<Index>(cap > 0 ? std::min(cap, n_max) : n_max);
  layout_ = dispatcher_.plan(routing_.expert, cd.kept, n, K, comm_stats_, slot);
  Mat<T> send(layout_.rows_sent(), D);
  for (Index s = 0; s < layout_.rows_sent(); ++s) send.row(s) = x.row(layout_.send_token[s]);
  comm_stats_.phase = kForwardDispatch;
  Mat<T> blocks = dispatcher_.dispatch(layout_, send, comm_stats_);
  Mat<T> out_blocks(blocks.rows(), D);
  for (int le = 0; le < local_experts(); ++le) {
    const Index off = layout_.block_offset[le];
    const Index rows = layout_.block_offset[le + 1] - off;
    experts_[le].forward(ConstMatMap<T>(blocks.data() + off * D, rows, D),
                         MatMap<T>(out_blocks.data() + off * D, rows, D));
  }
  comm_stats_.phase = kForwardCombine;
  combined_ = dispatcher_.combine(layout_, out_blocks, comm_stats_);
  y = Mat<T>::Zero(n, D);
  for (Index s = 0; s < layout_.rows_sent(); ++s) {
    const Index t = layout_.send_token[s];
    y.row(t) += routing_.gate(t, layout_.send_choice[s]) * combined_.row(s);
  }
}

template <class T>
void MoeLayer<T>::backward(const Mat<T>& dy, Mat<T>& dx) {
  const Index n = dy.rows(), D = dy.cols();
  const int E = cfg_.experts, K = cfg_.top_k;
  Mat<T> dgate = Mat<T>::Zero(n, K);
  Mat<T> dsend(layout_.rows_sent(), D);
  for (Index s = 0; s < layout_.rows_sent(); ++s) {
    const Index t = layout_.send_token[s];
    const int j = layout_.send_choice[s];
    dgate(t, j) = dy.row(t).dot(combined_.row(s));
    dsend.row(s) = routing_.gate(t, j) * dy.row(t);
  }
  comm_stats_.phase = kBackwardDispatch;
  Mat<T> dblocks = dispatcher_.dispatch(layout_, dsend, comm_stats_);
  Mat<T> dx_blocks(dblocks.rows(), D);
  for (int le = 0; le < local_experts(); ++le) {
    const Index off = layout_.block_offset[le];
    const Index rows = layout_.block_offset[le + 1] - off;
    experts_[le].backward(ConstMatMap<T>(dblocks.data() + off * D, rows, D),
                          MatMap<T>(dx_blocks.data() + off * D, rows, D));
  }
  comm_stats_.phase = kBackwardCombine;
  Mat<T> dx_rows = dispatcher_.combine(layout_, dx_blocks, comm_stats_);
  dx = Mat<T>::Zero(n, D);
  for (Index s = 0; s < layout_.rows_sent(); ++s) dx.row(layout_.send_token[s]) += dx_rows.row(s);

  Mat<T> dprobs;
  if (cfg_.aux_loss_weight != 0.0 && stats_.tokens > 0) {
    // d(w * E * sum_e f_e P_e) / d p_e(t) = w * E * f_e / B; f is not differentiable.
    RowVec<T> row(E);
    for (int e = 0; e < E; ++e)
      row(e) = static_cast<T>(cfg_.aux_loss_weight * E * f_[e] / static_cast<double>(stats_.tokens));
    dprobs = row.replicate(n, 1);
  }
  std::vector<double> dlse;
  if (cfg_.z_loss_weight != 0.0 && stats_.tokens > 0) {
    // d(w * mean_t lse_t^2) / d lse_t = 2 w lse_t / B.
    dlse.resize(static_cast<std::size_t>(n));
    for (Index t = 0; t < n; ++t)
      dlse[static_cast<std::size_t>(t)] =
          2.0 * cfg_.z_loss_weight * routing_.lse[static_cast<std::size_t>(t)] / static_cast<double>(stats_.tokens);
  }
  Mat<T> dx_router;
  router_.backward(routing_, dgate, dprobs, dx_router, dlse);
  dx += dx_router;
}

template class MoeLayer<float>;
template class MoeLayer<double>;

}  // namespace moesim
