// The GPU kernels' per-element functions (device/elementwise.hpp), driven by host loops as the
// kernels drive them, against the CPU code they stand in for: fused bias + GELU and its
// backward (nn/gelu_rows: fp64 the same bits, fp32 within the difference of Eigen's tanh and
// tanhf), Adam (nn/adam: the same bits), the router's softmax, log-sum-exp and top-k choice
// (moe/router: the same bits), capacity by position (moe/capacity: the same kept flags).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.hpp"
#include "device/elementwise.hpp"
#include "moe/capacity.hpp"
#include "moe/router.hpp"
#include "nn/adam.hpp"
#include "nn/gelu_rows.hpp"
#include "support/test_support.hpp"

namespace moesim {
namespace {

template <class T>
std::vector<T> normal_values(std::size_t n, std::uint64_t stream, double scale = 3.0) {
  Rng rng(20261206, Stream::kTest, stream);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(scale * rng.normal());
  return v;
}

// fp32's tanh: Eigen's packet tanh on the CPU path, tanhf here; a few ulp apart.
template <class T>
void expect_close(T got, T want, double ulps, const char* what, std::size_t i) {
  if constexpr (std::is_same_v<T, double>) {
    ASSERT_EQ(got, want) << what << " element " << i;
  } else {
    const double tol = ulps * std::numeric_limits<float>::epsilon() * std::max(1.0, std::abs(double(want)));
    ASSERT_NEAR(got, want, tol) << what << " element " << i;
  }
}

template <class T>
void gelu_against_cpu() {
  const Index rows = 9, cols = 37;
  const auto n = static_cast<std::size_t>(rows * cols);
  const auto pre0 = normal_values<T>(n, 1), bias = normal_values<T>(static_cast<std::size_t>(cols), 2);
  const auto dy = normal_values<T>(n, 3);
  // CPU path: h in place, GELU's slope kept.
  std::vector<T> h = pre0, slope(n);
  bias_gelu_forward<T>(MatMap<T>(h.data(), rows, cols), bias.data(), MatMap<T>(slope.data(), rows, cols));
  // The kernels' loops: one element per thread.
  std::vector<T> th_k(n), h_k(n), pre_k = pre0;
  for (std::size_t i = 0; i < n; ++i) device::bias_gelu(pre_k[i], bias[i % static_cast<std::size_t>(cols)], th_k[i], h_k[i]);
  for (std::size_t i = 0; i < n; ++i) {
    expect_close(pre_k[i], pre0[i] + bias[i % static_cast<std::size_t>(cols)], 0, "pre", i);
    // GELU's error is half |x| times tanh's: 8 ulp of max(1, |x|).
    if constexpr (std::is_same_v<T, double>) ASSERT_EQ(h_k[i], h[i]) << "gelu element " << i;
    else ASSERT_NEAR(h_k[i], h[i], 8 * std::numeric_limits<float>::epsilon() * std::max<T>(1, std::abs(pre_k[i])))
        << "gelu element " << i;
    // The slope's (1 - th^2) near saturation turns an ulp of tanh into tens or hundreds: fp32
    // is held to the bound test_gelu_rows holds every CPU path to against the formula in fp64.
    const T slope_k = device::gelu_slope(pre_k[i], th_k[i]);
    if constexpr (std::is_same_v<T, double>) ASSERT_EQ(slope_k, slope[i]) << "gelu slope element " << i;
    else ASSERT_NEAR(slope_k, slope[i], 1e-5 * (1 + std::abs(pre_k[i]))) << "gelu slope element " << i;
  }
  // Backward: the CPU's from the kernels' slope, so that only the backward's own arithmetic is
  // compared (the bias gradient one column per thread, row after row).
  std::vector<T> slope_k(n), dpre_k(n), bgrad_k(static_cast<std::size_t>(cols), T(0));
  for (std::size_t i = 0; i < n; ++i) {
    slope_k[i] = device::gelu_slope(pre_k[i], th_k[i]);
    dpre_k[i] = device::gelu_backward(dy[i], pre_k[i], th_k[i]);
  }
  for (Index c = 0; c < cols; ++c)
    for (Index r = 0; r < rows; ++r) bgrad_k[static_cast<std::size_t>(c)] += dpre_k[static_cast<std::size_t>(r * cols + c)];
  std::vector<T> dpre = dy, bgrad(static_cast<std::size_t>(cols), T(0));
  gelu_backward<T>(MatMap<T>(dpre.data(), rows, cols), ConstMatMap<T>(slope_k.data(), rows, cols), bgrad.data());
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(dpre_k[i], dpre[i]) << "dpre element " << i;
  for (std::size_t c = 0; c < bgrad.size(); ++c) ASSERT_EQ(bgrad_k[c], bgrad[c]) << "bias gradient " << c;
}

TEST(DeviceElementwise, BiasGeluAndBackwardMatchTheCpuKernels) {
  gelu_against_cpu<double>();
  gelu_against_cpu<float>();
}

template <class T>
void adam_against_cpu() {
  AdamConfig cfg;
  cfg.lr = 3e-3;
  cfg.weight_decay = 0.1;
  Param<T> p;
  p.resize(7, 11);
  const auto w0 = normal_values<T>(77, 4, 1.0);
  std::copy(w0.begin(), w0.end(), p.value.data());
  std::vector<T> w = w0, m(77, T(0)), v(77, T(0));
  Adam<T> adam(cfg);
  for (long t = 1; t <= 50; ++t) {
    const auto g = normal_values<T>(77, 100 + static_cast<std::uint64_t>(t), 0.5);
    std::copy(g.begin(), g.end(), p.grad.data());
    const double scale = t % 3 == 0 ? 0.5 : 1.0;  // as a clipped step
    adam.step({&p}, scale);
    const device::AdamStep<T> s =
        device::adam_step_constants<T>(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, t, scale);
    for (std::size_t i = 0; i < w.size(); ++i) device::adam_update(w[i], g[i], m[i], v[i], s);
    for (std::size_t i = 0; i < w.size(); ++i) {
      ASSERT_EQ(w[i], p.value.data()[i]) << "step " << t << " element " << i;
      ASSERT_EQ(m[i], p.adam_m.data()[i]) << "step " << t << " element " << i;
      ASSERT_EQ(v[i], p.adam_v.data()[i]) << "step " << t << " element " << i;
    }
  }
}

TEST(DeviceElementwise, AdamGivesTheOptimizersBits) {
  adam_against_cpu<float>();
  adam_against_cpu<double>();
}

TEST(DeviceElementwise, SoftmaxAndTopKAreTheRoutersChoice) {
  for (const int E : {2, 8, 13, 64}) {
    for (const int K : {1, 2, 4}) {
      if (K > E) continue;
      const Index n = 120, D = 16;
      Router<float> router("r", D, E, K, GateKind::kTopK);
      Rng rng(7, Stream::kTest, static_cast<std::uint64_t>(E * 10 + K));
      router.init(rng, 4.0);  // wide logits: confident and near-tied tokens both occur
      Mat<float> x(n, D);
      for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.normal());
      Routing<float> r;
      router.forward(x, r);
      const Mat<float> logits = x * router.weight().value;  // the router's own product
      std::vector<float> probs(static_cast<std::size_t>(E));
      std::vector<int> chosen(static_cast<std::size_t>(K));
      for (Index t = 0; t < n; ++t) {
        const double lse = device::softmax_row(logits.row(t).data(), E, probs.data());
        device::top_k_row(logits.row(t).data(), E, K, chosen.data());
        ASSERT_EQ(lse, r.lse[static_cast<std::size_t>(t)]) << "E " << E << " token " << t;
        for (int e = 0; e < E; ++e) ASSERT_EQ(probs[static_cast<std::size_t>(e)], r.probs(t, e)) << "token " << t;
        for (int j = 0; j < K; ++j)
          ASSERT_EQ(chosen[static_cast<std::size_t>(j)], r.expert_of(t, j)) << "E " << E << " K " << K << " token " << t;
      }
    }
  }
}

TEST(DeviceElementwise, CapacityKeepsTheCpusAssignments) {
  const std::int64_t n = 300;
  const int E = 8, K = 2;
  Rng rng(11, Stream::kTest, 1);
  std::vector<int> expert(static_cast<std::size_t>(n * K));
  for (std::int64_t t = 0; t < n; ++t) {
    // Skewed choices (expert 0 popular), two different experts per token.
    const int a = std::abs(static_cast<int>(2.0 * rng.normal())) % E;
    expert[static_cast<std::size_t>(t * K)] = a;
    expert[static_cast<std::size_t>(t * K + 1)] = (a + 1 + static_cast<int>(rng.uniform() * (E - 1))) % E;
  }
  for (const std::int64_t capacity : {std::int64_t{0}, std::int64_t{20}, std::int64_t{75}}) {
    const CapacityDecision cpu = decide_capacity(test::world(), expert, n, K, E, capacity);
    std::vector<unsigned char> kept(static_cast<std::size_t>(n * K), 2);
    for (int e = 0; e < E; ++e) device::capacity_of_expert(expert.data(), n, K, e, 0, capacity, kept.data());
    for (std::size_t i = 0; i < kept.size(); ++i)
      ASSERT_EQ(kept[i], static_cast<unsigned char>(cpu.kept[i])) << "capacity " << capacity << " assignment " << i;
  }
}

}  // namespace
}  // namespace moesim
