#include "device/cuda_check.hpp"
#include "device/kernels.hpp"

namespace moesim::device {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(std::int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// A kernel launch returns nothing: ask for its launch error at once, naming the kernel.
void check_launch(const char* kernel) {
  const cudaError_t e = cudaPeekAtLastError();
  if (e != cudaSuccess)
    throw_runtime("CUDA kernel launch failed", kernel, __FILE__, __LINE__,
                  cudaGetErrorName(e) + std::string(": ") + cudaGetErrorString(e));
}

__global__ void bias_gelu_kernel(float* pre, const float* bias, float* th, float* h, std::int64_t rows,
                                 std::int64_t cols) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  bias_gelu(pre[i], bias[i % cols], th[i], h[i]);
}

__global__ void gelu_backward_kernel(float* dpre, const float* pre, const float* th, std::int64_t n) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) dpre[i] = gelu_backward(dpre[i], pre[i], th[i]);
}

__global__ void column_sums_kernel(const float* x, std::int64_t rows, std::int64_t cols, float* out, bool accumulate) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  float s = accumulate ? out[c] : 0.0f;
  for (std::int64_t r = 0; r < rows; ++r) s += x[r * cols + c];
  out[c] = s;
}

__global__ void add_bias_kernel(float* y, const float* b, std::int64_t rows, std::int64_t cols) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < rows * cols) y[i] += b[i % cols];
}

__global__ void adam_kernel(float* w, const float* g, float* m, float* v, std::int64_t n, AdamStep<float> s) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) adam_update(w[i], g[i], m[i], v[i], s);
}

__global__ void softmax_top_k_kernel(const float* logits, std::int64_t n, int E, int K, float* probs, double* lse,
                                     int* chosen) {
  const std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (t >= n) return;
  lse[t] = softmax_row(logits + t * E, E, probs + t * E);
  top_k_row(logits + t * E, E, K, chosen + t * K);
}

__global__ void capacity_kernel(const int* chosen, std::int64_t n, int K, int E, const std::int64_t* offset,
                                std::int64_t capacity, unsigned char* kept) {
  const int e = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (e < E) capacity_of_expert(chosen, n, K, e, offset[e], capacity, kept);
}

__global__ void gather_rows_kernel(const float* src, const std::int64_t* index, std::int64_t rows,
                                   std::int64_t width, float* dst) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * width) return;
  copy_row(src, index[i / width], dst, i / width, width, i % width);
}

}  // namespace

void launch_bias_gelu(float* pre, const float* bias, float* th, float* h, std::int64_t rows, std::int64_t cols,
                      cudaStream_t stream) {
  if (rows * cols == 0) return;
  bias_gelu_kernel<<<blocks_for(rows * cols), kThreads, 0, stream>>>(pre, bias, th, h, rows, cols);
  check_launch("bias_gelu");
}

void launch_gelu_backward(float* dpre, const float* pre, const float* th, float* bias_grad, std::int64_t rows,
                          std::int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return;
  gelu_backward_kernel<<<blocks_for(rows * cols), kThreads, 0, stream>>>(dpre, pre, th, rows * cols);
  check_launch("gelu_backward");
  launch_column_sums(dpre, rows, cols, bias_grad, true, stream);
}

void launch_add_bias(float* y, const float* b, std::int64_t rows, std::int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return;
  add_bias_kernel<<<blocks_for(rows * cols), kThreads, 0, stream>>>(y, b, rows, cols);
  check_launch("add_bias");
}

void launch_column_sums(const float* x, std::int64_t rows, std::int64_t cols, float* out, bool accumulate,
                        cudaStream_t stream) {
  if (cols == 0) return;
  column_sums_kernel<<<blocks_for(cols), kThreads, 0, stream>>>(x, rows, cols, out, accumulate);
  check_launch("column_sums");
}

void launch_adam(float* w, const float* g, float* m, float* v, std::int64_t n, const AdamStep<float>& s,
                 cudaStream_t stream) {
  if (n == 0) return;
  adam_kernel<<<blocks_for(n), kThreads, 0, stream>>>(w, g, m, v, n, s);
  check_launch("adam");
}

void launch_softmax_top_k(const float* logits, std::int64_t n, int E, int K, float* probs, double* lse, int* chosen,
                          cudaStream_t stream) {
  if (n == 0) return;
  softmax_top_k_kernel<<<blocks_for(n), kThreads, 0, stream>>>(logits, n, E, K, probs, lse, chosen);
  check_launch("softmax_top_k");
}

void launch_capacity(const int* chosen, std::int64_t n, int K, int E, const std::int64_t* offset,
                     std::int64_t capacity, unsigned char* kept, cudaStream_t stream) {
  if (n == 0) return;
  capacity_kernel<<<blocks_for(E), kThreads, 0, stream>>>(chosen, n, K, E, offset, capacity, kept);
  check_launch("capacity");
}

void launch_gather_rows(const float* src, const std::int64_t* index, std::int64_t rows, std::int64_t width,
                        float* dst, cudaStream_t stream) {
  if (rows * width == 0) return;
  gather_rows_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(src, index, rows, width, dst);
  check_launch("gather_rows");
}

}  // namespace moesim::device
