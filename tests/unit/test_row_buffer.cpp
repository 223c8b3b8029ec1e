// RowBuffer: the exchanges' rows stay in the same memory from step to step, whatever the
// row count of each step (the property the dispatch algorithms' kept buffers rely on).
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace moesim
