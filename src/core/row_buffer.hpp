#pragma once
// Storage for a matrix of rows whose count changes from step to step (an exchange's rows
// follow the routing). An Eigen matrix frees and allocates on every change of size; this one
// only grows, so MPI sends from and receives into the same memory every step (with fresh
// buffers an exchange's transfer took up to twice a raw MPI_Alltoallv of the same counts).
// Large ones sit on huge pages (core/huge_pages.hpp).
#include <algorithm>
#include <cstring>
#include <utility>

#include "core/huge_pages.hpp"
#include "core/tensor.hpp"

namespace moesim {

template <class T>
class RowBuffer {
 public:
  RowBuffer() = default;
  // A moved-from buffer is empty (and grows again on its next view).
  RowBuffer(RowBuffer&& o) noexcept : block_(std::move(o.block_)), capacity_(std::exchange(o.capacity_, 0)) {}
  RowBuffer& operator=(RowBuffer&& o) noexcept {
    block_ = std::move(o.block_);
    capacity_ = std::exchange(o.capacity_, 0);
    return *this;
  }
  // A copy holds the same values in memory of its own.
  RowBuffer(const RowBuffer& o) { copy_from(o); }
  RowBuffer& operator=(const RowBuffer& o) {
    if (this != &o) copy_from(o);
    return *this;
  }

  // rows x cols over the buffer's memory, valid until the next view() with more values.
  // Values beyond what the caller writes are whatever was there before (zero at first).
  MatMap<T> view(Index rows, Index cols) {
    const auto need = static_cast<std::size_t>(rows * cols);
    if (need > capacity_) grow(need);
    return MatMap<T>(data(), rows, cols);
  }

 private:
  T* data() const { return static_cast<T*>(block_.data()); }
  // At least doubling, as std::vector grows: a load that keeps creeping up (dropless routing)
  // reaches few new sizes.
  void grow(std::size_t need) {
    need = std::max(need, 2 * capacity_);
    PageBlock bigger(need * sizeof(T));
    if (capacity_ > 0) std::memcpy(bigger.data(), block_.data(), capacity_ * sizeof(T));
    block_ = std::move(bigger);
    capacity_ = need;
  }
  // Into the memory it has where that is large enough, as std::vector's assignment.
  void copy_from(const RowBuffer& o) {
    if (o.capacity_ > capacity_) {
      block_ = PageBlock(o.capacity_ * sizeof(T));
      capacity_ = o.capacity_;
    }
    if (o.capacity_ > 0) std::memcpy(block_.data(), o.block_.data(), o.capacity_ * sizeof(T));
  }

  PageBlock block_;
  std::size_t capacity_ = 0;  // values
};

}  // namespace moesim
