#pragma once
// Isotonic regression by pool-adjacent-violators (PAV): the non-decreasing sequence
// closest to y in weighted least squares (Barlow et al. 1972; scikit-learn's
// IsotonicRegression). Used to calibrate the binned mixture on a validation split.
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"

namespace moesim {

// Serial reference: pool the first adjacent violating pair of blocks, start again from
// the left, until no pair violates. O(n^2), obviously the definition.
std::vector<double> pav_reference(const std::vector<double>& y, const std::vector<double>& w);

// One left-to-right pass with a stack of blocks (each new block is merged backwards
// while it violates its predecessor). O(n). Weights must be > 0.
std::vector<double> pav(const std::vector<double>& y, const std::vector<double>& w);

// A fitted monotone map: breakpoints x (strictly increasing) and values y (non-decreasing).
// Between breakpoints it interpolates linearly, outside it holds the end values
// (scikit-learn's out_of_bounds="clip").
struct IsotonicMap {
  std::vector<double> x, y;
  double operator()(double v) const;
};

// Fits y against x on one rank: rows sorted by (x, key), rows of equal x pooled into
// their weighted mean first (as scikit-learn), then PAV; each pooled block keeps its
// first and last x. Rows of weight 0 are ignored; no row with weight > 0 gives the
// identity map (empty breakpoints).
IsotonicMap fit_isotonic(const std::vector<double>& x, const std::vector<double>& y,
                         const std::vector<double>& w, const std::vector<std::int64_t>& key);

// COLLECTIVE. The same fit over the rows of every rank: the (x, y, w, key) rows are
// gathered (a validation split is small), so every rank holds the same map, whatever P.
IsotonicMap fit_isotonic(const Communicator& comm, const std::vector<double>& x,
                         const std::vector<double>& y, const std::vector<double>& w,
                         const std::vector<std::int64_t>& key);

}  // namespace moesim
