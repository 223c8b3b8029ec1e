#include "learners/knn_screen.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/error.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOESIM_SCREEN_X86 1
#endif

namespace moesim {

namespace {

// x rounded to the nearest bfloat16 (ties to even): the upper half of its float bits.
// Values here are finite (callers screen finite rows), so no NaN case.
std::uint16_t to_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

// A row of width floats as bf16 pairs, dimension 2k in the low half of pair k.
void bf16_pairs(const float* row, Index width, std::uint16_t* out) {
  for (Index k = 0; k < (width + 1) / 2 * 2; ++k) out[k] = k < width ? to_bf16(row[k]) : 0;
}

float scalar_dot(const float* a, const float* b, Index n) {
  float s = 0;
  for (Index k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

}  // namespace

PanelMatrix::PanelMatrix(const Mat<float>& rows, const RowVec<float>& pad, ScreenPrecision precision)
    : rows_(rows.rows()), width_(rows.cols()), precision_(precision) {
  MOESIM_REQUIRE(pad.size() == width_, "panel padding has " << pad.size() << " values for rows of " << width_);
  const Index P = kScreenPanelRows, slots = panels() * P;
  if (precision == ScreenPrecision::kFloat) floats_.resize(static_cast<std::size_t>(slots * width_));
  else bf16_.resize(static_cast<std::size_t>(slots * pairs() * 2));
  std::vector<std::uint16_t> pairs_of_row(static_cast<std::size_t>(pairs() * 2));
  for (Index i = 0; i < slots; ++i) {
    const float* src = i < rows_ ? rows.data() + i * width_ : pad.data();
    const Index panel = i / P, lane = i % P;
    if (precision == ScreenPrecision::kFloat) {
      float* dst = floats_.data() + panel * width_ * P + lane;
      for (Index k = 0; k < width_; ++k) dst[k * P] = src[k];
    } else {
      bf16_pairs(src, width_, pairs_of_row.data());
      std::uint16_t* dst = bf16_.data() + (panel * pairs() * P + lane) * 2;
      for (Index k = 0; k < pairs(); ++k) {
        dst[k * P * 2] = pairs_of_row[static_cast<std::size_t>(2 * k)];
        dst[k * P * 2 + 1] = pairs_of_row[static_cast<std::size_t>(2 * k + 1)];
      }
    }
  }
}

double screen_relative_error(ScreenPrecision precision, Index width) {
  // Float: the summation's gamma_width, doubled. Bf16: each input rounded to nearest by at
  // most 2^-8 relative, so each product by 2^-7 + 2^-16 (2^-12 leaves room for the float
  // inputs' own rounding), plus the float summation. The instruction flushes denormal
  // inputs to zero, at most 2^-126 |b_k| a product: within the callers' bounds, which add
  // this relative error times the largest squared norm, unless every squared norm is
  // below 1e-68.
  const double sum = 2.0 * static_cast<double>(width + 2) * FLT_EPSILON;
  return precision == ScreenPrecision::kFloat ? sum : 0x1p-7 + 0x1p-12 + sum;
}

float float_threshold(double t) {
  float f = static_cast<float>(t);  // nearest; step down if that rounded up
  if (static_cast<double>(f) > t) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

#ifdef MOESIM_SCREEN_X86

bool screen_kernel_available(ScreenPrecision precision) {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool bf16 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                           __builtin_cpu_supports("avx512bf16");
  return precision == ScreenPrecision::kFloat ? avx2 : bf16;
}

namespace {

constexpr Index kP = kScreenPanelRows;

// What a tile compares besides its products: biases and thresholds of rows and columns.
struct TileEnds {
  const float* row_bias;
  const float* column_bias;
  const float* thr;
  const float* cthr;
};

// The end of a tile: R x C accumulators plus their biases, compared with their rows' (and
// columns') thresholds; the rare tile with hits reports them.
template <int R, int C, bool Columns>
__attribute__((target("avx2,fma"), always_inline)) inline void report_tile(__m256 (&acc)[R][C], const TileEnds& e,
                                                                          Index row0, Index col0, ScreenHits& hits) {
  int mask[R][C];
  int any = 0;
  __m256 ct[C];
#pragma GCC unroll 3
  for (int c = 0; c < C; ++c) {
    const __m256 cb = _mm256_loadu_ps(e.column_bias + col0 + c * kP);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][c] = _mm256_add_ps(acc[r][c], cb);
    if constexpr (Columns) ct[c] = _mm256_loadu_ps(e.cthr + col0 + c * kP);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m256 t = _mm256_broadcast_ss(e.thr + r), rb = _mm256_broadcast_ss(e.row_bias + r);
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) {
      acc[r][c] = _mm256_add_ps(acc[r][c], rb);
      // Not greater (unordered included): exactly the values the scalar test v > t keeps.
      __m256 pass = _mm256_cmp_ps(acc[r][c], t, _CMP_NGT_UQ);
      if constexpr (Columns) pass = _mm256_or_ps(pass, _mm256_cmp_ps(acc[r][c], ct[c], _CMP_NGT_UQ));
      mask[r][c] = _mm256_movemask_ps(pass);
      any |= mask[r][c];
    }
  }
  if (any == 0) return;
  // The values go through memory, indexed at run time (an accumulator indexed so would
  // keep them all in memory through the kernel's loop).
  alignas(32) float v[R][C][kP];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) _mm256_store_ps(v[r][c], acc[r][c]);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      for (int m = mask[r][c]; m != 0; m &= m - 1) {
        const int l = __builtin_ctz(static_cast<unsigned>(m));
        hits.hit(row0 + r, col0 + c * kP + l, v[r][c][l]);
      }
}

// One tile: R rows of A against C consecutive panels of B, R x C accumulators of 8
// (R = 4, C = 3 fill 12 of the 16 AVX registers, with the loads of C panel vectors and
// one broadcast).
template <int R, int C, bool Columns>
__attribute__((target("avx2,fma"))) void screen_tile(const float* A, Index lda, const PanelMatrix& B, Index q,
                                                     const TileEnds& e, Index row0, ScreenHits& hits) {
  const Index width = B.width();
  const float* b0 = B.panel(q);
  __m256 acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (Index k = 0; k < width; ++k) {
    __m256 b[C];
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) b[c] = _mm256_loadu_ps(b0 + (c * width + k) * kP);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
#pragma GCC unroll 3
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
  report_tile<R, C, Columns>(acc, e, row0, q * kP, hits);
}

// As screen_tile, A as bf16 pairs (lda pairs a row), each instruction summing two
// products per lane.
template <int R, int C, bool Columns>
__attribute__((target("avx2,fma,avx512f,avx512vl,avx512bf16"))) void screen_tile_bf16(
    const std::uint32_t* A, Index lda, const PanelMatrix& B, Index q, const TileEnds& e, Index row0,
    ScreenHits& hits) {
  const Index pairs = B.pairs();
  const std::uint16_t* b0 = B.panel_bf16(q);
  __m256 acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (Index k = 0; k < pairs; ++k) {
    __m256bh b[C];
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c)
      b[c] = reinterpret_cast<__m256bh>(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + (c * pairs + k) * kP * 2)));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256bh a = reinterpret_cast<__m256bh>(_mm256_set1_epi32(static_cast<int>(A[r * lda + k])));
#pragma GCC unroll 3
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_dpbf16_ps(acc[r][c], a, b[c]);
    }
  }
  report_tile<R, C, Columns>(acc, e, row0, q * kP, hits);
}

// The tile kernel of one precision, R rows at a time, for a range of panels.
template <class Row, bool Columns>
struct Tiles {
  template <int R, int C>
  static void tile(const Row* A, Index lda, const PanelMatrix& B, Index q, const TileEnds& e, Index row0,
                   ScreenHits& hits) {
    if constexpr (std::is_same_v<Row, float>) screen_tile<R, C, Columns>(A, lda, B, q, e, row0, hits);
    else screen_tile_bf16<R, C, Columns>(A, lda, B, q, e, row0, hits);
  }

  template <int R>
  static void rows(const Row* A, Index lda, const PanelMatrix& B, Index q0, Index q1, const TileEnds& e,
                   Index row0, ScreenHits& hits) {
    Index q = q0;
    for (; q + 3 <= q1; q += 3) tile<R, 3>(A, lda, B, q, e, row0, hits);
    if (q1 - q == 2) tile<R, 2>(A, lda, B, q, e, row0, hits);
    if (q1 - q == 1) tile<R, 1>(A, lda, B, q, e, row0, hits);
  }

  static void pass(const Row* A, Index lda, Index nrows, const PanelMatrix& B, Index q0, Index q1,
                   const TileEnds& e, ScreenHits& hits) {
    Index r = 0;
    auto from = [&](Index r0) { return TileEnds{e.row_bias + r0, e.column_bias, e.thr + r0, e.cthr}; };
    for (; r + 4 <= nrows; r += 4) rows<4>(A + r * lda, lda, B, q0, q1, from(r), r, hits);
    const Row* a = A + r * lda;
    switch (nrows - r) {
      case 3: rows<3>(a, lda, B, q0, q1, from(r), r, hits); break;
      case 2: rows<2>(a, lda, B, q0, q1, from(r), r, hits); break;
      case 1: rows<1>(a, lda, B, q0, q1, from(r), r, hits); break;
      default: break;
    }
  }
};

template <class Row>
void screen_passes(const Row* A, Index lda, Index nrows, const PanelMatrix& B, Index panel0, Index panel1,
                   Index per_pass, const TileEnds& e, ScreenHits& hits) {
  for (Index q0 = panel0; q0 < panel1; q0 += per_pass) {
    const Index q1 = std::min(q0 + per_pass, panel1);
    if (e.cthr) Tiles<Row, true>::pass(A, lda, nrows, B, q0, q1, e, hits);
    else Tiles<Row, false>::pass(A, lda, nrows, B, q0, q1, e, hits);
  }
}

__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, Index n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  Index k = 0;
  for (; k + 16 <= n; k += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), s1);
  }
  for (; k + 8 <= n; k += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(s0, s1));
  float s = 0;
  for (float v : lanes) s += v;
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

}  // namespace

void screen_tiles(const float* A, Index nrows, const PanelMatrix& B, Index panel0, Index panel1,
                  Index max_pass_panels, const float* row_bias, const float* column_bias,
                  const float* row_threshold, ScreenHits& hits, const float* column_threshold) {
  const ScreenPrecision precision = B.precision();
  MOESIM_REQUIRE(screen_kernel_available(precision), "screen_tiles: this CPU lacks the screen's instructions");
  // Passes over as many panels as fit in 24 KiB, so that they stay in a 32 KiB L1 data
  // cache for every row of A; a multiple of the tile's 3 panels where that fits, as
  // narrower tiles run slower.
  const Index vectors = precision == ScreenPrecision::kFloat ? B.width() : B.pairs();  // of 32 bytes
  const Index panel_bytes = vectors * kP * 4;
  Index per_pass = std::max<Index>(1, std::min(max_pass_panels, (Index{24} << 10) / panel_bytes));
  if (per_pass >= 3) per_pass = per_pass / 3 * 3;
  const TileEnds e{row_bias, column_bias, row_threshold, column_threshold};
  if (precision == ScreenPrecision::kFloat) {
    screen_passes(A, B.width(), nrows, B, panel0, panel1, per_pass, e, hits);
    return;
  }
  // The rows as bf16 pairs once, for every pass.
  const Index pairs = B.pairs();
  std::vector<std::uint32_t> A2(static_cast<std::size_t>(nrows * pairs));
  std::vector<std::uint16_t> row(static_cast<std::size_t>(pairs * 2));
  for (Index r = 0; r < nrows; ++r) {
    bf16_pairs(A + r * B.width(), B.width(), row.data());
    std::memcpy(A2.data() + r * pairs, row.data(), row.size() * sizeof(std::uint16_t));
  }
  screen_passes(A2.data(), pairs, nrows, B, panel0, panel1, per_pass, e, hits);
}

float screen_dot(const float* a, const float* b, Index n) {
  return screen_kernel_available(ScreenPrecision::kFloat) ? dot_avx2(a, b, n) : scalar_dot(a, b, n);
}

#else

bool screen_kernel_available(ScreenPrecision) { return false; }

void screen_tiles(const float*, Index, const PanelMatrix&, Index, Index, Index, const float*, const float*,
                  const float*, ScreenHits&, const float*) {
  MOESIM_REQUIRE(false, "screen_tiles needs an x86-64 CPU with AVX2 and FMA");
}

float screen_dot(const float* a, const float* b, Index n) { return scalar_dot(a, b, n); }

#endif

}  // namespace moesim
