#pragma once
// Exact sums over the rows of every rank, for the stacking learners, meta-learners and
// scores (comm/exact_sum holds the 128-bit totals they end in).
#include <cstring>
#include <vector>

#include "comm/communicator.hpp"
#include "core/fixed_sum.hpp"
#include "core/tensor.hpp"

namespace moesim {

// Sums over the rows of every rank that are the same bits on any number of ranks: each
// term is computed from its row alone, scaled by a power of two common to all ranks
// (from a global bound on the slot's terms, so that every scaled term is < 1 and the
// fixed range and resolution of core/fixed_sum sit at the data's scale), rounded to a
// multiple of 2^-64 and added exactly; the totals are reduced as integers and rounded
// once. The rounding is two cheap double steps (to multiples of 2^-42, then the
// remainder to 2^-64: ReproBLAS's binning), and up to 2^11 rounded terms add exactly in
// a double, so the 128-bit FixedSums are touched once per 2048 rows, not per term.
class ExactRowSums {
 public:
  // COLLECTIVE. `local_bounds[k]` >= |every term of slot k| on this rank; the bounds are
  // all-reduced with max, so any rank (or none) may hold the largest. Their max over ranks
  // must not depend on the layout (it sets the rounding grid): a max of terms is fine, a
  // product of rank-local maxima of different factors is not (use global maxima).
  ExactRowSums(const Communicator& comm, std::vector<double> local_bounds);
  std::size_t size() const { return sum_.size(); }
  // At most one term per slot and row; end_row() after each row.
  void add(std::size_t k, double term) {
    const double u = term * scale_[k];
    const double hi = (u + kHi) - kHi;          // u rounded to a multiple of 2^-42
    const double lo = ((u - hi) + kLo) - kLo;   // the exact remainder rounded to 2^-64
    hi_[k] += hi;
    lo_[k] += lo;
  }
  // Slots k0 .. k0 + n - 1 take a * b[0 .. n-1]: one row's Gram row. Two terms at a time
  // in SSE2 lanes, or four in AVX lanes (a call out of line, worth it for long rows): the
  // same IEEE operations, so the same bits as add().
  void add_products(std::size_t k0, double a, const double* b, std::size_t n) {
    if (wide_ && n >= kWideFrom) {
      add_products_wide(k0, a, b, n);
      return;
    }
    typedef double Pair __attribute__((vector_size(16)));
    const Pair av = {a, a}, hv = {kHi, kHi}, lv = {kLo, kLo};
    double* hi = hi_.data() + k0;
    double* lo = lo_.data() + k0;
    const double* sc = scale_.data() + k0;
    std::size_t l = 0;
    for (; l + 2 <= n; l += 2) {
      Pair bv, sv, h, o;
      std::memcpy(&bv, b + l, sizeof bv);
      std::memcpy(&sv, sc + l, sizeof sv);
      std::memcpy(&h, hi + l, sizeof h);
      std::memcpy(&o, lo + l, sizeof o);
      const Pair u = (av * bv) * sv;
      const Pair uh = (u + hv) - hv;
      h += uh;
      o += ((u - uh) + lv) - lv;
      std::memcpy(hi + l, &h, sizeof h);
      std::memcpy(lo + l, &o, sizeof o);
    }
    for (; l < n; ++l) add(k0 + l, a * b[l]);
  }
  void end_row() {
    if (++rows_ == kRowsPerFlush) flush();
  }
  // COLLECTIVE. The exact totals over all ranks, each rounded once to a double.
  std::vector<double> totals(const Communicator& comm);

 private:
  // Sums of 2^11 multiples of 2^-42 below 1 in size (2^-43 for the remainders' multiples
  // of 2^-64) need at most 53 bits: exact in a double.
  static constexpr int kRowsPerFlush = 1 << 11;
  static constexpr double kHi = 0x1.8p+10;   // 1.5 * 2^(52 - 42): its ulp is 2^-42
  static constexpr double kLo = 0x1.8p-12;   // 1.5 * 2^(52 - 64): its ulp is 2^-64
  static constexpr std::size_t kWideFrom = 8;
  void flush();
  void add_products_wide(std::size_t k0, double a, const double* b, std::size_t n);
  bool wide_ = false;  // the CPU has AVX
  std::vector<FixedSum> sum_;
  std::vector<double> scale_;  // 2^-e with every |term| < 2^e
  std::vector<double> hi_, lo_;
  int rows_ = 0;
};

// COLLECTIVE. Exact column sums of `terms` (rows x k, one row per local row) over all
// ranks: ExactRowSums with the columns' largest |term| as bounds. Every rank passes k columns.
std::vector<double> exact_column_sums(const Communicator& comm, const Mat<double>& terms);

}  // namespace moesim
