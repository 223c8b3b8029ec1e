#pragma once
#include <cstddef>
#include <vector>

namespace moesim::test {

struct AllocCount {
  long calls;
  long bytes;
  long blas_calls;  // made by OpenBLAS inside sgemm (its small-matrix kernels), not counted above
  long mpi_calls;   // made inside MPI calls (Open MPI's temporaries and message buffers), not counted above
  std::vector<std::size_t> first_sizes;  // of the first 64 calls
};

// Counts every malloc, calloc, realloc and aligned allocation (C++'s new goes through malloc)
// between the two calls, on this process's every thread.
void start_counting();
AllocCount stop_counting();

}  // namespace moesim::test
