// Fit + predict time of the histogram tree learners (tree, forest, gbdt at their
// default settings) on a 160k x 50 classification table whose rows are sharded over
// the ranks of MPI_COMM_WORLD:
//   mpirun -np P build/default/bench/bench_trees
// The fits are collective, so every benchmark runs a fixed number of iterations on
// every rank; its time is the wall time between two barriers, its CPU time rank 0's
// (all threads). Only rank 0 prints.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "comm/communicator.hpp"
#include "core/rng.hpp"
#include "learners/learner.hpp"
#include "train/trainer.hpp"

namespace moesim {
namespace {

constexpr std::int64_t kRows = 160000;
constexpr int kFeatures = 50;

struct Rows {
  Mat<double> X;
  std::vector<double> y, w;
  std::vector<std::int64_t> id;
};

// This rank's rows of the table: Gaussian features, a binary label from a noisy linear
// score of the first ten.
Rows my_rows(const Communicator& comm) {
  const Shard sh = shard_of(kRows, comm.rank(), comm.size());
  Rows d;
  d.X.resize(sh.count, kFeatures);
  for (std::int64_t k = 0; k < sh.count; ++k) {
    Rng rng(81, Stream::kTest, static_cast<std::uint64_t>(sh.first + k));
    double s = 0;
    for (int j = 0; j < kFeatures; ++j) {
      d.X(k, j) = rng.normal();
      if (j < 10) s += d.X(k, j) * (j % 2 ? 1.0 : -0.7);
    }
    d.y.push_back(s + rng.normal() > 0 ? 1 : 0);
    d.w.push_back(1);
    d.id.push_back(sh.first + k);
  }
  return d;
}

// Fits `name` on every rank's rows and predicts 1000 of each rank's rows.
void BM_TreeFitPredict(benchmark::State& state, const std::string& name) {
  Communicator world(MPI_COMM_WORLD);
  const Rows d = my_rows(world);
  const Mat<double> query = d.X.topRows(std::min<Index>(d.X.rows(), 1000));
  const LearnerOptions opt;  // forest 100 trees of depth 12, gbdt 100 rounds of depth 3
  const LearnerContext ctx{world, 2, 11};
  for (auto _ : state) {
    world.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<Learner> learner = make_learner(name, opt);
    learner->fit(ctx, TrainRows{d.X, d.y, d.w, d.id});
    const Mat<double> p = learner->predict(ctx, query);
    benchmark::DoNotOptimize(p.data());
    world.barrier();
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  state.SetItemsProcessed(state.iterations() * kRows);  // training rows
  state.counters["ranks"] = world.size();
}

BENCHMARK_CAPTURE(BM_TreeFitPredict, forest, std::string("forest"))
    ->Iterations(1)->UseManualTime()->MeasureProcessCPUTime()->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_TreeFitPredict, gbdt, std::string("gbdt"))
    ->Iterations(1)->UseManualTime()->MeasureProcessCPUTime()->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_TreeFitPredict, tree, std::string("tree"))
    ->Iterations(1)->UseManualTime()->MeasureProcessCPUTime()->Unit(benchmark::kSecond);

}  // namespace
}  // namespace moesim
