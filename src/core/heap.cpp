#include "core/heap.hpp"

#include <cstdlib>  // defines __GLIBC__ where it applies
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/error.hpp"

namespace moesim {

void keep_freed_memory() {
#if defined(__GLIBC__)
  MOESIM_REQUIRE(mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1, "mallopt(M_MMAP_THRESHOLD) refused");
  MOESIM_REQUIRE(mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1, "mallopt(M_TRIM_THRESHOLD) refused");
#endif
}

}  // namespace moesim
