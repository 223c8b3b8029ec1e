#include "learners/standardize.hpp"

#include <cmath>

namespace moesim {

void Standardizer::fit(const Communicator& comm, const Mat<double>& X, const std::vector<double>& w) {
  const Index p = X.cols();
  // [sum w, sum w x, sum w x^2] in one all-reduce.
  std::vector<double> s(static_cast<std::size_t>(1 + 2 * p), 0.0);
  for (Index i = 0; i < X.rows(); ++i) {
    const double wi = w[static_cast<std::size_t>(i)];
    s[0] += wi;
    for (Index j = 0; j < p; ++j) {
      s[1 + j] += wi * X(i, j);
      s[1 + p + j] += wi * X(i, j) * X(i, j);
    }
  }
  comm.allreduce_sum(s.data(), static_cast<int>(s.size()));
  mean.resize(p);
  scale.resize(p);
  for (Index j = 0; j < p; ++j) {
    const double m = s[0] > 0 ? s[1 + j] / s[0] : 0.0;
    const double var = s[0] > 0 ? std::max(0.0, s[1 + p + j] / s[0] - m * m) : 0.0;
    mean(j) = m;
    scale(j) = var > 1e-24 ? std::sqrt(var) : 1.0;
  }
}

Mat<double> Standardizer::apply(const Mat<double>& X) const {
  return ((X.rowwise() - mean).array().rowwise() / scale.array()).matrix();
}

}  // namespace moesim
