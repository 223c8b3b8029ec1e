#include "nn/gelu_rows.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace moesim {
namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654, kCubic = 0.044715;

using Eigen::internal::padd;
using Eigen::internal::ploadu;
using Eigen::internal::pmul;
using Eigen::internal::pset1;
using Eigen::internal::psub;
using Eigen::internal::pstoreu;
using P4 = Eigen::internal::Packet4f;

// The packet body of one row position: the same arithmetic, in the same order, as the scalar
// formula of nn/activations.hpp.
inline void forward4(const float* pre, const float* b, float* out_pre, float* out_th, float* out_h) {
  const P4 k = pset1<P4>(float(kSqrt2OverPi)), c = pset1<P4>(float(kCubic));
  const P4 half = pset1<P4>(0.5f), one = pset1<P4>(1.0f);
  const P4 x = padd(ploadu<P4>(pre), ploadu<P4>(b));
  const P4 t = Eigen::internal::ptanh(pmul(k, padd(x, pmul(c, pmul(pmul(x, x), x)))));
  pstoreu(out_pre, x);
  pstoreu(out_th, t);
  pstoreu(out_h, pmul(pmul(half, x), padd(one, t)));
}

inline void backward4(float* dpre, const float* pre, const float* th, float* acc) {
  const P4 k = pset1<P4>(float(kSqrt2OverPi)), c3 = pset1<P4>(float(3 * kCubic));
  const P4 half = pset1<P4>(0.5f), one = pset1<P4>(1.0f);
  const P4 a = ploadu<P4>(pre), t = ploadu<P4>(th);
  const P4 g = padd(pmul(half, padd(one, t)),
                    pmul(pmul(pmul(pmul(half, a), psub(one, pmul(t, t))), k), padd(one, pmul(c3, pmul(a, a)))));
  const P4 d = pmul(ploadu<P4>(dpre), g);
  pstoreu(dpre, d);
  pstoreu(acc, padd(ploadu<P4>(acc), d));
}

void forward_row(float* pre, const float* b, float* th, float* h, Index n) {
  Index j = 0;
  for (; j + 4 <= n; j += 4) forward4(pre + j, b + j, pre + j, th + j, h + j);
  if (j == n) return;
  alignas(16) float in[4] = {}, bias[4] = {}, p[4], t[4], g[4];
  std::copy(pre + j, pre + n, in);
  std::copy(b + j, b + n, bias);
  forward4(in, bias, p, t, g);
  std::copy(p, p + (n - j), pre + j);
  std::copy(t, t + (n - j), th + j);
  std::copy(g, g + (n - j), h + j);
}

void backward_row(float* dpre, const float* pre, const float* th, float* acc, Index n) {
  Index j = 0;
  for (; j + 4 <= n; j += 4) backward4(dpre + j, pre + j, th + j, acc + j);
  if (j == n) return;
  alignas(16) float d[4] = {}, a[4] = {}, t[4] = {}, s[4] = {};
  std::copy(dpre + j, dpre + n, d);
  std::copy(pre + j, pre + n, a);
  std::copy(th + j, th + n, t);
  std::copy(acc + j, acc + n, s);
  backward4(d, a, t, s);
  std::copy(d, d + (n - j), dpre + j);
  std::copy(s, s + (n - j), acc + j);
}

// fp64 (the reference precision): the scalar formula, std::tanh.
void forward_row(double* pre, const double* b, double* th, double* h, Index n) {
  for (Index j = 0; j < n; ++j) {
    const double x = pre[j] + b[j];
    const double t = std::tanh(kSqrt2OverPi * (x + kCubic * (x * x * x)));
    pre[j] = x;
    th[j] = t;
    h[j] = 0.5 * x * (1.0 + t);
  }
}

void backward_row(double* dpre, const double* pre, const double* th, double* acc, Index n) {
  for (Index j = 0; j < n; ++j) {
    const double a = pre[j], t = th[j];
    const double g = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * kSqrt2OverPi * (1.0 + 3 * kCubic * (a * a));
    dpre[j] *= g;
    acc[j] += dpre[j];
  }
}

}  // namespace

template <class T>
void bias_gelu_forward(MatMap<T> pre, const T* bias, MatMap<T> th, MatMap<T> h) {
  const Index n = pre.cols();
  MOESIM_REQUIRE(th.rows() == pre.rows() && th.cols() == n && h.rows() == pre.rows() &&
                     h.cols() == n,
                 "bias_gelu_forward: shapes differ");
  for (Index i = 0; i < pre.rows(); ++i) forward_row(pre.row(i).data(), bias, th.row(i).data(), h.row(i).data(), n);
}

template <class T>
void gelu_backward(MatMap<T> dpre, const ConstMatMap<T>& pre, const ConstMatMap<T>& th, T* bias_grad) {
  const Index n = dpre.cols();
  MOESIM_REQUIRE(pre.rows() == dpre.rows() && pre.cols() == n && th.rows() == dpre.rows() &&
                     th.cols() == n,
                 "gelu_backward: shapes differ");
  for (Index i = 0; i < dpre.rows(); ++i)
    backward_row(dpre.row(i).data(), pre.row(i).data(), th.row(i).data(), bias_grad, n);
}

template void bias_gelu_forward<float>(MatMap<float>, const float*, MatMap<float>, MatMap<float>);
template void bias_gelu_forward<double>(MatMap<double>, const double*, MatMap<double>, MatMap<double>);
template void gelu_backward<float>(MatMap<float>, const ConstMatMap<float>&, const ConstMatMap<float>&, float*);
template void gelu_backward<double>(MatMap<double>, const ConstMatMap<double>&, const ConstMatMap<double>&, double*);

}  // namespace moesim
