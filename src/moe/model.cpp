#include "moe/model.hpp"

#include <cmath>

namespace moesim {

ParamCounts count_params(const ModelConfig& c) {
  ParamCounts p;
  const std::int64_t D = c.d_model, F = c.d_ff, E = c.moe.experts, K = c.moe.top_k;
  const std::int64_t expert = Ffn<float>::param_count(D, F);
  p.total = p.active = (c.adapter_in() + 1) * D + D + (D + 1) * c.d_out;  // adapter, final norm, head
  // Token embedding: the whole table, of which a token uses its C rows (a lookup, no FLOPs).
  p.total += c.vocab * c.embed_dim;
  p.active += c.vocab > 0 ? c.d_in * c.embed_dim : 0;
  p.flops_per_token = 2 * c.adapter_in() * D + 2 * D * c.d_out;
  for (int l = 0; l < c.layers; ++l) {
    p.total += D;  // block norm
    p.active += D;
    if (c.is_moe_block(l)) {
      // Noisy top-k has a second router matrix, W_noise.
      const std::int64_t router = (c.moe.gate == GateKind::kNoisyTopK ? 2 : 1) * D * E;
      p.total += router + E * expert;
      p.active += router + K * expert;
      p.flops_per_token += 2 * router + K * 4 * D * F;
    } else {
      p.total += expert;
      p.active += expert;
      p.flops_per_token += 4 * D * F;
    }
  }
  return p;
}

template <class T>
Model<T>::Model(const Communicator& comm, const ModelConfig& cfg)
    : cfg_(cfg),
      adapter_("adapter", cfg.adapter_in(), cfg.d_model, Placement::kReplicated),
      final_norm_("final_norm", cfg.d_model, Placement::kReplicated),
      head_("head", cfg.d_model, cfg.d_out, Placement::kReplicated) {
  cfg_.moe.d_model = cfg.d_model;
  cfg_.moe.d_ff = cfg.d_ff;
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
      b.moe = std::make_unique<MoeLayer<T>>(comm, name + ".moe", cfg_.moe, cfg.seed, l + 1);
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
    adapter_.forward(e, h);
  } else {
    adapter_.forward(x, h);
  }
  for (Block& b : blocks_) {
    b.norm.forward(h, b.normed);
    if (b.moe) {
      b.moe->forward(b.normed, u);
    } else {
      u.resize(b.normed.rows(), b.normed.cols());
      b.dense->forward(ConstMatMap<T>(b.normed.data(), b.normed.rows(), b.normed.cols()),
                       MatMap<T>(u.data(), u.rows(), u.cols()));
    }
    h += u;
  }
  Mat<T> hn;
  final_norm_.forward(h, hn);
  head_.forward(hn, out);
}

template <class T>
void Model<T>::backward(const Mat<T>& dout) {
  Mat<T> dhn, dh, du, dnormed;
  head_.backward(dout, dhn);
  final_norm_.backward(dhn, dh);
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    Block& b = *it;
    if (b.moe) {
      b.moe->backward(dh, du);
    } else {
      du.resize(dh.rows(), dh.cols());
      b.dense->backward(ConstMatMap<T>(dh.data(), dh.rows(), dh.cols()),
                        MatMap<T>(du.data(), du.rows(), du.cols()));
    }
    b.norm.backward(du, dnormed);
    dh += dnormed;  // residual path
  }
  Mat<T> dx;
  adapter_.backward(dh, dx);
  if (cfg_.vocab > 0) embed_.backward(dx);
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
