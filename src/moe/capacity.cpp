#include "moe/capacity.hpp"

#include <algorithm>
#include <cmath>

namespace moesim {

std::int64_t expert_capacity(double capacity_factor, std::int64_t B, int K, int E) {
  if (capacity_factor <= 0.0) return 0;
  // An expert gets at most one of each token's K distinct choices, so B is room for all;
  // clamping first also keeps a huge factor from overflowing the cast (1e17 gave 1).
  const double c = std::min(std::ceil(capacity_factor * static_cast<double>(B) * K / E), static_cast<double>(B));
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(c));
}

namespace {

CapacityDecision keep_preselected(const Communicator& comm, const std::vector<int>& expert, std::int64_t n, int K,
                                  int E, const std::vector<char>& preselected) {
  CapacityDecision d;
  d.kept = preselected;
  d.assigned.assign(static_cast<std::size_t>(E), 0);
  for (std::int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j)
      d.assigned[static_cast<std::size_t>(expert[static_cast<std::size_t>(t * K + j)])] +=
          d.kept[static_cast<std::size_t>(t * K + j)];
  comm.allreduce_sum(d.assigned.data(), E);
  d.processed = d.assigned;
  return d;
}

}  // namespace

CapacityDecision decide_capacity(const Communicator& comm, const std::vector<int>& expert,
                                 std::int64_t n, int K, int E, std::int64_t capacity,
                                 const std::vector<char>& preselected) {
  if (!preselected.empty()) return keep_preselected(comm, expert, n, K, E, preselected);
  const std::size_t KE = static_cast<std::size_t>(K) * static_cast<std::size_t>(E);
  std::vector<std::int64_t> local(KE, 0), before(KE, 0), total(KE, 0);
  for (std::int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j)
      ++local[static_cast<std::size_t>(j) * E + static_cast<std::size_t>(expert[t * K + j])];
  comm.exscan_sum(local.data(), before.data(), static_cast<int>(KE));
  total = local;
  comm.allreduce_sum(total.data(), static_cast<int>(KE));

  CapacityDecision d;
  d.kept.assign(static_cast<std::size_t>(n * K), 1);
  d.assigned.assign(static_cast<std::size_t>(E), 0);
  d.processed.assign(static_cast<std::size_t>(E), 0);
  // Position of the next local assignment at level j for expert e, in the global order.
  std::vector<std::int64_t> next(KE, 0);
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
  if (capacity > 0) {
    for (std::int64_t t = 0; t < n; ++t)
      for (int j = 0; j < K; ++j) {
        const std::size_t i =
            static_cast<std::size_t>(j) * E + static_cast<std::size_t>(expert[t * K + j]);
        if (next[i]++ >= capacity) d.kept[static_cast<std::size_t>(t * K + j)] = 0;
      }
  }
  return d;
}

}  // namespace moesim
