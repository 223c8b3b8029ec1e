#pragma once
// A gate: how a router turns the layer input into experts and gate weights. The router
// (moe/router.hpp) owns what every gate shares: the weights, logits x W, the softmax
// over all logits and its log-sum-exp in the router precision R, the selection bias,
// and the backward pass through the softmax and x W. A gate chooses experts and gate
// weights in forward, and in backward adds what its gate weights contribute.
//
// To add one: a class deriving from GateOf<T, YourGate<T>> in gates/<name>.cpp with
// templates route_as<R> and backward_as<R>, its GateSpec there (gate_spec<YourGate>),
// and one line in MOESIM_GATES (gates/registry.hpp).
#include <memory>
#include <vector>

#include "core/fixed_sum.hpp"
#include "moe/config.hpp"
#include "moe/routing.hpp"

namespace moesim {

struct GateSetup {
  RouterOptions opt;  // gate, seed and layer id filled in
  Index d_model = 0;
  int experts = 0, top_k = 0;
};

// Temporaries of the router and its gate in the router precision R, kept by the router so
// that a step allocates nothing.
template <class R>
struct RouteScratch {
  Mat<R> selection;          // biased(): the scores plus the selection bias
  std::vector<int> order;    // select_top_k: one token's experts by score
  std::vector<float> lanes;  // moe/router_rows' blocks of sixteen tokens
  RowVec<R> chosen;          // one token's values over its K choices (gates, their gradients)
  RowVec<R> probs, dprobs;   // the router's: one token's softmax over all experts, its gradient
  // A gate's own work, n x E or per expert or token (noisy top-k, sigmoid scores, S-BASE).
  Mat<R> scores, noise_logits, noise_weight, dnoise;
  RowVec<R> row, drow;
  Mat<double> plan;
  std::vector<double> per_expert, per_token, sums;
  std::vector<FixedSum> fixed;
  std::vector<std::int64_t> limbs;  // allreduce_exact's
};

// Forward: the router's shared results, in the router precision R. The gate fills r's
// expert (n*K), gate (n x K, zero), and where it has them preselected and losses.
template <class T, class R>
struct GateForward {
  const Mat<T>& x;               // layer input, n x D
  const Mat<R>& xr;              // the router's input in R: x, times the --router-jitter factors while training
  const Mat<R>& logits;          // x W (zero for a gate without weights)
  const Mat<double>& probs;      // softmax of the logits, computed in R
  const RouteContext& ctx;
  const RouterOptions& opt;
  const std::vector<double>& bias;  // --balance bias, per expert
  const Mat<T>& noise_weight;    // W_noise (gates with two matrices)
  Routing<T>& r;                 // n, K, E, probs and lse already set
  RouteScratch<R>& scratch;

  // Scores that rank experts: h, or h plus the selection bias (in scratch.selection) when
  // --balance bias is on.
  const Mat<R>& biased(const Mat<R>& h) const {
    if (!opt.bias_selection) return h;
    Mat<R>& sel = scratch.selection;
    sel = h;
    for (Index t = 0; t < sel.rows(); ++t)
      for (Index e = 0; e < sel.cols(); ++e) sel(t, e) += static_cast<R>(bias[static_cast<std::size_t>(e)]);
    return sel;
  }
};

// Backward: the gate adds to dlogits and dprobs (n x E) what flows through its gate
// weights, given dgate (n x K); a gate with W_noise sizes and fills dnoise (n x E,
// the gradient w.r.t. x W_noise).
template <class T, class R>
struct GateBackward {
  const Routing<T>& r;
  const Mat<T>& dgate;
  const RouterOptions& opt;
  Mat<R>& dlogits;
  Mat<R>& dprobs;
  Mat<R>& dnoise;
  RouteScratch<R>& scratch;
  bool& noise_used;  // a gate that fills dnoise (W_noise's gradient) sets this
};

template <class T>
class Gate {
 public:
  virtual ~Gate() = default;
  virtual std::unique_ptr<Gate> clone() const = 0;
  // Choice slots per token: K, or E for gates that may give a token any expert.
  virtual int slots(int /*experts*/, int top_k) const { return top_k; }
  // Whether forward needs ctx.first_token.
  virtual bool needs_token_index() const { return false; }
  // COLLECTIVE over ctx.comm for gates that decide over the global batch.
  virtual void route(GateForward<T, float>& f) = 0;
  virtual void route(GateForward<T, double>& f) = 0;
  virtual void backward(GateBackward<T, float>& b) const = 0;
  virtual void backward(GateBackward<T, double>& b) const = 0;
};

// Virtual functions cannot be templates: this routes each precision to Impl's
// templates route_as<R> and backward_as<R>, and copies Impl.
template <class T, class Impl>
class GateOf : public Gate<T> {
 public:
  std::unique_ptr<Gate<T>> clone() const override { return std::make_unique<Impl>(self()); }
  void route(GateForward<T, float>& f) override { static_cast<Impl&>(*this).route_as(f); }
  void route(GateForward<T, double>& f) override { static_cast<Impl&>(*this).route_as(f); }
  void backward(GateBackward<T, float>& b) const override { self().backward_as(b); }
  void backward(GateBackward<T, double>& b) const override { self().backward_as(b); }

 private:
  const Impl& self() const { return static_cast<const Impl&>(*this); }
};

// The spec a gate file defines: its traits and factories for both model precisions.
template <template <class> class G>
constexpr GateSpec gate_spec(GateTraits traits) {
  return {traits, [](const GateSetup& s) -> std::unique_ptr<Gate<float>> { return std::make_unique<G<float>>(s); },
          [](const GateSetup& s) -> std::unique_ptr<Gate<double>> { return std::make_unique<G<double>>(s); }};
}

// A gate held by value: copying a router copies its gate and the gate's saved state.
template <class T>
class GatePtr {
 public:
  GatePtr() = default;
  explicit GatePtr(std::unique_ptr<Gate<T>> g) : p_(std::move(g)) {}
  GatePtr(const GatePtr& o) : p_(o.p_ ? o.p_->clone() : nullptr) {}
  GatePtr& operator=(const GatePtr& o) {
    if (this != &o) p_ = o.p_ ? o.p_->clone() : nullptr;
    return *this;
  }
  GatePtr(GatePtr&&) noexcept = default;
  GatePtr& operator=(GatePtr&&) noexcept = default;
  Gate<T>* operator->() const { return p_.get(); }

 private:
  std::unique_ptr<Gate<T>> p_;
};

}  // namespace moesim
