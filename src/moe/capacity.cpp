#include "moe/capacity.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.hpp"

namespace moesim {

std::int64_t expert_capacity(double capacity_factor, std::int64_t B, int K, int E, std::int64_t min_capacity) {
  if (capacity_factor <= 0.0) return 0;
  // An expert gets at most one of each token's K distinct choices, so B is room for all;
  // clamping first also keeps a huge factor from overflowing the cast (1e17 gave 1).
  const double c = std::min(std::ceil(capacity_factor * static_cast<double>(B) * K / E), static_cast<double>(B));
  const std::int64_t at_least = std::min(min_capacity, B);
  return std::max<std::int64_t>({1, static_cast<std::int64_t>(c), at_least});
}

namespace {

void keep_preselected(CapacityDecision& d, const Communicator& comm, const std::vector<int>& expert, std::int64_t n,
                      int K, int E, const std::vector<char>& preselected) {
  d.kept = preselected;
  d.assigned.assign(static_cast<std::size_t>(E), 0);
  for (std::int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j)
      d.assigned[static_cast<std::size_t>(expert[static_cast<std::size_t>(t * K + j)])] +=
          d.kept[static_cast<std::size_t>(t * K + j)];
  comm.allreduce_sum(d.assigned.data(), E);
  d.processed = d.assigned;
  d.dropped = 0;
}

// NOTES: an expert's kept set under the priority order is its `capacity` best (priority,
// global token) pairs over the global batch. Only experts over capacity (known from the
// global totals) need a cut: every rank sends its local `capacity` best per such expert (no
// more can make the global cut), all ranks merge the same candidates and find each cut,
// as expert choice does (moe/candidate_pool).
void keep_by_priority(const Communicator& comm, const std::vector<int>& expert, std::int64_t n, int K, int E,
                      std::int64_t capacity, const std::vector<std::int64_t>& per_expert, const DropByPriority& by,
                      std::vector<char>& kept, CapacityDecision::Counts& w) {
  const std::vector<double>& prio = *by.priority;
  MOESIM_REQUIRE(prio.size() == static_cast<std::size_t>(n * K), "drop priorities: " << prio.size() << " for "
                                                                                      << n * K << " assignments");
  const auto better = &CandidatePool::better;
  const auto Es = static_cast<std::size_t>(E);
  auto over = [&](int e) { return per_expert[static_cast<std::size_t>(e)] > capacity; };
  // Assignment indices by expert, in assignment order: counted, then placed.
  w.start.assign(Es + 1, 0);
  for (std::size_t a = 0; a < static_cast<std::size_t>(n * K); ++a) ++w.start[static_cast<std::size_t>(expert[a]) + 1];
  for (std::size_t e = 0; e < Es; ++e) w.start[e + 1] += w.start[e];
  w.fill.assign(w.start.begin(), w.start.end());
  w.by_expert.resize(static_cast<std::size_t>(n * K));
  for (std::size_t a = 0; a < static_cast<std::size_t>(n * K); ++a)
    w.by_expert[w.fill[static_cast<std::size_t>(expert[a])]++] = a;
  auto local_begin = [&](int e) { return w.by_expert.begin() + static_cast<std::ptrdiff_t>(w.start[static_cast<std::size_t>(e)]); };
  auto local_end = [&](int e) { return w.by_expert.begin() + static_cast<std::ptrdiff_t>(w.start[static_cast<std::size_t>(e) + 1]); };
  auto token_of = [&](std::size_t a) { return by.first_token + static_cast<std::int64_t>(a) / K; };
  w.pool.begin();
  for (int e = 0; e < E; ++e) {
    if (!over(e)) continue;
    const auto first = local_begin(e), last = local_end(e);
    const std::size_t m = std::min<std::size_t>(static_cast<std::size_t>(last - first), static_cast<std::size_t>(capacity));
    std::partial_sort(first, first + static_cast<std::ptrdiff_t>(m), last, [&](std::size_t a, std::size_t b) {
      return better(prio[a], token_of(a), prio[b], token_of(b));
    });
    w.pool.add_count(m);
    for (auto it = first; it != first + static_cast<std::ptrdiff_t>(m); ++it) w.pool.add(prio[*it], token_of(*it));
  }
  w.pool.gather(&comm, E, over);
  for (int e = 0; e < E; ++e) {
    if (!over(e)) continue;
    // capacity <= candidates: the expert is over capacity
    const CandidatePool::Pair cut = w.pool.cut(e, static_cast<std::size_t>(capacity));
    for (auto it = local_begin(e); it != local_end(e); ++it)
      if (better(cut.first, cut.second, prio[*it], token_of(*it))) kept[*it] = 0;  // behind the cut
  }
}

}  // namespace

CapacityDecision decide_capacity(const Communicator& comm, const std::vector<int>& expert,
                                 std::int64_t n, int K, int E, std::int64_t capacity,
                                 const std::vector<char>& preselected, const DropByPriority* by_priority) {
  CapacityDecision d;
  decide_capacity_into(d, comm, expert, n, K, E, capacity, preselected, by_priority);
  return d;
}

void decide_capacity_into(CapacityDecision& d, const Communicator& comm, const std::vector<int>& expert,
                          std::int64_t n, int K, int E, std::int64_t capacity,
                          const std::vector<char>& preselected, const DropByPriority* by_priority) {
  if (!preselected.empty()) {
    keep_preselected(d, comm, expert, n, K, E, preselected);
    return;
  }
  const std::size_t KE = static_cast<std::size_t>(K) * static_cast<std::size_t>(E);
  auto& local = d.counts.local;
  auto& before = d.counts.before;
  auto& total = d.counts.total;
  auto& next = d.counts.next;
  local.assign(KE, 0);
  before.assign(KE, 0);
  for (std::int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j)
      ++local[static_cast<std::size_t>(j) * E + static_cast<std::size_t>(expert[t * K + j])];
  comm.exscan_sum(local.data(), before.data(), static_cast<int>(KE));
  total = local;
  comm.allreduce_sum(total.data(), static_cast<int>(KE));

  d.kept.assign(static_cast<std::size_t>(n * K), 1);
  d.assigned.assign(static_cast<std::size_t>(E), 0);
  d.processed.assign(static_cast<std::size_t>(E), 0);
  d.dropped = 0;
  // Position of the next local assignment at level j for expert e, in the global order.
  next.assign(KE, 0);
  for (int e = 0; e < E; ++e) {
    std::int64_t base = 0;
    for (int j = 0; j < K; ++j) {
      const std::size_t i = static_cast<std::size_t>(j) * E + static_cast<std::size_t>(e);
      next[i] = base + before[i];
      base += total[i];
    }
    d.assigned[static_cast<std::size_t>(e)] = base;
    d.processed[static_cast<std::size_t>(e)] = capacity > 0 ? std::min(base, capacity) : base;
    d.dropped += base - d.processed[static_cast<std::size_t>(e)];
  }
  if (capacity > 0 && by_priority) {
    keep_by_priority(comm, expert, n, K, E, capacity, d.assigned, *by_priority, d.kept, d.counts);
  } else if (capacity > 0) {
    for (std::int64_t t = 0; t < n; ++t)
      for (int j = 0; j < K; ++j) {
        const std::size_t i =
            static_cast<std::size_t>(j) * E + static_cast<std::size_t>(expert[t * K + j]);
        if (next[i]++ >= capacity) d.kept[static_cast<std::size_t>(t * K + j)] = 0;
      }
  }
}

}  // namespace moesim
