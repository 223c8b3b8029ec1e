// Noisy top-k (Shazeer et al. 2017): top-k over H = x W_g + eps * softplus(x W_noise),
// eps ~ N(0, 1) drawn from (seed, step, global token, expert) while training, with its
// importance and load losses in place of the Switch loss.
#include <numbers>

#include "core/rng.hpp"
#include "moe/gates/selection.hpp"

namespace moesim {

double router_noise(std::uint64_t seed, int layer_id, std::int64_t step, std::int64_t token, int expert) {
  // One key per (step, layer) and per (token, expert): E < 2^20 experts.
  Rng rng(seed, Stream::kRouterNoise, (static_cast<std::uint64_t>(step) << 16) ^ static_cast<std::uint64_t>(layer_id),
          (static_cast<std::uint64_t>(token) << 20) | static_cast<std::uint64_t>(expert));
  return rng.normal();
}

namespace {

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
  for (int e = 0; e < E; ++e) grad[static_cast<std::size_t>(e)] = 2.0 / (E * mean * mean) * ((v[e] - mean) - var / mean);
  return var / (mean * mean);
}

template <class T>
class NoisyTopKGate final : public GateOf<T, NoisyTopKGate<T>> {
 public:
  explicit NoisyTopKGate(const GateSetup&) {}
  bool needs_token_index() const override { return true; }

  template <class R>
  void route_as(GateForward<T, R>& f) {
    const Index n = f.r.n;
    const int E = f.r.E;
    Mat<R>& h = f.scratch.scores;
    h = f.logits;
    noisy_ = f.ctx.training;
    if (noisy_) {
      Mat<R>& nl = f.scratch.noise_logits;
      nl.resize(n, E);
      Mat<R>& wn = f.scratch.noise_weight;
      wn = f.noise_weight.template cast<R>();
      for_row_chunks(n, f.ctx.chunk, [&](Index b, Index r) { nl.middleRows(b, r).noalias() = f.xr.middleRows(b, r) * wn; });
      noise_logits_ = nl.template cast<double>();
      eps_.resize(n, E);
      for (Index t = 0; t < n; ++t)
        for (int e = 0; e < E; ++e) {
          eps_(t, e) = router_noise(f.opt.seed, f.opt.layer_id, f.ctx.step, f.ctx.first_token + t, e);
          h(t, e) += static_cast<R>(eps_(t, e) * softplus(static_cast<double>(nl(t, e))));
        }
    }
    const Mat<R>& sel = f.biased(h);
    select_top_k(sel, f.r, f.scratch.order, &next_order_);
    gate_softmax_of_chosen(h, f.r, f.scratch.chosen);
    if (noisy_) losses(f, sel);
  }

  template <class R>
  void backward_as(GateBackward<T, R>& b) const {
    const Routing<T>& r = b.r;
    const int E = r.E, K = r.K;
    const double iw = b.opt.importance_weight, lw = b.opt.load_weight;
    if (noisy_) {
      b.dnoise.setZero(r.n, E);
      b.noise_used = true;
    }
    auto noise_scale_grad = [&](Index t, int e) {  // d(eps * softplus(nl)) / d nl
      return static_cast<R>(eps_(t, e) * sigmoid(noise_logits_(t, e)));
    };
    RowVec<R>& dg = b.scratch.chosen;
    dg.resize(K);
    for (Index t = 0; t < r.n; ++t) {
      for (int j = 0; j < K; ++j) {
        dg(j) = static_cast<R>(b.dgate(t, j));
        if (noisy_ && iw != 0) dg(j) += static_cast<R>(iw * dimportance_[static_cast<std::size_t>(r.expert_of(t, j))]);
      }
      softmax_of_chosen_backward(r, t, dg, [&](int e, R dh) {
        b.dlogits(t, e) += dh;
        if (noisy_) b.dnoise(t, e) += dh * noise_scale_grad(t, e);
      });
      if (!noisy_ || lw == 0 || K == E) continue;
      for (int e = 0; e < E; ++e) {
        const int js = chosen(r, t, e) ? next_order_[static_cast<std::size_t>(t)] : r.expert_of(t, K - 1);
        const double z = load_z_(t, e), s = softplus(noise_logits_(t, e));
        const double a = lw * dload_[static_cast<std::size_t>(e)] * normal_pdf(z) / s;
        b.dlogits(t, e) += static_cast<R>(a);
        b.dnoise(t, e) += static_cast<R>(-a * z * sigmoid(noise_logits_(t, e)));
        b.dlogits(t, js) += static_cast<R>(-a);
        b.dnoise(t, js) += static_cast<R>(-a) * noise_scale_grad(t, js);
      }
    }
  }

 private:
  static bool chosen(const Routing<T>& r, Index t, int e) {
    bool c = false;
    for (int j = 0; j < r.K; ++j) c |= r.expert_of(t, j) == e;
    return c;
  }

  // Importance_e = sum_t gate(t, e); Load_e = sum_t P(expert e is chosen), with
  // P = Phi((x W_g + b - kth_excluding(sel, K, e)) / softplus(x W_noise)).
  template <class R>
  void losses(GateForward<T, R>& f, const Mat<R>& sel) {
    Routing<T>& r = f.r;
    const Index n = r.n;
    const int E = r.E, K = r.K;
    std::vector<double>& sums = f.scratch.sums;
    sums.assign(static_cast<std::size_t>(2 * E), 0.0);
    std::vector<FixedSum>& fixed = f.scratch.fixed;
    fixed.assign(static_cast<std::size_t>(2 * E), FixedSum());
    load_z_.setZero(n, E);
    for (Index t = 0; t < n; ++t) {
      for (int j = 0; j < K; ++j) fixed[static_cast<std::size_t>(r.expert_of(t, j))] += static_cast<double>(r.gate(t, j));
      if (K == E) continue;
      const double kth = static_cast<double>(sel(t, r.expert_of(t, K - 1)));
      const double next = static_cast<double>(sel(t, next_order_[static_cast<std::size_t>(t)]));
      for (int e = 0; e < E; ++e) {
        const double thr = chosen(r, t, e) ? next : kth;
        const double clean =
            static_cast<double>(f.logits(t, e)) + (f.opt.bias_selection ? f.bias[static_cast<std::size_t>(e)] : 0.0);
        const double z = (clean - thr) / softplus(noise_logits_(t, e));
        load_z_(t, e) = z;
        fixed[static_cast<std::size_t>(E + e)] += normal_cdf(z);
      }
    }
    // Exact sums: the losses' gradients depend on them, and must not depend on the layout.
    if (f.ctx.comm) allreduce_exact(*f.ctx.comm, fixed.data(), 2 * E, nullptr, f.scratch.limbs);
    for (int i = 0; i < 2 * E; ++i) sums[static_cast<std::size_t>(i)] = fixed[static_cast<std::size_t>(i)].value();
    r.importance_loss = cv_squared(sums.data(), E, dimportance_);
    if (K < E) r.load_loss = cv_squared(sums.data() + E, E, dload_);
    else dload_.assign(static_cast<std::size_t>(E), 0.0);
  }

  // Saved by forward for backward.
  bool noisy_ = false;                       // noise was applied (training)
  Mat<double> noise_logits_, eps_;           // n x E: x W_noise and the draws
  std::vector<int> next_order_;              // n: the (K+1)-th expert by selection score (-1 if K = E)
  std::vector<double> dimportance_, dload_;  // E: d CV^2 / d importance_e, d load_e
  Mat<double> load_z_;                       // n x E: z of P(nonzero) = Phi(z)
};

}  // namespace

const GateSpec noisy_topk_gate_spec =
    gate_spec<NoisyTopKGate>({.token_choice = true, .bias = true, .matrices = 2});

}  // namespace moesim
