#include "core/fixed_sum_columns.hpp"

#include <immintrin.h>

#include <cstdint>

namespace moesim {
namespace {

#define MOESIM_AVX512 __attribute__((target("avx512f")))

// Eight floats' bits, each zero-extended into a 64-bit lane (masked-off ones 0).
MOESIM_AVX512 inline __m512i widen_bits(const float* p, __mmask8 m) {
  const __m512i v = _mm512_maskz_loadu_epi32(m, p);
  const __m512i spread = _mm512_setr_epi32(0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0);
  return _mm512_maskz_permutexvar_epi32(0x5555, spread, v);
}

MOESIM_AVX512 void add_columns16(const float* m, Index rows, Index cols, FixedSum* sums) {
  for (Index c0 = 0; c0 < cols; c0 += 8) {
    const Index w = cols - c0 < 8 ? cols - c0 : 8;
    const auto cols_mask = static_cast<__mmask8>((1u << w) - 1);
    __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi64(1), mant = _mm512_set1_epi64(0x7FFFFF), lead = _mm512_set1_epi64(0x800000);
    const __m512i bias = _mm512_set1_epi64(86), zero = _mm512_setzero_si512();
    for (Index r = 0; r < rows; ++r) {
      const float* row = m + r * cols + c0;
      const __m512i bits = widen_bits(row, cols_mask);
      // [0, 1): sign clear and biased exponent below 127; the rest go one at a time.
      const __mmask8 other = _mm512_mask_cmpge_epu64_mask(cols_mask, bits, _mm512_set1_epi64(0x3F800000));
      const __mmask8 take = static_cast<__mmask8>(cols_mask & ~other);
      // x = mant * 2^(e - 150) for e >= 1 (subnormals are below 2^-64: 0); x * 2^64 =
      // mant * 2^(e - 86), truncated where e < 86.
      const __m512i e = _mm512_maskz_srli_epi64(0xFF, bits, 23);
      const __mmask8 normal = _mm512_mask_cmpgt_epu64_mask(take, e, zero);
      const __m512i mv = _mm512_or_si512(_mm512_and_si512(bits, mant), lead);
      const __m512i left = _mm512_maskz_sub_epi64(_mm512_cmpgt_epu64_mask(e, bias), e, bias);
      const __m512i right = _mm512_maskz_sub_epi64(_mm512_cmplt_epu64_mask(e, bias), bias, e);
      const __m512i v = _mm512_maskz_sllv_epi64(normal, _mm512_maskz_srlv_epi64(0xFF, mv, right), left);
      lo = _mm512_add_epi64(lo, v);
      hi = _mm512_mask_add_epi64(hi, _mm512_cmplt_epu64_mask(lo, v), hi, one);
      for (unsigned k = other; k != 0; k &= k - 1) {
        const int c = __builtin_ctz(k);
        sums[c0 + c] += static_cast<double>(row[c]);
      }
    }
    alignas(64) std::uint64_t los[8], his[8];
    _mm512_store_si512(los, lo);
    _mm512_store_si512(his, hi);
    for (Index c = 0; c < w; ++c) {
      FixedSum& s = sums[c0 + c];
      s.set(s.raw() + ((static_cast<Int128>(his[c]) << 64) | static_cast<Int128>(los[c])), s.bad());
    }
  }
}

#undef MOESIM_AVX512

}  // namespace

void add_columns_reference(const float* m, Index rows, Index cols, FixedSum* sums) {
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) sums[c] += static_cast<double>(m[r * cols + c]);
}

void add_columns(const double* m, Index rows, Index cols, FixedSum* sums) {
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) sums[c] += m[r * cols + c];
}

void add_columns(const float* m, Index rows, Index cols, FixedSum* sums) {
  static const bool lanes = __builtin_cpu_supports("avx512f");
  if (lanes) add_columns16(m, rows, cols, sums);
  else add_columns_reference(m, rows, cols, sums);
}

}  // namespace moesim
