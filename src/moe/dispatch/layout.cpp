#include "moe/dispatch/layout.hpp"

namespace moesim {

DispatchLayout send_layout(const std::vector<int>& expert, const std::vector<char>& kept, Index n, int K,
                           int E, int P, const std::vector<int>& expert_slot) {
  DispatchLayout L;
  send_layout_into(L, expert, kept, n, K, E, P, expert_slot);
  return L;
}

void send_layout_into(DispatchLayout& L, const std::vector<int>& expert, const std::vector<char>& kept, Index n,
                      int K, int E, int P, const std::vector<int>& expert_slot) {
  L.P = P;
  L.E = E;
  L.E_local = E / P;
  L.slot_rows = 0;
  L.recv_known = false;
  L.own_in_blocks = false;
  L.expert_slot.assign(expert_slot.begin(), expert_slot.end());

  // Bucket kept assignments by slot; within a bucket tokens stay in ascending order.
  std::vector<int>& per_expert = L.send_expert_counts;
  per_expert.assign(static_cast<std::size_t>(E), 0);
  for (Index a = 0; a < n * K; ++a)
    if (kept[static_cast<std::size_t>(a)]) ++per_expert[static_cast<std::size_t>(slot_of(L, expert[a]))];
  L.slot_start.assign(static_cast<std::size_t>(E) + 1, 0);
  for (int e = 0; e < E; ++e) L.slot_start[e + 1] = L.slot_start[e] + per_expert[e];
  std::vector<Index>& cursor = L.cursor;
  cursor.assign(L.slot_start.begin(), L.slot_start.end() - 1);
  // Room for every assignment, so that a later step's routing never grows them.
  L.send_token.reserve(static_cast<std::size_t>(n * K));
  L.send_choice.reserve(static_cast<std::size_t>(n * K));
  L.send_token.resize(static_cast<std::size_t>(L.slot_start[E]));
  L.send_choice.resize(static_cast<std::size_t>(L.slot_start[E]));
  for (Index t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const Index a = t * K + j;
      if (!kept[static_cast<std::size_t>(a)]) continue;
      const Index row = cursor[static_cast<std::size_t>(slot_of(L, expert[a]))]++;
      L.send_token[static_cast<std::size_t>(row)] = t;
      L.send_choice[static_cast<std::size_t>(row)] = j;
    }

  L.send_counts.assign(static_cast<std::size_t>(P), 0);
  L.send_displs.assign(static_cast<std::size_t>(P), 0);
  for (int e = 0; e < E; ++e) L.send_counts[static_cast<std::size_t>(e / L.E_local)] += per_expert[e];
  for (int q = 1; q < P; ++q) L.send_displs[q] = L.send_displs[q - 1] + L.send_counts[q - 1];
  L.recv_expert_counts.assign(static_cast<std::size_t>(P * L.E_local), 0);
  L.recv_counts.clear();
  L.recv_displs.clear();
  L.recv_to_block.clear();
  L.block_offset.clear();
  L.relay_counts.clear();
}

void complete_receive_side(DispatchLayout& L) {
  const int P = L.P, El = L.E_local;
  L.recv_counts.assign(static_cast<std::size_t>(P), 0);
  L.recv_displs.assign(static_cast<std::size_t>(P), 0);
  L.block_offset.assign(static_cast<std::size_t>(El) + 1, 0);
  for (int q = 0; q < P; ++q)
    for (int le = 0; le < El; ++le) {
      const int c = L.recv_expert_counts[static_cast<std::size_t>(q * El + le)];
      L.recv_counts[q] += c;
      L.block_offset[static_cast<std::size_t>(le) + 1] += c;
    }
  for (int q = 1; q < P; ++q) L.recv_displs[q] = L.recv_displs[q - 1] + L.recv_counts[q - 1];
  for (int le = 0; le < El; ++le) L.block_offset[le + 1] += L.block_offset[le];

  L.recv_to_block.resize(static_cast<std::size_t>(L.block_offset[El]));
  std::vector<Index>& fill = L.cursor;
  fill.assign(L.block_offset.begin(), L.block_offset.end() - 1);
  Index i = 0;
  for (int q = 0; q < P; ++q)
    for (int le = 0; le < El; ++le)
      for (int k = 0; k < L.recv_expert_counts[static_cast<std::size_t>(q * El + le)]; ++k)
        L.recv_to_block[static_cast<std::size_t>(i++)] = fill[static_cast<std::size_t>(le)]++;
  L.recv_known = true;
}

Index block_start(const DispatchLayout& L, int q, int le) {
  Index off = L.block_offset[static_cast<std::size_t>(le)];
  for (int p = 0; p < q; ++p) off += L.recv_expert_counts[static_cast<std::size_t>(p * L.E_local + le)];
  return off;
}

Index send_start(const DispatchLayout& L, int e) { return L.slot_start[static_cast<std::size_t>(e)]; }

}  // namespace moesim
