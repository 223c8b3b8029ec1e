#pragma once
// The per-element (per-row) work of the GPU kernels, one function each. Each follows the
// arithmetic of the CPU code it replaces, in the same order; tests/unit/test_device_elementwise
// drives them from host loops against that code.
#include <cmath>
#include <cstdint>

#include "device/hd.hpp"

namespace moesim::device {

MOESIM_HD inline float hd_exp(float x) { return expf(x); }
MOESIM_HD inline double hd_exp(double x) { return exp(x); }
MOESIM_HD inline float hd_tanh(float x) { return tanhf(x); }
MOESIM_HD inline double hd_tanh(double x) { return tanh(x); }
MOESIM_HD inline float hd_sqrt(float x) { return sqrtf(x); }
MOESIM_HD inline double hd_sqrt(double x) { return sqrt(x); }
MOESIM_HD inline float hd_log(float x) { return logf(x); }
MOESIM_HD inline double hd_log(double x) { return log(x); }

// Bias + GELU (tanh form) of one pre-activation, as nn/gelu_rows: pre += bias, th kept for
// the backward, h the activation.
template <class T>
MOESIM_HD inline void bias_gelu(T& pre, T bias, T& th, T& h) {
  const T k = T(0.7978845608028654), c = T(0.044715);
  const T x = pre + bias;
  th = hd_tanh(k * (x + c * ((x * x) * x)));
  pre = x;
  h = (T(0.5) * x) * (T(1) + th);
}

// GELU's derivative from the pre-activation and its tanh (nn/gelu_rows keeps this slope).
template <class T>
MOESIM_HD inline T gelu_slope(T pre, T th) {
  const T k = T(0.7978845608028654), c3 = T(3 * 0.044715);
  return T(0.5) * (T(1) + th) + (((T(0.5) * pre) * (T(1) - th * th)) * k) * (T(1) + c3 * (pre * pre));
}

// GELU's derivative from the kept pre-activation and tanh, times the incoming gradient.
template <class T>
MOESIM_HD inline T gelu_backward(T dpre, T pre, T th) {
  return dpre * gelu_slope(pre, th);
}

// One Adam step's constants, worked out once per step on the host as nn/adam does.
template <class T>
struct AdamStep {
  T b1, b2, scale, step, inv_bc2, eps, decay;
};

// nn/adam's constants of step t (1-based) at learning rate lr, gradients scaled by grad_scale.
template <class T>
inline AdamStep<T> adam_step_constants(double lr, double beta1, double beta2, double eps, double weight_decay, long t,
                                       double grad_scale) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  return AdamStep<T>{static_cast<T>(beta1), static_cast<T>(beta2), static_cast<T>(grad_scale),
                     static_cast<T>(lr / bc1),  static_cast<T>(1.0 / bc2), static_cast<T>(eps),
                     static_cast<T>(1.0 - lr * weight_decay)};
}

// One parameter element's Adam update, in nn/adam's order.
template <class T>
MOESIM_HD inline void adam_update(T& w, T g, T& m, T& v, const AdamStep<T>& s) {
  const T gi = g * s.scale;
  m = s.b1 * m + (T(1) - s.b1) * gi;
  v = s.b2 * v + (T(1) - s.b2) * gi * gi;
  w = s.decay * w - s.step * m / (hd_sqrt(v * s.inv_bc2) + s.eps);
}

// Softmax of one token's E logits into probs, as the router: exponentials of the logits less
// their maximum, summed in expert order, each divided by the sum. Returns log-sum-exp.
template <class T>
MOESIM_HD inline double softmax_row(const T* logits, int E, T* probs) {
  T mx = logits[0];
  for (int e = 1; e < E; ++e) mx = logits[e] > mx ? logits[e] : mx;
  T z = 0;
  for (int e = 0; e < E; ++e) z += (probs[e] = hd_exp(logits[e] - mx));
  for (int e = 0; e < E; ++e) probs[e] /= z;
  return static_cast<double>(mx) + hd_log(static_cast<double>(z));
}

// The K largest of one token's E scores, best first, ties to the lower expert (the gates'
// select_top_k): an expert enters only when strictly better than a kept one.
template <class T>
MOESIM_HD inline void top_k_row(const T* score, int E, int K, int* chosen) {
  int kept = 0;
  for (int e = 0; e < E; ++e) {
    const T v = score[e];
    if (kept == K && !(v > score[chosen[K - 1]])) continue;
    int at = kept < K ? kept : K - 1;
    while (at > 0 && v > score[chosen[at - 1]]) {
      chosen[at] = chosen[at - 1];
      --at;
    }
    chosen[at] = e;
    kept = kept + 1 < K ? kept + 1 : K;
  }
}

// Capacity by position (GShard): whether assignment (choice j, token t) of expert e is kept,
// given how many assignments of e come before it in the (choice, token) order.
MOESIM_HD inline bool kept_by_position(std::int64_t position, std::int64_t capacity) {
  return capacity <= 0 || position < capacity;
}

// Expert e's kept flags over n tokens' K choices (token-major `chosen`), positions counted in
// the (choice, token) order from `offset` (e's assignments on lower ranks): one GPU thread per
// expert, so positions are the CPU's whatever the thread schedule.
MOESIM_HD inline void capacity_of_expert(const int* chosen, std::int64_t n, int K, int e, std::int64_t offset,
                                         std::int64_t capacity, unsigned char* kept) {
  std::int64_t position = offset;
  for (int j = 0; j < K; ++j)
    for (std::int64_t t = 0; t < n; ++t)
      if (chosen[t * K + j] == e) kept[t * K + j] = kept_by_position(position++, capacity) ? 1 : 0;
}

// Row `r` of a row-major block: copy its `width` values (permute and unpermute are this over
// an index list).
template <class T>
MOESIM_HD inline void copy_row(const T* src, std::int64_t src_row, T* dst, std::int64_t dst_row, std::int64_t width,
                               std::int64_t col) {
  dst[dst_row * width + col] = src[src_row * width + col];
}

}  // namespace moesim::device
