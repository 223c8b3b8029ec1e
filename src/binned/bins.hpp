#pragma once
// Ordinal bins of a regression target: the gate's class labels (low / medium / high score
// bands, say).
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"

namespace moesim {

// Bin of y for strictly increasing edges e_1 < ... < e_{B-1}: the number of edges <= y,
// so bin 0 is y < e_1 and bin B-1 is y >= e_{B-1} (edges 4, 8: y >= 4 -> 1, y >= 8 -> 2).
int bin_of(double y, const std::vector<double>& edges);

// COLLECTIVE. The k-th smallest (0-based) of all ranks' values for each k, exactly and
// whatever P: bisection on the order-preserving integer image of the doubles, one
// all-reduce of counts per step for all k together (at most 64 steps). No rank holds
// more than its own values.
std::vector<double> order_statistics(const Communicator& comm, const std::vector<double>& local,
                                     const std::vector<std::int64_t>& ks);

// COLLECTIVE. Edges of B quantile bins over all ranks' values: the order statistics
// floor(j N / B), j = 1..B-1, so bin j starts at the j-th B-quantile. Throws ConfigError
// when ties make two edges coincide (no row could fall between them).
std::vector<double> quantile_edges(const Communicator& comm, const std::vector<double>& values, int bins);

}  // namespace moesim
