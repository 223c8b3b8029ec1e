#pragma once
// Expert-data parallelism: P ranks form P/N replica groups of N ranks. Each group holds
// every expert (E/N per rank) and exchanges tokens only inside itself; the ranks at the
// same position of every group hold the same experts and sum their gradients.
//
// NOTES: a group is N consecutive ranks (group g = ranks [gN, (g+1)N)). Launchers place
// consecutive ranks on the same node (mpirun by slot, Slurm's block distribution), so
// the token all-to-all, four per MoE layer and step, stays on the node's fast links,
// and only the expert-gradient all-reduce, once per step, crosses nodes (Megatron's
// order too: expert-parallel ranks innermost). Group 0 holds ranks 0..N-1, so rank 0
// always owns experts and one replica (group 0) writes each expert to checkpoints.
#include <memory>

#include "comm/communicator.hpp"

namespace moesim {

class ExpertGroups {
 public:
  // COLLECTIVE over `world` (which must outlive this). `group_size` (N) must divide
  // world.size().
  ExpertGroups(const Communicator& world, int group_size);

  const Communicator& world() const { return world_; }
  // The N ranks of this rank's group: tokens are dispatched among them.
  const Communicator& group() const { return *group_; }
  // The P/N ranks holding the same experts (one per group): expert gradients are summed here.
  const Communicator& replicas() const { return *replicas_; }
  int group_size() const { return group_->size(); }
  int groups() const { return replicas_->size(); }
  int group_index() const { return replicas_->rank(); }
  // World rank of the group's first rank (group ranks map to world ranks by adding it).
  int first_rank() const { return group_index() * group_size(); }

 private:
  const Communicator& world_;
  std::unique_ptr<Communicator> group_, replicas_;
};

}  // namespace moesim
