// A counting allocator for the whole test binary: malloc and its family are interposed
// (glibc's own implementations behind them), and while counting is on every call that
// allocates is counted with its size (OpenBLAS's and those inside MPI calls apart, see below).
// Counting must not allocate, so sizes go to a fixed array.
#include "alloc/counting_malloc.hpp"

#include <execinfo.h>
#include <link.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <cstdint>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace moesim::test {
namespace {
std::atomic<bool> g_on{false};
std::atomic<long> g_count{0};
std::atomic<long> g_bytes{0};
constexpr int kKept = 64;
std::size_t g_sizes[kKept];
// MOESIM_ALLOC_TRACE=N: the call stacks of the first N counted allocations go to stderr (to
// find where a failing count comes from; backtrace_symbols_fd does not allocate).
long g_trace = 0;
thread_local bool t_inside = false;
// Allocations that no buffer of ours could keep are counted apart: OpenBLAS's (its small-matrix
// kernels allocate inside sgemm: malloc called from its code), and those made inside an MPI
// call (the call stack passes through libmpi, every MPI function's entry): Open MPI's
// collectives allocate temporaries every call (MPI_Allreduce's recursive doubling), and its
// point-to-point layer buffers a message that arrives early or grows a free list, as timing
// decides.
struct Library {
  const char* name;  // a part of its file name
  std::uintptr_t lo = 0, hi = 0;  // its code
  std::atomic<long> calls{0};
  bool holds(const void* at) const {
    const auto a = reinterpret_cast<std::uintptr_t>(at);
    return a >= lo && a < hi;
  }
};
Library g_blas{"openblas"}, g_mpi{"libmpi."};

int find_library(dl_phdr_info* info, std::size_t, void* data) {
  Library& lib = *static_cast<Library*>(data);
  if (!info->dlpi_name || !std::strstr(info->dlpi_name, lib.name)) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
    lib.lo = info->dlpi_addr + ph.p_vaddr;
    lib.hi = lib.lo + ph.p_memsz;
  }
  return 1;
}

bool inside_mpi() {
  t_inside = true;
  void* frames[64];
  const int k = backtrace(frames, 64);
  t_inside = false;
  for (int i = 0; i < k; ++i)
    if (g_mpi.holds(frames[i])) return true;
  return false;
}

void note(std::size_t n, void* caller) {
  if (!g_on.load(std::memory_order_relaxed) || t_inside) return;
  if (g_blas.holds(caller)) {
    g_blas.calls.fetch_add(1);
    return;
  }
  if (inside_mpi()) {
    g_mpi.calls.fetch_add(1);
    return;
  }
  const long i = g_count.fetch_add(1);
  g_bytes.fetch_add(static_cast<long>(n));
  if (i < kKept) g_sizes[i] = n;
  if (i < g_trace) {
    t_inside = true;
    void* frames[24];
    const int k = backtrace(frames, 24);
    const char line[] = "---- counted allocation\n";
    [[maybe_unused]] auto w = write(2, line, sizeof line - 1);
    backtrace_symbols_fd(frames, k, 2);
    t_inside = false;
  }
}
}  // namespace

void start_counting() {
  static const bool primed = [] {
    if (const char* v = std::getenv("MOESIM_ALLOC_TRACE")) g_trace = std::atol(v);
    void* frames[2];
    backtrace(frames, 2);  // its first call loads libgcc, which allocates
    dl_iterate_phdr(find_library, &g_blas);
    dl_iterate_phdr(find_library, &g_mpi);
    return true;
  }();
  (void)primed;
  g_count = 0;
  g_bytes = 0;
  g_blas.calls = 0;
  g_mpi.calls = 0;
  g_on = true;
}
AllocCount stop_counting() {
  g_on = false;
  AllocCount c{g_count.load(), g_bytes.load(), g_blas.calls.load(), g_mpi.calls.load(), {}};
  for (long i = 0; i < std::min<long>(c.calls, kKept); ++i) c.first_sizes.push_back(g_sizes[i]);
  return c;
}
}  // namespace moesim::test

extern "C" {
void* malloc(std::size_t n) {
  moesim::test::note(n, __builtin_return_address(0));
  return __libc_malloc(n);
}
void* calloc(std::size_t k, std::size_t n) {
  moesim::test::note(k * n, __builtin_return_address(0));
  return __libc_calloc(k, n);
}
void* realloc(void* p, std::size_t n) {
  moesim::test::note(n, __builtin_return_address(0));
  return __libc_realloc(p, n);
}
void free(void* p) { __libc_free(p); }
void* memalign(std::size_t a, std::size_t n) {
  moesim::test::note(n, __builtin_return_address(0));
  return __libc_memalign(a, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) {
  moesim::test::note(n, __builtin_return_address(0));
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) {
  moesim::test::note(n, __builtin_return_address(0));
  void* p = __libc_memalign(a, n);
  if (!p) return 12;  // ENOMEM
  *out = p;
  return 0;
}
}
