#include "binned/bins.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "core/error.hpp"

namespace moesim {

namespace {

// Monotone bijection from finite doubles to unsigned integers: flip all bits of
// negatives, set the sign bit of non-negatives (-0 and +0 map next to each other).
std::uint64_t ordered_key(double v) {
  const std::uint64_t b = std::bit_cast<std::uint64_t>(v);
  constexpr std::uint64_t sign = 1ULL << 63;
  return (b & sign) ? ~b : b | sign;
}

double from_key(std::uint64_t k) {
  constexpr std::uint64_t sign = 1ULL << 63;
  return std::bit_cast<double>((k & sign) ? k & ~sign : ~k);
}

}  // namespace

int bin_of(double y, const std::vector<double>& edges) {
  return static_cast<int>(std::upper_bound(edges.begin(), edges.end(), y) - edges.begin());
}

std::vector<double> order_statistics(const Communicator& comm, const std::vector<double>& local,
                                     const std::vector<std::int64_t>& ks) {
  std::vector<std::uint64_t> keys(local.size());
  for (std::size_t i = 0; i < local.size(); ++i) {
    MOESIM_REQUIRE(std::isfinite(local[i]), "order statistic of a non-finite value");
    keys[i] = ordered_key(local[i]);
  }
  std::sort(keys.begin(), keys.end());
  const std::int64_t n = comm.allreduce_sum(static_cast<std::int64_t>(keys.size()));
  for (std::int64_t k : ks) MOESIM_REQUIRE(k >= 0 && k < n, "order statistic " << k << " of " << n << " values");
  const int m = static_cast<int>(ks.size());
  // Invariant per k: count(key <= hi) > k and count(key <= lo - 1) <= k, i.e. the answer
  // lies in [lo, hi]. Keys are compared as signed after an offset so MPI can min/max them.
  std::int64_t lo_hi[2] = {keys.empty() ? std::numeric_limits<std::int64_t>::max()
                                        : static_cast<std::int64_t>(keys.front() ^ (1ULL << 63)),
                           keys.empty() ? std::numeric_limits<std::int64_t>::min()
                                        : static_cast<std::int64_t>(keys.back() ^ (1ULL << 63))};
  comm.allreduce_min(&lo_hi[0], 1);
  comm.allreduce_max(&lo_hi[1], 1);
  const std::uint64_t kmin = static_cast<std::uint64_t>(lo_hi[0]) ^ (1ULL << 63);
  const std::uint64_t kmax = static_cast<std::uint64_t>(lo_hi[1]) ^ (1ULL << 63);
  std::vector<std::uint64_t> lo(static_cast<std::size_t>(m), kmin), hi(static_cast<std::size_t>(m), kmax);
  std::vector<std::int64_t> count(static_cast<std::size_t>(m));
  std::vector<std::uint64_t> mid(static_cast<std::size_t>(m));
  for (;;) {
    bool open = false;
    for (int j = 0; j < m; ++j) open |= lo[static_cast<std::size_t>(j)] < hi[static_cast<std::size_t>(j)];
    if (!open) break;  // every rank sees the same lo/hi, so all leave together
    for (int j = 0; j < m; ++j) {
      const std::size_t s = static_cast<std::size_t>(j);
      mid[s] = lo[s] + (hi[s] - lo[s]) / 2;
      count[s] = static_cast<std::int64_t>(std::upper_bound(keys.begin(), keys.end(), mid[s]) - keys.begin());
    }
    comm.allreduce_sum(count.data(), m);
    for (int j = 0; j < m; ++j) {
      const std::size_t s = static_cast<std::size_t>(j);
      if (lo[s] >= hi[s]) continue;
      if (count[s] > ks[s]) hi[s] = mid[s];
      else lo[s] = mid[s] + 1;
    }
  }
  std::vector<double> out;
  for (std::uint64_t k : lo) out.push_back(from_key(k));
  return out;
}

std::vector<double> quantile_edges(const Communicator& comm, const std::vector<double>& values, int bins) {
  MOESIM_CONFIG_CHECK(bins >= 2, "--bins must be >= 2 (got " << bins << ")");
  const std::int64_t n = comm.allreduce_sum(static_cast<std::int64_t>(values.size()));
  MOESIM_CONFIG_CHECK(n >= bins, "only " << n << " training rows for " << bins << " quantile bins");
  std::vector<std::int64_t> ks;
  for (int j = 1; j < bins; ++j) ks.push_back(j * n / bins);
  const std::vector<double> edges = order_statistics(comm, values, ks);
  for (std::size_t j = 1; j < edges.size(); ++j)
    MOESIM_CONFIG_CHECK(edges[j] > edges[j - 1], "quantile bin edges " << j << " and " << j + 1 << " coincide at "
                                                 << edges[j] << " (tied targets): use fewer --bins or give --bin-edges");
  return edges;
}

}  // namespace moesim
