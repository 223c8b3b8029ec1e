// Fit and predict times of the stacking learners on tables whose rows are sharded over
// the ranks of MPI_COMM_WORLD:
//   mpirun -np P build/default/bench/bench_learners
// The learners are collective, so every benchmark runs a fixed number of iterations on
// every rank; its time is the wall time between two barriers, its CPU time rank 0's
// (all threads). Only rank 0 prints.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <string>

#include "comm/communicator.hpp"
#include "core/rng.hpp"
#include "learners/knn.hpp"
#include "learners/learner.hpp"
#include "support/rows.hpp"
#include "core/shard.hpp"

namespace moesim {
namespace {

using test::Rows;

// Times one iteration's body between two barriers.
template <class Body>
void timed(benchmark::State& state, const Communicator& comm, Body body) {
  comm.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  body();
  comm.barrier();
  state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// ------------------------------------------------------------------------ trees

constexpr std::int64_t kTreeRows = 160000;
constexpr int kTreeFeatures = 50;

// This rank's rows of a classification table: Gaussian features, the label from a noisy
// linear score of the first ten.
Rows tree_rows(const Communicator& comm) {
  const Shard sh = shard_of(kTreeRows, comm.rank(), comm.size());
  Rows d;
  d.X.resize(sh.count, kTreeFeatures);
  for (std::int64_t k = 0; k < sh.count; ++k) {
    Rng rng(81, Stream::kTest, static_cast<std::uint64_t>(sh.first + k));
    double s = 0;
    for (int j = 0; j < kTreeFeatures; ++j) {
      d.X(k, j) = rng.normal();
      if (j < 10) s += d.X(k, j) * (j % 2 ? 1.0 : -0.7);
    }
    d.y.push_back(s + rng.normal() > 0 ? 1 : 0);
    d.w.push_back(1);
    d.id.push_back(sh.first + k);
  }
  return d;
}

// Fits `name` (default settings: forest 100 trees of depth 12, gbdt 100 rounds of depth 3)
// on 160k x 50 rows and predicts 1000 of each rank's rows.
void BM_TreeFitPredict(benchmark::State& state, const std::string& name) {
  Communicator world(MPI_COMM_WORLD);
  const Rows d = tree_rows(world);
  const Mat<double> query = d.X.topRows(std::min<Index>(d.X.rows(), 1000));
  const LearnerContext ctx{world, 2, 11};
  for (auto _ : state)
    timed(state, world, [&] {
      std::unique_ptr<Learner> learner = make_learner(name, LearnerOptions{});
      learner->fit(ctx, d.view());
      const Mat<double> p = learner->predict(ctx, query);
      benchmark::DoNotOptimize(p.data());
    });
  state.SetItemsProcessed(state.iterations() * kTreeRows);  // training rows
  state.counters["ranks"] = world.size();
}

BENCHMARK_CAPTURE(BM_TreeFitPredict, forest, std::string("forest"))
    ->Iterations(1)->UseManualTime()->MeasureProcessCPUTime()->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_TreeFitPredict, gbdt, std::string("gbdt"))
    ->Iterations(1)->UseManualTime()->MeasureProcessCPUTime()->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_TreeFitPredict, tree, std::string("tree"))
    ->Iterations(1)->UseManualTime()->MeasureProcessCPUTime()->Unit(benchmark::kSecond);

// -------------------------------------------------------------------------- KNN

// Rows [first, first + count) of a regression table of p features on unequal scales;
// row i is a pure function of (seed, i).
Rows knn_rows(std::uint64_t seed, Index p, std::int64_t first, std::int64_t count) {
  Rows r;
  r.X.resize(count, p);
  for (std::int64_t k = 0; k < count; ++k) {
    const std::int64_t i = first + k;
    Rng rng(seed, Stream::kTest, static_cast<std::uint64_t>(i), 0);
    for (Index j = 0; j < p; ++j) r.X(k, j) = (1.0 + static_cast<double>(j)) * rng.normal();
    Rng noise(seed, Stream::kTest, static_cast<std::uint64_t>(i), 2);
    r.y.push_back(std::sin(r.X(k, 0)) + 0.3 * r.X(k, p - 1) + 0.1 * noise.normal());
    r.w.push_back(1.0);
    r.id.push_back(i);
  }
  return r;
}

// KNN regression (k = 5) predicting Q query rows against N training rows of p features,
// both sharded over the ranks, with query blocks x training chunks of the given sizes.
void BM_KnnPredictSharded(benchmark::State& state) {
  Communicator world(MPI_COMM_WORLD);
  const std::int64_t Q = state.range(0), N = state.range(1);
  const Index p = state.range(2), query_block = state.range(3), train_chunk = state.range(4);
  const Shard tr = shard_of(N, world.rank(), world.size()), qs = shard_of(Q, world.rank(), world.size());
  const Rows train = knn_rows(1, p, tr.first, tr.count);
  const Mat<double> query = knn_rows(2, p, qs.first, qs.count).X;
  KnnLearner knn(5, false, query_block, train_chunk);
  const LearnerContext ctx{world, 0, 1};
  knn.fit(ctx, train.view());
  double cpu = 0;
  for (auto _ : state) {
    const std::clock_t c0 = std::clock();
    timed(state, world, [&] {
      const Mat<double> out = knn.predict(ctx, query);
      benchmark::DoNotOptimize(out.data());
    });
    cpu += static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  }
  state.SetItemsProcessed(state.iterations() * Q);  // query rows
  const double gemm_flops = 2.0 * static_cast<double>(Q) * static_cast<double>(N) * static_cast<double>(p + 1);
  state.counters["GFLOP/s"] = benchmark::Counter(gemm_flops * static_cast<double>(state.iterations()),
                                                 benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
  // CPU seconds of every rank: on a shared machine they show the speed per core.
  state.counters["cpu_s_all_ranks"] = world.allreduce_sum(cpu) / static_cast<double>(state.iterations());
  state.counters["ranks"] = world.size();
}

// Q, N, p, query block, training chunk
BENCHMARK(BM_KnnPredictSharded)
    ->Args({40000, 160000, 50, 256, 1024})
    ->Iterations(1)->UseManualTime()->MeasureProcessCPUTime()->Unit(benchmark::kSecond);

}  // namespace
}  // namespace moesim
