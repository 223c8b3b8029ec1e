#pragma once
// Reductions over one row in index order, in plain scalar loops. Eigen's vectorised sum,
// dot and exp peel by the row's memory alignment, so the same row would round differently
// at another position in its matrix, or on another rank count: rank-invariant code that
// reduces a row uses these.
#include <algorithm>
#include <cmath>
#include <cstddef>

namespace moesim {

inline double ordered_sum(const double* x, std::ptrdiff_t n) {
  double s = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) s += x[i];
  return s;
}

inline double ordered_dot(const double* x, const double* y, std::ptrdiff_t n) {
  double s = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

// In place: exp(x - max x) normalised to sum 1.
inline void ordered_softmax(double* x, std::ptrdiff_t n) {
  double mx = x[0];
  for (std::ptrdiff_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - mx));
  for (std::ptrdiff_t i = 0; i < n; ++i) x[i] /= sum;
}

}  // namespace moesim
