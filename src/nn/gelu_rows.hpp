#pragma once
// Bias + GELU and its backward over blocks of rows in one pass each, around the expert GEMMs.
// fp32 goes through Eigen's SSE tanh four values at a time (eight at a time on CPUs with AVX,
// the same operations lane for lane), the tail padded into one more packet, so every value
// takes the same arithmetic wherever it sits in memory: the result of a row never depends on
// the block, the alignment or the CPU it is computed on.
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

// Tests: rows eight values at a time where the CPU has AVX (true) or four at a time (false);
// returns the previous setting.
bool gelu_rows_wide(bool wide);

}  // namespace moesim
