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

// The eight-wide kernels (gelu8_kernels.inc), once per instruction set.
#define MOESIM_GELU8 "avx"
#define MOESIM_GELU8_NS avx8
#define MOESIM_GELU8_MADD(u, v, c) _mm256_add_ps(_mm256_mul_ps(u, v), c)  // Eigen's pmadd without FMA
#include "nn/gelu8_kernels.inc"
#undef MOESIM_GELU8
#undef MOESIM_GELU8_NS
#undef MOESIM_GELU8_MADD
#define MOESIM_GELU8 "avx2,fma"
#define MOESIM_GELU8_NS fma8
#define MOESIM_GELU8_MADD(u, v, c) _mm256_fmadd_ps(u, v, c)
#include "nn/gelu8_kernels.inc"
#undef MOESIM_GELU8
#undef MOESIM_GELU8_NS
#undef MOESIM_GELU8_MADD

// Sixteen values at a time (AVX-512F): the FMA path's operations lane for lane (masks for its
// bitwise selects), so its bits; on a CPU that splits a 512-bit operation into two 256-bit
// halves there are still half the instructions to issue and twice the independent work
// between the polynomials' dependent steps.
namespace fma16 {

#define MOESIM_AVX512 __attribute__((target("avx512f,avx2,fma")))

MOESIM_AVX512 inline __m512 madd(__m512 u, __m512 v, float c) { return _mm512_fmadd_ps(u, v, _mm512_set1_ps(c)); }

MOESIM_AVX512 inline __m512 tanh16(__m512 a) {
  // The zero-masked min and max with every lane set: GCC 12 warns about the plain ones'
  // undefined pass-through operand.
  const __m512 x = _mm512_maskz_max_ps(0xFFFF, _mm512_maskz_min_ps(0xFFFF, a, _mm512_set1_ps(7.90531110763549805f)),
                                       _mm512_set1_ps(-7.90531110763549805f));
  const __m512 abs_a = _mm512_abs_ps(a);
  const __mmask16 tiny = _mm512_cmp_ps_mask(abs_a, _mm512_set1_ps(0.0004f), _CMP_LT_OQ);
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = madd(x2, _mm512_set1_ps(-2.76076847742355e-16f), 2.00018790482477e-13f);
  p = madd(x2, p, -8.60467152213735e-11f);
  p = madd(x2, p, 5.12229709037114e-08f);
  p = madd(x2, p, 1.48572235717979e-05f);
  p = madd(x2, p, 6.37261928875436e-04f);
  p = madd(x2, p, 4.89352455891786e-03f);
  p = _mm512_mul_ps(x, p);
  __m512 q = madd(x2, _mm512_set1_ps(1.19825839466702e-06f), 1.18534705686654e-04f);
  q = madd(x2, q, 2.26843463243900e-03f);
  q = madd(x2, q, 4.89352518554385e-03f);
  const __m512 t = _mm512_mask_blend_ps(tiny, _mm512_div_ps(p, q), x);
  const __mmask16 big = _mm512_cmp_ps_mask(abs_a, _mm512_set1_ps(7.90531110763549805f), _CMP_GE_OQ);
  const __m512 sign_one = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(static_cast<int>(0x80000000u))),
      _mm512_castps_si512(_mm512_set1_ps(1.0f))));
  return _mm512_mask_blend_ps(big, t, sign_one);
}

MOESIM_AVX512 inline void gelu16(__m512 x, __m512& h, __m512& g) {
  const __m512 k = _mm512_set1_ps(float(kSqrt2OverPi)), c = _mm512_set1_ps(float(kCubic));
  const __m512 c3 = _mm512_set1_ps(float(3 * kCubic));
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 t = tanh16(_mm512_mul_ps(k, _mm512_add_ps(x, _mm512_mul_ps(c, _mm512_mul_ps(_mm512_mul_ps(x, x), x)))));
  const __m512 hx = _mm512_mul_ps(half, x), one_t = _mm512_add_ps(one, t);
  g = _mm512_add_ps(_mm512_mul_ps(half, one_t),
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(hx, _mm512_sub_ps(one, _mm512_mul_ps(t, t))), k),
                                  _mm512_add_ps(one, _mm512_mul_ps(c3, _mm512_mul_ps(x, x)))));
  h = _mm512_mul_ps(hx, one_t);
}

// The whole sixteen-value packets of a row (n / 16 of them).
MOESIM_AVX512 void forward_row16(float* pre_h, const float* b, float* slope, Index n) {
  for (Index j = 0; j + 16 <= n; j += 16) {
    __m512 h, g;
    gelu16(_mm512_add_ps(_mm512_loadu_ps(pre_h + j), _mm512_loadu_ps(b + j)), h, g);
    _mm512_storeu_ps(pre_h + j, h);
    _mm512_storeu_ps(slope + j, g);
  }
}

#undef MOESIM_AVX512

}  // namespace fma16

__attribute__((target("avx"))) void backward_row8(float* dpre, const float* slope, float* acc, Index n) {
  for (Index j = 0; j + 8 <= n; j += 8) {
    const __m256 d = _mm256_mul_ps(_mm256_loadu_ps(dpre + j), _mm256_loadu_ps(slope + j));
    _mm256_storeu_ps(dpre + j, d);
    _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), d));
  }
}

bool has_fma8() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

GeluPath best_path() {
  if (has_fma8() && __builtin_cpu_supports("avx512f")) return GeluPath::kFma16;
  if (has_fma8()) return GeluPath::kFma8;
  return __builtin_cpu_supports("avx") ? GeluPath::kAvx8 : GeluPath::kSse4;
}

GeluPath& path() {
  static GeluPath p = best_path();
  return p;
}

// The last n < W values of a row through a W-wide packet function f(a, b, c), zero-padded,
// so that they take the arithmetic of the whole packets: a and c are written back, b is read.
template <int W, class F>
void padded_tail(float* a, const float* b, float* c, Index n, F&& f) {
  alignas(32) float pa[W] = {}, pb[W] = {}, pc[W] = {};
  std::copy(a, a + n, pa);
  std::copy(b, b + n, pb);
  std::copy(c, c + n, pc);
  f(pa, pb, pc);
  std::copy(pa, pa + n, a);
  std::copy(pc, pc + n, c);
}

// h in place over the pre-activation, the slope beside it.
void forward_row(float* pre_h, const float* b, float* slope, Index n) {
  if (path() == GeluPath::kFma8 || path() == GeluPath::kFma16) {
    Index j = 0;
    if (path() == GeluPath::kFma16) {
      fma16::forward_row16(pre_h, b, slope, n);
      j = n / 16 * 16;
    }
    fma8::forward_row8(pre_h + j, b + j, slope + j, n - j);
    j = n / 8 * 8;
    if (j < n)
      padded_tail<8>(pre_h + j, b + j, slope + j, n - j,
                     [](float* h, const float* bb, float* g) { fma8::forward_row8(h, bb, g, 8); });
    return;
  }
  Index j = 0;
  if (path() == GeluPath::kAvx8) {
    avx8::forward_row8(pre_h, b, slope, n);
    j = n / 8 * 8;
  }
  for (; j + 4 <= n; j += 4) forward4(pre_h + j, b + j, pre_h + j, slope + j);
  if (j < n)
    padded_tail<4>(pre_h + j, b + j, slope + j, n - j, [](float* h, const float* bb, float* g) { forward4(h, bb, h, g); });
}

void backward_row(float* dpre, const float* slope, float* acc, Index n) {
  Index j = 0;
  if (path() != GeluPath::kSse4) {  // multiplies and adds only: the same bits as four at a time
    backward_row8(dpre, slope, acc, n);
    j = n / 8 * 8;
  }
  for (; j + 4 <= n; j += 4) backward4(dpre + j, slope + j, acc + j);
  if (j < n) padded_tail<4>(dpre + j, slope + j, acc + j, n - j, backward4);
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

bool gelu_path_supported(GeluPath p) {
  switch (p) {
    case GeluPath::kSse4: return true;
    case GeluPath::kAvx8: return __builtin_cpu_supports("avx");
    case GeluPath::kFma8: return has_fma8();
    case GeluPath::kFma16: return best_path() == GeluPath::kFma16;
  }
  return false;
}

GeluPath use_gelu_path(GeluPath p) {
  MOESIM_REQUIRE(gelu_path_supported(p), "this CPU cannot run GELU path " << static_cast<int>(p));
  const GeluPath was = path();
  path() = p;
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
