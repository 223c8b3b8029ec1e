#pragma once
// Bias + GELU and its backward over blocks of rows in one pass each, around the expert GEMMs.
// fp32 goes through Eigen's SSE tanh four values at a time, the tail padded into one more
// packet, so every value takes the same instructions wherever it sits in memory: the result
// of a row never depends on the block or the alignment it is computed in.
#include "core/tensor.hpp"

namespace moesim {

// pre += bias (every row); th = tanh(sqrt(2/pi) (pre + 0.044715 pre^3)); h = pre (1 + th) / 2.
template <class T>
void bias_gelu_forward(MatMap<T> pre, const T* bias, MatMap<T> th, MatMap<T> h);

// dpre *= GELU'(pre) (from the kept th); bias_grad += the column sums of the new dpre, row
// after row. bias and bias_grad hold one value per column.
template <class T>
void gelu_backward(MatMap<T> dpre, const ConstMatMap<T>& pre, const ConstMatMap<T>& th, T* bias_grad);

}  // namespace moesim
