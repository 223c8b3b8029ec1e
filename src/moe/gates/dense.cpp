// Dense (Jacobs et al. 1991): every token to every expert (K = E), g = softmax.
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {

template <class T>
class DenseGate final : public GateOf<T, DenseGate<T>> {
 public:
  explicit DenseGate(const GateSetup&) {}
  int slots(int experts, int) const override { return experts; }

  template <class R>
  void route_as(GateForward<T, R>& f) {
    choose_every_expert(f.r);
    f.r.gate = f.r.probs;
  }

  template <class R>
  void backward_as(GateBackward<T, R>& b) const {
    probs_of_chosen_backward(b);
  }
};

}  // namespace

const GateSpec dense_gate_spec = gate_spec<DenseGate>({.all_experts = true});

}  // namespace moesim
