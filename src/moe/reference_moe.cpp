#include "moe/reference_moe.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "moe/capacity.hpp"
#include "nn/activations.hpp"

namespace moesim {

namespace {

RowVec<double> softmax(const RowVec<double>& v) {
  RowVec<double> p = (v.array() - v.maxCoeff()).exp().matrix();
  return p / p.sum();
}

RowVec<double> expert_apply(const ReferenceExpert& e, const RowVec<double>& x, RowVec<double>* pre) {
  RowVec<double> a = x * e.w1 + e.b1;
  if (pre) *pre = a;
  RowVec<double> h = a.unaryExpr([](double v) { return gelu(v); });
  return h * e.w2 + e.b2;
}

}  // namespace

ReferenceMoe::Forward ReferenceMoe::forward(const Mat<double>& x) const {
  const Index B = x.rows(), D = x.cols();
  const int E = static_cast<int>(router.cols());
  Forward fw;
  fw.y = Mat<double>::Zero(B, D);
  fw.chosen.resize(static_cast<std::size_t>(B));
  fw.gate.resize(static_cast<std::size_t>(B));
  fw.kept.resize(static_cast<std::size_t>(B));
  fw.expert_tokens.assign(static_cast<std::size_t>(E), 0);
  std::vector<double> P(static_cast<std::size_t>(E), 0.0), assigned(static_cast<std::size_t>(E), 0.0);
  for (Index t = 0; t < B; ++t) {
    const RowVec<double> logits = x.row(t) * router;
    const RowVec<double> p = softmax(logits);
    for (int e = 0; e < E; ++e) P[e] += p(e);
    const double lse = logits.maxCoeff() + std::log((logits.array() - logits.maxCoeff()).exp().sum());
    fw.z_loss += lse * lse / static_cast<double>(B);
    std::vector<int> order(static_cast<std::size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits(a) > logits(b); });
    order.resize(static_cast<std::size_t>(K));
    RowVec<double> sel(K);
    for (int j = 0; j < K; ++j) sel(j) = logits(order[j]);
    RowVec<double> g = softmax(sel);
    if (switch_gate) g(0) = p(order[0]);
    fw.chosen[t] = order;
    fw.gate[t].assign(g.data(), g.data() + K);
    fw.kept[t].assign(static_cast<std::size_t>(K), 1);
    for (int e : order) assigned[e] += 1;
  }
  // Capacity: first choices of all tokens, then second choices, each in token order.
  const long cap = static_cast<long>(expert_capacity(capacity_factor, B, K, E));
  std::vector<long> used(static_cast<std::size_t>(E), 0);
  for (int j = 0; j < K; ++j)
    for (Index t = 0; t < B; ++t) {
      const int e = fw.chosen[t][j];
      if (cap > 0 && used[e] >= cap) {
        fw.kept[t][j] = 0;
        ++fw.dropped;
      } else {
        ++used[e];
      }
    }
  for (Index t = 0; t < B; ++t)
    for (int j = 0; j < K; ++j) {
      if (!fw.kept[t][j]) continue;
      const int e = fw.chosen[t][j];
      ++fw.expert_tokens[e];
      fw.y.row(t) += fw.gate[t][j] * expert_apply(experts[e], x.row(t), nullptr);
    }
  for (int e = 0; e < E; ++e)
    fw.aux_loss += (assigned[e] / static_cast<double>(B * K)) * (P[e] / static_cast<double>(B));
  fw.aux_loss *= E;
  return fw;
}

ReferenceMoe::Grads ReferenceMoe::backward(const Mat<double>& x, const Forward& fw,
                                           const Mat<double>& dy) const {
  const Index B = x.rows(), D = x.cols();
  const int E = static_cast<int>(router.cols());
  Grads g;
  g.dx = Mat<double>::Zero(B, D);
  g.drouter = Mat<double>::Zero(router.rows(), E);
  g.dexperts.resize(experts.size());
  for (std::size_t e = 0; e < experts.size(); ++e) {
    g.dexperts[e].w1 = Mat<double>::Zero(experts[e].w1.rows(), experts[e].w1.cols());
    g.dexperts[e].b1 = Mat<double>::Zero(1, experts[e].b1.cols());
    g.dexperts[e].w2 = Mat<double>::Zero(experts[e].w2.rows(), experts[e].w2.cols());
    g.dexperts[e].b2 = Mat<double>::Zero(1, experts[e].b2.cols());
  }
  std::vector<double> f(static_cast<std::size_t>(E), 0.0);
  for (Index t = 0; t < B; ++t)
    for (int e : fw.chosen[t]) f[e] += 1.0 / static_cast<double>(B * K);

  for (Index t = 0; t < B; ++t) {
    const RowVec<double> xt = x.row(t);
    RowVec<double> dgate = RowVec<double>::Zero(K);
    for (int j = 0; j < K; ++j) {
      if (!fw.kept[t][j]) continue;
      const ReferenceExpert& ex = experts[fw.chosen[t][j]];
      ReferenceExpert& dex = g.dexperts[fw.chosen[t][j]];
      RowVec<double> pre;
      const RowVec<double> out = expert_apply(ex, xt, &pre);
      dgate(j) = dy.row(t).dot(out);
      const RowVec<double> dout = fw.gate[t][j] * dy.row(t);
      const RowVec<double> h = pre.unaryExpr([](double v) { return gelu(v); });
      dex.w2 += h.transpose() * dout;
      dex.b2 += dout;
      const RowVec<double> dpre =
          (dout * ex.w2.transpose()).cwiseProduct(pre.unaryExpr([](double v) { return gelu_grad(v); }));
      dex.w1 += xt.transpose() * dpre;
      dex.b1 += dpre;
      g.dx.row(t) += dpre * ex.w1.transpose();
    }
    RowVec<double> dlogits = RowVec<double>::Zero(E);
    if (switch_gate) {
      // d p_e / d logits = p_e (onehot_e - p).
      const RowVec<double> p = softmax(xt * router);
      const int e = fw.chosen[t][0];
      dlogits += dgate(0) * p(e) * (RowVec<double>::Unit(E, e) - p);
    } else {
      // Softmax over the chosen logits.
      double dot = 0;
      for (int j = 0; j < K; ++j) dot += fw.gate[t][j] * dgate(j);
      for (int j = 0; j < K; ++j) dlogits(fw.chosen[t][j]) += fw.gate[t][j] * (dgate(j) - dot);
    }
    // Load-balancing loss through the full softmax.
    if (aux_loss_weight != 0) {
      const RowVec<double> p = softmax(xt * router);
      RowVec<double> dp(E);
      for (int e = 0; e < E; ++e) dp(e) = aux_loss_weight * E * f[e] / static_cast<double>(B);
      const double pdot = p.dot(dp);
      dlogits += (p.array() * (dp.array() - pdot)).matrix();
    }
    if (z_loss_weight != 0) {
      const RowVec<double> logits = xt * router;
      const double lse = logits.maxCoeff() + std::log((logits.array() - logits.maxCoeff()).exp().sum());
      dlogits += (2.0 * z_loss_weight * lse / static_cast<double>(B)) * softmax(logits);
    }
    g.drouter += xt.transpose() * dlogits;
    g.dx.row(t) += dlogits * router.transpose();
  }
  return g;
}

}  // namespace moesim
