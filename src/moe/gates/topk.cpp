// Top-k (Shazeer et al. 2017): the K largest logits, g = softmax over them; for K = 1
// the gate is the constant 1, so only the balancing loss trains the router. With
// --router-pre-softmax (Megatron's choice) g = the chosen experts' softmax probabilities
// over all E logits, not renormalised, so the task loss trains the router for any K.
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {

template <class T>
class TopKGate final : public GateOf<T, TopKGate<T>> {
 public:
  explicit TopKGate(const GateSetup& s) : pre_softmax_(s.opt.pre_softmax) {}

  template <class R>
  void route_as(GateForward<T, R>& f) {
    select_top_k(f.biased(f.logits), f.r);
    if (pre_softmax_) gate_probs_of_chosen(f.r);
    else gate_softmax_of_chosen(f.logits, f.r);
  }

  template <class R>
  void backward_as(GateBackward<T, R>& b) const {
    if (pre_softmax_) {
      probs_of_chosen_backward(b);
      return;
    }
    RowVec<R> dg(b.r.K);
    for (Index t = 0; t < b.r.n; ++t) {
      for (int j = 0; j < b.r.K; ++j) dg(j) = static_cast<R>(b.dgate(t, j));
      softmax_of_chosen_backward(b.r, t, dg, [&](int e, R dh) { b.dlogits(t, e) += dh; });
    }
  }

 private:
  bool pre_softmax_;
};

}  // namespace

const GateSpec topk_gate_spec = gate_spec<TopKGate>({.token_choice = true, .switch_loss = true, .bias = true});

}  // namespace moesim
