// Micro-benchmarks of the stacking base learners on one process. Each fast path runs
// next to its baseline in the same binary, so bench/compare.py can report ratios:
// KNN with the float distance GEMM against the double one (same neighbours, see
// knn.hpp).
#include <benchmark/benchmark.h>

#include "comm/communicator.hpp"
#include "core/blas.hpp"
#include "core/rng.hpp"
#include "learners/knn.hpp"
#include "support/rows.hpp"

namespace moesim {
namespace {

using test::Rows;

// Gaussian features, a label from a linear score: the shape of the synthetic tables.
Rows make_rows(Index n, Index p, std::uint64_t seed) {
  Rows r;
  r.X.resize(n, p);
  for (Index i = 0; i < n; ++i) {
    Rng rng(seed, Stream::kTest, static_cast<std::uint64_t>(i));
    double s = 0;
    for (Index j = 0; j < p; ++j) {
      r.X(i, j) = rng.normal();
      if (j < 10) s += r.X(i, j);
    }
    r.y.push_back(s > 0 ? 1 : 0);
    r.w.push_back(1);
    r.id.push_back(i);
  }
  return r;
}

// Q queries against N training rows of p features, k = 5.
void knn_predict(benchmark::State& state, bool double_gemm) {
  Communicator self(MPI_COMM_SELF);
  const Index Q = state.range(0), N = state.range(1), p = state.range(2);
  const Rows train = make_rows(N, p, 1), query = make_rows(Q, p, 2);
  KnnLearner knn(5, false, 256, 1024, double_gemm);
  const LearnerContext ctx{self, 2, 1};
  knn.fit(ctx, train.view());
  for (auto _ : state) {
    Mat<double> out = knn.predict(ctx, query.X);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * Q);
}

void BM_KnnPredictFloatGemm(benchmark::State& state) { knn_predict(state, false); }
void BM_KnnPredictDoubleGemm(benchmark::State& state) { knn_predict(state, true); }

// Q, N, p
BENCHMARK(BM_KnnPredictFloatGemm)->Args({2000, 20000, 50})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_KnnPredictDoubleGemm)->Args({2000, 20000, 50})->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace moesim
