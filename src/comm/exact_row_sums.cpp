#include "comm/exact_row_sums.hpp"

#include <cmath>
#include <cstring>

#include "comm/exact_sum.hpp"

namespace moesim {

ExactRowSums::ExactRowSums(const Communicator& comm, std::vector<double> local_bounds)
    : sum_(local_bounds.size()), scale_(local_bounds.size(), 1.0), hi_(local_bounds.size(), 0.0),
      lo_(local_bounds.size(), 0.0) {
#if defined(__x86_64__) && defined(__GNUC__)
  wide_ = __builtin_cpu_supports("avx");
#endif
  if (!local_bounds.empty()) comm.allreduce_max(local_bounds.data(), static_cast<int>(local_bounds.size()));
  for (std::size_t k = 0; k < local_bounds.size(); ++k) {
    const double b = local_bounds[k];
    // A bound of 0 has only zero terms; a non-finite one makes the total NaN anyway.
    if (!(b > 0) || !std::isfinite(b)) continue;
    int e = 0;
    std::frexp(b, &e);  // b < 2^e
    scale_[k] = std::ldexp(1.0, -e);
  }
}

// add_products four terms at a time. Vector extensions rather than intrinsics: the
// same element-wise +, -, * as the SSE2 loop and add(), which no compiler may fuse
// (contraction is off in ISO C++ mode, which the build uses).
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx")))
#endif
void ExactRowSums::add_products_wide(std::size_t k0, double a, const double* b, std::size_t n) {
  typedef double Quad __attribute__((vector_size(32)));
  const Quad av = {a, a, a, a}, hv = {kHi, kHi, kHi, kHi}, lv = {kLo, kLo, kLo, kLo};
  double* hi = hi_.data() + k0;
  double* lo = lo_.data() + k0;
  const double* sc = scale_.data() + k0;
  std::size_t l = 0;
  for (; l + 4 <= n; l += 4) {
    Quad bv, sv, h, o;
    std::memcpy(&bv, b + l, sizeof bv);
    std::memcpy(&sv, sc + l, sizeof sv);
    std::memcpy(&h, hi + l, sizeof h);
    std::memcpy(&o, lo + l, sizeof o);
    const Quad u = (av * bv) * sv;
    const Quad uh = (u + hv) - hv;
    h += uh;
    o += ((u - uh) + lv) - lv;
    std::memcpy(hi + l, &h, sizeof h);
    std::memcpy(lo + l, &o, sizeof o);
  }
  for (; l < n; ++l) add(k0 + l, a * b[l]);
}

void ExactRowSums::flush() {
  // Both partial sums are multiples of 2^-64 well inside FixedSum's range: added exactly.
  for (std::size_t k = 0; k < sum_.size(); ++k) {
    sum_[k] += hi_[k];
    sum_[k] += lo_[k];
    hi_[k] = lo_[k] = 0.0;
  }
  rows_ = 0;
}

std::vector<double> ExactRowSums::totals(const Communicator& comm) {
  flush();
  std::vector<double> out(sum_.size());
  allreduce_exact(comm, sum_, out.data());
  // Undoing the power-of-two scale is exact.
  for (std::size_t k = 0; k < out.size(); ++k) out[k] /= scale_[k];
  return out;
}

std::vector<double> exact_column_sums(const Communicator& comm, const Mat<double>& terms) {
  const Index k = terms.cols();
  std::vector<double> bound(static_cast<std::size_t>(k), 0.0);
  for (Index j = 0; j < k && terms.rows() > 0; ++j) bound[static_cast<std::size_t>(j)] = terms.col(j).cwiseAbs().maxCoeff();
  ExactRowSums s(comm, bound);
  for (Index i = 0; i < terms.rows(); ++i) {
    for (Index j = 0; j < k; ++j) s.add(static_cast<std::size_t>(j), terms(i, j));
    s.end_row();
  }
  return s.totals(comm);
}

}  // namespace moesim
