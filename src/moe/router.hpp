#pragma once
// Routers: which experts each token goes to, and with what gate weight. The gate
// (gates/registry.hpp: topk, switch, noisy-topk, expert-choice, hash, sbase, dense,
// constant) decides; the router holds what every gate shares: the weights, logits
// x W, the softmax over all logits and its log-sum-exp (z-loss), the --balance bias,
// and the backward pass through them.
// The router may compute in fp64 while the model is fp32 (weights keep the model's type).
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "comm/communicator.hpp"
#include "core/rng.hpp"
#include "moe/config.hpp"
#include "moe/gates/gate.hpp"
#include "moe/routing.hpp"
#include "nn/param.hpp"

namespace moesim {

template <class T>
class Router {
 public:
  Router() = default;
  Router(const std::string& name, Index d_model, int experts, int top_k,
         GateKind kind = GateKind::kTopK);
  // ConfigError (MoeLayerConfig::validate) on a top-k or option the gate cannot take.
  Router(const std::string& name, Index d_model, int experts, int top_k, const RouterOptions& opt);
  // Small-variance init (Switch Transformer): N(0, scale / D). W_noise starts at 0 (Shazeer).
  void init(Rng& rng, double init_scale);
  // COLLECTIVE over ctx.comm for noisy-topk (training), sbase and expert-choice.
  void forward(const Mat<T>& x, const RouteContext& ctx, Routing<T>& r);
  void forward(const Mat<T>& x, Routing<T>& r) { forward(x, RouteContext{}, r); }
  // dgate: n x K; dprobs: n x E (may be empty); dlse: gradient w.r.t. each token's
  // log-sum-exp (router z-loss; may be empty). Adds the noisy-topk losses' gradients.
  // Returns dX, accumulates dW (and dW_noise).
  void backward(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs, Mat<T>& dx,
                const std::vector<double>& dlse = {});
  void params(ParamList<T>& out) {
    const int m = gate_traits(opt_.gate).matrices;
    if (m >= 1) out.push_back(&w_);
    if (m >= 2) out.push_back(&w_noise_);
  }
  Param<T>& weight() { return w_; }
  Param<T>& noise_weight() { return w_noise_; }
  // --balance bias: selection bias per expert (state, not a parameter).
  std::vector<double>& bias() { return bias_; }
  const std::vector<double>& bias() const { return bias_; }
  const RouterOptions& options() const { return opt_; }
  // Whether forward needs ctx.first_token (the layer computes it with an exscan).
  bool needs_token_index() const { return gate_->needs_token_index() || opt_.jitter > 0; }
  // Rows per product block (core/row_chunks.hpp); gradients go to the parameters' trees.
  void set_chunk(Index chunk) { chunk_ = chunk; }
  // Backward reads forward's input where the caller keeps it, unchanged until then, instead
  // of a copy (the model keeps each MoE block's normed input).
  void borrow_input(bool on) { borrow_input_ = on; }

 private:
  template <class R> void forward_as(const Mat<T>& x, const RouteContext& ctx, Routing<T>& r);
  template <class R> void backward_as(const Routing<T>& r, const Mat<T>& dgate, const Mat<T>& dprobs,
                                      Mat<T>& dx, const std::vector<double>& dlse);

  Param<T> w_, w_noise_;  // W, and W_noise for gates with two matrices
  int K_ = 1;
  Index chunk_ = 0;
  RouterOptions opt_;
  std::vector<double> bias_;
  GatePtr<T> gate_;
  // Saved by forward for backward (values exactly as computed, held in double). Backward reads
  // x as x_, forward's copy of it, or where the caller keeps it (borrowed_, borrow_input).
  Mat<T> x_;
  const Mat<T>* borrowed_ = nullptr;
  bool borrow_input_ = false;
  Mat<double> probs_;  // n x E softmax in the router's precision
  // Temporaries kept from step to step (the same shapes each step: no allocation), in the
  // precision R of the router's arithmetic. kInput and kWeights hold forward's casts of x and
  // W when R is not T; backward reads them (through input/weights) instead of casting again.
  enum Slot { kInput, kLogits, kWeights, kDLogits, kDProbs, kDx, kLeaf, kJittered, kJitter, kSlots };
  // --router-jitter: whether this forward jittered its input; then kJittered holds the
  // jittered input and kJitter the factors.
  bool jittered_ = false;
  Mat<T> kept_t_[kSlots];
  Mat<double> kept_d_[kSlots];
  template <class R>
  Mat<R>& kept(Slot i) {
    if constexpr (std::is_same_v<R, T>) return kept_t_[i];
    else return kept_d_[i];
  }
  RouteScratch<T> scratch_t_;
  RouteScratch<double> scratch_d_;
  template <class R>
  RouteScratch<R>& route_scratch() {
    if constexpr (std::is_same_v<R, T>) return scratch_t_;
    else return scratch_d_;
  }
  // The input gradient out of backward's kept buffer: in the model's precision the two swap
  // memory (no copy; both keep their size from step to step), else a cast copy.
  template <class R>
  static void give_dx(Mat<R>& dxr, Mat<T>& dx) {
    if constexpr (std::is_same_v<R, T>) dx.swap(dxr);
    else dx = dxr.template cast<T>();
  }
  // m in precision R: m itself, or a copy cast into slot i.
  template <class R>
  const Mat<R>& cast_into(const Mat<T>& m, Slot i) {
    if constexpr (std::is_same_v<R, T>) {
      return m;
    } else {
      kept_d_[i] = m.template cast<R>();
      return kept_d_[i];
    }
  }
  // Forward's input and weights in precision R, as forward cast them.
  template <class R>
  const Mat<R>& input() {
    if constexpr (std::is_same_v<R, T>) return borrowed_ ? *borrowed_ : x_;
    else return kept_d_[kInput];
  }
  template <class R>
  const Mat<R>& weights() {
    if constexpr (std::is_same_v<R, T>) return w_.value;
    else return kept_d_[kWeights];
  }
};

// The name the first router had.
template <class T>
using TopKRouter = Router<T>;

}  // namespace moesim
