// Constant: every token to every expert, g = 1/E whatever the input (linear
// interpolation). The router's logits are 0 and nothing is trained.
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {

template <class T>
class ConstantGate final : public GateOf<T, ConstantGate<T>> {
 public:
  explicit ConstantGate(const GateSetup&) {}
  int slots(int experts, int) const override { return experts; }

  template <class R>
  void route_as(GateForward<T, R>& f) {
    choose_every_expert(f.r);
    f.r.gate = f.r.probs;  // softmax of zero logits
  }

  template <class R>
  void backward_as(GateBackward<T, R>&) const {}  // the gate does not depend on the input
};

}  // namespace

const GateSpec constant_gate_spec = gate_spec<ConstantGate>({.all_experts = true, .matrices = 0, .learned = false});

}  // namespace moesim
