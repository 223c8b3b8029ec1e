#pragma once
// Capacity and token dropping, decided over the global batch.
//
// NOTES: assignments (token t, choice j) compete for an expert's C slots in the global
// order (j, t): every first choice before any second choice (GShard), tokens by global
// index. Tokens are sharded in contiguous blocks by rank, so a rank finds the global
// position of its assignments from an exclusive prefix sum over ranks; the same
// assignments are kept whatever the rank count.
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "moe/candidate_pool.hpp"

namespace moesim {

// Slots per expert for a global batch of B tokens, at least `min_capacity` (--min-capacity)
// and at most B; 0 means unlimited (dropless: a factor of 0).
std::int64_t expert_capacity(double capacity_factor, std::int64_t B, int K, int E, std::int64_t min_capacity = 0);

struct CapacityDecision {
  std::vector<char> kept;                 // n*K, per local assignment
  std::vector<std::int64_t> assigned;     // E, global assignments per expert before dropping
  std::vector<std::int64_t> processed;    // E, global assignments kept per expert
  std::int64_t dropped = 0;               // global dropped assignments
  // The decision's own counts per (choice, expert), kept so that a decision made into this
  // one again allocates nothing.
  struct Counts {
    std::vector<std::int64_t> local, before, total, next;
    // --drop-policy probs: assignments by expert, the gathered candidates.
    std::vector<std::size_t> by_expert, start, fill;
    CandidatePool pool;
  } counts;
};

// --drop-policy probs: an expert over capacity keeps its `capacity` assignments with the
// largest priority (the gate weight), ties to the lower global token (a token gives an
// expert at most one assignment, so the order is total).
struct DropByPriority {
  const std::vector<double>* priority = nullptr;  // n*K, per local assignment
  std::int64_t first_token = 0;                   // global index of local token 0
};

// COLLECTIVE. `expert` holds n*K local assignments (token-major). `preselected` (n*K,
// expert choice): the router already applied the capacity, so exactly these are kept
// and nothing is dropped. `by_priority` (given: --drop-policy probs) replaces the
// (choice, token) order by the priority order.
CapacityDecision decide_capacity(const Communicator& comm, const std::vector<int>& expert,
                                 std::int64_t n, int K, int E, std::int64_t capacity,
                                 const std::vector<char>& preselected = {},
                                 const DropByPriority* by_priority = nullptr);
// The same into `d`, reusing its vectors' memory (a layer decides every step into one decision).
void decide_capacity_into(CapacityDecision& d, const Communicator& comm, const std::vector<int>& expert,
                          std::int64_t n, int K, int E, std::int64_t capacity,
                          const std::vector<char>& preselected = {}, const DropByPriority* by_priority = nullptr);

}  // namespace moesim
