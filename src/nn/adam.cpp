#include "nn/adam.hpp"

#include <cmath>

namespace moesim {

template <class T>
void Adam<T>::step(const ParamList<T>& params, double grad_scale) {
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, static_cast<double>(t_));
  const T b1 = static_cast<T>(cfg_.beta1), b2 = static_cast<T>(cfg_.beta2);
  const T scale = static_cast<T>(grad_scale);
  const T step = static_cast<T>(cfg_.lr / bc1);
  const T inv_bc2 = static_cast<T>(1.0 / bc2);
  const T eps = static_cast<T>(cfg_.eps);
  const T decay = static_cast<T>(1.0 - cfg_.lr * cfg_.weight_decay);
  for (Param<T>* p : params) {
    T* w = p->value.data();
    const T* g = p->grad.data();
    T* m = p->adam_m.data();
    T* v = p->adam_v.data();
    for (Index i = 0; i < p->size(); ++i) {
      const T gi = g[i] * scale;
      m[i] = b1 * m[i] + (T(1) - b1) * gi;
      v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
      w[i] = decay * w[i] - step * m[i] / (std::sqrt(v[i] * inv_bc2) + eps);
    }
  }
}

template class Adam<float>;
template class Adam<double>;

}  // namespace moesim
