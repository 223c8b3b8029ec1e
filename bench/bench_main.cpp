// Shared main of the Google Benchmark executables: MPI up (the layers need a
// communicator) and one BLAS thread, so ratios compare single-core kernels.
#include <benchmark/benchmark.h>

#include "comm/communicator.hpp"
#include "core/blas.hpp"

int main(int argc, char** argv) {
  moesim::MpiEnvironment env(&argc, &argv);
  moesim::set_blas_threads(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
