// Shared main of the Google Benchmark executables: MPI up (the layers need a
// communicator) and one BLAS thread, so ratios compare single-core kernels. Under
// mpirun every rank runs the same benchmarks (the collective ones need them all) and
// rank 0 alone prints.
#include <benchmark/benchmark.h>

#include <vector>

#include "comm/communicator.hpp"
#include "core/blas.hpp"
#include "core/heap.hpp"

namespace {

class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  moesim::keep_freed_memory();  // as the moesim binary does
  moesim::MpiEnvironment env(&argc, &argv);
  moesim::set_blas_threads(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  int rank = 0;
  MOESIM_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  if (rank == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    SilentReporter silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  return 0;
}
