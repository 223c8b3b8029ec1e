// KNN's fused screen against its definition: every product of a row and a packed row that
// does not exceed the row's threshold is reported once, with its float value, for every
// remainder of rows (groups of 4) and panels (groups of 3), and thresholds lowered from
// inside hit() take effect for later tiles.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "core/rng.hpp"
#include "learners/knn_screen.hpp"

namespace moesim {
namespace {

struct Collect final : ScreenHits {
  std::set<std::pair<Index, Index>> seen;
  std::vector<float> value;  // by row * cols + col
  Index cols = 0;
  bool duplicate = false;
  void hit(Index row, Index col, float v) override {
    duplicate = duplicate || !seen.insert({row, col}).second;
    value[static_cast<std::size_t>(row * cols + col)] = v;
  }
};

TEST(KnnScreen, ReportsEveryValueUnderItsThreshold) {
  if (!screen_kernel_available()) GTEST_SKIP() << "no AVX2 and FMA on this CPU";
  Rng rng(20261207);
  for (const Index nrows : {1, 2, 3, 4, 5, 7, 9})
    for (const Index nb : {1, 7, 8, 9, 16, 24, 25, 41})
      for (const Index width : {1, 3, 8}) {
        Mat<float> A(nrows, width), B(nb, width);
        for (Index i = 0; i < A.size(); ++i) A.data()[i] = static_cast<float>(rng.normal());
        for (Index i = 0; i < B.size(); ++i) B.data()[i] = static_cast<float>(rng.normal());
        RowVec<float> pad = RowVec<float>::Constant(width, 1e30f);
        const PanelMatrix packed(B, pad);
        ASSERT_EQ(packed.rows(), nb);
        ASSERT_EQ(packed.panels(), (nb + 7) / 8);
        std::vector<float> thr(static_cast<std::size_t>(nrows));
        for (Index r = 0; r < nrows; ++r) thr[static_cast<std::size_t>(r)] = static_cast<float>(rng.normal());
        Collect hits;
        hits.cols = packed.panels() * kScreenPanelRows;
        hits.value.assign(static_cast<std::size_t>(nrows * hits.cols), std::numeric_limits<float>::quiet_NaN());
        // Two calls split the panels: the seam must not lose or repeat a column.
        const Index mid = packed.panels() / 2;
        screen_tiles(A.data(), nrows, packed, 0, mid, thr.data(), hits);
        screen_tiles(A.data(), nrows, packed, mid, packed.panels(), thr.data(), hits);
        EXPECT_FALSE(hits.duplicate);
        for (Index r = 0; r < nrows; ++r)
          for (Index c = 0; c < hits.cols; ++c) {
            double exact = 0;
            for (Index k = 0; k < width; ++k)
              exact += static_cast<double>(A(r, k)) * (c < nb ? B(c, k) : pad(k));
            const double slack = 1e-5 * (1 + std::abs(exact));
            const double t = thr[static_cast<std::size_t>(r)];
            const float got = hits.value[static_cast<std::size_t>(r * hits.cols + c)];
            const std::string at = "rows " + std::to_string(nrows) + " packed " + std::to_string(nb) +
                                   " width " + std::to_string(width) + " at (" + std::to_string(r) +
                                   "," + std::to_string(c) + ")";
            if (exact < t - slack) {
              EXPECT_FALSE(std::isnan(got)) << at << " missed";
            }
            if (exact > t + slack) {
              EXPECT_TRUE(std::isnan(got)) << at << " reported above its threshold";
            }
            if (!std::isnan(got)) {
              EXPECT_LE(got, t) << at;
              EXPECT_NEAR(got, exact, slack) << at;
            }
          }
      }
}

// hit() lowers its row's threshold to -inf: nothing more is reported for that row after
// the tile that made the first report.
TEST(KnnScreen, ThresholdsLoweredInsideHitApplyToLaterTiles) {
  if (!screen_kernel_available()) GTEST_SKIP() << "no AVX2 and FMA on this CPU";
  const Index nrows = 5, nb = 8 * 12, width = 4;
  const Mat<float> A = Mat<float>::Ones(nrows, width), B = Mat<float>::Ones(nb, width);
  const PanelMatrix packed(B, RowVec<float>::Zero(width));
  struct Lower final : ScreenHits {
    std::vector<float>* thr;
    std::vector<Index> count = std::vector<Index>(5, 0);
    void hit(Index row, Index, float) override {
      ++count[static_cast<std::size_t>(row)];
      (*thr)[static_cast<std::size_t>(row)] = -std::numeric_limits<float>::infinity();
    }
  } lower;
  std::vector<float> thr(nrows, std::numeric_limits<float>::infinity());
  lower.thr = &thr;
  screen_tiles(A.data(), nrows, packed, 0, packed.panels(), thr.data(), lower);
  // One tile: at most 3 panels of 8 columns.
  for (Index r = 0; r < nrows; ++r) {
    EXPECT_GE(lower.count[static_cast<std::size_t>(r)], 1);
    EXPECT_LE(lower.count[static_cast<std::size_t>(r)], 3 * kScreenPanelRows);
  }
}

}  // namespace
}  // namespace moesim
