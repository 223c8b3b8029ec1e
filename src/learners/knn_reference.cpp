#include "learners/knn_reference.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace moesim {

Mat<double> reference_knn_predict(const Mat<double>& X, const std::vector<double>& y,
                                  const std::vector<double>& w, const std::vector<std::int64_t>& id,
                                  int classes, int k, bool distance_weighted, const Mat<double>& Q) {
  const Index n = X.rows(), p = X.cols();
  auto W = [&](Index i) { return w[static_cast<std::size_t>(i)]; };
  double sw = 0;
  for (Index i = 0; i < n; ++i) sw += W(i);
  MOESIM_REQUIRE(sw > 0, "reference knn: no positive weight");
  std::vector<double> mean(static_cast<std::size_t>(p), 0.0), scale(static_cast<std::size_t>(p), 1.0);
  for (Index j = 0; j < p; ++j) {
    double m = 0;
    for (Index i = 0; i < n; ++i) m += W(i) * X(i, j);
    m /= sw;
    double v = 0;
    for (Index i = 0; i < n; ++i) v += W(i) * (X(i, j) - m) * (X(i, j) - m);
    v /= sw;
    mean[static_cast<std::size_t>(j)] = m;
    scale[static_cast<std::size_t>(j)] = v > 1e-24 ? std::sqrt(v) : 1.0;
  }
  auto z = [&](const Mat<double>& M, Index i, Index j) {
    return (M(i, j) - mean[static_cast<std::size_t>(j)]) / scale[static_cast<std::size_t>(j)];
  };

  std::vector<Index> rows;
  for (Index i = 0; i < n; ++i)
    if (W(i) > 0) rows.push_back(i);
  const std::size_t K = std::min<std::size_t>(static_cast<std::size_t>(k), rows.size());
  const Index C = classes >= 2 ? classes : 1;
  Mat<double> out = Mat<double>::Zero(Q.rows(), C);
  std::vector<double> d2(static_cast<std::size_t>(n));
  for (Index q = 0; q < Q.rows(); ++q) {
    for (Index i : rows) {
      double s = 0;
      for (Index j = 0; j < p; ++j) {
        const double d = z(Q, q, j) - z(X, i, j);
        s += d * d;
      }
      d2[static_cast<std::size_t>(i)] = s;
    }
    std::vector<Index> order = rows;
    std::sort(order.begin(), order.end(), [&](Index a, Index b) {
      const double da = d2[static_cast<std::size_t>(a)], db = d2[static_cast<std::size_t>(b)];
      return da < db || (da == db && id[static_cast<std::size_t>(a)] < id[static_cast<std::size_t>(b)]);
    });
    bool any_zero = false;
    for (std::size_t s = 0; s < K; ++s) any_zero = any_zero || d2[static_cast<std::size_t>(order[s])] == 0;
    double total = 0, acc = 0;
    for (std::size_t s = 0; s < K; ++s) {
      const Index i = order[s];
      const double d = std::sqrt(d2[static_cast<std::size_t>(i)]);
      double dw = 1.0;
      if (distance_weighted) dw = any_zero ? (d == 0 ? 1.0 : 0.0) : 1.0 / d;
      const double wt = W(i) * dw;
      total += wt;
      if (C > 1) out(q, static_cast<Index>(y[static_cast<std::size_t>(i)])) += wt;
      else acc += wt * y[static_cast<std::size_t>(i)];
    }
    if (C > 1) out.row(q) /= total;
    else out(q, 0) = acc / total;
  }
  return out;
}

}  // namespace moesim
