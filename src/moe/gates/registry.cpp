#include "moe/gates/registry.hpp"

#include <type_traits>
#include <vector>

#include "moe/gates/gate.hpp"
#include "moe/name_list.hpp"

namespace moesim {

namespace {

struct Entry {
  GateKind kind;
  const char* name;
  const GateSpec* spec;
};

#define MOESIM_GATE_ENTRY(id, name, spec) {GateKind::id, name, &spec},
constexpr Entry kGates[] = {MOESIM_GATES(MOESIM_GATE_ENTRY)};
#undef MOESIM_GATE_ENTRY

const Entry& entry(GateKind g) {
  for (const Entry& e : kGates)
    if (e.kind == g) return e;
  MOESIM_REQUIRE(false, "unregistered gate " << static_cast<int>(g));
  return kGates[0];
}

}  // namespace

GateKind parse_gate(const std::string& name) {
  std::vector<std::string> known;
  for (const Entry& e : kGates) {
    if (name == e.name) return e.kind;
    known.emplace_back(e.name);
  }
  throw ConfigError("--gate must be " + name_list(known) + " (got '" + name + "')");
}

const char* gate_name(GateKind g) {
  for (const Entry& e : kGates)
    if (e.kind == g) return e.name;
  return "?";
}

const GateTraits& gate_traits(GateKind g) { return entry(g).spec->traits; }
bool gate_is_token_choice(GateKind g) { return gate_traits(g).token_choice; }
bool gate_uses_all_experts(GateKind g) { return gate_traits(g).all_experts; }

std::string bias_gate_names() {
  std::string s;
  for (const Entry& e : kGates)
    if (e.spec->traits.bias) s += (s.empty() ? "" : ", ") + std::string(e.name);
  return s;
}

template <class T>
std::unique_ptr<Gate<T>> make_gate(GateKind g, const GateSetup& setup) {
  if constexpr (std::is_same_v<T, float>) return entry(g).spec->make_float(setup);
  else return entry(g).spec->make_double(setup);
}
template std::unique_ptr<Gate<float>> make_gate(GateKind, const GateSetup&);
template std::unique_ptr<Gate<double>> make_gate(GateKind, const GateSetup&);

}  // namespace moesim
