#include "learners/knn_screen.hpp"

#include <algorithm>

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

#ifdef MOESIM_SCREEN_X86

bool screen_kernel_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

namespace {

// One tile: R rows of A against C consecutive panels of B, R x C accumulators of 8
// (R = 4, C = 3 fill 12 of the 16 AVX registers, with the loads of C panel vectors and
// one broadcast).
template <int R, int C>
__attribute__((target("avx2,fma"))) void screen_tile(const float* A, Index lda, const float* B,
                                                     Index width, const float* thr, Index row0,
                                                     Index col0, ScreenHits& hits) {
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
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m256 t = _mm256_broadcast_ss(thr + r);
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) {
      // Not greater (unordered included): exactly the values the scalar test v > t keeps.
      mask[r][c] = _mm256_movemask_ps(_mm256_cmp_ps(acc[r][c], t, _CMP_NGT_UQ));
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

template <int R>
void screen_row_group(const float* A, Index lda, const PanelMatrix& B, Index panel0, Index panel1,
                      const float* thr, Index row0, ScreenHits& hits) {
  const Index width = B.width();
  Index q = panel0;
  for (; q + 3 <= panel1; q += 3)
    screen_tile<R, 3>(A, lda, B.panel(q), width, thr, row0, q * kScreenPanelRows, hits);
  if (panel1 - q == 2) screen_tile<R, 2>(A, lda, B.panel(q), width, thr, row0, q * kScreenPanelRows, hits);
  if (panel1 - q == 1) screen_tile<R, 1>(A, lda, B.panel(q), width, thr, row0, q * kScreenPanelRows, hits);
}

}  // namespace

void screen_tiles(const float* A, Index nrows, const PanelMatrix& B, Index panel0, Index panel1,
                  const float* row_threshold, ScreenHits& hits) {
  MOESIM_REQUIRE(screen_kernel_available(), "screen_tiles needs AVX2 and FMA");
  const Index lda = B.width();
  Index r = 0;
  for (; r + 4 <= nrows; r += 4)
    screen_row_group<4>(A + r * lda, lda, B, panel0, panel1, row_threshold + r, r, hits);
  switch (nrows - r) {
    case 3: screen_row_group<3>(A + r * lda, lda, B, panel0, panel1, row_threshold + r, r, hits); break;
    case 2: screen_row_group<2>(A + r * lda, lda, B, panel0, panel1, row_threshold + r, r, hits); break;
    case 1: screen_row_group<1>(A + r * lda, lda, B, panel0, panel1, row_threshold + r, r, hits); break;
    default: break;
  }
}

#else

bool screen_kernel_available() { return false; }

void screen_tiles(const float*, Index, const PanelMatrix&, Index, Index, const float*, ScreenHits&) {
  MOESIM_REQUIRE(false, "screen_tiles needs an x86-64 CPU with AVX2 and FMA");
}

#endif

}  // namespace moesim
