#include "stacking/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "comm/exact_row_sums.hpp"
#include "core/row_order.hpp"

namespace moesim {

Scores score(const Communicator& comm, const Mat<double>& pred, const std::vector<double>& y,
             const std::vector<double>& w, int classes) {
  // Per-row terms [w, w*correct, w*logloss, w*err^2, w*y, w*y^2], summed exactly: the
  // same bits on any number of ranks. Row sums in scalar loops, so that a row's bits do
  // not depend on its position (vectorised reductions peel by alignment).
  Mat<double> t = Mat<double>::Zero(pred.rows(), 6);
  for (Index i = 0; i < pred.rows(); ++i) {
    const double wi = w[static_cast<std::size_t>(i)], yi = y[static_cast<std::size_t>(i)];
    t(i, 0) = wi;
    if (classes >= 2) {
      Index best = 0;  // the first largest
      for (Index c = 1; c < pred.cols(); ++c)
        if (pred(i, c) > pred(i, best)) best = c;
      t(i, 1) = wi * (best == static_cast<Index>(yi) ? 1.0 : 0.0);
      const double total = ordered_sum(pred.data() + i * pred.cols(), pred.cols());
      const double p = total > 0 ? pred(i, static_cast<Index>(yi)) / total : 0.0;
      t(i, 2) = -wi * std::log(std::clamp(p, 1e-15, 1.0 - 1e-15));
    } else {
      const double e = pred(i, 0) - yi;
      t(i, 3) = wi * e * e;
      t(i, 4) = wi * yi;
      t(i, 5) = wi * yi * yi;
    }
  }
  const std::vector<double> s = exact_column_sums(comm, t);
  Scores sc;
  sc.weight = s[0];
  if (s[0] <= 0) {  // nothing scored (e.g. --test-fraction 0): NaN, never a score of 0
    sc.accuracy = sc.log_loss = sc.rmse = sc.r2 = std::numeric_limits<double>::quiet_NaN();
    return sc;
  }
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
