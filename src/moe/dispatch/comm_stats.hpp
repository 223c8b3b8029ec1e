#pragma once
// What the token exchanges of one layer cost one rank, per exchange phase. Exchanges run
// inside an expert group (comm/expert_groups.hpp); bytes are counted by world rank.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace moesim {

// The four exchanges of a layer and step, in order.
enum Phase { kForwardDispatch = 0, kForwardCombine = 1, kBackwardDispatch = 2, kBackwardCombine = 3 };

struct CommStats {
  // Time inside exchange calls (counts included): the transfer, and before it the wait for
  // the group's last rank to arrive (train/step_metrics tells them apart).
  double seconds = 0;
  std::vector<double> bytes_to_rank;    // bytes this rank sent to each world rank (padding included)
  int first_rank = 0;                   // world rank of the exchanging group's rank 0 (kept by reset)
  std::vector<int> node_of;             // node of each group rank (kept by reset; empty: one node)
  double padding_bytes = 0;             // padded dispatch: bytes of unused slot rows and headers sent
  double phase_seconds[4] = {0, 0, 0, 0};
  double phase_bytes[4] = {0, 0, 0, 0};  // bytes sent to other ranks, per phase
  int phase = kForwardDispatch;
  // Payload sent between ranks on different nodes: bytes and non-empty messages.
  double inter_node_bytes = 0;
  std::int64_t inter_node_messages = 0;
  // Two-stage exchanges (hierarchical): transfer seconds and bytes sent to other ranks in the
  // intra-node (0) and inter-node (1) stages; `stage` is the one running (-1: none).
  double stage_seconds[2] = {0, 0};
  double stage_bytes[2] = {0, 0};
  int stage = -1;
  void reset(int P) {
    seconds = padding_bytes = inter_node_bytes = 0;
    inter_node_messages = 0;
    stage_seconds[0] = stage_seconds[1] = stage_bytes[0] = stage_bytes[1] = 0;
    stage = -1;
    bytes_to_rank.assign(static_cast<std::size_t>(P), 0.0);
    for (int i = 0; i < 4; ++i) phase_seconds[i] = phase_bytes[i] = 0;
    phase = kForwardDispatch;
  }
};

}  // namespace moesim
