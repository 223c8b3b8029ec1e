#include "stacking/metrics.hpp"

#include <algorithm>
#include <cmath>

namespace moesim {

Scores score(const Communicator& comm, const Mat<double>& pred, const std::vector<double>& y,
             const std::vector<double>& w, int classes) {
  // [sum w, sum w*correct, sum w*logloss, sum w*err^2, sum w*y, sum w*y^2]
  double s[6] = {0, 0, 0, 0, 0, 0};
  for (Index i = 0; i < pred.rows(); ++i) {
    const double wi = w[static_cast<std::size_t>(i)], yi = y[static_cast<std::size_t>(i)];
    s[0] += wi;
    if (classes >= 2) {
      Index best = 0;
      pred.row(i).maxCoeff(&best);
      s[1] += wi * (best == static_cast<Index>(yi) ? 1.0 : 0.0);
      const double total = pred.row(i).sum();
      const double p = total > 0 ? pred(i, static_cast<Index>(yi)) / total : 0.0;
      s[2] -= wi * std::log(std::clamp(p, 1e-15, 1.0 - 1e-15));
    } else {
      const double e = pred(i, 0) - yi;
      s[3] += wi * e * e;
      s[4] += wi * yi;
      s[5] += wi * yi * yi;
    }
  }
  comm.allreduce_sum(s, 6);
  Scores sc;
  sc.weight = s[0];
  if (s[0] <= 0) return sc;
  if (classes >= 2) {
    sc.accuracy = s[1] / s[0];
    sc.log_loss = s[2] / s[0];
  } else {
    sc.rmse = std::sqrt(s[3] / s[0]);
    const double mean = s[4] / s[0];
    const double tot = s[5] - s[0] * mean * mean;
    sc.r2 = tot > 0 ? 1.0 - s[3] / tot : 0.0;
  }
  return sc;
}

}  // namespace moesim
