#include "learners/knn_screen.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOESIM_SCREEN_X86 1
#endif

namespace moesim {

PanelMatrix::PanelMatrix(const Mat<float>& rows, const RowVec<float>& pad)
    : rows_(rows.rows()), width_(rows.cols()) {
  MOESIM_REQUIRE(pad.size() == width_, "panel padding has " << pad.size() << " values for rows of " << width_);
  data_.resize(static_cast<std::size_t>(panels() * width_ * kScreenPanelRows));
  for (Index i = 0; i < panels() * kScreenPanelRows; ++i) {
    const float* src = i < rows_ ? rows.data() + i * width_ : pad.data();
    float* dst = data_.data() + (i / kScreenPanelRows) * width_ * kScreenPanelRows + i % kScreenPanelRows;
    for (Index k = 0; k < width_; ++k) dst[k * kScreenPanelRows] = src[k];
  }
}

float float_threshold(double t) {
  float f = static_cast<float>(t);  // nearest; step down if that rounded up
  if (static_cast<double>(f) > t) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

#ifdef MOESIM_SCREEN_X86

bool screen_kernel_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

namespace {

// One tile: R rows of A against C consecutive panels of B, R x C accumulators of 8
// (R = 4, C = 3 fill 12 of the 16 AVX registers, with the loads of C panel vectors and
// one broadcast).
template <int R, int C, bool Columns>
__attribute__((target("avx2,fma"))) void screen_tile(const float* A, Index lda, const float* B,
                                                     Index width, const float* thr, const float* cthr,
                                                     Index row0, Index col0, ScreenHits& hits) {
  constexpr Index P = kScreenPanelRows;
  __m256 acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (Index k = 0; k < width; ++k) {
    __m256 b[C];
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) b[c] = _mm256_loadu_ps(B + (c * width + k) * P);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
#pragma GCC unroll 3
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
  int mask[R][C];
  int any = 0;
  __m256 ct[C];
  if constexpr (Columns) {
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) ct[c] = _mm256_loadu_ps(cthr + col0 + c * P);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m256 t = _mm256_broadcast_ss(thr + r);
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) {
      // Not greater (unordered included): exactly the values the scalar test v > t keeps.
      __m256 pass = _mm256_cmp_ps(acc[r][c], t, _CMP_NGT_UQ);
      if constexpr (Columns) pass = _mm256_or_ps(pass, _mm256_cmp_ps(acc[r][c], ct[c], _CMP_NGT_UQ));
      mask[r][c] = _mm256_movemask_ps(pass);
      any |= mask[r][c];
    }
  }
  if (any == 0) return;
  // The rare tile with hits: its values go through memory, indexed at run time (an
  // accumulator indexed so would keep them all in memory through the loop above).
  alignas(32) float v[R][C][P];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) _mm256_store_ps(v[r][c], acc[r][c]);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      for (int m = mask[r][c]; m != 0; m &= m - 1) {
        const int l = __builtin_ctz(static_cast<unsigned>(m));
        hits.hit(row0 + r, col0 + c * P + l, v[r][c][l]);
      }
}

template <int R, bool Columns>
void screen_row_group(const float* A, Index lda, const PanelMatrix& B, Index panel0, Index panel1,
                      const float* thr, const float* cthr, Index row0, ScreenHits& hits) {
  const Index width = B.width();
  Index q = panel0;
  for (; q + 3 <= panel1; q += 3)
    screen_tile<R, 3, Columns>(A, lda, B.panel(q), width, thr, cthr, row0, q * kScreenPanelRows, hits);
  if (panel1 - q == 2)
    screen_tile<R, 2, Columns>(A, lda, B.panel(q), width, thr, cthr, row0, q * kScreenPanelRows, hits);
  if (panel1 - q == 1)
    screen_tile<R, 1, Columns>(A, lda, B.panel(q), width, thr, cthr, row0, q * kScreenPanelRows, hits);
}

template <bool Columns>
void screen_rows(const float* A, Index nrows, const PanelMatrix& B, Index panel0, Index panel1,
                 const float* thr, const float* cthr, ScreenHits& hits) {
  const Index lda = B.width();
  Index r = 0;
  for (; r + 4 <= nrows; r += 4)
    screen_row_group<4, Columns>(A + r * lda, lda, B, panel0, panel1, thr + r, cthr, r, hits);
  const float* a = A + r * lda;
  switch (nrows - r) {
    case 3: screen_row_group<3, Columns>(a, lda, B, panel0, panel1, thr + r, cthr, r, hits); break;
    case 2: screen_row_group<2, Columns>(a, lda, B, panel0, panel1, thr + r, cthr, r, hits); break;
    case 1: screen_row_group<1, Columns>(a, lda, B, panel0, panel1, thr + r, cthr, r, hits); break;
    default: break;
  }
}

}  // namespace

void screen_tiles(const float* A, Index nrows, const PanelMatrix& B, Index panel0, Index panel1,
                  const float* row_threshold, ScreenHits& hits, const float* column_threshold) {
  MOESIM_REQUIRE(screen_kernel_available(), "screen_tiles needs AVX2 and FMA");
  if (column_threshold) screen_rows<true>(A, nrows, B, panel0, panel1, row_threshold, column_threshold, hits);
  else screen_rows<false>(A, nrows, B, panel0, panel1, row_threshold, nullptr, hits);
}

#else

bool screen_kernel_available() { return false; }

void screen_tiles(const float*, Index, const PanelMatrix&, Index, Index, const float*, ScreenHits&, const float*) {
  MOESIM_REQUIRE(false, "screen_tiles needs an x86-64 CPU with AVX2 and FMA");
}

#endif

}  // namespace moesim
