#include "nn/gelu_rows.hpp"

#include <immintrin.h>

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
// formula of nn/activations.hpp. The slope is what backward multiplies by; worked out here,
// from values already in registers, backward need not keep or reread the pre-activation and
// its tanh.
inline void forward4(const float* pre, const float* b, float* out_h, float* out_slope) {
  const P4 k = pset1<P4>(float(kSqrt2OverPi)), c = pset1<P4>(float(kCubic)), c3 = pset1<P4>(float(3 * kCubic));
  const P4 half = pset1<P4>(0.5f), one = pset1<P4>(1.0f);
  const P4 x = padd(ploadu<P4>(pre), ploadu<P4>(b));
  const P4 t = Eigen::internal::ptanh(pmul(k, padd(x, pmul(c, pmul(pmul(x, x), x)))));
  const P4 g = padd(pmul(half, padd(one, t)),
                    pmul(pmul(pmul(pmul(half, x), psub(one, pmul(t, t))), k), padd(one, pmul(c3, pmul(x, x)))));
  pstoreu(out_h, pmul(pmul(half, x), padd(one, t)));
  pstoreu(out_slope, g);
}

inline void backward4(float* dpre, const float* slope, float* acc) {
  const P4 d = pmul(ploadu<P4>(dpre), ploadu<P4>(slope));
  pstoreu(dpre, d);
  pstoreu(acc, padd(ploadu<P4>(acc), d));
}

// AVX, eight values at a time: Eigen's fast tanh (generic_fast_tanh_float, as built without
// FMA) and the formula above, operation for operation, so every lane gives the 4-wide path's
// bits. Raw intrinsics in functions built for AVX alone: no Eigen code is compiled for AVX,
// so no inline function the rest of the program shares can come out of this file as AVX code.
__attribute__((target("avx"))) inline __m256 madd(__m256 u, __m256 v, float c) {
  return _mm256_add_ps(_mm256_mul_ps(u, v), _mm256_set1_ps(c));  // Eigen's pmadd without FMA
}

__attribute__((target("avx"))) inline __m256 tanh8(__m256 a) {
  const __m256 x = _mm256_max_ps(_mm256_min_ps(a, _mm256_set1_ps(7.90531110763549805f)),
                                 _mm256_set1_ps(-7.90531110763549805f));
  const __m256 abs_a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a);
  const __m256 tiny = _mm256_cmp_ps(abs_a, _mm256_set1_ps(0.0004f), _CMP_LT_OQ);
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = madd(x2, _mm256_set1_ps(-2.76076847742355e-16f), 2.00018790482477e-13f);
  p = madd(x2, p, -8.60467152213735e-11f);
  p = madd(x2, p, 5.12229709037114e-08f);
  p = madd(x2, p, 1.48572235717979e-05f);
  p = madd(x2, p, 6.37261928875436e-04f);
  p = madd(x2, p, 4.89352455891786e-03f);
  p = _mm256_mul_ps(x, p);
  __m256 q = madd(x2, _mm256_set1_ps(1.19825839466702e-06f), 1.18534705686654e-04f);
  q = madd(x2, q, 2.26843463243900e-03f);
  q = madd(x2, q, 4.89352518554385e-03f);
  // A bitwise select, not _mm256_blendv_ps: GCC lowers that blend, in a function built for
  // AVX by attribute, to a test and branch per lane (a third of this loop's time).
  return _mm256_or_ps(_mm256_and_ps(tiny, x), _mm256_andnot_ps(tiny, _mm256_div_ps(p, q)));
}

__attribute__((target("avx"))) void forward_row8(float* pre_h, const float* b, float* slope, Index n) {
  const __m256 k = _mm256_set1_ps(float(kSqrt2OverPi)), c = _mm256_set1_ps(float(kCubic));
  const __m256 c3 = _mm256_set1_ps(float(3 * kCubic));
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  for (Index j = 0; j + 8 <= n; j += 8) {
    const __m256 x = _mm256_add_ps(_mm256_loadu_ps(pre_h + j), _mm256_loadu_ps(b + j));
    const __m256 t = tanh8(_mm256_mul_ps(k, _mm256_add_ps(x, _mm256_mul_ps(c, _mm256_mul_ps(_mm256_mul_ps(x, x), x)))));
    const __m256 hx = _mm256_mul_ps(half, x), one_t = _mm256_add_ps(one, t);
    const __m256 g = _mm256_add_ps(
        _mm256_mul_ps(half, one_t),
        _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(hx, _mm256_sub_ps(one, _mm256_mul_ps(t, t))), k),
                      _mm256_add_ps(one, _mm256_mul_ps(c3, _mm256_mul_ps(x, x)))));
    _mm256_storeu_ps(pre_h + j, _mm256_mul_ps(hx, one_t));
    _mm256_storeu_ps(slope + j, g);
  }
}

__attribute__((target("avx"))) void backward_row8(float* dpre, const float* slope, float* acc, Index n) {
  for (Index j = 0; j + 8 <= n; j += 8) {
    const __m256 d = _mm256_mul_ps(_mm256_loadu_ps(dpre + j), _mm256_loadu_ps(slope + j));
    _mm256_storeu_ps(dpre + j, d);
    _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), d));
  }
}

// Whether rows go eight values at a time (the CPU has AVX, and no test asked for four).
bool& use_avx() {
  static bool on = __builtin_cpu_supports("avx");
  return on;
}

void forward_row(float* pre_h, const float* b, float* slope, Index n) {
  Index j = 0;
  if (use_avx()) {
    forward_row8(pre_h, b, slope, n);
    j = n / 8 * 8;
  }
  for (; j + 4 <= n; j += 4) forward4(pre_h + j, b + j, pre_h + j, slope + j);
  if (j == n) return;
  alignas(16) float in[4] = {}, bias[4] = {}, h[4], g[4];
  std::copy(pre_h + j, pre_h + n, in);
  std::copy(b + j, b + n, bias);
  forward4(in, bias, h, g);
  std::copy(h, h + (n - j), pre_h + j);
  std::copy(g, g + (n - j), slope + j);
}

void backward_row(float* dpre, const float* slope, float* acc, Index n) {
  Index j = 0;
  if (use_avx()) {
    backward_row8(dpre, slope, acc, n);
    j = n / 8 * 8;
  }
  for (; j + 4 <= n; j += 4) backward4(dpre + j, slope + j, acc + j);
  if (j == n) return;
  alignas(16) float d[4] = {}, g[4] = {}, s[4] = {};
  std::copy(dpre + j, dpre + n, d);
  std::copy(slope + j, slope + n, g);
  std::copy(acc + j, acc + n, s);
  backward4(d, g, s);
  std::copy(d, d + (n - j), dpre + j);
  std::copy(s, s + (n - j), acc + j);
}

// fp64 (the reference precision): the scalar formula, std::tanh.
void forward_row(double* pre_h, const double* b, double* slope, Index n) {
  for (Index j = 0; j < n; ++j) {
    const double x = pre_h[j] + b[j];
    const double t = std::tanh(kSqrt2OverPi * (x + kCubic * (x * x * x)));
    pre_h[j] = 0.5 * x * (1.0 + t);
    slope[j] = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kSqrt2OverPi * (1.0 + 3 * kCubic * (x * x));
  }
}

void backward_row(double* dpre, const double* slope, double* acc, Index n) {
  for (Index j = 0; j < n; ++j) {
    dpre[j] *= slope[j];
    acc[j] += dpre[j];
  }
}

}  // namespace

bool gelu_rows_wide(bool wide) {
  const bool was = use_avx();
  use_avx() = wide && __builtin_cpu_supports("avx");
  return was;
}

template <class T>
void bias_gelu_forward(MatMap<T> pre_h, const T* bias, MatMap<T> slope) {
  const Index n = pre_h.cols();
  MOESIM_REQUIRE(slope.rows() == pre_h.rows() && slope.cols() == n, "bias_gelu_forward: shapes differ");
  for (Index i = 0; i < pre_h.rows(); ++i) forward_row(pre_h.row(i).data(), bias, slope.row(i).data(), n);
}

template <class T>
void gelu_backward(MatMap<T> dpre, const ConstMatMap<T>& slope, T* bias_grad) {
  const Index n = dpre.cols();
  MOESIM_REQUIRE(slope.rows() == dpre.rows() && slope.cols() == n, "gelu_backward: shapes differ");
  for (Index i = 0; i < dpre.rows(); ++i) backward_row(dpre.row(i).data(), slope.row(i).data(), bias_grad, n);
}

template void bias_gelu_forward<float>(MatMap<float>, const float*, MatMap<float>);
template void bias_gelu_forward<double>(MatMap<double>, const double*, MatMap<double>);
template void gelu_backward<float>(MatMap<float>, const ConstMatMap<float>&, float*);
template void gelu_backward<double>(MatMap<double>, const ConstMatMap<double>&, double*);

}  // namespace moesim
