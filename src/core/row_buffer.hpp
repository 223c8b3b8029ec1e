#pragma once
// Storage for a matrix of rows whose count changes from step to step (an exchange's rows
// follow the routing). An Eigen matrix frees and allocates on every change of size; this one
// only grows, so MPI sends from and receives into the same memory every step (with fresh
// buffers an exchange's transfer took up to twice a raw MPI_Alltoallv of the same counts).
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

template <class T>
class RowBuffer {
 public:
  // rows x cols over the buffer's memory, valid until the next view() with more values.
  // Values beyond what the caller writes are whatever was there before.
  MatMap<T> view(Index rows, Index cols) {
    const auto need = static_cast<std::size_t>(rows * cols);
    if (need > data_.size()) data_.resize(need);
    return MatMap<T>(data_.data(), rows, cols);
  }

 private:
  std::vector<T> data_;
};

}  // namespace moesim
