// S-BASE (Clark et al. 2022): top-k of the balanced plan that Sinkhorn iterations make
// from the router scores over the global batch; g = softmax probability.
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {

template <class T>
class SBaseGate final : public GateOf<T, SBaseGate<T>> {
 public:
  explicit SBaseGate(const GateSetup&) {}

  template <class R>
  void route_as(GateForward<T, R>& f) {
    // plan = diag(u) exp(logits) diag(v) with rows summing to 1 and columns to B/E over
    // the global batch; only the column sums cross ranks. The plan replaces the
    // selection bias: it balances by construction.
    const Mat<R>& logits = f.logits;
    const Index n = f.r.n;
    const int E = f.r.E;
    MOESIM_REQUIRE(f.ctx.B > 0, "sbase routing needs the global batch size");
    Mat<double>& k = f.scratch.plan;
    k.resize(n, E);
    for (Index t = 0; t < n; ++t) {
      const double mx = static_cast<double>(logits.row(t).maxCoeff());
      for (int e = 0; e < E; ++e) k(t, e) = std::exp(static_cast<double>(logits(t, e)) - mx);
    }
    std::vector<double>& v = f.scratch.per_expert;
    std::vector<double>& col = f.scratch.sums;
    std::vector<double>& u = f.scratch.per_token;
    v.assign(static_cast<std::size_t>(E), 1.0);
    col.resize(static_cast<std::size_t>(E));
    u.resize(static_cast<std::size_t>(n));
    std::vector<FixedSum>& fixed = f.scratch.fixed;
    const double target = static_cast<double>(f.ctx.B) / E;
    for (int it = 0; it < f.opt.sinkhorn_iters; ++it) {
      for (Index t = 0; t < n; ++t) {
        double s = 0;
        for (int e = 0; e < E; ++e) s += k(t, e) * v[static_cast<std::size_t>(e)];
        u[static_cast<std::size_t>(t)] = 1.0 / s;
      }
      // Exact column sums: the plan, hence the routing, must not depend on the layout.
      fixed.assign(static_cast<std::size_t>(E), FixedSum());
      for (Index t = 0; t < n; ++t)
        for (int e = 0; e < E; ++e) fixed[static_cast<std::size_t>(e)] += k(t, e) * u[static_cast<std::size_t>(t)];
      if (f.ctx.comm) allreduce_exact(*f.ctx.comm, fixed.data(), E, nullptr, f.scratch.limbs);
      for (int e = 0; e < E; ++e) col[static_cast<std::size_t>(e)] = fixed[static_cast<std::size_t>(e)].value();
      for (int e = 0; e < E; ++e)
        if (col[static_cast<std::size_t>(e)] > 0) v[static_cast<std::size_t>(e)] = target / col[static_cast<std::size_t>(e)];
    }
    Mat<R>& sel = f.scratch.scores;
    sel.resize(n, E);
    for (Index t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e)
        sel(t, e) = static_cast<R>(static_cast<double>(logits(t, e)) + std::log(v[static_cast<std::size_t>(e)]));
    select_top_k(sel, f.r, f.scratch.order);
    gate_probs_of_chosen(f.r);
  }

  template <class R>
  void backward_as(GateBackward<T, R>& b) const {
    probs_of_chosen_backward(b);
  }
};

}  // namespace

const GateSpec sbase_gate_spec = gate_spec<SBaseGate>({.token_choice = true, .switch_loss = true});

}  // namespace moesim
