#pragma once
// Checks for every CUDA runtime, cuBLAS and NCCL call of src/device (built with CUDA only):
// the call's text, file, line and the library's own error string.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "core/error.hpp"

#define MOESIM_CUDA_CHECK(expr)                                                                 \
  do {                                                                                          \
    const cudaError_t moesim_cu_ = (expr);                                                      \
    if (moesim_cu_ != cudaSuccess)                                                              \
      ::moesim::throw_runtime("CUDA call failed", #expr, __FILE__, __LINE__,                     \
                              cudaGetErrorName(moesim_cu_) + std::string(": ") +                \
                                  cudaGetErrorString(moesim_cu_));                              \
  } while (0)

#define MOESIM_CUBLAS_CHECK(expr)                                                               \
  do {                                                                                          \
    const cublasStatus_t moesim_cb_ = (expr);                                                   \
    if (moesim_cb_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::moesim::throw_runtime("cuBLAS call failed", #expr, __FILE__, __LINE__,                   \
                              std::string(cublasGetStatusName(moesim_cb_)) + ": " +             \
                                  cublasGetStatusString(moesim_cb_));                           \
  } while (0)

#define MOESIM_NCCL_CHECK(expr)                                                                 \
  do {                                                                                          \
    const ncclResult_t moesim_nc_ = (expr);                                                     \
    if (moesim_nc_ != ncclSuccess)                                                              \
      ::moesim::throw_runtime("NCCL call failed", #expr, __FILE__, __LINE__,                     \
                              ncclGetErrorString(moesim_nc_));                                  \
  } while (0)
