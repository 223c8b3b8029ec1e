#pragma once
// The one layout every dispatch algorithm shares (DeepEP style): who sends which rows
// where, built once per layer and step and reused by forward dispatch/combine and
// backward dispatch/combine.
//
// NOTES: P here is the exchanging group's size (N of --ep-size, comm/expert_groups.hpp):
// group rank r owns experts [r*E/P, (r+1)*E/P). Rows leave in (expert, token) order
// and land grouped by (source rank, local expert); they are then placed so that each
// local expert sees one contiguous block in global token order, which makes expert
// GEMMs identical whatever the rank count or algorithm.
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

struct DispatchLayout {
  int P = 1, E = 1, E_local = 1;
  // Send rows are ordered by slot: slot q * E_local + le is rank q's local expert le. With the
  // contiguous placement slot = expert; expert_slot maps experts to slots otherwise (empty:
  // the identity), and slot_start is the prefix of rows over slots (E + 1).
  std::vector<int> expert_slot;
  std::vector<Index> slot_start;
  Index slot_rows = 0;             // fixed-slot algorithms (padded): rows per (source, expert) slot
  bool recv_known = false;         // false until the receive side is known (padded: first dispatch)
  // Set by the caller after plan, where the algorithm allows it (Dispatcher::can_leave_own_rows):
  // the rows a rank sends itself skip the send order both ways. The caller writes them into
  // their expert block before dispatch and reads them from the blocks after combine
  // (own_block_shift), so each is copied once, not twice, per exchange.
  bool own_in_blocks = false;
  // Token-owner side: one row per kept assignment, ordered by (expert, token).
  std::vector<Index> send_token;   // local token of each send row
  std::vector<int> send_choice;    // which of the token's K choices
  std::vector<int> send_counts, send_displs;  // rows per destination rank
  std::vector<int> send_expert_counts;        // E: rows this rank sends to each slot (expert)
  // Expert-owner side.
  std::vector<int> recv_counts, recv_displs;  // rows per source rank
  std::vector<int> recv_expert_counts;        // P x E_local, rows per (source, local expert)
  std::vector<Index> recv_to_block;           // received row -> row in expert-block order
  std::vector<Index> block_offset;            // E_local + 1 prefix over expert blocks
  std::vector<int> relay_counts;              // hierarchical: rows relayed from local rank ls to node m, [ls][m]
  std::vector<Index> cursor;                  // the builders' fill positions, kept from plan to plan
  Index rows_sent() const { return static_cast<Index>(send_token.size()); }
  Index rows_received() const { return static_cast<Index>(recv_to_block.size()); }
};

// The send side for n local tokens with K choices each (`expert`, `kept`: n*K), on P
// ranks and E experts (`expert_slot`: where each expert's rows go, empty for the contiguous
// placement); the receive side's counts are sized and zero.
DispatchLayout send_layout(const std::vector<int>& expert, const std::vector<char>& kept, Index n, int K,
                           int E, int P, const std::vector<int>& expert_slot = {});
// The same into `L`, reusing its vectors' memory (a layer plans every step into one layout).
void send_layout_into(DispatchLayout& L, const std::vector<int>& expert, const std::vector<char>& kept, Index n,
                      int K, int E, int P, const std::vector<int>& expert_slot = {});
// The slot of expert e.
inline int slot_of(const DispatchLayout& L, int e) {
  return L.expert_slot.empty() ? e : L.expert_slot[static_cast<std::size_t>(e)];
}
// Completes the receive side from recv_expert_counts.
void complete_receive_side(DispatchLayout& L);
// Rows from source q for local expert le start at this row of the expert blocks.
Index block_start(const DispatchLayout& L, int q, int le);
// Rows this rank sends to slot e (the expert's, slot_of) start at this row of the send order.
Index send_start(const DispatchLayout& L, int e);
// Rank `me`'s rows to its own local expert le: send row s of them is block row s + this.
inline Index own_block_shift(const DispatchLayout& L, int me, int le) {
  return block_start(L, me, le) - send_start(L, me * L.E_local + le);
}

}  // namespace moesim
