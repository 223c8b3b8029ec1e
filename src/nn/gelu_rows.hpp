#pragma once
// Bias + GELU and its backward over blocks of rows in one pass each, around the expert GEMMs.
// fp32 goes through packets of four or eight values (GeluPath below), a row's tail padded into
// one more packet, so every value takes the same arithmetic wherever it sits in memory: the
// result of a row never depends on the block or the alignment (only the CPU's instruction set
// picks the path, as OpenBLAS's picks its GEMM kernels).
#include "core/tensor.hpp"

namespace moesim {

// In place: pre becomes h = GELU(pre + bias) (every row; tanh form), and slope = GELU'(pre +
// bias), all that backward needs of the activation.
template <class T>
void bias_gelu_forward(MatMap<T> pre, const T* bias, MatMap<T> slope);

// dpre *= slope; bias_grad += the column sums of the new dpre, row after row. bias and
// bias_grad hold one value per column.
template <class T>
void gelu_backward(MatMap<T> dpre, const ConstMatMap<T>& slope, T* bias_grad);

// How fp32 rows are computed: four values at a time (SSE, Eigen's packet tanh), eight (AVX,
// the same operations, so the same bits), or eight with the tanh's polynomials in fused
// multiply-adds (AVX2 + FMA, the row tail padded into one more packet: fewer operations,
// other last bits), or sixteen (AVX-512F: the FMA path's operations, so its bits). The best
// the CPU has is used; tests and benchmarks pick one.
enum class GeluPath { kSse4, kAvx8, kFma8, kFma16 };
bool gelu_path_supported(GeluPath p);
// Returns the path used before.
GeluPath use_gelu_path(GeluPath p);

}  // namespace moesim
