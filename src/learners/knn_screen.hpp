#pragma once
// Screening of KNN distance tiles in registers: float row vectors times training rows
// packed in panels, each product compared with its row's threshold as soon as it is
// summed. A GEMM writes the whole tile to memory for a second pass to scan, although
// almost every value misses its threshold; here only the few that pass leave the kernel.
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

// Rows of the packed matrix per panel: one AVX register of floats.
inline constexpr Index kScreenPanelRows = 8;

// Row-major rows of one width, stored panel by panel, each panel width x 8 (dimension
// major: a panel's values of one dimension are one vector load). The last panel is
// completed with copies of `pad`.
class PanelMatrix {
 public:
  PanelMatrix() = default;
  PanelMatrix(const Mat<float>& rows, const RowVec<float>& pad);
  Index rows() const { return rows_; }
  Index width() const { return width_; }
  Index panels() const { return (rows_ + kScreenPanelRows - 1) / kScreenPanelRows; }
  const float* panel(Index i) const { return data_.data() + i * width_ * kScreenPanelRows; }

 private:
  std::vector<float> data_;
  Index rows_ = 0, width_ = 0;
};

// Receives the values that pass a screen. `col` counts the packed matrix's rows, padding
// included (col >= rows() is a padding row).
class ScreenHits {
 public:
  virtual void hit(Index row, Index col, float v) = 0;

 protected:
  ~ScreenHits() = default;
};

// Whether screen_tiles can run here: x86-64 with AVX2 and FMA.
bool screen_kernel_available();

// For every row r of A (row-major, nrows x B.width()) and every row c of B's panels
// [panel0, panel1): v = A_r . B_c, summed in float, and hits.hit(r, c, v) unless
// v > row_threshold[r] and (without column thresholds, or) v > column_threshold[c]
// (indexed by B's row; a symmetric distance serves both rows). Thresholds are read again
// for every tile, so hit() may lower them.
void screen_tiles(const float* A, Index nrows, const PanelMatrix& B, Index panel0, Index panel1,
                  const float* row_threshold, ScreenHits& hits,
                  const float* column_threshold = nullptr);

// The largest float f with (v > f) == (v > t) for every float v: the screen compares
// floats with thresholds computed in double.
float float_threshold(double t);

}  // namespace moesim
