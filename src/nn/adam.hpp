#pragma once
#include "nn/param.hpp"

namespace moesim {

struct AdamConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled (AdamW)
};

// Adam over the parameters this rank holds. Replicated parameters see identical
// (all-reduced) gradients on every rank, so they stay identical without broadcasts.
template <class T>
class Adam {
 public:
  explicit Adam(AdamConfig cfg) : cfg_(cfg) {}
  void step(const ParamList<T>& params, double grad_scale);
  long steps_taken() const { return t_; }
  void set_steps_taken(long t) { t_ = t; }

 private:
  AdamConfig cfg_;
  long t_ = 0;
};

}  // namespace moesim
