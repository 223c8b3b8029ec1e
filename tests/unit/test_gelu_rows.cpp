// The fused bias + GELU kernels against the scalar formula (nn/activations), on every path the
// CPU has (four at a time, eight, eight with FMA, sixteen with FMA), and the properties the rank-count
// invariance needs: a value's result depends neither on where its row sits in memory nor on
// where the value sits in its row (packet or padded tail).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "nn/activations.hpp"
#include "nn/gelu_rows.hpp"

namespace moesim {
namespace {

template <class T>
std::vector<T> normal_values(Index n, std::uint64_t stream) {
  Rng rng(7 * 1000003 + stream);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<T>(3.0 * rng.normal());
  return v;
}

// The CPU's paths; the test body runs once per path with that path in use.
std::vector<GeluPath> paths() {
  std::vector<GeluPath> out;
  for (GeluPath p : {GeluPath::kSse4, GeluPath::kAvx8, GeluPath::kFma8, GeluPath::kFma16})
    if (gelu_path_supported(p)) out.push_back(p);
  return out;
}

template <class F>
void on_every_path(F&& body) {
  for (GeluPath p : paths()) {
    SCOPED_TRACE("GELU path " + std::to_string(static_cast<int>(p)));
    const GeluPath before = use_gelu_path(p);
    body();
    use_gelu_path(before);
  }
}

// h, slope, dpre and the bias gradient of rows x cols values.
struct GeluOut {
  std::vector<float> h, slope, d, bias_grad;
};

GeluOut run_rows(const std::vector<float>& pre, const std::vector<float>& bias, const std::vector<float>& dy, Index rows,
                 Index cols) {
  GeluOut o{pre, std::vector<float>(pre.size()), dy, std::vector<float>(static_cast<std::size_t>(cols), 0.5f)};
  bias_gelu_forward<float>(MatMap<float>(o.h.data(), rows, cols), bias.data(), MatMap<float>(o.slope.data(), rows, cols));
  gelu_backward<float>(MatMap<float>(o.d.data(), rows, cols), ConstMatMap<float>(o.slope.data(), rows, cols),
                       o.bias_grad.data());
  return o;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

template <class T>
void check_against_scalar(double tol) {
  const Index rows = 5, cols = 37;  // not a multiple of the packet width
  auto pre0 = normal_values<T>(rows * cols, 1), bias = normal_values<T>(cols, 2), dy = normal_values<T>(rows * cols, 3);
  std::vector<T> h = pre0, slope(h.size());
  bias_gelu_forward<T>(MatMap<T>(h.data(), rows, cols), bias.data(), MatMap<T>(slope.data(), rows, cols));
  std::vector<T> dpre = dy, bgrad(static_cast<std::size_t>(cols), T(1));
  gelu_backward<T>(MatMap<T>(dpre.data(), rows, cols), ConstMatMap<T>(slope.data(), rows, cols), bgrad.data());
  for (Index i = 0; i < rows; ++i) {
    for (Index j = 0; j < cols; ++j) {
      const std::size_t at = static_cast<std::size_t>(i * cols + j);
      const double x = double(pre0[at]) + double(bias[static_cast<std::size_t>(j)]);
      EXPECT_NEAR(h[at], gelu(x), tol * (1 + std::abs(x))) << i << "," << j;
      EXPECT_NEAR(slope[at], gelu_grad(x), tol * (1 + std::abs(x))) << i << "," << j;
      EXPECT_NEAR(dpre[at], double(dy[at]) * gelu_grad(x), tol * (1 + std::abs(double(dy[at]))));
    }
  }
  for (Index j = 0; j < cols; ++j) {
    double sum = 1;
    for (Index i = 0; i < rows; ++i) sum += double(dpre[static_cast<std::size_t>(i * cols + j)]);
    EXPECT_NEAR(bgrad[static_cast<std::size_t>(j)], sum, tol * 10);
  }
}

// fp32: Eigen's fast tanh is a few ulp off, more in the derivative.
TEST(GeluRows, Fp32MatchesTheScalarFormula) {
  on_every_path([] { check_against_scalar<float>(1e-5); });
}
TEST(GeluRows, Fp64MatchesTheScalarFormula) { check_against_scalar<double>(1e-13); }

// The same row at every offset in a buffer (so at every alignment, with the packet tail at a
// different place in memory) gives the same bits.
TEST(GeluRows, ResultDoesNotDependOnAlignment) {
  on_every_path([] {
    const Index cols = 23;
    const auto row = normal_values<float>(cols, 4), bias = normal_values<float>(cols, 5), dy = normal_values<float>(cols, 6);
    GeluOut ref;
    for (Index off = 0; off < 8; ++off) {
      std::vector<float> h(static_cast<std::size_t>(cols + 8)), slope(h.size()), d(h.size());
      std::copy(row.begin(), row.end(), h.begin() + off);
      std::copy(dy.begin(), dy.end(), d.begin() + off);
      bias_gelu_forward<float>(MatMap<float>(h.data() + off, 1, cols), bias.data(),
                               MatMap<float>(slope.data() + off, 1, cols));
      std::vector<float> bgrad(static_cast<std::size_t>(cols + 8), 0.0f);
      gelu_backward<float>(MatMap<float>(d.data() + off, 1, cols), ConstMatMap<float>(slope.data() + off, 1, cols),
                           bgrad.data() + off);
      auto cut = [&](const std::vector<float>& v) { return std::vector<float>(v.begin() + off, v.begin() + off + cols); };
      GeluOut got{cut(h), cut(slope), cut(d), cut(bgrad)};
      if (off == 0) {
        ref = got;
        continue;
      }
      EXPECT_TRUE(same_bits(got.h, ref.h)) << "offset " << off;
      EXPECT_TRUE(same_bits(got.slope, ref.slope)) << "offset " << off;
      EXPECT_TRUE(same_bits(got.d, ref.d)) << "offset " << off;
      EXPECT_TRUE(same_bits(got.bias_grad, ref.bias_grad)) << "offset " << off;
    }
  });
}

// Inputs that reach every branch: tiny ones (tanh's x branch), beyond the clamp, both signs.
std::vector<float> awkward_values(Index n, std::uint64_t stream) {
  auto v = normal_values<float>(n, stream);
  for (std::size_t i = 0; i < v.size(); i += 5) v[i] *= 1e-4f;  // |x| < 0.0004
  for (std::size_t i = 3; i < v.size(); i += 11) v[i] *= 10.0f;  // beyond the clamp
  return v;
}

// A value gives the same bits in a whole packet or in a row's padded tail: each value of a
// row of `cols` against the same value alone in a row of one.
TEST(GeluRows, ResultDoesNotDependOnThePositionInTheRow) {
  on_every_path([] {
    for (const Index cols : {Index{7}, Index{8}, Index{13}, Index{37}}) {
      const auto pre = awkward_values(cols, 40 + static_cast<std::uint64_t>(cols));
      auto bias = normal_values<float>(cols, 41);
      for (std::size_t j = 0; j < bias.size(); j += 3) bias[j] = 0.0f;  // tiny tanh arguments reach tanh
      const auto dy = normal_values<float>(cols, 42);
      const GeluOut row = run_rows(pre, bias, dy, 1, cols);
      for (Index j = 0; j < cols; ++j) {
        const auto at = static_cast<std::size_t>(j);
        const GeluOut one = run_rows({pre[at]}, {bias[at]}, {dy[at]}, 1, 1);
        EXPECT_TRUE(same_bits({row.h[at], row.slope[at], row.d[at], row.bias_grad[at]},
                              {one.h[0], one.slope[0], one.d[0], one.bias_grad[0]}))
            << "cols " << cols << " value " << j;
      }
    }
  });
}

// Paths `a` and `b` give each other's bits, lane for lane, on rows of these widths (whole
// packets of either, and padded tails), awkward values included.
void expect_same_bits(GeluPath a, GeluPath b, std::initializer_list<Index> widths, std::uint64_t stream) {
  for (const Index cols : widths) {
    const Index rows = 9;
    const auto pre = awkward_values(rows * cols, stream + static_cast<std::uint64_t>(cols));
    auto bias = normal_values<float>(cols, stream + 1000);
    for (std::size_t j = 0; j < bias.size(); j += 3) bias[j] = 0.0f;
    const auto dy = normal_values<float>(rows * cols, stream + 2000);
    GeluOut out[2];
    for (int i = 0; i < 2; ++i) {
      const GeluPath before = use_gelu_path(i == 0 ? a : b);
      out[i] = run_rows(pre, bias, dy, rows, cols);
      use_gelu_path(before);
    }
    EXPECT_TRUE(same_bits(out[0].h, out[1].h)) << "cols " << cols;
    EXPECT_TRUE(same_bits(out[0].slope, out[1].slope)) << "cols " << cols;
    EXPECT_TRUE(same_bits(out[0].d, out[1].d)) << "cols " << cols;
    EXPECT_TRUE(same_bits(out[0].bias_grad, out[1].bias_grad)) << "cols " << cols;
  }
}

// Eight values at a time (AVX) give the four-at-a-time path's bits.
TEST(GeluRows, EightAtATimeGivesTheFourWidePathsBits) {
  if (!gelu_path_supported(GeluPath::kAvx8)) GTEST_SKIP() << "this CPU has no AVX";
  expect_same_bits(GeluPath::kSse4, GeluPath::kAvx8, {1, 7, 8, 37, 256}, 10);
}

// Sixteen values at a time (AVX-512) give the eight-wide FMA path's bits, with rows of whole
// 16-packets, an 8-packet after them, and padded tails.
TEST(GeluRows, SixteenAtATimeGivesTheEightWideFmaPathsBits) {
  if (!gelu_path_supported(GeluPath::kFma16)) GTEST_SKIP() << "this CPU has no AVX-512F";
  expect_same_bits(GeluPath::kFma8, GeluPath::kFma16, {1, 9, 16, 24, 37, 256}, 60);
}

// The FMA path computes the same function to within a few ulp of the four-wide path.
TEST(GeluRows, FmaPathIsWithinUlpsOfTheFourWidePath) {
  if (!gelu_path_supported(GeluPath::kFma8)) GTEST_SKIP() << "this CPU has no AVX2 + FMA";
  const Index rows = 9, cols = 256;
  const auto pre = awkward_values(rows * cols, 50);
  const auto bias = normal_values<float>(cols, 51), dy = normal_values<float>(rows * cols, 52);
  GeluOut out[2];
  for (const GeluPath p : {GeluPath::kSse4, GeluPath::kFma8}) {
    const GeluPath before = use_gelu_path(p);
    out[p == GeluPath::kFma8 ? 1 : 0] = run_rows(pre, bias, dy, rows, cols);
    use_gelu_path(before);
  }
  int differ = 0;
  for (std::size_t i = 0; i < pre.size(); ++i) {
    const double eps = std::numeric_limits<float>::epsilon(), x = pre[i] + bias[i % static_cast<std::size_t>(cols)];
    EXPECT_NEAR(out[1].h[i], out[0].h[i], 8 * eps * std::max(1.0, std::abs(x))) << i;
    // Near saturation (1 - th^2) turns an ulp of tanh into tens or hundreds in the slope: the
    // bound Fp32MatchesTheScalarFormula holds every path to.
    EXPECT_NEAR(out[1].slope[i], out[0].slope[i], 1e-5 * (1 + std::abs(x))) << i;
    differ += out[1].h[i] != out[0].h[i];
  }
  EXPECT_GT(differ, 0) << "the FMA path gave the four-wide path's bits everywhere: is it in use?";
}

}  // namespace
}  // namespace moesim
