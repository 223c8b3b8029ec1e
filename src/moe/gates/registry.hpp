#pragma once
// The gates, by --gate name. Adding one is a new gates/<name>.cpp (see gates/gate.hpp)
// plus one line in MOESIM_GATES.
#include <memory>
#include <string>

namespace moesim {

template <class T>
class Gate;
struct GateSetup;

// What the layer, the router and the config checks need to know about a gate.
struct GateTraits {
  bool token_choice = false;    // picks each token's experts by a learned score
  bool switch_loss = false;     // --balance aux means the Switch loss (else its own or none)
  bool bias = false;            // --balance bias can steer its selection
  bool all_experts = false;     // every token to every expert: K = E, capacity does not apply
  bool one_expert = false;      // exactly one expert per token: needs --top-k 1
  bool needs_capacity = false;  // each expert takes C tokens: needs a capacity factor > 0
  int matrices = 1;             // trained router matrices: 0, 1 (W) or 2 (W and W_noise)
  bool learned = true;          // its choice reads the router's logits x W (not hash, constant)
};

struct GateSpec {
  GateTraits traits;
  std::unique_ptr<Gate<float>> (*make_float)(const GateSetup&);
  std::unique_ptr<Gate<double>> (*make_double)(const GateSetup&);
};

// One line per gate: enum value, --gate name, its GateSpec (defined in its file).
#define MOESIM_GATES(X)                                   \
  X(kTopK, "topk", topk_gate_spec)                        \
  X(kSwitch, "switch", switch_gate_spec)                  \
  X(kNoisyTopK, "noisy-topk", noisy_topk_gate_spec)       \
  X(kExpertChoice, "expert-choice", expert_choice_gate_spec) \
  X(kHash, "hash", hash_gate_spec)                        \
  X(kSBase, "sbase", sbase_gate_spec)                     \
  X(kDense, "dense", dense_gate_spec)                     \
  X(kConstant, "constant", constant_gate_spec)

#define MOESIM_GATE_ENUM(id, name, spec) id,
enum class GateKind { MOESIM_GATES(MOESIM_GATE_ENUM) };
#undef MOESIM_GATE_ENUM

#define MOESIM_GATE_SPEC(id, name, spec) extern const GateSpec spec;
MOESIM_GATES(MOESIM_GATE_SPEC)
#undef MOESIM_GATE_SPEC

GateKind parse_gate(const std::string& name);  // ConfigError on unknown names
const char* gate_name(GateKind g);
const GateTraits& gate_traits(GateKind g);
// Gates whose selection is learned per token, so a balancing loss or bias applies.
bool gate_is_token_choice(GateKind g);
// Gates that route every token to every expert (K = E, capacity does not apply).
bool gate_uses_all_experts(GateKind g);
// The gates --balance bias can steer: "topk, switch, noisy-topk".
std::string bias_gate_names();
template <class T>
std::unique_ptr<Gate<T>> make_gate(GateKind g, const GateSetup& setup);

}  // namespace moesim
