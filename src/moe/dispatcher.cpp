#include "moe/dispatcher.hpp"

#include <algorithm>

namespace moesim {

Dispatcher::Dispatcher(const Communicator& comm, int experts, DispatchAlgo algo, std::vector<int> node_of,
                       std::vector<int> expert_order)
    : comm_(comm),
      E_(experts),
      algo_(algo),
      node_of_(node_of.empty() ? std::vector<int>(static_cast<std::size_t>(comm.size()), 0) : std::move(node_of)),
      expert_order_(std::move(expert_order)),
      impl_(make_dispatch_algorithm(algo, comm, node_of_)) {
  MOESIM_REQUIRE(static_cast<int>(node_of_.size()) == comm.size(), "a node for every rank of the group");
  MOESIM_REQUIRE(experts % comm.size() == 0,
                 "experts (" << experts << ") must be divisible by ranks (" << comm.size() << ")");
  E_local_ = experts / comm.size();
  if (!expert_order_.empty()) {
    MOESIM_REQUIRE(static_cast<int>(expert_order_.size()) == experts, "an expert order of every expert");
    expert_slot_.assign(static_cast<std::size_t>(experts), -1);
    for (int s = 0; s < experts; ++s) expert_slot_[static_cast<std::size_t>(expert_order_[static_cast<std::size_t>(s)])] = s;
  }
}

DispatchLayout Dispatcher::plan(const std::vector<int>& expert, const std::vector<char>& kept, Index n, int K,
                                CommStats& stats, const DispatchLimits& limits) const {
  DispatchLayout L;
  plan_into(L, expert, kept, n, K, stats, limits);
  return L;
}

void Dispatcher::plan_into(DispatchLayout& L, const std::vector<int>& expert, const std::vector<char>& kept, Index n,
                           int K, CommStats& stats, const DispatchLimits& limits) const {
  send_layout_into(L, expert, kept, n, K, E_, comm_.size(), expert_slot_);
  // A local expert receives at most its capacity, or every token: room for that from the first
  // plan on, so that no later step's routing grows the received rows' index.
  const std::int64_t per_expert = limits.capacity > 0 ? std::min(limits.capacity, limits.tokens) : limits.tokens;
  L.recv_to_block.reserve(static_cast<std::size_t>(E_local_ * per_expert));
  stats.phase = kForwardDispatch;
  impl_->plan(L, limits, stats);
}

template <class T>
MatMap<T> Dispatcher::dispatch(DispatchLayout& L, const ConstMatMap<T>& send_rows, RowBuffer<T>& out,
                               CommStats& stats) const {
  MOESIM_REQUIRE(send_rows.rows() == L.rows_sent(), "dispatch: rows do not match the layout");
  return impl_->dispatch(L, send_rows, out, stats);
}

template <class T>
MatMap<T> Dispatcher::combine(const DispatchLayout& L, const ConstMatMap<T>& block_rows, RowBuffer<T>& out,
                              CommStats& stats) const {
  MOESIM_REQUIRE(L.recv_known, "combine before the layout's first dispatch");
  MOESIM_REQUIRE(block_rows.rows() == L.rows_received(), "combine: rows do not match the layout");
  return impl_->combine(L, block_rows, out, stats);
}

#define MOESIM_INSTANTIATE(T)                                                                                  \
  template MatMap<T> Dispatcher::dispatch(DispatchLayout&, const ConstMatMap<T>&, RowBuffer<T>&, CommStats&) \
      const;                                                                                                   \
  template MatMap<T> Dispatcher::combine(const DispatchLayout&, const ConstMatMap<T>&, RowBuffer<T>&,        \
                                         CommStats&) const;
MOESIM_INSTANTIATE(float)
MOESIM_INSTANTIATE(double)
MOESIM_INSTANTIATE(std::int64_t)
#undef MOESIM_INSTANTIATE

}  // namespace moesim
