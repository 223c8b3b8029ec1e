#include "core/heap.hpp"

#include <cstdlib>  // defines __GLIBC__ where it applies
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/error.hpp"
#include "core/huge_pages.hpp"

namespace moesim {

void keep_freed_memory() {
#if defined(__GLIBC__)
  MOESIM_REQUIRE(mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1, "mallopt(M_MMAP_THRESHOLD) refused");
  MOESIM_REQUIRE(mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1, "mallopt(M_TRIM_THRESHOLD) refused");
  // Under the mmap threshold, so from the heap; under the trim threshold, so kept there.
  advise_heap_for_huge_pages(std::size_t{48} << 20);
#endif
}

}  // namespace moesim
