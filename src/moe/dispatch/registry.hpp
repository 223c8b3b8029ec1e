#pragma once
// The dispatch algorithms, by --dispatch name. Adding one is a new dispatch/<name>.cpp
// (see dispatch/algorithm.hpp) plus one line here.
#include <memory>
#include <string>
#include <vector>

namespace moesim {

class Communicator;
class DispatchAlgorithm;

// One line per algorithm: enum value, --dispatch name, factory (defined in its file).
#define MOESIM_DISPATCH_ALGORITHMS(X)                 \
  X(kAlltoallv, "alltoallv", make_alltoallv_dispatch) \
  X(kAllgather, "allgather", make_allgather_dispatch) \
  X(kP2P, "p2p", make_p2p_dispatch)                   \
  X(kPadded, "padded", make_padded_dispatch)           \
  X(kHierarchical, "hierarchical", make_hierarchical_dispatch) \
  X(kNccl, "nccl", make_nccl_dispatch)

#define MOESIM_DISPATCH_ENUM(id, name, make) id,
enum class DispatchAlgo { MOESIM_DISPATCH_ALGORITHMS(MOESIM_DISPATCH_ENUM) };
#undef MOESIM_DISPATCH_ENUM

// `node_of`: the node of each rank of the communicator (what a two-stage exchange is built on).
#define MOESIM_DISPATCH_FACTORY(id, name, make) \
  std::unique_ptr<DispatchAlgorithm> make(const Communicator& comm, const std::vector<int>& node_of);
MOESIM_DISPATCH_ALGORITHMS(MOESIM_DISPATCH_FACTORY)
#undef MOESIM_DISPATCH_FACTORY

DispatchAlgo parse_dispatch(const std::string& name);  // ConfigError on unknown names
const char* dispatch_name(DispatchAlgo a);
// `node_of`: the node of each rank of `comm`.
std::unique_ptr<DispatchAlgorithm> make_dispatch_algorithm(DispatchAlgo a, const Communicator& comm,
                                                           const std::vector<int>& node_of);

}  // namespace moesim
