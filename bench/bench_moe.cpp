// Micro-benchmarks of the MoE compute path on one process. Each fast path runs next
// to its baseline in the same binary, so bench/compare.py can report ratios.
#include <benchmark/benchmark.h>

#include "comm/communicator.hpp"
#include "comm/ordered_sum.hpp"
#include "core/fixed_sum.hpp"
#include "core/blas.hpp"
#include "moe/moe_layer.hpp"
#include "moe/reference_moe.hpp"
#include "moe/router_rows.hpp"
#include "nn/gelu_rows.hpp"
#include "support/moe_reference.hpp"

namespace moesim {
namespace {

Mat<float> random_tokens(Index n, Index d, std::uint64_t key) {
  Rng rng(key);
  Mat<float> m(n, d);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.normal());
  return m;
}

// One expert over T tokens: as one contiguous block (two GEMMs), or, the baseline,
// token by token (matrix-vector products).
void expert_forward(benchmark::State& state, bool token_by_token) {
  const Index T = state.range(0), D = state.range(1), F = state.range(2);
  Ffn<float> ffn("e", D, F, Placement::kExpertLocal);
  Rng rng(1);
  ffn.init(rng);
  Mat<float> x = random_tokens(T, D, 2), y(T, D);
  for (auto _ : state) {
    if (token_by_token) {
      for (Index t = 0; t < T; ++t)
        ffn.forward(ConstMatMap<float>(x.data() + t * D, 1, D), MatMap<float>(y.data() + t * D, 1, D));
    } else {
      ffn.forward(ConstMatMap<float>(x.data(), T, D), MatMap<float>(y.data(), T, D));
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * T);
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(4 * T * D * F) * state.iterations(),
                                                 benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

void BM_ExpertBlockGemm(benchmark::State& state) { expert_forward(state, false); }
void BM_ExpertTokenByToken(benchmark::State& state) { expert_forward(state, true); }

// Bias + GELU forward (keeping the slope) and its backward over a block of R x F values: the
// elementwise work around an expert's GEMMs. Arg 2: the GeluPath (0 SSE, 1 AVX, 2 AVX2 + FMA, 3 AVX-512F).
void BM_BiasGelu(benchmark::State& state) {
  const Index R = state.range(0), F = state.range(1);
  const auto wanted = static_cast<GeluPath>(state.range(2));
  if (!gelu_path_supported(wanted)) {
    state.SkipWithError("this CPU has no such GELU path");
    return;
  }
  const GeluPath before = use_gelu_path(wanted);
  const Mat<float> pre0 = random_tokens(R, F, 5), dy = random_tokens(R, F, 6), b = random_tokens(1, F, 7);
  Mat<float> h(R, F), slope(R, F), d(R, F), bg = Mat<float>::Zero(1, F);
  for (auto _ : state) {
    h = pre0;
    d = dy;
    bias_gelu_forward<float>(MatMap<float>(h.data(), R, F), b.data(), MatMap<float>(slope.data(), R, F));
    gelu_backward<float>(MatMap<float>(d.data(), R, F), ConstMatMap<float>(slope.data(), R, F), bg.data());
    benchmark::DoNotOptimize(bg.data());
  }
  use_gelu_path(before);
  state.SetItemsProcessed(state.iterations() * R * F);
}

// The layer of arguments T, D, F, E, K.
MoeLayerConfig layer_config(const benchmark::State& state) {
  MoeLayerConfig cfg;
  cfg.d_model = state.range(1);
  cfg.d_ff = state.range(2);
  cfg.experts = static_cast<int>(state.range(3));
  cfg.top_k = static_cast<int>(state.range(4));
  return cfg;
}

// A whole MoE layer, forward + backward, on one rank (dispatch is local copies).
void BM_MoeLayerFwdBwd(benchmark::State& state) {
  Communicator self(MPI_COMM_SELF);
  const MoeLayerConfig cfg = layer_config(state);
  const Index T = state.range(0);
  MoeLayer<float> layer(self, "moe", cfg, 1, 1);
  Mat<float> x = random_tokens(T, cfg.d_model, 3), dy = random_tokens(T, cfg.d_model, 4), y, dx;
  for (auto _ : state) {
    layer.forward(x, y);
    layer.backward(dy, dx);
    benchmark::DoNotOptimize(dx.data());
  }
  state.SetItemsProcessed(state.iterations() * T);
}

// The router alone, forward + backward over T tokens (softmax gate, K of E): its three
// GEMMs and the per-token softmax, top-k and gate work around them; with its sixteen-token
// lanes (moe/router_rows, where the CPU has them) or, the baseline, its one-token loops.
void router_fwd_bwd(benchmark::State& state, bool lanes) {
  if (lanes && !router_lanes_available()) {
    state.SkipWithError("this CPU has no router lanes");
    return;
  }
  const bool before = use_router_lanes(lanes);
  const Index T = state.range(0), D = state.range(1);
  const int E = static_cast<int>(state.range(2)), K = static_cast<int>(state.range(3));
  Router<float> router("router", D, E, K, GateKind::kTopK);
  Rng rng(8);
  router.init(rng, 1.0);
  const Mat<float> x = random_tokens(T, D, 9), dgate = random_tokens(T, K, 10), dprobs = random_tokens(T, E, 11);
  Routing<float> r;
  Mat<float> dx;
  const std::vector<double> dlse(static_cast<std::size_t>(T), 1e-3);
  for (auto _ : state) {
    router.forward(x, r);
    router.backward(r, dgate, dprobs, dx, dlse);
    benchmark::DoNotOptimize(dx.data());
  }
  use_router_lanes(before);
  state.SetItemsProcessed(state.iterations() * T);
}

void BM_RouterFwdBwd(benchmark::State& state) { router_fwd_bwd(state, true); }
void BM_RouterLoopsFwdBwd(benchmark::State& state) { router_fwd_bwd(state, false); }

// Baseline: the serial token-by-token reference layer (double), forward + backward.
void BM_ReferenceMoeFwdBwd(benchmark::State& state) {
  Communicator self(MPI_COMM_SELF);
  const MoeLayerConfig cfg = layer_config(state);
  const Index T = state.range(0);
  MoeLayer<double> layer(self, "moe", cfg, 1, 1);
  const ReferenceMoe ref = test::make_reference(layer, cfg, 1, 1);
  Mat<double> x = random_tokens(T, cfg.d_model, 3).cast<double>();
  Mat<double> dy = random_tokens(T, cfg.d_model, 4).cast<double>();
  for (auto _ : state) {
    auto fw = ref.forward(x);
    auto g = ref.backward(x, fw, dy);
    benchmark::DoNotOptimize(g.dx.data());
  }
  state.SetItemsProcessed(state.iterations() * T);
}

// Combining m per-chunk gradients of n floats, per value and chunk (issue 12's choice):
// 0 the layout-dependent baseline (plain +=), 1 the fixed tree (comm/ordered_sum), 2 exact
// 128-bit fixed-point sums (core/fixed_sum). The tree costs about the baseline; the exact
// sum's conversions cost several times more, which is why gradients use the tree.
void BM_ChunkGradientSum(benchmark::State& state) {
  const Index n = state.range(0), m = state.range(1);
  const int how = static_cast<int>(state.range(2));
  const Mat<float> g = random_tokens(m, n, 5);
  std::vector<float> acc(static_cast<std::size_t>(n));
  std::vector<FixedSum> exact(static_cast<std::size_t>(n));
  TreeSum<float> tree;
  for (auto _ : state) {
    if (how == 0) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (Index c = 0; c < m; ++c)
        for (Index i = 0; i < n; ++i) acc[static_cast<std::size_t>(i)] += g(c, i);
    } else if (how == 1) {
      tree.reset(static_cast<std::size_t>(n));
      for (Index c = 0; c < m; ++c) {
        std::copy(g.row(c).data(), g.row(c).data() + n, tree.leaf());
        tree.push();
      }
      tree.result(acc.data());
    } else {
      std::fill(exact.begin(), exact.end(), FixedSum());
      for (Index c = 0; c < m; ++c)
        for (Index i = 0; i < n; ++i) exact[static_cast<std::size_t>(i)] += static_cast<double>(g(c, i));
      for (Index i = 0; i < n; ++i) acc[static_cast<std::size_t>(i)] = static_cast<float>(exact[static_cast<std::size_t>(i)].value());
    }
    benchmark::DoNotOptimize(acc.data());
  }
  state.SetItemsProcessed(state.iterations() * n * m);
}

// T, D, F
BENCHMARK(BM_ExpertBlockGemm)->Args({256, 64, 256})->Args({1024, 128, 512});
BENCHMARK(BM_ExpertTokenByToken)->Args({256, 64, 256})->Args({1024, 128, 512});
// T, D, F, E, K
BENCHMARK(BM_BiasGelu)->Args({1024, 256, 0})->Args({1024, 256, 1})->Args({1024, 256, 2})->Args({1024, 256, 3});
BENCHMARK(BM_MoeLayerFwdBwd)
    ->Args({1024, 32, 64, 8, 2})
    ->Args({2048, 64, 128, 16, 2})
    ->Args({4096, 64, 256, 8, 2})  // the performance issue's D64 shape
    ->Unit(benchmark::kMillisecond);
// T, D, E, K (the performance issue's E = 64 shape: one rank's tokens of two)
BENCHMARK(BM_RouterFwdBwd)->Args({2048, 256, 64, 2})->Args({2048, 64, 8, 2})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RouterLoopsFwdBwd)->Args({2048, 256, 64, 2})->Args({2048, 64, 8, 2})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ReferenceMoeFwdBwd)->Args({1024, 32, 64, 8, 2})->Args({2048, 64, 128, 16, 2});
// values (an expert's 2 D F + F + D at D = 64, F = 128), chunks, method
BENCHMARK(BM_ChunkGradientSum)->Args({16576, 8, 0})->Args({16576, 8, 1})->Args({16576, 8, 2});

}  // namespace
}  // namespace moesim
