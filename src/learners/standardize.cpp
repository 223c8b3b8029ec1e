#include "learners/standardize.hpp"

#include <algorithm>
#include <cmath>

#include "comm/exact_row_sums.hpp"

namespace moesim {

void Standardizer::fit(const Communicator& comm, const Mat<double>& X, const std::vector<double>& w) {
  const Index n = X.rows(), p = X.cols();
  const auto up = static_cast<std::size_t>(p);
  auto wt = [&](Index i) { return w[static_cast<std::size_t>(i)]; };
  // Pass 1: [sum w | sum w x (p)].
  // Bounds from global maxima of each factor, so that they (and the rounding grid) are the
  // same on any layout; a max of local products would not be.
  std::vector<double> mx(1 + up, 0.0);  // [max |w| | max |x_j|]
  for (Index i = 0; i < n; ++i) mx[0] = std::max(mx[0], std::abs(wt(i)));
  for (Index j = 0; j < p && n > 0; ++j) mx[1 + static_cast<std::size_t>(j)] = X.col(j).cwiseAbs().maxCoeff();
  comm.allreduce_max(mx.data(), static_cast<int>(mx.size()));
  const double wmax = mx[0];
  std::vector<double> bound(1 + up, wmax);
  for (Index j = 0; j < p; ++j) bound[1 + static_cast<std::size_t>(j)] = wmax * mx[1 + static_cast<std::size_t>(j)];
  ExactRowSums s1(comm, bound);
  for (Index i = 0; i < n; ++i) {
    s1.add(0, wt(i));
    s1.add_products(1, wt(i), X.data() + i * p, up);  // X is row-major
    s1.end_row();
  }
  const std::vector<double> t1 = s1.totals(comm);
  const double sw = t1[0];
  mean.resize(p);
  scale.resize(p);
  for (Index j = 0; j < p; ++j) mean(j) = sw > 0 ? t1[1 + static_cast<std::size_t>(j)] / sw : 0.0;
  // Pass 2: sum w (x - mean)^2 (p), bounded by the largest deviation, not by |x|, so
  // that a large offset costs no resolution.
  std::vector<double> bound2(up, 0.0);
  for (Index j = 0; j < p && n > 0; ++j) {
    const double d = (X.col(j).array() - mean(j)).abs().maxCoeff();
    bound2[static_cast<std::size_t>(j)] = wmax * d * d;
  }
  ExactRowSums s2(comm, bound2);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < p; ++j) {
      const double d = X(i, j) - mean(j);
      s2.add(static_cast<std::size_t>(j), wt(i) * d * d);
    }
    s2.end_row();
  }
  const std::vector<double> t2 = s2.totals(comm);
  for (Index j = 0; j < p; ++j) {
    const double var = sw > 0 ? std::max(0.0, t2[static_cast<std::size_t>(j)] / sw) : 0.0;
    scale(j) = var > 1e-24 ? std::sqrt(var) : 1.0;
  }
}

Mat<double> Standardizer::apply(const Mat<double>& X) const {
  return ((X.rowwise() - mean).array().rowwise() / scale.array()).matrix();
}

}  // namespace moesim
