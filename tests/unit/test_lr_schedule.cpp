// The learning-rate schedule (nn/adam.hpp): warmup endpoints, the decays' midpoints and
// ends, the default's exact lr, and Adam taking the scheduled rate.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "core/error.hpp"
#include "nn/adam.hpp"
#include "support/random.hpp"

namespace moesim {
namespace {

constexpr double kLr = 3e-3, kMin = 1e-4;

LrSchedule schedule(std::int64_t warmup, LrDecay decay, double min_lr = kMin) {
  LrSchedule s;
  s.warmup_steps = warmup;
  s.decay = decay;
  s.min_lr = min_lr;
  return s;
}

TEST(LrSchedule, DefaultIsTheLearningRateBitForBit) {
  const LrSchedule s;  // no warmup, constant
  for (std::int64_t step : {1, 2, 50, 200}) EXPECT_EQ(scheduled_lr(kLr, s, step, 200), kLr) << step;
}

TEST(LrSchedule, WarmupRisesLinearlyFromLrOverWToLr) {
  for (LrDecay d : {LrDecay::kConstant, LrDecay::kLinear, LrDecay::kCosine}) {
    const LrSchedule s = schedule(10, d);
    EXPECT_DOUBLE_EQ(scheduled_lr(kLr, s, 1, 100), kLr / 10);
    EXPECT_DOUBLE_EQ(scheduled_lr(kLr, s, 4, 100), 0.4 * kLr);
    EXPECT_DOUBLE_EQ(scheduled_lr(kLr, s, 10, 100), kLr);
  }
  EXPECT_EQ(scheduled_lr(kLr, schedule(10, LrDecay::kConstant), 11, 100), kLr);
  EXPECT_EQ(scheduled_lr(kLr, schedule(10, LrDecay::kConstant), 100, 100), kLr);
}

TEST(LrSchedule, CosineHalfwayAndAtTheEnd) {
  const LrSchedule s = schedule(10, LrDecay::kCosine);
  // Decay over steps 10..110: halfway is step 60, a quarter step 35.
  EXPECT_DOUBLE_EQ(scheduled_lr(kLr, s, 60, 110), 0.5 * (kLr + kMin));
  EXPECT_NEAR(scheduled_lr(kLr, s, 35, 110), kMin + (kLr - kMin) * 0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-18);
  EXPECT_EQ(scheduled_lr(kLr, s, 110, 110), kMin);
  // Monotone after the warmup.
  for (std::int64_t step = 11; step <= 110; ++step)
    EXPECT_LT(scheduled_lr(kLr, s, step, 110), scheduled_lr(kLr, s, step - 1, 110)) << step;
}

TEST(LrSchedule, LinearHalfwayAndAtTheEnd) {
  const LrSchedule s = schedule(0, LrDecay::kLinear);
  EXPECT_DOUBLE_EQ(scheduled_lr(kLr, s, 50, 100), 0.5 * (kLr + kMin));
  EXPECT_DOUBLE_EQ(scheduled_lr(kLr, s, 1, 100), kMin + (kLr - kMin) * 0.99);
  EXPECT_EQ(scheduled_lr(kLr, s, 100, 100), kMin);
  EXPECT_EQ(scheduled_lr(kLr, schedule(0, LrDecay::kCosine, 0.0), 100, 100), 0.0);
}

TEST(LrSchedule, AllWarmupWhenTheRunEndsBeforeIt) {
  const LrSchedule s = schedule(20, LrDecay::kCosine);
  EXPECT_DOUBLE_EQ(scheduled_lr(kLr, s, 10, 10), 0.5 * kLr);
  EXPECT_DOUBLE_EQ(scheduled_lr(kLr, schedule(10, LrDecay::kCosine), 10, 10), kLr);
}

TEST(LrSchedule, DecayNames) {
  EXPECT_EQ(parse_lr_decay("constant"), LrDecay::kConstant);
  EXPECT_EQ(parse_lr_decay("linear"), LrDecay::kLinear);
  EXPECT_EQ(parse_lr_decay("cosine"), LrDecay::kCosine);
  try {
    parse_lr_decay("exp");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "--lr-decay must be constant, linear or cosine (got 'exp')");
  }
}

// Adam with set_lr(a) takes the same step as Adam built with lr = a; a smaller rate a
// smaller step.
TEST(LrSchedule, AdamTakesTheScheduledRate) {
  auto one_step = [](double built_lr, double set_lr) {
    Param<double> p;
    p.name = "p";
    p.resize(3, 2);
    p.value = test::random_matrix(3, 2, 5);
    p.grad = test::random_matrix(3, 2, 6);
    AdamConfig c;
    c.lr = built_lr;
    Adam<double> adam(c);
    if (set_lr > 0) adam.set_lr(set_lr);
    adam.step({&p}, 1.0);
    return Mat<double>(p.value - test::random_matrix(3, 2, 5));
  };
  EXPECT_EQ(one_step(1e-2, 0), one_step(5e-3, 1e-2));
  EXPECT_LT(one_step(1e-2, 1e-3).norm(), one_step(1e-2, 0).norm());
}

}  // namespace
}  // namespace moesim
