#include "comm/expert_groups.hpp"

namespace moesim {

ExpertGroups::ExpertGroups(const Communicator& world, int group_size) : world_(world) {
  MOESIM_REQUIRE(group_size >= 1 && world.size() % group_size == 0,
                 "expert group size " << group_size << " does not divide the " << world.size() << " ranks");
  const int r = world.rank();
  group_ = std::make_unique<Communicator>(world, r / group_size, r);
  replicas_ = std::make_unique<Communicator>(world, r % group_size, r);
}

}  // namespace moesim
