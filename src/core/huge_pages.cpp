#include "core/huge_pages.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/error.hpp"

namespace moesim {

namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

std::string errno_text() { return std::strerror(errno); }

// Advises the whole 2 MiB pages inside [p, p + bytes).
void advise_huge(void* p, std::size_t bytes) {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t lo = (at + kHugePage - 1) & ~(kHugePage - 1), hi = (at + bytes) & ~(kHugePage - 1);
  if (hi <= lo) return;
  // EINVAL: a kernel built without transparent huge pages; the pages are then small ones.
  MOESIM_REQUIRE(madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) == 0 || errno == EINVAL,
                 "madvise(MADV_HUGEPAGE): " << errno_text());
}

// `bytes` (a multiple of kHugePage) at a 2 MiB boundary: map one page more, unmap the ends.
void* map_aligned(std::size_t bytes) {
  void* raw = mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  MOESIM_REQUIRE(raw != MAP_FAILED, "mmap of " << bytes + kHugePage << " bytes: " << errno_text());
  const auto start = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (start + kHugePage - 1) & ~(kHugePage - 1);
  const std::size_t head = aligned - start, tail = kHugePage - head;
  if (head > 0) MOESIM_REQUIRE(munmap(raw, head) == 0, "munmap: " << errno_text());
  if (tail > 0) MOESIM_REQUIRE(munmap(reinterpret_cast<void*>(aligned + bytes), tail) == 0, "munmap: " << errno_text());
  void* p = reinterpret_cast<void*>(aligned);
  advise_huge(p, bytes);
  return p;
}

}  // namespace

void advise_heap_for_huge_pages(std::size_t bytes) {
#if defined(__GLIBC__)
  if (!PageBlock::kMapsLargeBlocks) return;
  void* p = std::malloc(bytes);
  MOESIM_REQUIRE(p != nullptr, "malloc of " << bytes << " bytes failed");
  advise_huge(p, bytes);
  std::free(p);  // back into the heap's top, which the trim threshold keeps
#else
  (void)bytes;
#endif
}

PageBlock::PageBlock(std::size_t bytes) {
  if (bytes == 0) return;
  if (kMapsLargeBlocks && bytes >= kHugePageBlock) {
    const std::size_t whole = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    data_ = map_aligned(whole);  // anonymous: zeroed
    mapped_bytes_ = whole;
    return;
  }
  data_ = std::calloc(bytes, 1);
  MOESIM_REQUIRE(data_ != nullptr, "calloc of " << bytes << " bytes failed");
}

PageBlock::~PageBlock() { release(); }

PageBlock::PageBlock(PageBlock&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), mapped_bytes_(std::exchange(o.mapped_bytes_, 0)) {}

PageBlock& PageBlock::operator=(PageBlock&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    mapped_bytes_ = std::exchange(o.mapped_bytes_, 0);
  }
  return *this;
}

void PageBlock::release() noexcept {
  if (data_ == nullptr) return;
  if (mapped_bytes_ > 0) munmap(data_, mapped_bytes_);  // fails only for a range never held
  else std::free(data_);
  data_ = nullptr;
  mapped_bytes_ = 0;
}

}  // namespace moesim
