#include "core/blas.hpp"

extern "C" {
void openblas_set_num_threads(int num_threads);
char* openblas_get_config(void);
}

namespace moesim {

void set_blas_threads(int n) { openblas_set_num_threads(n); }

std::string blas_description() {
  const char* cfg = openblas_get_config();
  return std::string("OpenBLAS ") + (cfg ? cfg : "(no config string)");
}

}  // namespace moesim
