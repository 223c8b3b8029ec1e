// add_columns (eight columns at a time in AVX-512 lanes where the CPU has them) against
// FixedSum's += one value at a time: the same raw 128-bit totals and flags, on
// probabilities and on every kind of value the lanes hand back.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/fixed_sum_columns.hpp"
#include "core/rng.hpp"

namespace moesim {
namespace {

void expect_same_sums(const std::vector<float>& m, Index rows, Index cols) {
  std::vector<FixedSum> fast(static_cast<std::size_t>(cols), FixedSum(0.25)), ref = fast;
  add_columns(m.data(), rows, cols, fast.data());
  add_columns_reference(m.data(), rows, cols, ref.data());
  for (Index c = 0; c < cols; ++c) {
    const auto i = static_cast<std::size_t>(c);
    EXPECT_TRUE(fast[i].raw() == ref[i].raw()) << "column " << c << " of " << cols;
    EXPECT_EQ(fast[i].bad(), ref[i].bad()) << "column " << c << " of " << cols;
  }
}

TEST(FixedSumColumns, EqualsOneValueAtATime) {
  Rng rng(20261207);
  for (const Index cols : {1, 5, 8, 13, 64, 100}) {
    const Index rows = 3000;  // enough 2^-1-sized values for the low half to carry
    std::vector<float> m(static_cast<std::size_t>(rows * cols));
    for (auto& v : m) v = static_cast<float>(rng.uniform(0.0, 1.0));
    expect_same_sums(m, rows, cols);
    // the edges of the lanes' range and what they hand back
    const float specials[] = {0.0f, -0.0f, 0.5f, std::nextafter(1.0f, 0.0f), 1.0f, 3.5f, -0.25f, 1e-30f,
                              std::numeric_limits<float>::denorm_min(), std::ldexp(1.0f, -64), std::ldexp(1.0f, -65),
                              std::ldexp(1.5f, -40), std::numeric_limits<float>::infinity()};
    for (std::size_t i = 0; i < m.size(); i += 7) m[i] = specials[(i / 7) % std::size(specials)];
    expect_same_sums(m, rows, cols);
  }
}

TEST(FixedSumColumns, NaNMakesTheColumnBad) {
  std::vector<float> m(4 * 9, 0.125f);
  m[2 * 9 + 4] = std::numeric_limits<float>::quiet_NaN();
  std::vector<FixedSum> s(9);
  add_columns(m.data(), 4, 9, s.data());
  for (int c = 0; c < 9; ++c) EXPECT_EQ(s[static_cast<std::size_t>(c)].bad(), c == 4) << c;
  EXPECT_EQ(s[0].value(), 0.5);
}

}  // namespace
}  // namespace moesim
