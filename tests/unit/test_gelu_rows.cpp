// The fused bias + GELU kernels against the scalar formula (nn/activations), and the property
// the rank-count invariance needs: a row's result does not depend on where it sits in memory.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
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
TEST(GeluRows, Fp32MatchesTheScalarFormula) { check_against_scalar<float>(1e-5); }
TEST(GeluRows, Fp64MatchesTheScalarFormula) { check_against_scalar<double>(1e-13); }

// The same row at every offset in a buffer (so at every alignment, with the packet tail at a
// different place in memory) gives the same bits.
TEST(GeluRows, ResultDoesNotDependOnAlignment) {
  const Index cols = 23;
  const auto row = normal_values<float>(cols, 4), bias = normal_values<float>(cols, 5), dy = normal_values<float>(cols, 6);
  std::vector<float> ref_h, ref_s, ref_d, ref_b;
  for (Index off = 0; off < 8; ++off) {
    std::vector<float> h(static_cast<std::size_t>(cols + 8)), slope(h.size()), d(h.size());
    std::copy(row.begin(), row.end(), h.begin() + off);
    std::copy(dy.begin(), dy.end(), d.begin() + off);
    bias_gelu_forward<float>(MatMap<float>(h.data() + off, 1, cols), bias.data(),
                             MatMap<float>(slope.data() + off, 1, cols));
    std::vector<float> bgrad(static_cast<std::size_t>(cols + 8), 0.0f);
    gelu_backward<float>(MatMap<float>(d.data() + off, 1, cols), ConstMatMap<float>(slope.data() + off, 1, cols),
                         bgrad.data() + off);
    std::vector<float> hh(h.begin() + off, h.begin() + off + cols), ss(slope.begin() + off, slope.begin() + off + cols),
        dd(d.begin() + off, d.begin() + off + cols), bb(bgrad.begin() + off, bgrad.begin() + off + cols);
    if (off == 0) {
      ref_h = hh, ref_s = ss, ref_d = dd, ref_b = bb;
      continue;
    }
    EXPECT_EQ(std::memcmp(hh.data(), ref_h.data(), hh.size() * sizeof(float)), 0) << "offset " << off;
    EXPECT_EQ(std::memcmp(ss.data(), ref_s.data(), ss.size() * sizeof(float)), 0) << "offset " << off;
    EXPECT_EQ(std::memcmp(dd.data(), ref_d.data(), dd.size() * sizeof(float)), 0) << "offset " << off;
    EXPECT_EQ(std::memcmp(bb.data(), ref_b.data(), bb.size() * sizeof(float)), 0) << "offset " << off;
  }
}

}  // namespace
}  // namespace moesim

namespace moesim {
namespace {

// Eight values at a time (AVX) give the four-at-a-time path's bits, lane for lane: tiny inputs
// (tanh's x branch), the clamp, both signs, the row tails.
TEST(GeluRows, EightAtATimeGivesTheFourWidePathsBits) {
  if (!__builtin_cpu_supports("avx")) GTEST_SKIP() << "this CPU has no AVX";
  for (const Index cols : {Index{1}, Index{7}, Index{8}, Index{37}, Index{256}}) {
    const Index rows = 9;
    const auto n = static_cast<std::size_t>(rows * cols);
    auto pre0 = normal_values<float>(rows * cols, 10 + static_cast<std::uint64_t>(cols));
    for (std::size_t i = 0; i < n; i += 5) pre0[i] *= 1e-4f;  // |x| < 0.0004
    for (std::size_t i = 3; i < n; i += 11) pre0[i] *= 10.0f;  // beyond the clamp
    auto bias = normal_values<float>(cols, 20);
    for (std::size_t j = 0; j < bias.size(); j += 3) bias[j] = 0.0f;  // tiny tanh arguments reach tanh
    const auto dy = normal_values<float>(rows * cols, 30);
    std::vector<float> out[2][3];
    for (const bool wide : {false, true}) {
      const bool before = gelu_rows_wide(wide);
      std::vector<float> h = pre0, slope(n), d = dy, bg(static_cast<std::size_t>(cols), 0.5f);
      bias_gelu_forward<float>(MatMap<float>(h.data(), rows, cols), bias.data(), MatMap<float>(slope.data(), rows, cols));
      gelu_backward<float>(MatMap<float>(d.data(), rows, cols), ConstMatMap<float>(slope.data(), rows, cols), bg.data());
      gelu_rows_wide(before);
      auto& o = out[wide ? 1 : 0];
      o[0] = h, o[1] = slope, o[2] = d;
      o[2].insert(o[2].end(), bg.begin(), bg.end());
    }
    for (int k = 0; k < 3; ++k)
      EXPECT_EQ(std::memcmp(out[0][k].data(), out[1][k].data(), out[0][k].size() * sizeof(float)), 0)
          << "cols " << cols << " output " << k;
  }
}

}  // namespace
}  // namespace moesim
