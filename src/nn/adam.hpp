#pragma once
#include <cstdint>
#include <string>

#include "nn/param.hpp"

namespace moesim {

struct AdamConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled (AdamW)
};

// The learning rate over the run: linear warmup, then constant, linear or cosine decay.
enum class LrDecay { kConstant, kLinear, kCosine };
LrDecay parse_lr_decay(const std::string& name);  // ConfigError on unknown names

struct LrSchedule {
  std::int64_t warmup_steps = 0;  // W
  LrDecay decay = LrDecay::kConstant;
  double min_lr = 0;              // at the last step of a linear or cosine decay
};

// The learning rate of step s (1-based) of a run of S steps with peak `lr`, a pure function
// of the step, so a resumed run continues the schedule exactly:
//   s <= W:  lr * s / W                      (from lr / W at step 1 to lr at step W)
//   s >  W:  u = (s - W) / (S - W) in (0, 1];  constant: lr;  linear: min_lr + (lr - min_lr) (1 - u);
//            cosine: min_lr + (lr - min_lr) (1 + cos(pi u)) / 2      (min_lr at step S)
// With W = 0 and constant decay it is `lr` itself, bit for bit.
double scheduled_lr(double lr, const LrSchedule& schedule, std::int64_t step, std::int64_t steps);

// Adam over the parameters this rank holds. Replicated parameters see identical
// (all-reduced) gradients on every rank, so they stay identical without broadcasts.
template <class T>
class Adam {
 public:
  explicit Adam(AdamConfig cfg) : cfg_(cfg) {}
  void step(const ParamList<T>& params, double grad_scale);
  long steps_taken() const { return t_; }
  void set_steps_taken(long t) { t_ = t; }
  // The learning rate of the next steps (the schedule's value; weight decay scales with it).
  void set_lr(double lr) { cfg_.lr = lr; }
  double lr() const { return cfg_.lr; }

 private:
  AdamConfig cfg_;
  long t_ = 0;
};

}  // namespace moesim
