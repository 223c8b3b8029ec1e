#include "moe/router.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>

#include "core/error.hpp"

namespace moesim {

namespace {

constexpr int kHashPlanes = 16;

double softplus(double a) { return std::max(a, 0.0) + std::log1p(std::exp(-std::abs(a))); }
double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }
double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::numbers::sqrt2); }
double normal_pdf(double z) { return std::exp(-0.5 * z * z) / std::sqrt(2.0 * std::numbers::pi); }

// CV(v)^2 = var / mean^2 (population variance) and its gradient
// d/dv_e = 2 / (E mean^2) * ((v_e - mean) - var / mean).
double cv_squared(const double* v, int E, std::vector<double>& grad) {
  double mean = 0, var = 0;
  for (int e = 0; e < E; ++e) mean += v[e] / E;
  for (int e = 0; e < E; ++e) var += (v[e] - mean) * (v[e] - mean) / E;
  grad.assign(static_cast<std::size_t>(E), 0.0);
  if (!(mean > 0)) return 0.0;
  for (int e = 0; e < E; ++e)
    grad[static_cast<std::size_t>(e)] = 2.0 / (E * mean * mean) * ((v[e] - mean) - var / mean);
  return var / (mean * mean);
}

}  // namespace

GateKind parse_gate(const std::string& name) {
  if (name == "topk") return GateKind::kTopK;
  if (name == "switch") return GateKind::kSwitch;
  if (name == "noisy-topk") return GateKind::kNoisyTopK;
  if (name == "expert-choice") return GateKind::kExpertChoice;
  if (name == "hash") return GateKind::kHash;
  if (name == "sbase") return GateKind::kSBase;
  if (name == "dense") return GateKind::kDense;
  if (name == "constant") return GateKind::kConstant;
  throw ConfigError("--gate must be topk, switch, noisy-topk, expert-choice, hash, sbase, dense or constant (got '" +
                    name + "')");
}

const char* gate_name(GateKind g) {
  switch (g) {
    case GateKind::kTopK: return "topk";
    case GateKind::kSwitch: return "switch";
    case GateKind::kNoisyTopK: return "noisy-topk";
    case GateKind::kExpertChoice: return "expert-choice";
    case GateKind::kHash: return "hash";
    case GateKind::kSBase: return "sbase";
    case GateKind::kDense: return "dense";
    case GateKind::kConstant: return "constant";
  }
  return "?";
}

bool gate_is_token_choice(GateKind g) {
  return g == GateKind::kTopK || g == GateKind::kSwitch || g == GateKind::kNoisyTopK ||
         g == GateKind::kSBase;
}

int hash_expert(std::uint64_t seed, int layer_id, std::uint64_t key, int E) {
  return static_cast<int>(derive_key(seed, Stream::kRouterHash, static_cast<std::uint64_t>(layer_id) + 1, key) %
                          static_cast<std::uint64_t>(E));
}

Mat<double> hash_planes(std::uint64_t seed, int layer_id, Index d_model) {
  Rng rng(seed, Stream::kRouterHash, static_cast<std::uint64_t>(layer_id) + 1, 0);
  Mat<double> planes(d_model, kHashPlanes);
  for (Index i = 0; i < planes.size(); ++i) planes.data()[i] = rng.normal();
  return planes;
}

double router_noise(std::uint64_t seed, int layer_id, std::int64_t step, std::int64_t token, int expert) {
  // One key per (step, layer) and per (token, expert): E < 2^20 experts.
  Rng rng(seed, Stream::kRouterNoise,
          (static_cast<std::uint64_t>(step) << 16) ^ static_cast<std::uint64_t>(layer_id),
          (static_cast<std::uint64_t>(token) << 20) | static_cast<std::uint64_t>(expert));
  return rng.normal();
}

template <class T>
Router<T>::Router(const std::string& name, Index d_model, int experts, int top_k, GateKind kind)
    : Router(name, d_model, experts, top_k, RouterOptions{.gate = kind}) {}

template <class T>
Router<T>::Router(const std::string& name, Index d_model, int experts, int top_k, const RouterOptions& opt)
    : K_(gate_uses_all_experts(opt.gate) ? experts : top_k), opt_(opt) {
  MOESIM_REQUIRE(opt.gate != GateKind::kSwitch || top_k == 1, "the switch gate routes each token to one expert");
  MOESIM_REQUIRE(top_k >= 1 && top_k <= experts, "top-k must be in [1, E]");
  w_.name = name + ".w";
  w_.placement = Placement::kReplicated;
  w_.resize(d_model, experts);
  if (opt.gate == GateKind::kNoisyTopK) {
    w_noise_.name = name + ".w_noise";
    w_noise_.placement = Placement::kReplicated;
    w_noise_.resize(d_model, experts);
  }
  bias_.assign(static_cast<std::size_t>(experts), 0.0);
  if (opt.gate == GateKind::kHash && opt.hash_key == HashKey::kInput)
    hash_planes_ = hash_planes(opt.seed, opt.layer_id, d_model);
}

template <class T>
void Router<T>::init(Rng& rng, double init_scale) {
  w_.fill_normal(rng, std::sqrt(init_scale / static_cast<double>(w_.value.rows())));
  if (opt_.gate == GateKind::kNoisyTopK) w_noise_.value.setZero();
}

template <class T>
bool Router<T>::needs_token_index() const {
  return opt_.gate == GateKind::kNoisyTopK || opt_.gate == GateKind::kExpertChoice ||
         (opt_.gate == GateKind::kHash && opt_.hash_key == HashKey::kPosition);
}

template <class T>
void Router<T>::forward(const Mat<T>& x, const RouteContext& ctx, Routing<T>& r) {
  if (opt_.fp64) forward_as<double>(x, ctx, r);
  else forward_as<T>(x, ctx, r);
}

template <class T>
void Router<T>::backward(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs, Mat<T>& dx,
                         const std::vector<double>& dlse) {
  if (opt_.fp64) backward_as<double>(r, dgate, dprobs, dx, dlse);
  else backward_as<T>(r, dgate, dprobs, dx, dlse);
}

template <class T>
template <class R>
void Router<T>::forward_as(const Mat<T>& x, const RouteContext& ctx, Routing<T>& r) {
  x_ = x;
  const Index n = x.rows();
  const int E = static_cast<int>(w_.value.cols());
  const GateKind g = opt_.gate;
  const bool ec = g == GateKind::kExpertChoice;
  const int K = ec ? E : K_;
  const Mat<R> xr = x.template cast<R>();
  const Mat<R> logits =
      g == GateKind::kConstant ? Mat<R>::Zero(n, E) : Mat<R>(xr * w_.value.template cast<R>());
  r.n = n;
  r.K = K;
  r.E = E;
  r.expert.assign(static_cast<std::size_t>(n * K), 0);
  r.gate = Mat<T>::Zero(n, K);
  r.probs.resize(n, E);
  r.lse.assign(static_cast<std::size_t>(n), 0.0);
  r.preselected.clear();
  r.importance_loss = r.load_loss = 0;

  // Scores that rank experts (sel) and logits the top-k gate is a softmax of (h).
  Mat<R> h = logits;
  noisy_ = g == GateKind::kNoisyTopK && ctx.training;
  if (noisy_) {
    const Mat<R> nl = xr * w_noise_.value.template cast<R>();
    noise_logits_ = nl.template cast<double>();
    eps_.resize(n, E);
    for (Index t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e) {
        eps_(t, e) = router_noise(opt_.seed, opt_.layer_id, ctx.step, ctx.first_token + t, e);
        h(t, e) += static_cast<R>(eps_(t, e) * softplus(static_cast<double>(nl(t, e))));
      }
  }
  Mat<R> sel = h;
  if (opt_.bias_selection)
    for (Index t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e) sel(t, e) += static_cast<R>(bias_[static_cast<std::size_t>(e)]);

  Mat<double> probs64(n, E);
  for (Index t = 0; t < n; ++t) {
    const auto row = logits.row(t);
    const R mx = row.maxCoeff();
    R z = 0;
    RowVec<R> p(E);
    for (int e = 0; e < E; ++e) z += (p(e) = std::exp(row(e) - mx));
    p /= z;
    for (int e = 0; e < E; ++e) {
      probs64(t, e) = static_cast<double>(p(e));
      r.probs(t, e) = static_cast<T>(p(e));
    }
    r.lse[static_cast<std::size_t>(t)] = static_cast<double>(mx) + std::log(static_cast<double>(z));
  }

  if (g == GateKind::kSBase) {
    // Sinkhorn: plan = diag(u) exp(logits) diag(v) with rows summing to 1 and columns
    // to B/E over the global batch; only the column sums cross ranks.
    MOESIM_REQUIRE(ctx.B > 0, "sbase routing needs the global batch size");
    Mat<double> k(n, E);
    for (Index t = 0; t < n; ++t) {
      const double mx = static_cast<double>(logits.row(t).maxCoeff());
      for (int e = 0; e < E; ++e) k(t, e) = std::exp(static_cast<double>(logits(t, e)) - mx);
    }
    std::vector<double> v(static_cast<std::size_t>(E), 1.0), col(static_cast<std::size_t>(E));
    std::vector<double> u(static_cast<std::size_t>(n));
    const double target = static_cast<double>(ctx.B) / E;
    for (int it = 0; it < opt_.sinkhorn_iters; ++it) {
      for (Index t = 0; t < n; ++t) {
        double s = 0;
        for (int e = 0; e < E; ++e) s += k(t, e) * v[static_cast<std::size_t>(e)];
        u[static_cast<std::size_t>(t)] = 1.0 / s;
      }
      std::fill(col.begin(), col.end(), 0.0);
      for (Index t = 0; t < n; ++t)
        for (int e = 0; e < E; ++e) col[static_cast<std::size_t>(e)] += k(t, e) * u[static_cast<std::size_t>(t)];
      if (ctx.comm) ctx.comm->allreduce_sum(col.data(), E);
      for (int e = 0; e < E; ++e)
        if (col[static_cast<std::size_t>(e)] > 0) v[static_cast<std::size_t>(e)] = target / col[static_cast<std::size_t>(e)];
    }
    for (Index t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e) sel(t, e) = static_cast<R>(static_cast<double>(logits(t, e)) + std::log(v[static_cast<std::size_t>(e)]));
  }

  probs_ = std::move(probs64);
  next_order_.assign(static_cast<std::size_t>(n), -1);
  if (ec) {
    for (Index t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e) r.expert[static_cast<std::size_t>(t * E + e)] = e;
    select_expert_choice(ctx, r);
    for (Index t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e)
        if (r.preselected[static_cast<std::size_t>(t * E + e)]) r.gate(t, e) = r.probs(t, e);
  } else if (gate_uses_all_experts(g)) {
    // Choice j is expert j; the gate is the softmax (constant: 1/E, its logits are 0).
    for (Index t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e) r.expert[static_cast<std::size_t>(t * E + e)] = e;
    r.gate = r.probs;
  } else if (g == GateKind::kHash) {
    for (Index t = 0; t < n; ++t) {
      std::uint64_t key = static_cast<std::uint64_t>(ctx.first_token + t);
      if (opt_.hash_key == HashKey::kInput) {
        key = 0;
        for (int q = 0; q < kHashPlanes; ++q) {
          double dot = 0;
          for (Index d = 0; d < x.cols(); ++d) dot += static_cast<double>(x(t, d)) * hash_planes_(d, q);
          key |= static_cast<std::uint64_t>(dot > 0) << q;
        }
      }
      const int h0 = hash_expert(opt_.seed, opt_.layer_id, key, E);
      for (int j = 0; j < K; ++j) {
        r.expert[static_cast<std::size_t>(t * K + j)] = (h0 + j) % E;
        r.gate(t, j) = static_cast<T>(1.0 / K);
      }
    }
  } else {
    std::vector<int> order(static_cast<std::size_t>(E));
    const int depth = std::min(E, K + 1);
    for (Index t = 0; t < n; ++t) {
      const auto row = sel.row(t);
      // Ties go to the lower expert index, so routing is a pure function of the scores.
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + depth, order.end(), [&](int a, int b) {
        return row(a) > row(b) || (row(a) == row(b) && a < b);
      });
      if (K < E) next_order_[static_cast<std::size_t>(t)] = order[static_cast<std::size_t>(K)];
      for (int j = 0; j < K; ++j) r.expert[static_cast<std::size_t>(t * K + j)] = order[static_cast<std::size_t>(j)];
      if (g == GateKind::kSwitch || g == GateKind::kSBase) {
        for (int j = 0; j < K; ++j) r.gate(t, j) = r.probs(t, order[static_cast<std::size_t>(j)]);
      } else {
        // Softmax over the chosen (noisy) logits, without the selection bias.
        R top = h(t, order[0]);
        for (int j = 1; j < K; ++j) top = std::max(top, h(t, order[static_cast<std::size_t>(j)]));
        RowVec<R> gk(K);
        for (int j = 0; j < K; ++j) gk(j) = std::exp(h(t, order[static_cast<std::size_t>(j)]) - top);
        gk /= gk.sum();
        for (int j = 0; j < K; ++j) r.gate(t, j) = static_cast<T>(gk(j));
      }
    }
  }

  if (noisy_) {
    // Importance_e = sum_t gate(t, e); Load_e = sum_t P(expert e is chosen), with
    // P = Phi((x W_g + b - kth_excluding(sel, K, e)) / softplus(x W_noise)).
    std::vector<double> sums(static_cast<std::size_t>(2 * E), 0.0);
    load_z_ = Mat<double>::Zero(n, E);
    for (Index t = 0; t < n; ++t) {
      for (int j = 0; j < K; ++j) sums[static_cast<std::size_t>(r.expert_of(t, j))] += static_cast<double>(r.gate(t, j));
      if (K == E) continue;
      const double kth = static_cast<double>(sel(t, r.expert_of(t, K - 1)));
      const double next = static_cast<double>(sel(t, next_order_[static_cast<std::size_t>(t)]));
      for (int e = 0; e < E; ++e) {
        bool chosen = false;
        for (int j = 0; j < K; ++j) chosen |= r.expert_of(t, j) == e;
        const double thr = chosen ? next : kth;
        const double clean = static_cast<double>(logits(t, e)) +
                             (opt_.bias_selection ? bias_[static_cast<std::size_t>(e)] : 0.0);
        const double z = (clean - thr) / softplus(noise_logits_(t, e));
        load_z_(t, e) = z;
        sums[static_cast<std::size_t>(E + e)] += normal_cdf(z);
      }
    }
    if (ctx.comm) ctx.comm->allreduce_sum(sums.data(), 2 * E);
    r.importance_loss = cv_squared(sums.data(), E, dimportance_);
    if (K < E) r.load_loss = cv_squared(sums.data() + E, E, dload_);
    else dload_.assign(static_cast<std::size_t>(E), 0.0);
  }
}

template <class T>
void Router<T>::select_expert_choice(const RouteContext& ctx, Routing<T>& r) const {
  // NOTES: each expert's C best (score, global token) pairs over the global batch, ties
  // to the lower token. Every rank sends its local C best per expert (no more can make
  // the global cut), all ranks merge the same candidates and find each expert's cut.
  const Index n = r.n;
  const int E = r.E;
  const std::int64_t C = ctx.capacity;
  MOESIM_REQUIRE(C > 0, "expert-choice routing needs a capacity (capacity factor > 0)");
  auto better = [](double sa, std::int64_t ta, double sb, std::int64_t tb) {
    return sa > sb || (sa == sb && ta < tb);
  };
  std::vector<double> cand;  // per expert: count, then (score, token) pairs
  std::vector<Index> idx(static_cast<std::size_t>(n));
  for (int e = 0; e < E; ++e) {
    std::iota(idx.begin(), idx.end(), Index{0});
    const Index m = std::min<Index>(n, static_cast<Index>(C));
    auto score = [&](Index t) { return static_cast<double>(probs_(t, e)); };
    std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), [&](Index a, Index b) {
      return better(score(a), ctx.first_token + a, score(b), ctx.first_token + b);
    });
    cand.push_back(static_cast<double>(m));
    for (Index i = 0; i < m; ++i) {
      cand.push_back(score(idx[static_cast<std::size_t>(i)]));
      cand.push_back(static_cast<double>(ctx.first_token + idx[static_cast<std::size_t>(i)]));
    }
  }
  const std::vector<double> all = ctx.comm ? ctx.comm->allgatherv(cand) : cand;
  // Per expert, every rank's candidates.
  std::vector<std::vector<std::pair<double, std::int64_t>>> pool(static_cast<std::size_t>(E));
  for (std::size_t p = 0; p < all.size();) {
    for (int e = 0; e < E; ++e) {
      const auto m = static_cast<std::size_t>(all[p++]);
      for (std::size_t i = 0; i < m; ++i, p += 2)
        pool[static_cast<std::size_t>(e)].emplace_back(all[p], static_cast<std::int64_t>(all[p + 1]));
    }
  }
  r.preselected.assign(static_cast<std::size_t>(n * E), 0);
  for (int e = 0; e < E; ++e) {
    auto& v = pool[static_cast<std::size_t>(e)];
    const std::size_t m = std::min<std::size_t>(v.size(), static_cast<std::size_t>(C));
    if (m == 0) continue;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m - 1), v.end(), [&](const auto& a, const auto& b) {
      return better(a.first, a.second, b.first, b.second);
    });
    const auto cut = v[m - 1];
    for (Index t = 0; t < n; ++t) {
      const double s = static_cast<double>(probs_(t, e));
      const std::int64_t tok = ctx.first_token + t;
      if (better(s, tok, cut.first, cut.second) || (s == cut.first && tok == cut.second))
        r.preselected[static_cast<std::size_t>(t * E + e)] = 1;
    }
  }
}

template <class T>
template <class R>
void Router<T>::backward_as(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs, Mat<T>& dx,
                            const std::vector<double>& dlse) {
  const Index n = r.n;
  const int E = r.E, K = r.K;
  const GateKind g = opt_.gate;
  if (g == GateKind::kConstant) {  // the gate does not depend on the input
    dx = Mat<T>::Zero(n, w_.value.rows());
    return;
  }
  Mat<R> dlogits = Mat<R>::Zero(n, E);
  Mat<R> dnl;
  if (noisy_) dnl = Mat<R>::Zero(n, E);
  auto noise_scale_grad = [&](Index t, int e) {  // d(eps * softplus(nl)) / d nl
    return static_cast<R>(eps_(t, e) * sigmoid(noise_logits_(t, e)));
  };
  RowVec<R> dp(E), p(E);
  for (Index t = 0; t < n; ++t) {
    if (dprobs.size() > 0) dp = dprobs.row(t).template cast<R>();
    else dp.setZero();
    for (int e = 0; e < E; ++e) p(e) = static_cast<R>(probs_(t, e));
    if (g == GateKind::kTopK || g == GateKind::kNoisyTopK) {
      RowVec<R> dg(K);
      for (int j = 0; j < K; ++j) {
        dg(j) = static_cast<R>(dgate(t, j));
        if (noisy_ && opt_.importance_weight != 0)
          dg(j) += static_cast<R>(opt_.importance_weight * dimportance_[static_cast<std::size_t>(r.expert_of(t, j))]);
      }
      R dot = 0;
      for (int j = 0; j < K; ++j) dot += static_cast<R>(r.gate(t, j)) * dg(j);
      for (int j = 0; j < K; ++j) {
        const int e = r.expert_of(t, j);
        const R dh = static_cast<R>(r.gate(t, j)) * (dg(j) - dot);
        dlogits(t, e) += dh;
        if (noisy_) dnl(t, e) += dh * noise_scale_grad(t, e);
      }
    } else if (g != GateKind::kHash) {
      for (int j = 0; j < K; ++j) dp(r.expert_of(t, j)) += static_cast<R>(dgate(t, j));  // gate = p_e
    }
    if (noisy_ && opt_.load_weight != 0 && K < E) {
      for (int e = 0; e < E; ++e) {
        bool chosen = false;
        for (int j = 0; j < K; ++j) chosen |= r.expert_of(t, j) == e;
        const int js = chosen ? next_order_[static_cast<std::size_t>(t)] : r.expert_of(t, K - 1);
        const double z = load_z_(t, e), s = softplus(noise_logits_(t, e));
        const double a = opt_.load_weight * dload_[static_cast<std::size_t>(e)] * normal_pdf(z) / s;
        dlogits(t, e) += static_cast<R>(a);
        dnl(t, e) += static_cast<R>(-a * z * sigmoid(noise_logits_(t, e)));
        dlogits(t, js) += static_cast<R>(-a);
        dnl(t, js) += static_cast<R>(-a) * noise_scale_grad(t, js);
      }
    }
    const R pdot = p.dot(dp);
    dlogits.row(t) += (p.array() * (dp.array() - pdot)).matrix();
    if (!dlse.empty()) dlogits.row(t) += static_cast<R>(dlse[static_cast<std::size_t>(t)]) * p;
  }
  const Mat<R> xr = x_.template cast<R>();
  Mat<R> dxr = dlogits * w_.value.template cast<R>().transpose();
  w_.grad += (xr.transpose() * dlogits).template cast<T>();
  if (noisy_) {
    dxr.noalias() += dnl * w_noise_.value.template cast<R>().transpose();
    w_noise_.grad += (xr.transpose() * dnl).template cast<T>();
  }
  dx = dxr.template cast<T>();
}

template class Router<float>;
template class Router<double>;

}  // namespace moesim
