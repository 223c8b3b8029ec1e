#pragma once
#include <cmath>

namespace moesim {

// GELU, tanh approximation (PyTorch's approximate="tanh"). Smooth, so finite
// differences check its backward without kinks.
template <class T>
inline T gelu(T x) {
  constexpr T k = T(0.7978845608028654);  // sqrt(2/pi)
  return T(0.5) * x * (T(1) + std::tanh(k * (x + T(0.044715) * x * x * x)));
}

template <class T>
inline T gelu_grad(T x) {
  constexpr T k = T(0.7978845608028654);
  const T th = std::tanh(k * (x + T(0.044715) * x * x * x));
  return T(0.5) * (T(1) + th) +
         T(0.5) * x * (T(1) - th * th) * k * (T(1) + T(3) * T(0.044715) * x * x);
}

}  // namespace moesim
