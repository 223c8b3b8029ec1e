#pragma once
// Memory for the large buffers a step reuses (the exchanges' rows, the experts' kept rows) on
// transparent huge pages. A step at D = 64 walks some 30 MB of such rows on a rank: with 4 KiB
// pages that is thousands of TLB entries, and the exchanges' single copy between processes
// pins every page of its buffers each call. On 2 MiB pages the MoE layer's step at
// 64,256,8,2,4096 on 2 ranks took 5% less time (bench_moe_mpi, alternating runs).
#include <cstddef>

namespace moesim {

#if defined(__SANITIZE_ADDRESS__)
#define MOESIM_HEAP_ONLY 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOESIM_HEAP_ONLY 1
#endif
#endif

// At least `bytes` of zeroed memory, owned. From `kHugePageBlock` bytes up it is its own
// anonymous mapping, whole 2 MiB pages, advised for huge pages (the kernel's "madvise" mode
// gives them only to memory that asks; where it gives none the advice is a no-op). Smaller
// blocks, and every block in a build with AddressSanitizer (whose checks need the heap's
// guard zones), come from the heap.
class PageBlock {
 public:
  static constexpr std::size_t kHugePageBlock = std::size_t{1} << 20;
#ifdef MOESIM_HEAP_ONLY
  static constexpr bool kMapsLargeBlocks = false;  // AddressSanitizer: the heap, always
#else
  static constexpr bool kMapsLargeBlocks = true;
#endif
#undef MOESIM_HEAP_ONLY

  PageBlock() = default;
  explicit PageBlock(std::size_t bytes);
  ~PageBlock();
  PageBlock(PageBlock&& o) noexcept;
  PageBlock& operator=(PageBlock&& o) noexcept;
  PageBlock(const PageBlock&) = delete;
  PageBlock& operator=(const PageBlock&) = delete;

  void* data() const { return data_; }
  bool mapped() const { return mapped_bytes_ > 0; }  // its own huge-page mapping (else the heap's)

 private:
  void release() noexcept;
  void* data_ = nullptr;
  std::size_t mapped_bytes_ = 0;  // 0: from the heap
};

// Grows the heap by `bytes` now, advises them for huge pages and gives them back to malloc,
// which carves its next allocations out of them: the step's heap matrices (layer inputs and
// outputs, the router's, the parameters') on huge pages too. glibc's heap only, and only while
// its trim threshold is above `bytes` (keep_freed_memory sets both); nothing elsewhere and
// under AddressSanitizer.
void advise_heap_for_huge_pages(std::size_t bytes);

}  // namespace moesim
