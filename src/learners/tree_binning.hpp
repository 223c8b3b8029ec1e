#pragma once
// Feature binning for the histogram trees. Edges sit at weighted quantiles of the
// training rows of all ranks, found from two all-reduced histograms: uniform cells over
// the global [min, max], then the cells that hold a quantile cut split again. Only
// histograms cross ranks, and the edges are identical on every rank and do not depend
// on the rank count (integer weights sum exactly in any order).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim {

// Resolution of the edges: (max - min) / (kBinCoarseCells * kBinFineCells).
inline constexpr int kBinCoarseCells = 1024;  // pass 1, uniform over [min, max]
inline constexpr int kBinFineCells = 64;      // pass 2, per cell holding a quantile cut
inline constexpr int kMaxBins = 65536;        // bins are stored as uint16 at most

struct FeatureBins {
  // Per feature, strictly increasing. bin(x) = #{t < x}, so x <= t[b] iff bin(x) <= b:
  // a split "bin <= b" during training is "x <= t[b]" on new rows.
  std::vector<std::vector<double>> thresholds;
  double rows = 0;  // training rows over all ranks
  int bins(int f) const { return static_cast<int>(thresholds[static_cast<std::size_t>(f)].size()) + 1; }
};

// Exact sums across ranks for the binning and the histogram trees: a value x is summed
// as the integer round(x 2^k), k agreed over ranks from the global max |x| and row count
// so that no sum of those rows' terms reaches 2^62. Each term's rounding depends only on
// its row and k, and int64 sums do not depend on their order or on how rows are spread
// over ranks, so every sum is the same bits on any rank count (as LightGBM's quantised
// gradients, with 62 bits instead of 8 to 32).
using Fixed = std::int64_t;
inline int fixed_exponent(double max_abs, double rows) {
  if (!(max_abs > 0) || !std::isfinite(max_abs)) return 0;
  int e = 0, c = 0;
  std::frexp(max_abs, &e);                // max_abs < 2^e
  std::frexp(std::max(rows, 1.0), &c);    // rows < 2^c
  return std::clamp(62 - e - c, -900, 900);
}
// x 2^k rounded to the nearest integer; `scale` = 2^k (k in [-900, 900], so the
// product is exact, as ldexp, and cheaper).
inline Fixed to_fixed(double x, double scale) { return static_cast<Fixed>(std::llrint(x * scale)); }
// A sum back as a double, rounded once: v * unit with unit = 2^-k (exact scaling).
inline double from_fixed(Fixed v, double unit) { return static_cast<double>(v) * unit; }

// NaN goes to the last bin, as "x <= t" is false for it at every split.
inline int bin_of(const std::vector<double>& t, double x) {
  if (std::isnan(x)) return static_cast<int>(t.size());
  return static_cast<int>(std::lower_bound(t.begin(), t.end(), x) - t.begin());
}

// COLLECTIVE. At most max_bins bins per feature, from the rows X with weights w.
// Features that are constant, empty or hold infinities get a single bin.
FeatureBins fit_feature_bins(const Communicator& comm, const Mat<double>& X,
                             const std::vector<double>& w, int max_bins);

// The training rows as bin indices, in one byte per value when every feature has at
// most 256 bins, stored twice: column-major (feature f at [f * n, (f + 1) * n)) for
// histograms over every feature, row-major (row i at [i * p, (i + 1) * p)) to copy whole
// rows when features are sampled (see tree_grow.cpp).
struct BinnedMatrix {
  Index n = 0;
  int p = 0;
  std::vector<int> nbins;
  bool use_wide = false;  // some feature has more than 256 bins
  std::vector<std::uint8_t> cols8, rows8;
  std::vector<std::uint16_t> cols16, rows16;
};

BinnedMatrix bin_matrix(const FeatureBins& bins, const Mat<double>& X);

}  // namespace moesim
