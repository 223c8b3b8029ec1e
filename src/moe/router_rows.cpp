#include "moe/router_rows.hpp"

#include <immintrin.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/error.hpp"

namespace moesim {
namespace {

#define MOESIM_AVX512 __attribute__((target("avx512f,avx2,fma")))

// glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, from Arm's optimized-routines): 2^(k/32)
// from a table times a cubic in the remainder, in double; its FMA build fuses exactly the
// products below. tab[i] = bits(2^(i/32)) - (i << 52) / 32.
constexpr std::uint64_t kExpTable[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540};
constexpr double kInvLn2N = 0x1.71547652b82fep+0 * 32, kShift = 0x1.8p+52;
constexpr double kC0 = 0x1.c6af84b912394p-5 / 32 / 32 / 32, kC1 = 0x1.ebfce50fac4f3p-3 / 32 / 32,
                 kC2 = 0x1.62e42ff0c52d6p-1 / 32;
// expf leaves its main formula where |x| >= 88 (the top twelve bits of |x| above 0x42a).
constexpr std::uint32_t kExpSpecialBits = 0x42b00000;

// Every-lane masked forms of the intrinsics whose plain ones GCC 12 warns about (their undefined
// pass-through operand).
MOESIM_AVX512 inline __m512 gather16(__m512i offsets, const float* base) {
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, offsets, base, 4);
}
// Half h (0: lanes 0-7, 1: lanes 8-15) of sixteen floats, widened to double.
MOESIM_AVX512 inline __m512d widen(__m512 v, int h) {
  const __m256d half = h == 0 ? _mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 0)
                              : _mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 1);
  return _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(half));
}
MOESIM_AVX512 inline __m512d widen_lo(__m512 v) { return widen(v, 0); }
MOESIM_AVX512 inline __m512d widen_hi(__m512 v) { return widen(v, 1); }

MOESIM_AVX512 inline __m512d exp8(__m512d xd) {
  const __m512d inv = _mm512_set1_pd(kInvLn2N), shift = _mm512_set1_pd(kShift);
  const __m512d kd_shifted = _mm512_fmadd_pd(inv, xd, shift);
  const __m512i ki = _mm512_castpd_si512(kd_shifted);
  const __m512d kd = _mm512_sub_pd(kd_shifted, shift);
  const __m512d r = _mm512_fmsub_pd(inv, xd, kd);
  // The table's 32 entries from four registers: bits 0-3 of the index pick within a pair, bit 4
  // the pair.
  const __m512i t0 = _mm512_loadu_si512(kExpTable), t1 = _mm512_loadu_si512(kExpTable + 8),
                t2 = _mm512_loadu_si512(kExpTable + 16), t3 = _mm512_loadu_si512(kExpTable + 24);
  const __m512i lo = _mm512_permutex2var_epi64(t0, ki, t1), hi = _mm512_permutex2var_epi64(t2, ki, t3);
  const __mmask8 upper = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
  const __m512i tab = _mm512_mask_blend_epi64(upper, lo, hi);
  const __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(tab, _mm512_maskz_slli_epi64(0xFF, ki, 47)));
  const __m512d z = _mm512_fmadd_pd(_mm512_set1_pd(kC0), r, _mm512_set1_pd(kC1));
  const __m512d r2 = _mm512_mul_pd(r, r);
  __m512d y = _mm512_fmadd_pd(_mm512_set1_pd(kC2), r, _mm512_set1_pd(1.0));
  y = _mm512_fmadd_pd(z, r2, y);
  return _mm512_mul_pd(y, s);
}

// expf of sixteen values; `special` gets the lanes outside the main formula's range (their
// results are not expf's).
MOESIM_AVX512 inline __m512 exp16(__m512 x, __mmask16& special) {
  const __m512i abs_bits = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff));
  special = _mm512_cmpge_epu32_mask(abs_bits, _mm512_set1_epi32(static_cast<int>(kExpSpecialBits)));
  x = _mm512_maskz_mov_ps(static_cast<__mmask16>(~special), x);  // no invalid operation on their NaNs
  const __m256 lo = _mm512_maskz_cvtpd_ps(0xFF, exp8(widen_lo(x)));
  const __m256 hi = _mm512_maskz_cvtpd_ps(0xFF, exp8(widen_hi(x)));
  return _mm512_castpd_ps(
      _mm512_maskz_insertf64x4(0xFF, _mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}

MOESIM_AVX512 void exp_lanes16(const float* x, float* y, Index n) {
  Index i = 0;
  for (; i + 16 <= n; i += 16) {
    __mmask16 special;
    _mm512_storeu_ps(y + i, exp16(_mm512_loadu_ps(x + i), special));
    for (int l = 0; l < 16; ++l)
      if (special & (1u << l)) y[i + l] = std::exp(x[i + l]);
  }
  for (; i < n; ++i) y[i] = std::exp(x[i]);
}

MOESIM_AVX512 inline __mmask16 not_finite(__m512 v) {
  return _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(std::numeric_limits<float>::infinity()), _CMP_NLT_UQ);
}

// Offsets of sixteen consecutive rows of a row-major matrix with E columns.
MOESIM_AVX512 inline __m512i row_offsets(Index E) {
  return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                            _mm512_set1_epi32(static_cast<int>(E)));
}

MOESIM_AVX512 bool softmax16(const float* logits, Index E, float* probs, double* probs64, double* lse,
                             double* entropy, float* scratch) {
  float* lt = scratch;           // the block's logits, a column of 16 tokens per expert
  float* pt = scratch + 16 * E;  // their probabilities, likewise
  const __m512i rows = row_offsets(E);
  __mmask16 bad = 0;
  for (Index e = 0; e < E; ++e) {
    const __m512 l = gather16(rows, logits + e);
    bad |= not_finite(l);
    _mm512_storeu_ps(lt + 16 * e, l);
  }
  if (bad) return false;  // before any arithmetic, which a NaN would make raise FE_INVALID
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (Index e = 0; e < E; ++e) mx = _mm512_maskz_max_ps(0xFFFF, mx, _mm512_loadu_ps(lt + 16 * e));
  __m512 z = _mm512_setzero_ps();
  for (Index e = 0; e < E; ++e) {
    __mmask16 special;
    const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(lt + 16 * e), mx), special);
    bad |= special;
    z = _mm512_add_ps(z, p);
    _mm512_storeu_ps(pt + 16 * e, p);
  }
  if (bad) return false;
  alignas(64) float zs[16], mxs[16];
  alignas(64) double log_z[16];
  _mm512_store_ps(zs, z);
  _mm512_store_ps(mxs, mx);
  for (int l = 0; l < 16; ++l) log_z[l] = std::log(static_cast<double>(zs[l]));
  __m512d h_lo = _mm512_load_pd(log_z), h_hi = _mm512_load_pd(log_z + 8);
  for (Index e = 0; e < E; ++e) {
    const __m512 p = _mm512_div_ps(_mm512_loadu_ps(pt + 16 * e), z);
    _mm512_storeu_ps(pt + 16 * e, p);
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(lt + 16 * e), mx);
    h_lo = _mm512_sub_pd(h_lo, _mm512_mul_pd(widen_lo(p), widen_lo(d)));
    h_hi = _mm512_sub_pd(h_hi, _mm512_mul_pd(widen_hi(p), widen_hi(d)));
  }
  _mm512_storeu_pd(entropy, h_lo);
  _mm512_storeu_pd(entropy + 8, h_hi);
  for (int l = 0; l < 16; ++l) lse[l] = static_cast<double>(mxs[l]) + log_z[l];
  // Back to rows: token l's probabilities sit 16 apart in pt.
  const __m512i across = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(16));
  for (int l = 0; l < 16; ++l) {
    for (Index e = 0; e < E; e += 16) {
      const __mmask16 m = E - e >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (E - e)) - 1);
      const __m512 p = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, across, pt + 16 * e + l, 4);
      _mm512_mask_storeu_ps(probs + l * E + e, m, p);
      _mm512_mask_storeu_pd(probs64 + l * E + e, static_cast<__mmask8>(m), widen_lo(p));
      _mm512_mask_storeu_pd(probs64 + l * E + e + 8, static_cast<__mmask8>(m >> 8), widen_hi(p));
    }
  }
  return true;
}

// The largest of sixteen values in every lane (max is exact: any order gives the same value).
MOESIM_AVX512 inline __m512 broadcast_max(__m512 m) {
  m = _mm512_maskz_max_ps(0xFFFF, m, _mm512_maskz_shuffle_f32x4(0xFFFF, m, m, 0x4E));
  m = _mm512_maskz_max_ps(0xFFFF, m, _mm512_maskz_shuffle_f32x4(0xFFFF, m, m, 0xB1));
  m = _mm512_maskz_max_ps(0xFFFF, m, _mm512_maskz_permute_ps(0xFFFF, m, 0x4E));
  return _mm512_maskz_max_ps(0xFFFF, m, _mm512_maskz_permute_ps(0xFFFF, m, 0xB1));
}

// Passes over one token's row (the lanes hold experts): each takes the largest score left
// and, of the experts holding it, the lowest (select_top_k's order: ties to the lower
// expert), then removes it (-inf, below every finite score).
MOESIM_AVX512 bool top_k_row16(const float* scores, Index E, int depth, int* who) {
  const Index chunks = (E + 15) / 16;
  const __mmask16 tail = E % 16 == 0 ? __mmask16(0xFFFF) : __mmask16((1u << (E % 16)) - 1);
  const auto mask_of = [&](Index c) { return c + 1 < chunks ? __mmask16(0xFFFF) : tail; };
  __mmask16 bad = 0;
  for (Index c = 0; c < chunks; ++c) bad |= not_finite(_mm512_maskz_loadu_ps(mask_of(c), scores + 16 * c));
  if (bad) return false;  // before any arithmetic, which a NaN would make raise FE_INVALID
  thread_local std::vector<float> row;  // grows once to the widest E
  row.resize(static_cast<std::size_t>(16 * chunks));
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (Index c = 0; c < chunks; ++c)
    _mm512_storeu_ps(row.data() + 16 * c, _mm512_mask_loadu_ps(minus_inf, mask_of(c), scores + 16 * c));
  for (int j = 0; j < depth; ++j) {
    __m512 m = _mm512_loadu_ps(row.data());
    for (Index c = 1; c < chunks; ++c) m = _mm512_maskz_max_ps(0xFFFF, m, _mm512_loadu_ps(row.data() + 16 * c));
    const __m512 best = broadcast_max(m);
    for (Index c = 0; c < chunks; ++c) {
      const __mmask16 at = _mm512_cmp_ps_mask(_mm512_loadu_ps(row.data() + 16 * c), best, _CMP_EQ_OQ);
      if (at == 0) continue;
      const Index e = 16 * c + std::countr_zero(static_cast<unsigned>(at));
      row[static_cast<std::size_t>(e)] = -std::numeric_limits<float>::infinity();
      who[j] = static_cast<int>(e);
      break;
    }
  }
  return true;
}

#undef MOESIM_AVX512

// The lanes' exp against this process's std::exp(float) over [-88, 88] (every 65537th float,
// and the boundaries), before the fast path is trusted: a different expf differs on a large
// share of values (tests/unit/test_router_rows.cpp checks many more, and every float opt-in).
bool exp_matches_libm() {
  std::vector<float> x, y;
  for (std::uint32_t b = 0; b < kExpSpecialBits; b += 65537) {
    x.push_back(std::bit_cast<float>(b));
    x.push_back(-std::bit_cast<float>(b));
  }
  for (const float v : {0.0f, -0.0f, 87.99999f, -87.99999f, 1.0f, -1.0f, 0.5f, -0.5f}) x.push_back(v);
  while (x.size() % 16 != 0) x.push_back(0.0f);
  y.resize(x.size());
  exp_lanes16(x.data(), y.data(), static_cast<Index>(x.size()));
  for (std::size_t i = 0; i < x.size(); ++i)
    if (std::bit_cast<std::uint32_t>(y[i]) != std::bit_cast<std::uint32_t>(std::exp(x[i]))) return false;
  return true;
}

bool& enabled() {
  static bool on = router_lanes_available();
  return on;
}

}  // namespace

bool router_lanes_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
                         __builtin_cpu_supports("fma") && exp_matches_libm();
  return ok;
}

bool router_lanes_enabled() { return enabled(); }

bool use_router_lanes(bool on) {
  MOESIM_REQUIRE(!on || router_lanes_available(), "this CPU (or its libm) cannot run the router's lanes");
  const bool was = enabled();
  enabled() = on;
  return was;
}

void exp_lanes(const float* x, float* y, Index n) {
  if (enabled()) {
    exp_lanes16(x, y, n);
    return;
  }
  for (Index i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

bool softmax_block16(const float* logits, Index E, float* probs, double* probs64, double* lse, double* entropy,
                     float* scratch) {
  return enabled() && softmax16(logits, E, probs, probs64, lse, entropy, scratch);
}

bool top_k_row(const float* scores, Index E, int depth, int* who) {
  MOESIM_REQUIRE(depth >= 1 && depth <= E, "top_k_row: depth " << depth << " of " << E);
  return enabled() && top_k_row16(scores, E, depth, who);
}

}  // namespace moesim
