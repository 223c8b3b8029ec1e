#pragma once
// Kernel launchers on device memory (built with CUDA only). Every kernel is a loop over the
// per-element functions of device/elementwise.hpp; launches are checked.
#include <cuda_runtime.h>

#include <cstdint>

#include "device/elementwise.hpp"

namespace moesim::device {

// Row-major rows x cols blocks. pre += bias per row, then th and h (bias_gelu).
void launch_bias_gelu(float* pre, const float* bias, float* th, float* h, std::int64_t rows, std::int64_t cols,
                      cudaStream_t stream);
// dpre = gelu_backward(dpre, pre, th); bias_grad[c] += the new dpre's column c, row after row
// (one thread per column, the CPU's order, so the sums are the CPU's bits).
void launch_gelu_backward(float* dpre, const float* pre, const float* th, float* bias_grad, std::int64_t rows,
                          std::int64_t cols, cudaStream_t stream);
// y[r, c] += b[c].
void launch_add_bias(float* y, const float* b, std::int64_t rows, std::int64_t cols, cudaStream_t stream);
// out[c] = (accumulate ? out[c] : 0) + sum over rows of x[r, c], row after row.
void launch_column_sums(const float* x, std::int64_t rows, std::int64_t cols, float* out, bool accumulate,
                        cudaStream_t stream);
// One Adam step over n elements.
void launch_adam(float* w, const float* g, float* m, float* v, std::int64_t n, const AdamStep<float>& s,
                 cudaStream_t stream);
// Per token (n rows of E logits): probs, log-sum-exp and the K chosen experts by logit (the
// top-k gate's choice).
void launch_softmax_top_k(const float* logits, std::int64_t n, int E, int K, float* probs, double* lse, int* chosen,
                          cudaStream_t stream);
// Capacity by position: kept[t * K + j] for n tokens' K choices, positions counted per expert
// in the (choice, token) order starting from offset[e] (assignments of e on lower ranks).
void launch_capacity(const int* chosen, std::int64_t n, int K, int E, const std::int64_t* offset,
                     std::int64_t capacity, unsigned char* kept, cudaStream_t stream);
// dst row i = src row index[i] (permute into expert blocks and back).
void launch_gather_rows(const float* src, const std::int64_t* index, std::int64_t rows, std::int64_t width,
                        float* dst, cudaStream_t stream);

}  // namespace moesim::device
