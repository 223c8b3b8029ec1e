#include "moe/router.hpp"

#include <cmath>
#include <type_traits>

#include "core/error.hpp"
#include "core/row_chunks.hpp"
#include "moe/router_rows.hpp"

namespace moesim {

namespace {

// The layer's checks that concern routing (the router knows no rank count or capacity).
const RouterOptions& checked(const RouterOptions& opt, int experts, int top_k) {
  MoeLayerConfig c;
  c.experts = experts;
  c.top_k = top_k;
  c.gate = opt.gate;
  c.balance = opt.bias_selection ? BalanceKind::kBias : BalanceKind::kNone;
  c.router = opt;
  c.validate(1);
  return opt;
}

}  // namespace

double router_jitter(std::uint64_t seed, int layer_id, std::int64_t step, std::int64_t token, Index feature,
                     double eps) {
  // Keyed like noisy top-k's noise: one key per (step, layer) and per (token, feature), D < 2^20.
  Rng rng(seed, Stream::kRouterJitter, (static_cast<std::uint64_t>(step) << 16) ^ static_cast<std::uint64_t>(layer_id),
          (static_cast<std::uint64_t>(token) << 20) | static_cast<std::uint64_t>(feature));
  return rng.uniform(1.0 - eps, 1.0 + eps);
}

template <class T>
Router<T>::Router(const std::string& name, Index d_model, int experts, int top_k, GateKind kind)
    : Router(name, d_model, experts, top_k, RouterOptions{.gate = kind}) {}

template <class T>
Router<T>::Router(const std::string& name, Index d_model, int experts, int top_k, const RouterOptions& opt)
    : opt_(checked(opt, experts, top_k)), gate_(make_gate<T>(opt.gate, GateSetup{opt, d_model, experts, top_k})) {
  K_ = gate_->slots(experts, top_k);
  w_.name = name + ".w";
  w_.placement = Placement::kReplicated;
  w_.resize(d_model, experts);
  if (gate_traits(opt.gate).matrices >= 2) {
    w_noise_.name = name + ".w_noise";
    w_noise_.placement = Placement::kReplicated;
    w_noise_.resize(d_model, experts);
  }
  bias_.assign(static_cast<std::size_t>(experts), 0.0);
}

template <class T>
void Router<T>::init(Rng& rng, double init_scale) {
  w_.fill_normal(rng, std::sqrt(init_scale / static_cast<double>(w_.value.rows())));
  if (gate_traits(opt_.gate).matrices >= 2) w_noise_.value.setZero();
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
  const Index n = x.rows();
  const int E = static_cast<int>(w_.value.cols());
  // Kept from step to step (same shapes, so no allocation); in the model's precision the
  // input and weights are used as they are.
  // --router-jitter (training only): the router reads x times U(1 - eps, 1 + eps) per
  // (global token, feature), drawn from the counter-based RNG, so the same on any layout.
  jittered_ = opt_.jitter > 0 && ctx.training;
  // Only an unjittered router in the model's precision reads x itself in backward.
  borrowed_ = borrow_input_ ? &x : nullptr;
  if (std::is_same_v<R, T> && !jittered_ && !borrow_input_) x_ = x;
  if (jittered_) {
    const Mat<R>& x0 = cast_into<R>(x, kInput);
    Mat<R>& u = kept<R>(kJitter);
    u.resize(n, x.cols());
    for (Index t = 0; t < n; ++t)
      for (Index d = 0; d < x.cols(); ++d)
        u(t, d) = static_cast<R>(router_jitter(opt_.seed, opt_.layer_id, ctx.step, ctx.first_token + t, d, opt_.jitter));
    kept<R>(kJittered) = x0.cwiseProduct(u);
  }
  const Mat<R>& xr = jittered_ ? kept<R>(kJittered) : cast_into<R>(x, kInput);
  Mat<R>& logits = kept<R>(kLogits);
  if (gate_traits(opt_.gate).matrices > 0) {
    logits.resize(n, E);  // every row written by its block's product
    const Mat<R>& w = cast_into<R>(w_.value, kWeights);
    for_row_chunks(n, chunk_, [&](Index b, Index rows) { logits.middleRows(b, rows).noalias() = xr.middleRows(b, rows) * w; });
  } else {
    logits.setZero(n, E);
  }
  r.n = n;
  r.K = K_;
  r.E = E;
  r.expert.assign(static_cast<std::size_t>(n * K_), 0);
  r.gate.setZero(n, K_);
  r.probs.resize(n, E);
  r.lse.assign(static_cast<std::size_t>(n), 0.0);
  r.entropy.assign(static_cast<std::size_t>(n), 0.0);
  r.preselected.clear();
  r.importance_loss = r.load_loss = 0;

  // Softmax over all logits in R (balancing loss, gates weighted by it) and its lse: sixteen
  // tokens at a time in lanes where they give these loops' bits (moe/router_rows.hpp).
  probs_.resize(n, E);
  RouteScratch<R>& scratch = route_scratch<R>();
  RowVec<R>& p = scratch.probs;
  p.resize(E);
  const auto reference_rows = [&](Index t0, Index t1) {
    for (Index t = t0; t < t1; ++t) {
      const auto row = logits.row(t);
      const R mx = row.maxCoeff();
      R z = 0;
      for (int e = 0; e < E; ++e) z += (p(e) = std::exp(row(e) - mx));
      p /= z;
      for (int e = 0; e < E; ++e) {
        probs_(t, e) = static_cast<double>(p(e));
        r.probs(t, e) = static_cast<T>(p(e));
      }
      // -sum_e p_e log p_e with log p_e = (logit_e - mx) - log z.
      const double log_z = std::log(static_cast<double>(z));
      double h = log_z;
      for (int e = 0; e < E; ++e) h -= static_cast<double>(p(e)) * static_cast<double>(row(e) - mx);
      r.lse[static_cast<std::size_t>(t)] = static_cast<double>(mx) + log_z;
      r.entropy[static_cast<std::size_t>(t)] = h;
    }
  };
  Index t = 0;
  if constexpr (std::is_same_v<R, float> && std::is_same_v<T, float>) {
    if (router_lanes_enabled()) {
      scratch.lanes.resize(static_cast<std::size_t>(32 * E));
      for (; t + 16 <= n; t += 16) {
        const auto u = static_cast<std::size_t>(t);
        if (!softmax_block16(logits.row(t).data(), E, r.probs.row(t).data(), probs_.row(t).data(), &r.lse[u],
                             &r.entropy[u], scratch.lanes.data()))
          reference_rows(t, t + 16);
      }
    }
  }
  reference_rows(t, n);
  RouteContext c = ctx;
  c.chunk = chunk_;
  GateForward<T, R> f{x, xr, logits, probs_, c, opt_, bias_, w_noise_.value, r, scratch};
  gate_->route(f);
}

template <class T>
template <class R>
void Router<T>::backward_as(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs, Mat<T>& dx,
                            const std::vector<double>& dlse) {
  const Index n = r.n;
  const int E = r.E;
  if (gate_traits(opt_.gate).matrices == 0) {  // no weights: the gate does not depend on the input
    dx = Mat<T>::Zero(n, w_.value.rows());
    return;
  }
  Mat<R>& dlogits = kept<R>(kDLogits);
  dlogits.setZero(n, E);
  Mat<R>& dp_all = kept<R>(kDProbs);
  if (dprobs.size() > 0) dp_all = dprobs.template cast<R>();
  else dp_all.setZero(n, E);
  RouteScratch<R>& scratch = route_scratch<R>();
  Mat<R>& dnoise = scratch.dnoise;
  bool noise_used = false;  // set by the gates that use W_noise
  GateBackward<T, R> b{r, dgate, opt_, dlogits, dp_all, dnoise, scratch, noise_used};
  gate_->backward(b);
  // Through the softmax over all logits, and the z-loss through its lse.
  RowVec<R>& dp = scratch.dprobs;
  RowVec<R>& p = scratch.probs;
  dp.resize(E);
  p.resize(E);
  for (Index t = 0; t < n; ++t) {
    dp = dp_all.row(t);
    for (int e = 0; e < E; ++e) p(e) = static_cast<R>(probs_(t, e));
    const R pdot = p.dot(dp);
    dlogits.row(t) += (p.array() * (dp.array() - pdot)).matrix();
    if (!dlse.empty()) dlogits.row(t) += static_cast<R>(dlse[static_cast<std::size_t>(t)]) * p;
  }
  const Mat<R>& xr = jittered_ ? kept<R>(kJittered) : input<R>();
  const Mat<R>& w = weights<R>();
  Mat<R>& dxr = kept<R>(kDx);
  Mat<R>& leaf = kept<R>(kLeaf);  // a weight's gradient over a block, or over the batch
  if (chunk_ <= 0) {
    dxr.noalias() = dlogits * w.transpose();
    leaf.noalias() = xr.transpose() * dlogits;
    w_.grad += leaf.template cast<T>();
    if (noise_used) {
      dxr.noalias() += dnoise * w_noise_.value.template cast<R>().transpose();
      leaf.noalias() = xr.transpose() * dnoise;
      w_noise_.grad += leaf.template cast<T>();
    }
    if (jittered_) dxr.array() *= kept<R>(kJitter).array();  // through x * u
    give_dx(dxr, dx);
    return;
  }
  dxr.resize(n, w.rows());
  Mat<R>& wn = scratch.noise_weight;
  if (noise_used) wn = w_noise_.value.template cast<R>();
  for_row_chunks(n, chunk_, [&](Index b0, Index rows) {
    dxr.middleRows(b0, rows).noalias() = dlogits.middleRows(b0, rows) * w.transpose();
    leaf.noalias() = xr.middleRows(b0, rows).transpose() * dlogits.middleRows(b0, rows);
    w_.leaf() = leaf.template cast<T>();
    w_.tree.push();
    if (noise_used) {
      dxr.middleRows(b0, rows).noalias() += dnoise.middleRows(b0, rows) * wn.transpose();
      leaf.noalias() = xr.middleRows(b0, rows).transpose() * dnoise.middleRows(b0, rows);
      w_noise_.leaf() = leaf.template cast<T>();
      w_noise_.tree.push();
    }
  });
  if (jittered_) dxr.array() *= kept<R>(kJitter).array();  // through x * u
  give_dx(dxr, dx);
}

template class Router<float>;
template class Router<double>;

}  // namespace moesim
