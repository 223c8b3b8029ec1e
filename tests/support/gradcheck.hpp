#pragma once
// Central finite differences against hand-written backward passes (double only).
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "core/tensor.hpp"
#include "nn/param.hpp"
#include "support/random.hpp"
#include "support/test_support.hpp"

namespace moesim::test {

// Numerical gradient of loss() w.r.t. every element of `m` (m is perturbed in place
// and restored).
inline Mat<double> numerical_grad(Mat<double>& m, const std::function<double()>& loss,
                                  double eps = 1e-6) {
  Mat<double> g(m.rows(), m.cols());
  for (Index i = 0; i < m.size(); ++i) {
    const double keep = m.data()[i];
    m.data()[i] = keep + eps;
    const double up = loss();
    m.data()[i] = keep - eps;
    const double down = loss();
    m.data()[i] = keep;
    g.data()[i] = (up - down) / (2 * eps);
  }
  return g;
}

// Numerical gradient of a collective loss() w.r.t. a matrix whose rows are sharded
// over ranks: ranks take turns perturbing their own elements while every rank
// evaluates loss(), so the collective calls inside it stay matched.
inline Mat<double> distributed_numerical_grad(const Communicator& comm, Mat<double>& m,
                                              const std::function<double()>& loss,
                                              double eps = 1e-6) {
  Mat<double> g = Mat<double>::Zero(m.rows(), m.cols());
  for (int owner = 0; owner < comm.size(); ++owner) {
    const bool mine = owner == comm.rank();
    const Index n = comm.allreduce_max(mine ? m.size() : Index{0});
    for (Index i = 0; i < n; ++i) {
      double keep = 0;
      if (mine) { keep = m.data()[i]; m.data()[i] = keep + eps; }
      const double up = loss();
      if (mine) m.data()[i] = keep - eps;
      const double down = loss();
      if (mine) { m.data()[i] = keep; g.data()[i] = (up - down) / (2 * eps); }
    }
  }
  return g;
}

// Tolerance for double-precision central differences with eps = 1e-6.
constexpr double kFdAbs = 1e-6;
constexpr double kFdRel = 1e-5;

}  // namespace moesim::test

// Every element of an analytic gradient within the finite-difference tolerance of the
// numerical one; names the worst element on failure.
#define EXPECT_GRAD_CLOSE(analytic, numeric, what)                                     \
  do {                                                                                 \
    std::string worst_;                                                                \
    EXPECT_EQ(::moesim::test::count_mismatches((analytic), (numeric),                  \
                                               ::moesim::test::kFdAbs,                 \
                                               ::moesim::test::kFdRel, &worst_),       \
              0)                                                                       \
        << (what) << ": " << worst_;                                                   \
  } while (0)
