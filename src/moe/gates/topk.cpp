// Top-k (Shazeer et al. 2017): the K largest logits, g = softmax over them; for K = 1
// the gate is the constant 1, so only the balancing loss trains the router.
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {

template <class T>
class TopKGate final : public GateOf<T, TopKGate<T>> {
 public:
  explicit TopKGate(const GateSetup&) {}

  template <class R>
  void route_as(GateForward<T, R>& f) {
    select_top_k(f.biased(f.logits), f.r);
    gate_softmax_of_chosen(f.logits, f.r);
  }

  template <class R>
  void backward_as(GateBackward<T, R>& b) const {
    RowVec<R> dg(b.r.K);
    for (Index t = 0; t < b.r.n; ++t) {
      for (int j = 0; j < b.r.K; ++j) dg(j) = static_cast<R>(b.dgate(t, j));
      softmax_of_chosen_backward(b.r, t, dg, [&](int e, R dh) { b.dlogits(t, e) += dh; });
    }
  }
};

}  // namespace

const GateSpec topk_gate_spec = gate_spec<TopKGate>({.token_choice = true, .switch_loss = true, .bias = true});

}  // namespace moesim
