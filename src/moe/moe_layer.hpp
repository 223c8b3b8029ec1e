#pragma once
// Expert-parallel MoE FFN layer: top-k router, capacity, dispatch to the experts'
// ranks, contiguous per-expert GEMMs, combine with gate weights. Dropped
// assignments contribute nothing (the block's residual carries the token).
// Shared experts (DeepSeekMoE) are replicated dense FFNs every token passes through,
// added to the routed output with weight 1.
// Expert-data parallelism (--ep-size N): routing, capacity and the statistics are decided
// over all P ranks (the global batch), tokens move only inside the rank's group of N,
// which holds every expert; the replicas' expert gradients are summed by the caller
// (expert_groups().replicas(), the trainer) before the optimizer step.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/expert_groups.hpp"
#include "core/fixed_sum.hpp"
#include "moe/capacity.hpp"
#include "moe/config.hpp"
#include "moe/dispatcher.hpp"
#include "moe/router.hpp"
#include "nn/layers.hpp"

namespace moesim {

// What one forward pass of one layer measured; identical on every rank.
struct MoeLayerStats {
  double aux_loss = 0;                  // E * sum_e f_e P_e, 1 when perfectly balanced
  double z_loss = 0;                    // mean over tokens of logsumexp(logits)^2
  double importance_loss = 0;           // noisy top-k: CV(importance)^2 (unweighted)
  double load_loss = 0;                 // noisy top-k: CV(smooth load)^2 (unweighted)
  std::int64_t unrouted_tokens = 0;     // tokens with no kept assignment
  double gate_entropy = 0;              // mean over tokens of the router softmax entropy (nats)
  std::vector<double> gate_mass;        // E, P_e: mean router probability of each expert
  std::int64_t tokens = 0;              // global B
  std::int64_t assignments = 0;         // B*K
  std::int64_t dropped = 0;             // assignments over capacity
  std::vector<std::int64_t> expert_tokens;  // E, kept assignments per expert
  std::vector<std::int64_t> top_expert_tokens;  // E, tokens whose largest gate is e
};

template <class T>
class MoeLayer {
 public:
  // Expert e is initialised from (seed, layer_id, e) wherever it lives. ConfigError
  // (MoeLayerConfig::validate) on a configuration the layer cannot run.
  MoeLayer(const Communicator& comm, const std::string& name, const MoeLayerConfig& cfg,
           std::uint64_t seed, int layer_id);
  // The same on groups shared with other layers (their size must be cfg.ep_size_for(P)).
  MoeLayer(std::shared_ptr<const ExpertGroups> groups, const std::string& name, const MoeLayerConfig& cfg,
           std::uint64_t seed, int layer_id);

  // COLLECTIVE. x: local tokens (n x D).
  void forward(const Mat<T>& x, Mat<T>& y);
  // COLLECTIVE. dy: gradient of the loss w.r.t. y; returns dx. With --balance bias it
  // then moves the selection bias by the load of the last forward (once per step).
  void backward(const Mat<T>& dy, Mat<T>& dx);
  // COLLECTIVE. The mixture of expert predictions (gates that use every expert):
  // rows(t*K + j) is choice j's expert output for token t plus the shared experts'
  // output; gates(t, j) its gate. backward_branches takes their gradients.
  void forward_branches(const Mat<T>& x, Mat<T>& rows, Mat<T>& gates);
  void backward_branches(const Mat<T>& drows, const Mat<T>& dgates, Mat<T>& dx);
  // Training (noise, the training capacity factor) or evaluation, and the step that
  // keys the router noise.
  void set_mode(bool training, std::int64_t step) {
    training_ = training;
    step_ = step;
  }
  // Backward reads forward's x where the caller keeps it, unchanged until then
  // (Router::borrow_input), instead of a copy.
  void borrow_input(bool on) { router_.borrow_input(on); }
  // Token rows per product block (core/row_chunks.hpp) of the router and the shared
  // experts; their gradients then go to the parameters' trees. The experts' blocks are
  // coarser: `expert_chunks` leaves per whole batch (0: one per token chunk), each a run
  // of consecutive token chunks, so that an expert's few rows per token chunk do not each
  // cost a product and a tree node (see plan_expert_chunks).
  void set_chunk(Index chunk, Index expert_chunks = 0) {
    chunk_ = chunk;
    expert_leaves_ = expert_chunks;
    router_.set_chunk(chunk);
  }

  const MoeLayerStats& stats() const { return stats_; }
  CommStats& comm_stats() { return comm_stats_; }
  const Routing<T>& routing() const { return routing_; }
  const DispatchLayout& layout() const { return layout_; }

  void replicated_params(ParamList<T>& out) {
    router_.params(out);
    for (auto& s : shared_) s.params(out);
  }
  void expert_params(ParamList<T>& out) {
    for (auto& e : experts_) e.params(out);
  }
  Router<T>& router() { return router_; }
  // Local expert le holds global expert global_expert(le) (--expert-placement).
  Ffn<T>& local_expert(int le) { return experts_[static_cast<std::size_t>(le)]; }
  int global_expert(int le) const { return dispatcher_.global_expert(le); }
  int local_experts() const { return static_cast<int>(experts_.size()); }
  Ffn<T>& shared_expert(int s) { return shared_[static_cast<std::size_t>(s)]; }
  const MoeLayerConfig& config() const { return cfg_; }
  const ExpertGroups& expert_groups() const { return *groups_; }

 private:
  // f(s, block_row) for the send rows of one slot; block_row is -1, or, for a row this rank
  // sends itself while the layout leaves those in the expert blocks
  // (DispatchLayout::own_in_blocks), the block row that holds its values instead of the
  // send-order buffers. Then every slot in send order, or in (global expert, token) order: a
  // token's choices are summed in the same order whatever the placement puts first in the
  // send order.
  template <class F>
  void slot_rows(int slot, F&& f) const {
    const int me = dispatcher_.rank(), El = layout_.E_local;
    const bool own = layout_.own_in_blocks && slot / El == me;
    const Index shift = own ? own_block_shift(layout_, me, slot % El) : 0;
    for (Index s = layout_.slot_start[static_cast<std::size_t>(slot)]; s < layout_.slot_start[static_cast<std::size_t>(slot) + 1]; ++s)
      f(s, own ? s + shift : Index{-1});
  }
  template <class F>
  void rows_by_slot(F&& f) const {
    for (int slot = 0; slot < cfg_.experts; ++slot) slot_rows(slot, f);
  }
  template <class F>
  void rows_by_expert(F&& f) const {
    for (int e = 0; e < cfg_.experts; ++e) slot_rows(slot_of(layout_, e), f);
  }
  // With at most two choices per token and no shared experts a token's output (and input
  // gradient) is zero plus its one or two rows: that sum is the same bits in either order (0 + a
  // is a, or +0 for -0, and one addition commutes), so it is summed token by token, each row of
  // y (dx) written once in order, instead of zeroing the matrix and adding rows in expert order.
  bool sums_by_token() const { return shared_.empty() && routing_.K <= 2; }
  // (s, block_row) of each kept (token, choice), (-1, -1) for a dropped one: token_rows_.
  void index_token_rows();
  std::vector<std::pair<Index, Index>> token_rows_;
  // f(j, s, block_row) for token t's kept choices j, in choice order.
  template <class F>
  void token_rows(Index t, F&& f) const {
    const int K = routing_.K;
    for (int j = 0; j < K; ++j) {
      const auto [s, b] = token_rows_[static_cast<std::size_t>(t * K + j)];
      if (s >= 0) f(j, s, b);
    }
  }
  // Send row s of `send_order`, or block row b of `blocks` (b >= 0), as a row.
  static MatMap<T> row_at(MatMap<T> send_order, MatMap<T> blocks, Index s, Index b) {
    return b < 0 ? MatMap<T>(send_order.data() + s * send_order.cols(), 1, send_order.cols())
                 : MatMap<T>(blocks.data() + b * blocks.cols(), 1, blocks.cols());
  }

  std::shared_ptr<const ExpertGroups> groups_;
  const Communicator& comm_;  // all P ranks (groups_->world())
  MoeLayerConfig cfg_;
  Index chunk_ = 0;
  Index expert_leaves_ = 0;
  Dispatcher dispatcher_;
  Router<T> router_;
  std::vector<Ffn<T>> experts_;
  std::vector<Ffn<T>> shared_;

  // Router, capacity, dispatch, experts, combine (into combined_buf_), shared experts.
  void run_experts(const Mat<T>& x);
  // Chunked: each local expert's block rows per leaf (a run of token chunks) of the group,
  // in block order, from the kept assignments per (global chunk, expert) summed over all ranks.
  void plan_expert_chunks(const std::vector<std::int64_t>& chunk_expert_counts);
  std::vector<std::vector<Index>> expert_chunks_;
  // The rest of backward given the send rows' and gates' gradients.
  void backprop(const MatMap<T>& dsend, const Mat<T>& dgate, const Mat<T>& dshared, Mat<T>& dx);
  // The router's backward into dx_router_, from the gates' gradients and the losses on its
  // probabilities and lse.
  void router_backward(const Mat<T>& dgate);
  // Expert outputs in send order, from forward's combine (for the gate gradients); the own
  // rows' are in expert_outputs() when the layout leaves them there.
  MatMap<T> combined() { return combined_buf_.view(layout_.rows_sent(), cfg_.d_model); }
  MatMap<T> expert_outputs() { return out_blocks_buf_.view(layout_.rows_received(), cfg_.d_model); }

  // Saved by forward for backward.
  Routing<T> routing_;
  DispatchLayout layout_;
  // The exchanges' rows, kept from step to step (core/row_buffer.hpp). Kept for backward: the
  // expert blocks in (blocks_buf_, the experts' inputs) and the combined outputs. The others
  // are each dead before the next use of their buffer, so they share two (fewer bytes through
  // the cache a step): send_buf_ holds send-order rows (x's, then the gated dy's, then the
  // returned dx's), out_blocks_buf_ expert blocks (the forward's outputs, then the dy blocks).
  RowBuffer<T> send_buf_, blocks_buf_, out_blocks_buf_, combined_buf_, dx_blocks_buf_;
  // The experts' hidden rows and GELU slopes (Ffn::keep_rows_at), F wide, laid out as the
  // blocks; dpre_scratch_ their shared backward temporary.
  RowBuffer<T> hidden_buf_, slope_buf_;
  std::shared_ptr<RowBuffer<T>> dpre_scratch_ = std::make_shared<RowBuffer<T>>();
  Mat<T> shared_out_;  // n x D, sum of the shared experts' outputs (unused without them)
  // Backward's temporaries, kept: a step of the same shapes allocates nothing.
  Mat<T> dgate_, dprobs_, dx_router_, shared_tmp_;
  std::vector<double> dlse_;
  // Forward's statistics: their exact sums, the all-reduce's limbs, the rounded totals, and
  // chunked runs' kept assignments per (token chunk, expert).
  std::vector<FixedSum> stat_sums_;
  std::vector<std::int64_t> stat_limbs_;
  std::vector<double> stat_totals_;
  std::vector<std::int64_t> chunk_counts_;
  std::vector<double> f_;  // global fraction of assignments per expert
  CapacityDecision capacity_;  // the last forward's (its global assignments per expert: --balance bias)
  std::vector<double> drop_priority_;   // --drop-policy probs: the gate of each local assignment
  std::int64_t reserved_rows_ = 0;      // rows the experts' buffers were sized for (run_experts)
  std::int64_t reserved_sent_ = 0;      // rows the send-side buffers were sized for (run_experts)
  bool training_ = true;
  std::int64_t step_ = 0;
  MoeLayerStats stats_;
  CommStats comm_stats_;
};

}  // namespace moesim
