#pragma once
// An exact sum of doubles: each value is rounded once to a 128-bit count of 2^-64
// (range +-2^63), and integer addition is exact and associative, so the total is the
// same bits however the values are split over ranks or ordered. Used for statistics and
// metrics (per-token losses, router sums) that must not depend on the rank count;
// comm/exact_sum reduces these over a communicator.
#include <cmath>
#include <cstdint>
#include <limits>

namespace moesim {

__extension__ typedef __int128 Int128;

class FixedSum {
 public:
  static constexpr int kFractionBits = 64;

  FixedSum() = default;
  explicit FixedSum(double x) { *this += x; }

  // Values out of range (|x| >= 2^62) or not finite make the sum NaN (bad), never wrap.
  FixedSum& operator+=(double x) {
    // isfinite first: an ordered comparison with NaN would raise FE_INVALID (trapped in
    // the debug and asan builds).
    if (!std::isfinite(x) || std::fabs(x) >= 0x1p62) {
      bad_ = true;
      return *this;
    }
    // Scaling by a power of two is exact; the conversion truncates below 2^-64. Values under
    // 1/2 (probabilities, entropy terms: the router's hot loop) fit 64 bits, whose
    // conversion is one instruction and truncates the same way as the 128-bit library call.
    const double scaled = x * 0x1p64;
    if (std::fabs(x) < 0.5) raw_ += static_cast<std::int64_t>(scaled);
    else raw_ += static_cast<Int128>(scaled);
    return *this;
  }
  FixedSum& operator-=(double x) { return *this += -x; }
  FixedSum& operator+=(const FixedSum& o) {
    raw_ += o.raw_;
    bad_ = bad_ || o.bad_;
    return *this;
  }
  // The sum rounded once to a double; NaN if a value was out of range.
  double value() const {
    if (bad_) return std::numeric_limits<double>::quiet_NaN();
    // The conversion from 128 bits rounds to nearest; the scaling back is exact.
    return std::ldexp(static_cast<double>(raw_), -kFractionBits);
  }
  Int128 raw() const { return raw_; }
  bool bad() const { return bad_; }
  void set(Int128 raw, bool bad) {
    raw_ = raw;
    bad_ = bad;
  }

 private:
  Int128 raw_ = 0;
  bool bad_ = false;
};

}  // namespace moesim
