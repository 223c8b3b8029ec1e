#pragma once
// Screening of KNN distance tiles in registers: row vectors times training rows packed in
// panels, each product compared with its row's threshold as soon as it is summed. A GEMM
// writes the whole tile to memory for a second pass to scan, although almost every value
// misses its threshold; here only the few that pass leave the kernel.
//
// Products are summed in float, or, where the CPU has AVX-512 BF16, from inputs rounded to
// bfloat16 (8 significant bits) at twice the float rate: a coarser screen, whose callers
// widen their thresholds by screen_relative_error and check what passes again in float.
#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

enum class ScreenPrecision { kFloat, kBf16 };

// Rows of the packed matrix per panel: one AVX register of floats.
inline constexpr Index kScreenPanelRows = 8;

// Row-major rows of one width, stored panel by panel, each panel dimension major (a
// panel's values of one dimension, or with bf16 of two consecutive dimensions, are one
// vector load). The last panel is completed with copies of `pad`.
class PanelMatrix {
 public:
  PanelMatrix() = default;
  PanelMatrix(const Mat<float>& rows, const RowVec<float>& pad, ScreenPrecision precision);
  Index rows() const { return rows_; }
  Index width() const { return width_; }
  Index panels() const { return (rows_ + kScreenPanelRows - 1) / kScreenPanelRows; }
  ScreenPrecision precision() const { return precision_; }
  // kFloat: width x 8 floats.
  const float* panel(Index i) const { return floats_.data() + i * width_ * kScreenPanelRows; }
  // kBf16: (width + 1) / 2 x 8 pairs of bf16 (dimension 2k in the low half).
  const std::uint16_t* panel_bf16(Index i) const { return bf16_.data() + i * pairs() * 2 * kScreenPanelRows; }
  Index pairs() const { return (width_ + 1) / 2; }

 private:
  std::vector<float> floats_;
  std::vector<std::uint16_t> bf16_;
  Index rows_ = 0, width_ = 0;
  ScreenPrecision precision_ = ScreenPrecision::kFloat;
};

// Receives the values that pass a screen. `col` counts the packed matrix's rows, padding
// included (col >= rows() is a padding row).
class ScreenHits {
 public:
  virtual void hit(Index row, Index col, float v) = 0;

 protected:
  ~ScreenHits() = default;
};

// Whether screen_tiles can run here: x86-64 with AVX2 and FMA (kFloat), and AVX-512 BF16
// and VL besides (kBf16).
bool screen_kernel_available(ScreenPrecision precision);

// A bound on |p - sum_k a_k b_k| over sum_k |a_k b_k| for the screen's product p of rows
// a, b of the given width whose values are floats (any order of summation).
double screen_relative_error(ScreenPrecision precision, Index width);

// For every row r of A (row-major floats, nrows x B.width()) and every row c of B's panels
// [panel0, panel1): v = A_r . B_c + column_bias[c] + row_bias[r], the product in B's
// precision and the sums in float, and hits.hit(r, c, v) unless v > row_threshold[r] and
// (without column thresholds, or) v > column_threshold[c]. Column arrays are indexed by
// B's row (a symmetric distance serves both rows), padding rows included: a bias of +inf
// keeps a row out. The biases (squared norms) stay out of the product, so that a bf16
// product does not round them. B is taken in passes of at most max_pass_panels panels (and
// what the L1 cache holds), each against every row of A. Thresholds are read again for
// every tile, so hit() may lower them.
void screen_tiles(const float* A, Index nrows, const PanelMatrix& B, Index panel0, Index panel1,
                  Index max_pass_panels, const float* row_bias, const float* column_bias,
                  const float* row_threshold, ScreenHits& hits, const float* column_threshold = nullptr);

// sum_k a_k b_k in float, in any order: screens re-check their bf16 hits with it.
float screen_dot(const float* a, const float* b, Index n);

// The largest float f with (v > f) == (v > t) for every float v: the screen compares
// floats with thresholds computed in double.
float float_threshold(double t);

}  // namespace moesim
