#include "moe/dispatch/registry.hpp"

#include "moe/dispatch/algorithm.hpp"
#include "moe/name_list.hpp"

namespace moesim {

namespace {

struct Entry {
  DispatchAlgo algo;
  const char* name;
  std::unique_ptr<DispatchAlgorithm> (*make)(const Communicator&, const std::vector<int>&);
};

#define MOESIM_DISPATCH_ENTRY(id, name, make) {DispatchAlgo::id, name, &make},
constexpr Entry kAlgorithms[] = {MOESIM_DISPATCH_ALGORITHMS(MOESIM_DISPATCH_ENTRY)};
#undef MOESIM_DISPATCH_ENTRY

const Entry* find(DispatchAlgo a) {
  for (const Entry& e : kAlgorithms)
    if (e.algo == a) return &e;
  return nullptr;
}

}  // namespace

DispatchAlgo parse_dispatch(const std::string& name) {
  std::vector<std::string> known;
  for (const Entry& e : kAlgorithms) {
    if (name == e.name) return e.algo;
    known.emplace_back(e.name);
  }
  throw ConfigError("--dispatch must be " + name_list(known) + " (got '" + name + "')");
}

const char* dispatch_name(DispatchAlgo a) {
  const Entry* e = find(a);
  return e ? e->name : "?";
}

std::unique_ptr<DispatchAlgorithm> make_dispatch_algorithm(DispatchAlgo a, const Communicator& comm,
                                                           const std::vector<int>& node_of) {
  const Entry* e = find(a);
  MOESIM_REQUIRE(e, "unregistered dispatch algorithm " << static_cast<int>(a));
  return e->make(comm, node_of);
}

}  // namespace moesim
