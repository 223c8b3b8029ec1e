#pragma once
// What several gates share: top-k selection, the two kinds of gate weight (softmax over
// the chosen logits, or the softmax probability) and their gradients.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>

#include "comm/exact_sum.hpp"
#include "core/row_chunks.hpp"
#include "moe/gates/gate.hpp"
#include "moe/router_rows.hpp"

namespace moesim {

// select_top_k's one-token-at-a-time loop over tokens [t0, t1): keep(t, who) gets each token's
// `depth` best experts in order.
template <class T, class R, class Keep>
void select_top_k_rows(const Mat<R>& sel, const Routing<T>& r, std::vector<int>& order, int depth, Index t0,
                       Index t1, const Keep& keep) {
  const int E = r.E;
  for (Index t = t0; t < t1; ++t) {
    const auto row = sel.row(t);
    if (depth <= 8) {
      // Few slots: one pass keeping the best `depth` in order (a heap per token cost more than
      // the router's GEMM at E = 64). An expert enters only when strictly better than a kept
      // one, after those it ties with, so ties still go to the lower index. The kept values
      // sit beside their experts, so the usual case (not better than the last kept) compares
      // with a value in a register, not one reloaded through `order`.
      R best[8];
      int who[8];
      int kept = 0;
      for (int e = 0; e < E; ++e) {
        const R v = row(e);
        if (kept == depth && !(v > best[depth - 1])) continue;
        int at = std::min(kept, depth - 1);
        while (at > 0 && v > best[at - 1]) {
          best[at] = best[at - 1];
          who[at] = who[at - 1];
          --at;
        }
        best[at] = v;
        who[at] = e;
        kept = std::min(kept + 1, depth);
      }
      std::copy(who, who + depth, order.begin());
    } else {
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + depth, order.end(), [&](int a, int b) {
        return row(a) > row(b) || (row(a) == row(b) && a < b);
      });
    }
    keep(t, order.data());
  }
}

// Each token's K best experts by `sel`, ties to the lower expert index so routing is a
// pure function of the scores; `next` (if given) gets the (K+1)-th (-1 when K = E).
// `order`: the caller's scratch (RouteScratch::order).
template <class T, class R>
void select_top_k(const Mat<R>& sel, Routing<T>& r, std::vector<int>& order, std::vector<int>* next = nullptr) {
  const int E = r.E, K = r.K;
  order.resize(static_cast<std::size_t>(E));
  const int depth = std::min(E, K + 1);
  if (next) next->assign(static_cast<std::size_t>(r.n), -1);
  const auto keep = [&](Index t, const int* who) {
    if (next && K < E) (*next)[static_cast<std::size_t>(t)] = who[K];
    for (int j = 0; j < K; ++j) r.expert[static_cast<std::size_t>(t * K + j)] = who[j];
  };
  if constexpr (std::is_same_v<R, float>) {
    // The row in AVX-512 lanes, the same choices (moe/router_rows.hpp); a row they cannot take
    // goes through the loop.
    if (router_lanes_enabled()) {
      for (Index t = 0; t < r.n; ++t)
        if (!top_k_row(sel.row(t).data(), E, depth, order.data())) select_top_k_rows(sel, r, order, depth, t, t + 1, keep);
        else keep(t, order.data());
      return;
    }
  }
  select_top_k_rows(sel, r, order, depth, 0, r.n, keep);
}

// gate = softmax over the chosen experts' h (without the selection bias); `gk`: scratch.
template <class T, class R>
void gate_softmax_of_chosen(const Mat<R>& h, Routing<T>& r, RowVec<R>& gk) {
  const int K = r.K;
  gk.resize(K);
  for (Index t = 0; t < r.n; ++t) {
    R top = h(t, r.expert_of(t, 0));
    for (int j = 1; j < K; ++j) top = std::max(top, h(t, r.expert_of(t, j)));
    for (int j = 0; j < K; ++j) gk(j) = std::exp(h(t, r.expert_of(t, j)) - top);
    gk /= gk.sum();
    for (int j = 0; j < K; ++j) r.gate(t, j) = static_cast<T>(gk(j));
  }
}

// Its gradient for token t given dg (d loss / d gate, K): add(e, d loss / d h_e).
template <class T, class R, class Add>
void softmax_of_chosen_backward(const Routing<T>& r, Index t, const RowVec<R>& dg, Add add) {
  R dot = 0;
  for (int j = 0; j < r.K; ++j) dot += static_cast<R>(r.gate(t, j)) * dg(j);
  for (int j = 0; j < r.K; ++j) add(r.expert_of(t, j), static_cast<R>(r.gate(t, j)) * (dg(j) - dot));
}

// gate = the chosen experts' softmax probability.
template <class T>
void gate_probs_of_chosen(Routing<T>& r) {
  for (Index t = 0; t < r.n; ++t)
    for (int j = 0; j < r.K; ++j) r.gate(t, j) = r.probs(t, r.expert_of(t, j));
}

// Its gradient: dgate flows into the softmax probabilities.
template <class T, class R>
void probs_of_chosen_backward(GateBackward<T, R>& b) {
  for (Index t = 0; t < b.r.n; ++t)
    for (int j = 0; j < b.r.K; ++j) b.dprobs(t, b.r.expert_of(t, j)) += static_cast<R>(b.dgate(t, j));
}

// Choice j of every token is expert j (K = E).
template <class T>
void choose_every_expert(Routing<T>& r) {
  for (Index t = 0; t < r.n; ++t)
    for (int e = 0; e < r.E; ++e) r.expert[static_cast<std::size_t>(t * r.E + e)] = e;
}

}  // namespace moesim
