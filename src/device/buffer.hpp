#pragma once
// GPU memory that only grows (core/row_buffer's habit): a step of the same shapes as the
// last allocates nothing. Built with CUDA only.
#include <cstddef>

#include "device/cuda_check.hpp"

namespace moesim::device {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);  // no throw from a destructor; a failed free leaks at exit only
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // At least n elements; the contents are not kept when it grows.
  T* reserve(std::size_t n) {
    if (n > capacity_) {
      if (data_) MOESIM_CUDA_CHECK(cudaFree(data_));
      data_ = nullptr;
      capacity_ = 0;
      MOESIM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), sizeof(T) * n));
      capacity_ = n;
    }
    return data_;
  }
  T* data() const { return data_; }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace moesim::device
