#pragma once
// Bias + GELU and its backward over blocks of rows in one pass each, around the expert GEMMs.
// fp32 goes through Eigen's SSE tanh four values at a time (eight at a time on CPUs with AVX,
// the same operations lane for lane), the tail padded into one more packet, so every value
// takes the same arithmetic wherever it sits in memory: the result of a row never depends on
// the block, the alignment or the CPU it is computed on.
#include "core/tensor.hpp"

namespace moesim {

// pre += bias (every row); th = tanh(sqrt(2/pi) (pre + 0.044715 pre^3)); h = pre (1 + th) / 2.
template <class T>
void bias_gelu_forward(MatMap<T> pre, const T* bias, MatMap<T> th, MatMap<T> h);

// dpre *= GELU'(pre) (from the kept th); bias_grad += the column sums of the new dpre, row
// after row. bias and bias_grad hold one value per column.
template <class T>
void gelu_backward(MatMap<T> dpre, const ConstMatMap<T>& pre, const ConstMatMap<T>& th, T* bias_grad);

// Tests: rows eight values at a time where the CPU has AVX (true) or four at a time (false);
// returns the previous setting.
bool gelu_rows_wide(bool wide);

}  // namespace moesim
