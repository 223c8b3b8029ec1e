#include "learners/nb_reference.hpp"

#include <cmath>
#include <numbers>

namespace moesim {

Mat<double> reference_nb_predict(const Mat<double>& X, const std::vector<double>& y,
                                 const std::vector<double>& w, int classes, double var_smoothing,
                                 const Mat<double>& Q) {
  const Index n = X.rows(), p = X.cols(), C = classes;
  auto W = [&](Index i) { return w[static_cast<std::size_t>(i)]; };
  auto Y = [&](Index i) { return static_cast<Index>(y[static_cast<std::size_t>(i)]); };
  double total = 0;
  for (Index i = 0; i < n; ++i) total += W(i);

  double max_var = 0;
  for (Index j = 0; j < p; ++j) {
    double m = 0, v = 0;
    for (Index i = 0; i < n; ++i) m += W(i) * X(i, j) / total;
    for (Index i = 0; i < n; ++i) v += W(i) * (X(i, j) - m) * (X(i, j) - m) / total;
    max_var = std::max(max_var, v);
  }
  const double eps = var_smoothing * max_var;

  Mat<double> jll(Q.rows(), C);
  for (Index c = 0; c < C; ++c) {
    double wc = 0;
    for (Index i = 0; i < n; ++i)
      if (Y(i) == c) wc += W(i);
    for (Index q = 0; q < Q.rows(); ++q) jll(q, c) = std::log(wc / total);
    if (wc == 0) continue;  // an absent class: log 0 = -inf, probability 0
    for (Index j = 0; j < p; ++j) {
      double m = 0, v = 0;
      for (Index i = 0; i < n; ++i)
        if (Y(i) == c) m += W(i) * X(i, j);
      m /= wc;
      for (Index i = 0; i < n; ++i)
        if (Y(i) == c) v += W(i) * (X(i, j) - m) * (X(i, j) - m);
      v = v / wc + eps;
      for (Index q = 0; q < Q.rows(); ++q)
        jll(q, c) += -0.5 * std::log(2 * std::numbers::pi * v) - (Q(q, j) - m) * (Q(q, j) - m) / (2 * v);
    }
  }
  Mat<double> out(Q.rows(), C);
  for (Index q = 0; q < Q.rows(); ++q) {
    double mx = jll(q, 0);
    for (Index c = 1; c < C; ++c) mx = std::max(mx, jll(q, c));
    double s = 0;
    for (Index c = 0; c < C; ++c) s += std::exp(jll(q, c) - mx);
    for (Index c = 0; c < C; ++c) out(q, c) = std::exp(jll(q, c) - mx) / s;
  }
  return out;
}

}  // namespace moesim
