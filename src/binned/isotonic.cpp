#include "binned/isotonic.hpp"

#include <algorithm>
#include <numeric>

#include "core/error.hpp"

namespace moesim {

namespace {

struct Block {
  double swy = 0, sw = 0;
  std::size_t count = 0;
  double mean() const { return swy / sw; }
};

std::vector<double> expand(const std::vector<Block>& blocks, std::size_t n) {
  std::vector<double> out;
  out.reserve(n);
  for (const Block& b : blocks) out.insert(out.end(), b.count, b.mean());
  return out;
}

void check_inputs(const std::vector<double>& y, const std::vector<double>& w) {
  MOESIM_REQUIRE(y.size() == w.size(), "isotonic: " << y.size() << " values but " << w.size() << " weights");
  for (double v : w) MOESIM_REQUIRE(v > 0, "isotonic: weights must be > 0 (got " << v << ")");
}

}  // namespace

std::vector<double> pav_reference(const std::vector<double>& y, const std::vector<double>& w) {
  check_inputs(y, w);
  std::vector<Block> blocks;
  for (std::size_t i = 0; i < y.size(); ++i) blocks.push_back({w[i] * y[i], w[i], 1});
  for (bool merged = true; merged;) {
    merged = false;
    for (std::size_t i = 0; i + 1 < blocks.size(); ++i)
      if (blocks[i].mean() > blocks[i + 1].mean()) {
        blocks[i].swy += blocks[i + 1].swy;
        blocks[i].sw += blocks[i + 1].sw;
        blocks[i].count += blocks[i + 1].count;
        blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        merged = true;
        break;
      }
  }
  return expand(blocks, y.size());
}

std::vector<double> pav(const std::vector<double>& y, const std::vector<double>& w) {
  check_inputs(y, w);
  std::vector<Block> stack;
  stack.reserve(y.size());
  for (std::size_t i = 0; i < y.size(); ++i) {
    stack.push_back({w[i] * y[i], w[i], 1});
    // NOTES: the blocks below the top are already non-decreasing, so only the top can
    // violate, and merging it can only make it violate the next one down.
    while (stack.size() >= 2 && stack[stack.size() - 2].mean() > stack.back().mean()) {
      const Block top = stack.back();
      stack.pop_back();
      stack.back().swy += top.swy;
      stack.back().sw += top.sw;
      stack.back().count += top.count;
    }
  }
  return expand(stack, y.size());
}

double IsotonicMap::operator()(double v) const {
  if (x.empty()) return v;
  if (v <= x.front()) return y.front();
  if (v >= x.back()) return y.back();
  const std::size_t j = static_cast<std::size_t>(std::upper_bound(x.begin(), x.end(), v) - x.begin());
  const double x0 = x[j - 1], x1 = x[j], y0 = y[j - 1], y1 = y[j];
  return y0 + (y1 - y0) * (v - x0) / (x1 - x0);
}

IsotonicMap fit_isotonic(const std::vector<double>& x, const std::vector<double>& y,
                         const std::vector<double>& w, const std::vector<std::int64_t>& key) {
  MOESIM_REQUIRE(x.size() == y.size() && y.size() == w.size() && w.size() == key.size(),
                 "isotonic: x, y, w and key differ in length");
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (w[i] > 0) order.push_back(i);
  // (x, key) fixes the summation order of tied x, so the map is the same whatever P.
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return x[a] < x[b] || (x[a] == x[b] && key[a] < key[b]); });
  std::vector<double> ux, uy, uw;
  for (std::size_t k = 0; k < order.size();) {
    const double xv = x[order[k]];
    double swy = 0, sw = 0;
    for (; k < order.size() && x[order[k]] == xv; ++k) {
      swy += w[order[k]] * y[order[k]];
      sw += w[order[k]];
    }
    ux.push_back(xv);
    uy.push_back(swy / sw);
    uw.push_back(sw);
  }
  const std::vector<double> fit = pav(uy, uw);
  IsotonicMap map;
  for (std::size_t i = 0; i < ux.size(); ++i) {
    // Inside a block of equal values only its two ends matter for interpolation.
    const bool first = i == 0 || fit[i] != fit[i - 1];
    const bool last = i + 1 == ux.size() || fit[i] != fit[i + 1];
    if (first || last) {
      map.x.push_back(ux[i]);
      map.y.push_back(fit[i]);
    }
  }
  return map;
}

IsotonicMap fit_isotonic(const Communicator& comm, const std::vector<double>& x, const std::vector<double>& y,
                         const std::vector<double>& w, const std::vector<std::int64_t>& key) {
  return fit_isotonic(comm.allgatherv(x), comm.allgatherv(y), comm.allgatherv(w), comm.allgatherv(key));
}

}  // namespace moesim
