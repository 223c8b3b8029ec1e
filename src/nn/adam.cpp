#include "nn/adam.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.hpp"

namespace moesim {

LrDecay parse_lr_decay(const std::string& name) {
  if (name == "constant") return LrDecay::kConstant;
  if (name == "linear") return LrDecay::kLinear;
  if (name == "cosine") return LrDecay::kCosine;
  throw ConfigError("--lr-decay must be constant, linear or cosine (got '" + name + "')");
}

double scheduled_lr(double lr, const LrSchedule& s, std::int64_t step, std::int64_t steps) {
  const std::int64_t W = s.warmup_steps;
  if (step <= W) return lr * static_cast<double>(step) / static_cast<double>(W);
  if (s.decay == LrDecay::kConstant || steps <= W) return lr;
  const double u = std::min(1.0, static_cast<double>(step - W) / static_cast<double>(steps - W));
  if (s.decay == LrDecay::kLinear) return s.min_lr + (lr - s.min_lr) * (1.0 - u);
  return s.min_lr + (lr - s.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * u));
}

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
