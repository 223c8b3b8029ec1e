#pragma once
// The expert FFN, y = GELU(x W1 + b1) W2 + b2, on this rank's GPU in fp32 (cuBLAS GEMMs, the
// bias, GELU and their backward as kernels), with nn::Ffn's row-major layout (W1: D x F,
// W2: F x D). The parameters stay the host's: each forward uploads them and each backward
// hands back gradients, so gradient sums, the optimizer, checkpoints and run files are the
// CPU path's. Without CUDA the constructor throws.
#include <cstdint>
#include <memory>

namespace moesim::device {

struct FfnParams {
  const float *w1, *b1, *w2, *b2;
};

struct FfnGrads {
  float *w1, *b1, *w2, *b2;
};

class FfnEngine {
 public:
  FfnEngine(std::int64_t d_model, std::int64_t d_ff);
  ~FfnEngine();
  FfnEngine(const FfnEngine&) = delete;
  FfnEngine& operator=(const FfnEngine&) = delete;

  // n rows of x (host) -> y (host); the activations stay on the GPU for backward.
  void forward(const float* x, std::int64_t n, const FfnParams& p, float* y);
  // Rows [b, b + r) of the last forward: dy of those rows (host) -> their dx (host), and the
  // block's parameter gradients written into (accumulate false) or added to (true) `g`.
  void backward_block(const float* dy, std::int64_t b, std::int64_t r, float* dx, const FfnGrads& g,
                      bool accumulate);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moesim::device
