// Micro-benchmarks of the stacking base learners on one process. Each fast path runs
// next to its baseline in the same binary, so bench/compare.py can report ratios:
// KNN's fused screens (bf16, float) and float distance GEMM against each other and the
// double GEMM (same neighbours, see knn.hpp). The fits of the statistics-based learners (ridge, logistic, naive Bayes) and
// the stacking scores time the exact, rank-invariant sums they are built from.
#include <benchmark/benchmark.h>

#include <memory>
#include <string>

#include "comm/communicator.hpp"
#include "core/blas.hpp"
#include "core/rng.hpp"
#include "learners/knn.hpp"
#include "learners/linear.hpp"
#include "learners/nb.hpp"
#include "stacking/metrics.hpp"
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
void knn_predict(benchmark::State& state, KnnLearner::Screen screen) {
  Communicator self(MPI_COMM_SELF);
  const Index Q = state.range(0), N = state.range(1), p = state.range(2);
  const Rows train = make_rows(N, p, 1), query = make_rows(Q, p, 2);
  KnnLearner knn(5, false, 256, 1024, screen);
  const LearnerContext ctx{self, 2, 1};
  knn.fit(ctx, train.view());
  for (auto _ : state) {
    Mat<double> out = knn.predict(ctx, query.X);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * Q);
}

void BM_KnnPredictFused(benchmark::State& state) {
  if (!screen_kernel_available(ScreenPrecision::kFloat)) {
    state.SkipWithError("no AVX2 and FMA on this CPU");
    return;
  }
  knn_predict(state, KnnLearner::Screen::kFused);
}
void BM_KnnPredictFusedBf16(benchmark::State& state) {
  if (!screen_kernel_available(ScreenPrecision::kBf16)) {
    state.SkipWithError("no AVX-512 BF16 on this CPU");
    return;
  }
  knn_predict(state, KnnLearner::Screen::kFusedBf16);
}
void BM_KnnPredictFloatGemm(benchmark::State& state) { knn_predict(state, KnnLearner::Screen::kFloatGemm); }
void BM_KnnPredictDoubleGemm(benchmark::State& state) { knn_predict(state, KnnLearner::Screen::kDoubleGemm); }

// Q, N, p
BENCHMARK(BM_KnnPredictFusedBf16)->Args({2000, 20000, 50})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_KnnPredictFused)->Args({2000, 20000, 50})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_KnnPredictFloatGemm)->Args({2000, 20000, 50})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_KnnPredictDoubleGemm)->Args({2000, 20000, 50})->Unit(benchmark::kMillisecond);

// Fit of one learner on N rows of p features (classes 2 or 3; 0: regression).
void learner_fit(benchmark::State& state, const std::string& name) {
  Communicator self(MPI_COMM_SELF);
  const Index N = state.range(0), p = state.range(1);
  const int classes = static_cast<int>(state.range(2));
  Rows train = make_rows(N, p, 3);
  if (classes == 0) for (Index i = 0; i < N; ++i) train.y[static_cast<std::size_t>(i)] = train.X(i, 0) + 0.5 * train.X(i, 1);
  if (classes == 3) for (Index i = 0; i < N; ++i) train.y[static_cast<std::size_t>(i)] += train.X(i, 2) > 0.5 ? 1 : 0;
  const LearnerContext ctx{self, classes, 1};
  for (auto _ : state) {
    std::unique_ptr<Learner> l = make_learner(name, LearnerOptions{});
    l->fit(ctx, train.view());
    benchmark::DoNotOptimize(l.get());
  }
  state.SetItemsProcessed(state.iterations() * N);
}

void BM_RidgeFit(benchmark::State& state) { learner_fit(state, "ridge"); }
void BM_LogisticFit(benchmark::State& state) { learner_fit(state, "logistic"); }
void BM_NaiveBayesFit(benchmark::State& state) { learner_fit(state, "nb"); }

// N, p, classes
BENCHMARK(BM_RidgeFit)->Args({20000, 50, 0})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LogisticFit)->Args({20000, 50, 2})->Args({20000, 20, 3})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_NaiveBayesFit)->Args({20000, 50, 3})->Unit(benchmark::kMillisecond);

// Scores of N predictions of C classes.
void BM_Score(benchmark::State& state) {
  Communicator self(MPI_COMM_SELF);
  const Index N = state.range(0);
  const Rows r = make_rows(N, 3, 4);
  Mat<double> pred = r.X.array().abs().matrix();
  for (auto _ : state) {
    const Scores s = score(self, pred, r.y, r.w, 3);
    benchmark::DoNotOptimize(s.log_loss);
  }
  state.SetItemsProcessed(state.iterations() * N);
}
BENCHMARK(BM_Score)->Arg(100000)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace moesim
