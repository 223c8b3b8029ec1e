// A counting allocator for the whole test binary: malloc and its family are interposed
// (glibc's own implementations behind them), and while counting is on every call that
// allocates is counted with its size. Counting must not allocate, so sizes go to a fixed array.
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
// OpenBLAS's own small-matrix kernels allocate inside sgemm: counted apart (not our buffers).
std::uintptr_t g_blas_lo = 0, g_blas_hi = 0;
std::atomic<long> g_blas{0};

int find_blas(dl_phdr_info* info, std::size_t, void*) {
  if (!info->dlpi_name || !std::strstr(info->dlpi_name, "openblas")) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
    g_blas_lo = info->dlpi_addr + ph.p_vaddr;
    g_blas_hi = g_blas_lo + ph.p_memsz;
  }
  return 1;
}

void note(std::size_t n, void* caller) {
  if (!g_on.load(std::memory_order_relaxed) || t_inside) return;
  const auto at = reinterpret_cast<std::uintptr_t>(caller);
  if (at >= g_blas_lo && at < g_blas_hi) {
    g_blas.fetch_add(1);
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
    dl_iterate_phdr(find_blas, nullptr);
    return true;
  }();
  (void)primed;
  g_count = 0;
  g_bytes = 0;
  g_blas = 0;
  g_on = true;
}
AllocCount stop_counting() {
  g_on = false;
  AllocCount c{g_count.load(), g_bytes.load(), g_blas.load(), {}};
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
