#pragma once
// Shared helpers for the C++ tests: a world communicator, scaled tolerances that
// name the worst element, and failure counts summed over ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim::test {

const Communicator& world();
// Value of --reference=PATH on the test command line ("" when absent).
const std::string& reference_path();

// Elements violating |a - r| <= abs_tol + |r| * rel_tol; describes the worst one.
template <class A, class R>
long count_mismatches(const A& actual, const R& ref, double abs_tol, double rel_tol,
                      std::string* worst) {
  long bad = 0;
  double worst_excess = -1;
  if (actual.rows() != ref.rows() || actual.cols() != ref.cols()) {
    if (worst) *worst = "shape mismatch";
    return actual.size() + ref.size() + 1;
  }
  for (Index i = 0; i < ref.rows(); ++i)
    for (Index j = 0; j < ref.cols(); ++j) {
      const double a = static_cast<double>(actual(i, j)), r = static_cast<double>(ref(i, j));
      const double tol = abs_tol + std::abs(r) * rel_tol;
      const double err = std::abs(a - r);
      if (!(err <= tol)) {
        ++bad;
        if (err - tol > worst_excess && worst) {
          worst_excess = err - tol;
          std::ostringstream os;
          os << "worst at (" << i << "," << j << "): got " << a << ", expected " << r
             << ", |diff| " << err << " > tol " << tol;
          *worst = os.str();
        }
      }
    }
  return bad;
}

// Collective: every rank reports its mismatches; the test fails on all ranks if any.
#define MOESIM_EXPECT_CLOSE_ALL_RANKS(actual, ref, abs_tol, rel_tol, what)                \
  do {                                                                                    \
    std::string moesim_worst_;                                                            \
    long moesim_bad_ = ::moesim::test::count_mismatches((actual), (ref), (abs_tol),       \
                                                        (rel_tol), &moesim_worst_);       \
    long moesim_total_ = ::moesim::test::world().allreduce_sum(moesim_bad_);              \
    EXPECT_EQ(moesim_bad_, 0) << (what) << " on rank " << ::moesim::test::world().rank()  \
                              << ": " << moesim_worst_;                                   \
    EXPECT_EQ(moesim_total_, 0) << (what) << ": mismatches summed over ranks";            \
  } while (0)

}  // namespace moesim::test
