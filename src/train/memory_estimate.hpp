#pragma once
// What a `moesim moe` run needs per rank, from its options alone, so that sizes that cannot
// fit (a million experts, 1e8 tokens per batch) are refused up front with the estimate
// instead of ending in bad_alloc or the kernel's OOM killer hours later. A lower bound:
// it counts what the run certainly holds and leaves out allocator slack and buffers.
#include <cstdint>
#include <string>

#include "comm/communicator.hpp"
#include "moe/model.hpp"

namespace moesim {

struct MemoryEstimate {
  double parameters = 0;   // bytes: values, gradients and Adam moments of this rank's parameters
  double activations = 0;  // bytes: one step's forward activations of this rank's tokens
  double total() const { return parameters + activations; }
};

// `value_bytes`: 4 (fp32) or 8 (fp64). The busiest rank's share.
MemoryEstimate estimate_memory(const ModelConfig& model, std::int64_t batch_tokens, std::int64_t val_tokens,
                               int ranks, int value_bytes);

// Bytes this process may use: the node's available memory (and its cgroup's limit) shared
// by the ranks on the node. 0 when unknown.
double memory_per_rank(const Communicator& comm);

// COLLECTIVE. ConfigError on every rank when the estimate exceeds memory_per_rank.
void check_memory(const Communicator& comm, const MemoryEstimate& need);

std::string human_bytes(double bytes);

// COLLECTIVE. The largest peak resident set size of any rank so far (bytes; getrusage).
double peak_resident_bytes(const Communicator& comm);

}  // namespace moesim
