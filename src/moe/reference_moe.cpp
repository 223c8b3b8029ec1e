#include "moe/reference_moe.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>

#include "moe/capacity.hpp"
#include "moe/reference_expert.hpp"

namespace moesim {

using namespace reference;

namespace {

double softplus(double a) { return std::max(a, 0.0) + std::log1p(std::exp(-std::abs(a))); }
double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }
double phi(double z) { return std::exp(-0.5 * z * z) / std::sqrt(2.0 * std::numbers::pi); }
double Phi(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

// CV^2 = var / mean^2 and its gradient, written out from the definition.
double cv2(const std::vector<double>& v, std::vector<double>& grad) {
  const double E = static_cast<double>(v.size());
  double mean = 0, var = 0;
  for (double a : v) mean += a / E;
  for (double a : v) var += (a - mean) * (a - mean) / E;
  grad.assign(v.size(), 0.0);
  if (!(mean > 0)) return 0.0;
  for (std::size_t e = 0; e < v.size(); ++e)
    grad[e] = 2.0 * (v[e] - mean) / (E * mean * mean) - 2.0 * var / (E * mean * mean * mean);
  return var / (mean * mean);
}

constexpr double kSigmoidSumEps = 1e-20;  // as gates/topk.cpp

}  // namespace

ReferenceMoe::Forward ReferenceMoe::forward(const Mat<double>& x) const {
  const Index B = x.rows(), D = x.cols();
  const int E = static_cast<int>(router.cols());
  const GateKind g = switch_gate ? GateKind::kSwitch : gate;
  const bool ec = g == GateKind::kExpertChoice;
  const bool noisy = g == GateKind::kNoisyTopK && noise.size() > 0;
  const bool all = gate_uses_all_experts(g);  // every expert in index order, no capacity
  const bool sig = sigmoid_scores && g == GateKind::kTopK;
  const int slots = ec || all ? E : K;
  auto router_in = [&](Index t) -> RowVec<double> {  // the router's input: x, jittered
    return jitter.size() > 0 ? RowVec<double>(x.row(t).cwiseProduct(jitter.row(t))) : RowVec<double>(x.row(t));
  };
  Forward fw;
  fw.y = Mat<double>::Zero(B, D);
  fw.chosen.resize(static_cast<std::size_t>(B));
  fw.gate.resize(static_cast<std::size_t>(B));
  fw.kept.resize(static_cast<std::size_t>(B));
  fw.next_choice.assign(static_cast<std::size_t>(B), -1);
  fw.expert_tokens.assign(static_cast<std::size_t>(E), 0);
  std::vector<double> P(static_cast<std::size_t>(E), 0.0), assigned(static_cast<std::size_t>(E), 0.0);
  // Logits, softmax, noisy logits h and selection scores, token by token.
  std::vector<RowVec<double>> logits(B), p(B), h(B), sel(B), score(B);
  for (Index t = 0; t < B; ++t) {
    logits[t] = g == GateKind::kConstant ? RowVec<double>::Zero(E) : RowVec<double>(router_in(t) * router);
    p[t] = softmax(logits[t]);
    if (sig) {  // DeepSeek-V3: s = sigmoid(logits), probabilities s / sum(s)
      score[t] = logits[t].unaryExpr([](double a) { return sigmoid(a); });
      p[t] = score[t] / (score[t].sum() + kSigmoidSumEps);
    }
    for (int e = 0; e < E; ++e) P[e] += p[t](e);
    const double lse = logits[t].maxCoeff() + std::log((logits[t].array() - logits[t].maxCoeff()).exp().sum());
    fw.z_loss += lse * lse / static_cast<double>(B);
    h[t] = sig ? score[t] : logits[t];
    if (noisy) {
      const RowVec<double> nl = router_in(t) * router_noise;
      for (int e = 0; e < E; ++e) h[t](e) += noise(t, e) * softplus(nl(e));
    }
    sel[t] = h[t];
    if (!bias.empty())
      for (int e = 0; e < E; ++e) sel[t](e) += bias[e];
  }
  if (g == GateKind::kSBase) {
    // Sinkhorn over the whole batch: rows sum to 1, columns to B / E.
    std::vector<double> v(static_cast<std::size_t>(E), 1.0);
    std::vector<RowVec<double>> k(B);
    for (Index t = 0; t < B; ++t) k[t] = (logits[t].array() - logits[t].maxCoeff()).exp().matrix();
    for (int it = 0; it < sinkhorn_iters; ++it) {
      std::vector<double> u(static_cast<std::size_t>(B)), col(static_cast<std::size_t>(E), 0.0);
      for (Index t = 0; t < B; ++t) {
        double s = 0;
        for (int e = 0; e < E; ++e) s += k[t](e) * v[e];
        u[t] = 1.0 / s;
      }
      for (Index t = 0; t < B; ++t)
        for (int e = 0; e < E; ++e) col[e] += k[t](e) * u[t];
      for (int e = 0; e < E; ++e) v[e] = static_cast<double>(B) / E / col[e];
    }
    for (Index t = 0; t < B; ++t)
      for (int e = 0; e < E; ++e) sel[t](e) = logits[t](e) + std::log(v[e]);
  }
  const long cap = all ? 0 : static_cast<long>(expert_capacity(capacity_factor, B, K, E, min_capacity));
  for (Index t = 0; t < B; ++t) {
    std::vector<int> order(static_cast<std::size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    if (g == GateKind::kHash) {
      std::uint64_t key = static_cast<std::uint64_t>(t);
      if (hash_planes.size() > 0) {
        key = 0;
        const RowVec<double> proj = x.row(t) * hash_planes;
        for (Index q = 0; q < proj.size(); ++q) key |= static_cast<std::uint64_t>(proj(q) > 0) << q;
      }
      const int h0 = hash_expert(hash_seed, hash_layer, key, E);
      for (int j = 0; j < E; ++j) order[j] = (h0 + j) % E;
    } else if (!ec && !all) {
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sel[t](a) > sel[t](b); });
    }
    if (!ec && !all && K < E) fw.next_choice[t] = order[K];
    order.resize(static_cast<std::size_t>(slots));
    std::vector<double> gt(static_cast<std::size_t>(slots));
    if (sig) {
      double chosen = kSigmoidSumEps;
      for (int j = 0; j < slots; ++j) chosen += score[t](order[j]);
      for (int j = 0; j < slots; ++j) gt[j] = slots > 1 ? score[t](order[j]) / chosen : score[t](order[j]);
    } else if ((g == GateKind::kTopK && !pre_softmax) || g == GateKind::kNoisyTopK) {
      RowVec<double> chosen_h(slots);
      for (int j = 0; j < slots; ++j) chosen_h(j) = h[t](order[j]);
      const RowVec<double> s = softmax(chosen_h);
      for (int j = 0; j < slots; ++j) gt[j] = s(j);
    } else if (g == GateKind::kHash) {
      std::fill(gt.begin(), gt.end(), 1.0 / K);
    } else {
      for (int j = 0; j < slots; ++j) gt[j] = p[t](order[j]);
    }
    fw.chosen[t] = order;
    fw.gate[t] = gt;
    fw.kept[t].assign(static_cast<std::size_t>(slots), 1);
  }
  if (ec) {
    // Each expert keeps its C best tokens by probability, ties to the lower token.
    for (int e = 0; e < E; ++e) {
      std::vector<Index> tok(static_cast<std::size_t>(B));
      std::iota(tok.begin(), tok.end(), Index{0});
      std::stable_sort(tok.begin(), tok.end(), [&](Index a, Index b) { return p[a](e) > p[b](e); });
      for (Index i = 0; i < B; ++i) fw.kept[tok[i]][e] = i < cap;
    }
    for (Index t = 0; t < B; ++t)
      for (int e = 0; e < E; ++e)
        if (fw.kept[t][e]) assigned[e] += 1;
  } else {
    for (Index t = 0; t < B; ++t)
      for (int e : fw.chosen[t]) assigned[e] += 1;
    // Capacity: first choices of all tokens, then second choices, each in token order;
    // --drop-policy probs: per expert by descending gate, ties to the lower token.
    std::vector<std::pair<Index, int>> order;  // (token, choice)
    for (int j = 0; j < K; ++j)
      for (Index t = 0; t < B; ++t) order.emplace_back(t, j);
    if (drop_by_probs)
      std::stable_sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
        const double ga = fw.gate[a.first][a.second], gb = fw.gate[b.first][b.second];
        return ga > gb || (ga == gb && a.first < b.first);
      });
    std::vector<long> used(static_cast<std::size_t>(E), 0);
    for (const auto& [t, j] : order) {
      const int e = fw.chosen[t][j];
      if (cap > 0 && used[e] >= cap) {
        fw.kept[t][j] = 0;
        ++fw.dropped;
      } else {
        ++used[e];
      }
    }
  }
  for (Index t = 0; t < B; ++t)
    for (int j = 0; j < slots; ++j) {
      if (!fw.kept[t][j]) continue;
      const int e = fw.chosen[t][j];
      ++fw.expert_tokens[e];
      fw.y.row(t) += fw.gate[t][j] * expert_apply(experts[e], x.row(t), nullptr);
    }
  for (Index t = 0; t < B; ++t)
    for (const ReferenceExpert& se : shared) fw.y.row(t) += expert_apply(se, x.row(t), nullptr);
  double total = 0;
  for (double a : assigned) total += a;
  for (int e = 0; e < E; ++e) fw.aux_loss += (assigned[e] / total) * (P[e] / static_cast<double>(B));
  fw.aux_loss *= E;
  if (noisy) {
    std::vector<double> imp(static_cast<std::size_t>(E), 0.0), load(static_cast<std::size_t>(E), 0.0);
    for (Index t = 0; t < B; ++t) {
      for (int j = 0; j < K; ++j) imp[fw.chosen[t][j]] += fw.gate[t][j];
      if (K == E) continue;
      const RowVec<double> nl = router_in(t) * router_noise;
      for (int e = 0; e < E; ++e) {
        const bool in = std::find(fw.chosen[t].begin(), fw.chosen[t].end(), e) != fw.chosen[t].end();
        const double thr = sel[t](in ? fw.next_choice[t] : fw.chosen[t][K - 1]);
        load[e] += Phi((logits[t](e) + (bias.empty() ? 0.0 : bias[e]) - thr) / softplus(nl(e)));
      }
    }
    fw.importance_loss = cv2(imp, fw.dimportance);
    fw.load_loss = K < E ? cv2(load, fw.dload) : 0.0;
    if (K == E) fw.dload.assign(static_cast<std::size_t>(E), 0.0);
  }
  return fw;
}

ReferenceMoe::Grads ReferenceMoe::backward(const Mat<double>& x, const Forward& fw,
                                           const Mat<double>& dy) const {
  const Index B = x.rows(), D = x.cols();
  const int E = static_cast<int>(router.cols());
  const GateKind g = switch_gate ? GateKind::kSwitch : gate;
  const bool noisy = g == GateKind::kNoisyTopK && noise.size() > 0;
  Grads gr;
  gr.dx = Mat<double>::Zero(B, D);
  gr.drouter = Mat<double>::Zero(router.rows(), E);
  if (noisy) gr.drouter_noise = Mat<double>::Zero(router_noise.rows(), E);
  gr.dexperts = zeros_like(experts);
  gr.dshared = zeros_like(shared);
  std::vector<double> f(static_cast<std::size_t>(E), 0.0);
  double total = 0;
  for (Index t = 0; t < B; ++t)
    for (std::size_t j = 0; j < fw.chosen[t].size(); ++j)
      if (g != GateKind::kExpertChoice || fw.kept[t][j]) {
        f[fw.chosen[t][j]] += 1;
        total += 1;
      }
  for (double& v : f) v /= total;
  const bool switch_aux = g == GateKind::kTopK || g == GateKind::kSwitch || g == GateKind::kSBase;
  const bool sig = sigmoid_scores && g == GateKind::kTopK;

  for (Index t = 0; t < B; ++t) {
    const RowVec<double> xt = x.row(t);
    // The router's input and d(router input) / dx: the jitter factors, or 1.
    const RowVec<double> u = jitter.size() > 0 ? RowVec<double>(jitter.row(t)) : RowVec<double>::Ones(xt.size());
    const RowVec<double> rt = xt.cwiseProduct(u);
    const int slots = static_cast<int>(fw.chosen[t].size());
    RowVec<double> dgate = RowVec<double>::Zero(slots);
    for (int j = 0; j < slots; ++j) {
      if (!fw.kept[t][j]) continue;
      const ReferenceExpert& ex = experts[fw.chosen[t][j]];
      dgate(j) = dy.row(t).dot(expert_apply(ex, xt, nullptr));
      gr.dx.row(t) += expert_backward(ex, gr.dexperts[fw.chosen[t][j]], xt, fw.gate[t][j] * dy.row(t));
    }
    for (std::size_t si = 0; si < shared.size(); ++si)
      gr.dx.row(t) += expert_backward(shared[si], gr.dshared[si], xt, dy.row(t));
    if (g == GateKind::kConstant) continue;  // no router
    const RowVec<double> logits = rt * router;
    const RowVec<double> p = softmax(logits);
    RowVec<double> nl, dnl;
    if (noisy) {
      nl = rt * router_noise;
      dnl = RowVec<double>::Zero(E);
    }
    RowVec<double> dlogits = RowVec<double>::Zero(E);
    if (sig) {
      // g_j = s_j / (sum_chosen s + eps) for K > 1, s_j for K = 1; q_e = s_e / (sum_all s + eps)
      // (the Switch loss's probabilities); ds/dlogit = s (1 - s).
      RowVec<double> sc(E), ds = RowVec<double>::Zero(E);
      for (int e = 0; e < E; ++e) sc(e) = sigmoid(logits(e));
      double S = kSigmoidSumEps, Q = kSigmoidSumEps;
      for (int j = 0; j < slots; ++j) S += sc(fw.chosen[t][j]);
      for (int e = 0; e < E; ++e) Q += sc(e);
      for (int i = 0; i < slots; ++i)
        for (int j = 0; j < slots; ++j) {
          const double dgi_dsj = slots == 1 ? 1.0 : ((i == j ? 1.0 : 0.0) - sc(fw.chosen[t][i]) / S) / S;
          ds(fw.chosen[t][j]) += dgate(i) * dgi_dsj;
        }
      if (aux_loss_weight != 0 && switch_aux)
        for (int a = 0; a < E; ++a)
          for (int e = 0; e < E; ++e)
            ds(e) += aux_loss_weight * E * f[a] / static_cast<double>(B) * ((a == e ? 1.0 : 0.0) - sc(a) / Q) / Q;
      for (int e = 0; e < E; ++e) dlogits(e) += ds(e) * sc(e) * (1.0 - sc(e));
    } else if ((g == GateKind::kTopK && !pre_softmax) || g == GateKind::kNoisyTopK) {
      // Softmax over the chosen (noisy) logits; importance = sum of gates.
      if (noisy && importance_weight != 0)
        for (int j = 0; j < slots; ++j) dgate(j) += importance_weight * fw.dimportance[fw.chosen[t][j]];
      double dot = 0;
      for (int j = 0; j < slots; ++j) dot += fw.gate[t][j] * dgate(j);
      for (int j = 0; j < slots; ++j) {
        const int e = fw.chosen[t][j];
        const double dh = fw.gate[t][j] * (dgate(j) - dot);
        dlogits(e) += dh;
        if (noisy) dnl(e) += dh * noise(t, e) * sigmoid(nl(e));
      }
    } else if (g != GateKind::kHash) {
      // gate = p_e; d p_e / d logits = p_e (onehot_e - p).
      for (int j = 0; j < slots; ++j) {
        const int e = fw.chosen[t][j];
        dlogits += dgate(j) * p(e) * (RowVec<double>::Unit(E, e) - p);
      }
    }
    if (noisy && load_weight != 0 && K < E) {
      // P(t, e) = Phi((logit_e + b_e - thr) / softplus(nl_e)), thr = sel of expert js.
      for (int e = 0; e < E; ++e) {
        const bool in = std::find(fw.chosen[t].begin(), fw.chosen[t].end(), e) != fw.chosen[t].end();
        const int js = in ? fw.next_choice[t] : fw.chosen[t][K - 1];
        const double thr = logits(js) + noise(t, js) * softplus(nl(js)) + (bias.empty() ? 0.0 : bias[js]);
        const double s = softplus(nl(e));
        const double z = (logits(e) + (bias.empty() ? 0.0 : bias[e]) - thr) / s;
        const double a = load_weight * fw.dload[e] * phi(z);
        dlogits(e) += a / s;
        dnl(e) -= a * z / s * sigmoid(nl(e));
        dlogits(js) -= a / s;
        dnl(js) -= a / s * noise(t, js) * sigmoid(nl(js));
      }
    }
    // Load-balancing loss through the full softmax (the sigmoid scores' above).
    if (aux_loss_weight != 0 && switch_aux && !sig) {
      RowVec<double> dp(E);
      for (int e = 0; e < E; ++e) dp(e) = aux_loss_weight * E * f[e] / static_cast<double>(B);
      const double pdot = p.dot(dp);
      dlogits += (p.array() * (dp.array() - pdot)).matrix();
    }
    if (z_loss_weight != 0) {
      const double lse = logits.maxCoeff() + std::log((logits.array() - logits.maxCoeff()).exp().sum());
      dlogits += (2.0 * z_loss_weight * lse / static_cast<double>(B)) * p;
    }
    gr.drouter += rt.transpose() * dlogits;
    gr.dx.row(t) += (dlogits * router.transpose()).cwiseProduct(u);
    if (noisy) {
      gr.drouter_noise += rt.transpose() * dnl;
      gr.dx.row(t) += (dnl * router_noise.transpose()).cwiseProduct(u);
    }
  }
  return gr;
}

}  // namespace moesim
