// RowBuffer: the exchanges' rows stay in the same memory from step to step, whatever the
// row count of each step (the property the dispatch algorithms' kept buffers rely on); large
// ones on memory advised for huge pages.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "core/heap.hpp"
#include "core/row_buffer.hpp"

namespace moesim {
namespace {

TEST(RowBuffer, KeepsItsMemoryWhenTheRowCountChanges) {
  RowBuffer<float> buf;
  MatMap<float> a = buf.view(100, 8);
  a.setConstant(3.0f);
  const float* first = a.data();
  // Fewer rows, then as many again: no new memory, and the rows kept their values.
  MatMap<float> b = buf.view(10, 8);
  EXPECT_EQ(b.data(), first);
  EXPECT_EQ(b.rows(), 10);
  MatMap<float> c = buf.view(100, 8);
  EXPECT_EQ(c.data(), first);
  EXPECT_EQ(c(99, 7), 3.0f);
  // Another shape of no more values fits too.
  EXPECT_EQ(buf.view(200, 4).data(), first);
  // More values grow it; the view then has the new shape.
  MatMap<float> d = buf.view(1000, 8);
  EXPECT_EQ(d.rows(), 1000);
  EXPECT_EQ(d.cols(), 8);
  d.setZero();
  EXPECT_EQ(d(999, 7), 0.0f);
  EXPECT_EQ(buf.view(0, 8).rows(), 0);
}

TEST(RowBuffer, GrowsKeepingItsValues) {
  RowBuffer<float> buf;
  MatMap<float> a = buf.view(3, 4);
  for (Index i = 0; i < a.size(); ++i) a.data()[i] = static_cast<float>(i);
  MatMap<float> b = buf.view(1 << 20, 4);  // 16 MiB: on pages of its own
  for (Index i = 0; i < 12; ++i) EXPECT_EQ(b.data()[i], static_cast<float>(i));
  EXPECT_EQ(b.data()[12], 0.0f);  // new memory reads as zero
  RowBuffer<float> copy = buf;
  EXPECT_NE(copy.view(1 << 20, 4).data(), b.data());
  EXPECT_EQ(copy.view(1 << 20, 4).data()[11], 11.0f);
  // Moved: the memory goes along; the moved-from buffer starts over.
  RowBuffer<float> moved = std::move(buf);
  EXPECT_EQ(moved.view(1 << 20, 4).data(), b.data());
  MatMap<float> again = buf.view(2, 2);  // NOLINT(bugprone-use-after-move): reuse is allowed
  ASSERT_NE(again.data(), nullptr);
  EXPECT_NE(again.data(), b.data());
}

// The VmFlags line of /proc/self/smaps for the mapping that holds `p` ("" if none).
std::string vm_flags_of(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') inside = lo <= at && at < hi;
    else if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

TEST(PageBlock, LargeBlocksAreHugePageMappingsSmallOnesHeap) {
  const PageBlock small(PageBlock::kHugePageBlock - 1);
  EXPECT_FALSE(small.mapped());
  const std::size_t size = 3 * PageBlock::kHugePageBlock + 5;
  PageBlock large(size);
  if (!PageBlock::kMapsLargeBlocks) {
    EXPECT_FALSE(large.mapped());  // the heap, whose guard zones AddressSanitizer checks
    GTEST_SKIP() << "AddressSanitizer build: every block on the heap";
  }
  ASSERT_TRUE(large.mapped());
  if (!std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")) GTEST_SKIP() << "kernel without huge pages";
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(large.data()) % (std::uintptr_t{2} << 20), 0u);
  const auto* bytes = static_cast<const unsigned char*>(large.data());
  for (std::size_t i = 0; i < size; i += 4093) EXPECT_EQ(bytes[i], 0);
  // The kernel was asked for huge pages ("hg": VM_HUGEPAGE), whether or not it has one free.
  EXPECT_NE(vm_flags_of(large.data()).find(" hg"), std::string::npos) << vm_flags_of(large.data());
  const void* where = large.data();
  PageBlock moved = std::move(large);
  EXPECT_EQ(moved.data(), where);
  EXPECT_EQ(large.data(), nullptr);
}

TEST(PageBlock, TheHeapCarvesItsNextBlocksFromAdvisedMemory) {
#if !defined(__GLIBC__)
  GTEST_SKIP() << "glibc's heap only";
#endif
  if (!PageBlock::kMapsLargeBlocks) GTEST_SKIP() << "AddressSanitizer build: its own heap";
  if (!std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")) GTEST_SKIP() << "kernel without huge pages";
  keep_freed_memory();  // advises the heap's next 48 MiB, as moesim's main does
  void* p = std::malloc(std::size_t{8} << 20);
  ASSERT_NE(p, nullptr);
  const void* inside = static_cast<char*>(p) + (std::size_t{4} << 20);
  EXPECT_NE(vm_flags_of(inside).find(" hg"), std::string::npos) << vm_flags_of(inside);
  std::free(p);
}

}  // namespace
}  // namespace moesim
