#include "moe/model.hpp"

#include <cmath>

namespace moesim {

ParamCounts count_params(const ModelConfig& c) {
  ParamCounts p;
  const std::int64_t D = c.d_model, F = c.d_ff, Fe = c.expert_d_ff(), E = c.moe.experts;
  const bool all = gate_uses_all_experts(c.moe.gate);
  const std::int64_t K = all ? E : c.moe.top_k;
  // The constant gate has no router; noisy top-k has a second router matrix, W_noise.
  const std::int64_t router =
      gate_traits(c.moe.gate).matrices * D * E;
  const std::int64_t S = c.moe.shared_experts;
  const std::int64_t dense = Ffn<float>::param_count(D, F), expert = Ffn<float>::param_count(D, Fe);
  p.total = p.active = (c.adapter_in() + 1) * D + D + (D + 1) * c.d_out;  // adapter, final norm, head
  // Token embedding: the whole table, of which a token uses its C rows (a lookup, no FLOPs).
  p.total += c.vocab * c.embed_dim;
  p.active += c.vocab > 0 ? c.d_in * c.embed_dim : 0;
  p.flops_per_token = 2 * c.adapter_in() * D + 2 * D * c.d_out;
  for (int l = 0; l < c.layers; ++l) {
    p.total += D;  // block norm
    p.active += D;
    if (c.is_moe_block(l)) {
      p.total += router + (E + S) * expert;
      p.active += router + (K + S) * expert;
      p.flops_per_token += 2 * router + (K + S) * 4 * D * Fe;
    } else {
      p.total += dense;
      p.active += dense;
      p.flops_per_token += 4 * D * F;
    }
  }
  // The mixture runs the head once per expert.
  if (c.mixture != MixtureLoss::kNone) p.flops_per_token += (E - 1) * 2 * D * c.d_out;
  return p;
}

template <class T>
Model<T>::Model(const Communicator& comm, const ModelConfig& cfg)
    : cfg_(cfg),
      adapter_("adapter", cfg.adapter_in(), cfg.d_model, Placement::kReplicated),
      final_norm_("final_norm", cfg.d_model, Placement::kReplicated),
      head_("head", cfg.d_model, cfg.d_out, Placement::kReplicated) {
  cfg_.moe.d_model = cfg.d_model;
  MOESIM_REQUIRE(cfg.granularity >= 1 && cfg.d_ff % cfg.granularity == 0, "d_ff must be divisible by the granularity");
  cfg_.moe.d_ff = cfg.expert_d_ff();
  MOESIM_REQUIRE(cfg.mixture == MixtureLoss::kNone ||
                     (cfg.layers >= 1 && cfg.is_moe_block(cfg.layers - 1) && gate_uses_all_experts(cfg.moe.gate)),
                 "a mixture loss needs the last block to be an MoE block with the dense or constant gate");
  cfg_.moe.validate(comm.size());  // before the split: a bad --ep-size is a ConfigError
  groups_ = std::make_shared<const ExpertGroups>(comm, cfg_.moe.ep_size_for(comm.size()));
  Rng arng(cfg.seed, Stream::kReplicatedInit, 0, 0);
  adapter_.init(arng, 1.0 / std::sqrt(static_cast<double>(cfg.adapter_in())));
  if (cfg.vocab > 0) {
    embed_ = TokenEmbedding<T>("embed", cfg.vocab, cfg.embed_dim, Placement::kReplicated);
    Rng erng(cfg.seed, Stream::kReplicatedInit, 0, 3);
    embed_.init(erng, 1.0);
  }
  Rng hrng(cfg.seed, Stream::kReplicatedInit, 0, 1);
  head_.init(hrng, 1.0 / std::sqrt(static_cast<double>(cfg.d_model)));
  blocks_.resize(static_cast<std::size_t>(cfg.layers));
  for (int l = 0; l < cfg.layers; ++l) {
    const std::string name = "block" + std::to_string(l);
    Block& b = blocks_[static_cast<std::size_t>(l)];
    b.norm = RmsNorm<T>(name + ".norm", cfg.d_model, Placement::kReplicated);
    if (cfg.is_moe_block(l)) {
      b.moe = std::make_unique<MoeLayer<T>>(groups_, name + ".moe", cfg_.moe, cfg.seed, l + 1);
      b.moe->borrow_input(true);  // its input, b.normed, stays until the block's backward
    } else {
      b.dense = std::make_unique<Ffn<T>>(name + ".ffn", cfg.d_model, cfg.d_ff,
                                         Placement::kReplicated);
      Rng drng(cfg.seed, Stream::kReplicatedInit, static_cast<std::uint64_t>(l + 1), 2000);
      b.dense->init(drng);
    }
  }
}

template <class T>
void Model<T>::forward(const Mat<T>& x, Mat<T>& out) {
  Mat<T> h, u;
  if (cfg_.vocab > 0) {
    Mat<T> e;
    embed_.forward(x, e);
    adapter_.forward(e, h, chunk_);
  } else {
    adapter_.forward(x, h, chunk_);
  }
  for (std::size_t l = 0; l < blocks_.size(); ++l) {
    Block& b = blocks_[l];
    b.norm.forward(h, b.normed);
    if (cfg_.mixture != MixtureLoss::kNone && l + 1 == blocks_.size()) {
      Mat<T> branches, gates;
      b.moe->forward_branches(b.normed, branches, gates);
      tail_.forward(final_norm_, head_, h, branches, gates, cfg_.classification, out, chunk_);
      return;
    }
    if (b.moe) {
      b.moe->forward(b.normed, u);
    } else {
      u.resize(b.normed.rows(), b.normed.cols());
      b.dense->forward(ConstMatMap<T>(b.normed.data(), b.normed.rows(), b.normed.cols()),
                       MatMap<T>(u.data(), u.rows(), u.cols()), chunk_);
    }
    h += u;
  }
  Mat<T> hn;
  final_norm_.forward(h, hn);
  head_.forward(hn, out, chunk_);
}

template <class T>
void Model<T>::backward(const Mat<T>& dout) {
  MOESIM_REQUIRE(cfg_.mixture == MixtureLoss::kNone, "a mixture model trains through loss_and_backward");
  Mat<T> dhn, dh;
  head_.backward(dout, dhn, chunk_);
  final_norm_.backward(dhn, dh, chunk_);
  backward_blocks(dh, blocks_.size());
}

template <class T>
MixtureLossResult Model<T>::loss_and_backward(const Mat<T>& out, const Batch& batch,
                                              bool classification, std::int64_t B_global) {
  if (cfg_.mixture == MixtureLoss::kNone) {
    Mat<T> dout;
    const LossResult lr = task_loss<T>(out, batch, classification, B_global, &dout);
    backward(dout);
    MixtureLossResult r;
    r.objective = r.prediction = lr.sum;  // exact sums, copied
    r.correct = lr.correct;
    return r;
  }
  MOESIM_REQUIRE(classification == cfg_.classification, "the mixture's prediction and loss disagree on the problem");
  Mat<T> dh, dbranches, dgates, du, dnormed;
  const MixtureLossResult r = tail_.loss_backward(final_norm_, head_, cfg_.mixture, batch,
                                                  classification, B_global, dh, dbranches, dgates, chunk_);
  Block& b = blocks_.back();
  b.moe->backward_branches(dbranches, dgates, du);
  b.norm.backward(du, dnormed, chunk_);
  dh += dnormed;
  backward_blocks(dh, blocks_.size() - 1);
  return r;
}

template <class T>
void Model<T>::backward_blocks(Mat<T>& dh, std::size_t end) {
  Mat<T> du, dnormed;
  for (std::size_t l = end; l-- > 0;) {
    Block& b = blocks_[l];
    if (b.moe) {
      b.moe->backward(dh, du);
    } else {
      du.resize(dh.rows(), dh.cols());
      b.dense->backward(ConstMatMap<T>(dh.data(), dh.rows(), dh.cols()),
                        MatMap<T>(du.data(), du.rows(), du.cols()), chunk_);
    }
    b.norm.backward(du, dnormed, chunk_);
    dh += dnormed;  // residual path
  }
  Mat<T> dx;
  adapter_.backward(dh, dx, chunk_);
  if (cfg_.vocab > 0) embed_.backward(dx, chunk_);
}

template <class T>
void Model<T>::set_chunk(Index chunk, Index expert_chunks) {
  chunk_ = chunk;
  for (Block& b : blocks_)
    if (b.moe) b.moe->set_chunk(chunk, expert_chunks);
}

template <class T>
void Model<T>::set_mode(bool training, std::int64_t step) {
  for (Block& b : blocks_)
    if (b.moe) b.moe->set_mode(training, step);
}

template <class T>
ParamList<T> Model<T>::replicated_params() {
  ParamList<T> ps;
  if (cfg_.vocab > 0) embed_.params(ps);
  adapter_.params(ps);
  for (Block& b : blocks_) {
    b.norm.params(ps);
    if (b.moe) b.moe->replicated_params(ps);
    else b.dense->params(ps);
  }
  final_norm_.params(ps);
  head_.params(ps);
  return ps;
}

template <class T>
ParamList<T> Model<T>::expert_params() {
  ParamList<T> ps;
  for (Block& b : blocks_)
    if (b.moe) b.moe->expert_params(ps);
  return ps;
}

template <class T>
std::vector<MoeLayer<T>*> Model<T>::moe_layers() {
  std::vector<MoeLayer<T>*> v;
  for (Block& b : blocks_)
    if (b.moe) v.push_back(b.moe.get());
  return v;
}

template class Model<float>;
template class Model<double>;

}  // namespace moesim
