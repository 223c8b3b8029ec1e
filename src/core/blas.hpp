#pragma once
#include <string>

namespace moesim {

// OpenBLAS threads per rank; one is right when every core already runs a rank.
void set_blas_threads(int n);
std::string blas_description();

}  // namespace moesim
