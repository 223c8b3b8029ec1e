// KNN's fused screen against its definition, in float and in bf16: every product of a row
// and a packed row, plus their biases, that does not exceed its row's (or column's)
// threshold is reported once, its value within screen_relative_error of the exact
// product (and float rounding of the sums), for every remainder
// of rows (groups of 4) and panels (groups of 3) and pass seams, and thresholds lowered
// from inside hit() take effect for later tiles.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.hpp"
#include "learners/knn_screen.hpp"

namespace moesim {
namespace {

std::vector<ScreenPrecision> available_precisions() {
  std::vector<ScreenPrecision> out;
  for (ScreenPrecision p : {ScreenPrecision::kFloat, ScreenPrecision::kBf16})
    if (screen_kernel_available(p)) out.push_back(p);
  return out;
}

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
  if (available_precisions().empty()) GTEST_SKIP() << "no AVX2 and FMA on this CPU";
  Rng rng(20261207);
  for (const ScreenPrecision precision : available_precisions())
    for (const bool columns : {false, true})
      for (const Index nrows : {1, 2, 3, 4, 5, 7, 9})
        for (const Index nb : {1, 7, 8, 9, 16, 24, 25, 41})
          for (const Index width : {1, 3, 8}) {
            Mat<float> A(nrows, width), B(nb, width);
            for (Index i = 0; i < A.size(); ++i) A.data()[i] = static_cast<float>(rng.normal());
            for (Index i = 0; i < B.size(); ++i) B.data()[i] = static_cast<float>(rng.normal());
            const RowVec<float> pad = RowVec<float>::Zero(width);
            const PanelMatrix packed(B, pad, precision);
            ASSERT_EQ(packed.rows(), nb);
            ASSERT_EQ(packed.panels(), (nb + 7) / 8);
            const auto cols = static_cast<std::size_t>(packed.panels() * 8);
            std::vector<float> thr(static_cast<std::size_t>(nrows)), cthr(cols), rbias(thr.size()), cbias(cols);
            for (float& t : thr) t = static_cast<float>(rng.normal());
            for (float& t : cthr) t = columns ? static_cast<float>(rng.normal()) : -std::numeric_limits<float>::infinity();
            for (float& b : rbias) b = static_cast<float>(0.5 * rng.normal());
            // Padding rows are kept out by an infinite bias.
            for (std::size_t c = 0; c < cols; ++c)
              cbias[c] = c < static_cast<std::size_t>(nb) ? static_cast<float>(0.5 * rng.normal())
                                                          : std::numeric_limits<float>::infinity();
            Collect hits;
            hits.cols = packed.panels() * kScreenPanelRows;
            hits.value.assign(static_cast<std::size_t>(nrows * hits.cols), std::numeric_limits<float>::quiet_NaN());
            // Two calls split the panels and passes of 2 panels split them again: seams
            // must not lose or repeat a column.
            const Index mid = packed.panels() / 2;
            screen_tiles(A.data(), nrows, packed, 0, mid, 2, rbias.data(), cbias.data(), thr.data(), hits,
                         columns ? cthr.data() : nullptr);
            screen_tiles(A.data(), nrows, packed, mid, packed.panels(), 2, rbias.data(), cbias.data(), thr.data(), hits,
                         columns ? cthr.data() : nullptr);
            EXPECT_FALSE(hits.duplicate);
            for (Index r = 0; r < nrows; ++r)
              for (Index c = 0; c < hits.cols; ++c) {
                double exact = 0, magnitude = 0;
                for (Index k = 0; k < width; ++k) {
                  const double t = static_cast<double>(A(r, k)) * (c < nb ? B(c, k) : pad(k));
                  exact += t;
                  magnitude += std::abs(t);
                }
                const double biases = static_cast<double>(rbias[static_cast<std::size_t>(r)]) + cbias[static_cast<std::size_t>(c)];
                const double slack = screen_relative_error(precision, width) * magnitude +
                                     4.0 * FLT_EPSILON * (std::abs(exact) + std::abs(biases) + magnitude) + 1e-30;
                exact += biases;
                const double t = std::max<double>(thr[static_cast<std::size_t>(r)], cthr[static_cast<std::size_t>(c)]);
                const float got = hits.value[static_cast<std::size_t>(r * hits.cols + c)];
                const std::string at = "precision " + std::to_string(static_cast<int>(precision)) + " rows " +
                                       std::to_string(nrows) + " packed " + std::to_string(nb) + " width " +
                                       std::to_string(width) + " at (" + std::to_string(r) + "," +
                                       std::to_string(c) + ")";
                if (exact < t - slack) {
                  EXPECT_FALSE(std::isnan(got)) << at << " missed";
                }
                if (exact > t + slack) {
                  EXPECT_TRUE(std::isnan(got)) << at << " reported above its thresholds";
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
  if (available_precisions().empty()) GTEST_SKIP() << "no AVX2 and FMA on this CPU";
  for (const ScreenPrecision precision : available_precisions()) {
    const Index nrows = 5, nb = 8 * 12, width = 4;
    const Mat<float> A = Mat<float>::Ones(nrows, width), B = Mat<float>::Ones(nb, width);
    const PanelMatrix packed(B, RowVec<float>::Zero(width), precision);
    struct Lower final : ScreenHits {
      std::vector<float>* thr;
      std::vector<Index> count = std::vector<Index>(5, 0);
      void hit(Index row, Index, float) override {
        ++count[static_cast<std::size_t>(row)];
        (*thr)[static_cast<std::size_t>(row)] = -std::numeric_limits<float>::infinity();
      }
    } lower;
    std::vector<float> thr(nrows, std::numeric_limits<float>::infinity());
    const std::vector<float> rbias(nrows, 0.0f), cbias(nb, 0.0f);
    lower.thr = &thr;
    screen_tiles(A.data(), nrows, packed, 0, packed.panels(), packed.panels(), rbias.data(), cbias.data(), thr.data(),
                 lower);
    // One tile: at most 3 panels of 8 columns.
    for (Index r = 0; r < nrows; ++r) {
      EXPECT_GE(lower.count[static_cast<std::size_t>(r)], 1);
      EXPECT_LE(lower.count[static_cast<std::size_t>(r)], 3 * kScreenPanelRows);
    }
  }
}

TEST(KnnScreen, DotIsTheFloatSum) {
  Rng rng(7);
  for (const Index n : {0, 1, 7, 8, 15, 16, 17, 51}) {
    std::vector<float> a(static_cast<std::size_t>(n)), b(a.size());
    double exact = 0, magnitude = 0;
    for (std::size_t k = 0; k < a.size(); ++k) {
      a[k] = static_cast<float>(rng.normal());
      b[k] = static_cast<float>(rng.normal());
      exact += static_cast<double>(a[k]) * b[k];
      magnitude += std::abs(static_cast<double>(a[k]) * b[k]);
    }
    EXPECT_NEAR(screen_dot(a.data(), b.data(), n), exact,
                screen_relative_error(ScreenPrecision::kFloat, n) * magnitude + 1e-30)
        << n;
  }
}

}  // namespace
}  // namespace moesim
