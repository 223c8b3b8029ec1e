// Switch (Fedus et al. 2021): one expert per token, g = its softmax probability.
#include "moe/gates/selection.hpp"

namespace moesim {

namespace {

template <class T>
class SwitchGate final : public GateOf<T, SwitchGate<T>> {
 public:
  explicit SwitchGate(const GateSetup&) {}

  template <class R>
  void route_as(GateForward<T, R>& f) {
    select_top_k(f.biased(f.logits), f.r, f.scratch.order);
    gate_probs_of_chosen(f.r);
  }

  template <class R>
  void backward_as(GateBackward<T, R>& b) const {
    probs_of_chosen_backward(b);
  }
};

}  // namespace

const GateSpec switch_gate_spec =
    gate_spec<SwitchGate>({.token_choice = true, .switch_loss = true, .bias = true, .one_expert = true});

}  // namespace moesim
