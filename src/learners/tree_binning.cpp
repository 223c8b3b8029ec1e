// Two-pass weighted quantile binning from all-reduced histograms (see tree_binning.hpp).
#include "learners/tree_binning.hpp"

#include <limits>
#include <type_traits>

#include "core/error.hpp"

namespace moesim {

namespace {

constexpr int K1 = kBinCoarseCells, K2 = kBinFineCells;

// Position in coarse cells, in [0, K1]; the same expression everywhere so that a value
// lands in the same cell in both passes.
inline double cell_position(double x, double lo, double scale) { return (x - lo) * scale; }
inline int coarse_cell(double pos) { return std::min(K1 - 1, static_cast<int>(pos)); }
inline int fine_cell(double pos, int c) {
  return std::min(K2 - 1, static_cast<int>((pos - static_cast<double>(c)) * K2));
}
// Upper edge of piece `num` (in units of one fine cell) of [lo, hi].
inline double piece_edge(double lo, double hi, std::int64_t num) {
  return lo + (hi - lo) * (static_cast<double>(num) / (static_cast<double>(K1) * K2));
}

}  // namespace

FeatureBins fit_feature_bins(const Communicator& comm, const Mat<double>& X,
                             const std::vector<double>& w, int max_bins) {
  MOESIM_CONFIG_CHECK(max_bins >= 2 && max_bins <= kMaxBins,
                      "max_bins must be in [2, " << kMaxBins << "], got " << max_bins);
  const Index n = X.rows();
  const int p = static_cast<int>(X.cols());
  const std::size_t P = static_cast<std::size_t>(p);
  const double inf = std::numeric_limits<double>::infinity();

  // Global range and largest weight: [max | -min | max w] in one all-reduce.
  std::vector<double> ext(2 * P + 1, -inf);
  for (Index i = 0; i < n; ++i) {
    ext[2 * P] = std::max(ext[2 * P], std::abs(w[static_cast<std::size_t>(i)]));
    for (int f = 0; f < p; ++f) {
      const double x = X(i, f);
      if (std::isnan(x)) continue;
      ext[static_cast<std::size_t>(f)] = std::max(ext[static_cast<std::size_t>(f)], x);
      ext[P + static_cast<std::size_t>(f)] = std::max(ext[P + static_cast<std::size_t>(f)], -x);
    }
  }
  comm.allreduce_max(ext.data(), 2 * p + 1);
  // Masses are summed exactly (fixed point, tree_binning.hpp): the edges then do not
  // depend on how rows are spread over ranks.
  const std::int64_t rows = comm.allreduce_sum(static_cast<std::int64_t>(n));
  const int expo = fixed_exponent(ext[2 * P], static_cast<double>(rows));
  const double unit = std::ldexp(1.0, -expo), wscale = std::ldexp(1.0, expo);
  std::vector<Fixed> wq(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) wq[static_cast<std::size_t>(i)] = to_fixed(w[static_cast<std::size_t>(i)], wscale);
  std::vector<double> lo(P), hi(P), scale(P, 0.0);
  std::vector<char> active(P);
  for (std::size_t f = 0; f < P; ++f) {
    lo[f] = -ext[P + f];
    hi[f] = ext[f];
    active[f] = std::isfinite(lo[f]) && std::isfinite(hi[f]) && hi[f] > lo[f];
    if (active[f]) scale[f] = K1 / (hi[f] - lo[f]);
  }

  // Pass 1: weighted mass per coarse cell.
  std::vector<Fixed> q1(P * K1, 0);
  for (Index i = 0; i < n; ++i) {
    const Fixed wi = wq[static_cast<std::size_t>(i)];
    for (int f = 0; f < p; ++f) {
      const std::size_t fs = static_cast<std::size_t>(f);
      const double x = X(i, f);
      if (!active[fs] || std::isnan(x)) continue;
      q1[fs * K1 + static_cast<std::size_t>(coarse_cell(cell_position(x, lo[fs], scale[fs])))] += wi;
    }
  }
  comm.allreduce_sum(q1.data(), static_cast<int>(q1.size()));
  std::vector<double> m1(q1.size());
  for (std::size_t j = 0; j < q1.size(); ++j) m1[j] = from_fixed(q1[j], unit);

  // Cells where a cut k W / B falls get a slot of K2 fine cells.
  const int B = max_bins;
  std::vector<double> total(P, 0.0);
  std::vector<int> slot_of(P * K1, -1);
  int slots = 0;
  for (std::size_t f = 0; f < P; ++f) {
    if (!active[f]) continue;
    const double* m = m1.data() + f * K1;
    for (int c = 0; c < K1; ++c) total[f] += m[c];
    if (!(total[f] > 0)) continue;
    double cum = 0;
    int k = 1;
    for (int c = 0; c < K1 && k < B; ++c) {
      cum += m[c];
      bool cut_here = false;
      while (k < B && total[f] * k / B <= cum) {
        cut_here = true;
        ++k;
      }
      if (cut_here) slot_of[f * K1 + static_cast<std::size_t>(c)] = slots++;
    }
  }

  // Pass 2: weighted mass per fine cell of the refined cells.
  std::vector<Fixed> q2(static_cast<std::size_t>(slots) * K2, 0);
  for (Index i = 0; i < n; ++i) {
    const Fixed wi = wq[static_cast<std::size_t>(i)];
    for (int f = 0; f < p; ++f) {
      const std::size_t fs = static_cast<std::size_t>(f);
      const double x = X(i, f);
      if (!active[fs] || !(total[fs] > 0) || std::isnan(x)) continue;
      const double pos = cell_position(x, lo[fs], scale[fs]);
      const int c = coarse_cell(pos);
      const int s = slot_of[fs * K1 + static_cast<std::size_t>(c)];
      if (s >= 0) q2[static_cast<std::size_t>(s) * K2 + static_cast<std::size_t>(fine_cell(pos, c))] += wi;
    }
  }
  comm.allreduce_sum(q2.data(), static_cast<int>(q2.size()));
  std::vector<double> m2(q2.size());
  for (std::size_t j = 0; j < q2.size(); ++j) m2[j] = from_fixed(q2[j], unit);

  // Walk the pieces (whole cells, or fine cells of refined ones) in order; cut k lies at
  // the upper edge of the first piece whose cumulative mass reaches k W / B.
  FeatureBins out;
  out.rows = static_cast<double>(rows);
  out.thresholds.resize(P);
  for (std::size_t f = 0; f < P; ++f) {
    if (!active[f] || !(total[f] > 0)) continue;
    std::vector<double>& t = out.thresholds[f];
    double cum = 0;
    int k = 1;
    auto take = [&](double mass, std::int64_t num) {
      if (!(mass > 0)) return;
      cum += mass;
      bool cut_here = false;
      while (k < B && total[f] * k / B <= cum) {
        cut_here = true;
        ++k;
      }
      const double e = piece_edge(lo[f], hi[f], num);
      if (cut_here && e < hi[f] && (t.empty() || e > t.back())) t.push_back(e);
    };
    for (int c = 0; c < K1 && k < B; ++c) {
      const int s = slot_of[f * K1 + static_cast<std::size_t>(c)];
      if (s < 0) {
        take(m1[f * K1 + static_cast<std::size_t>(c)], std::int64_t{c + 1} * K2);
      } else {
        for (int j = 0; j < K2; ++j)
          take(m2[static_cast<std::size_t>(s) * K2 + static_cast<std::size_t>(j)],
               std::int64_t{c} * K2 + j + 1);
      }
    }
  }
  return out;
}

namespace {

// bin_of through a uniform grid over [t.front(), t.back()]: the grid cell gives a
// starting bin, and a short walk makes the answer exactly lower_bound's.
class BinLookup {
 public:
  explicit BinLookup(const std::vector<double>& t) : t_(t) {
    if (t.size() < 2) return;
    cells_ = 4 * static_cast<int>(t.size());
    lo_ = t.front();
    scale_ = cells_ / (t.back() - t.front());
    start_.resize(static_cast<std::size_t>(cells_) + 1);
    for (int g = 0; g <= cells_; ++g)
      start_[static_cast<std::size_t>(g)] = bin_of(t, lo_ + static_cast<double>(g) / scale_);
  }
  int operator()(double x) const {
    const int T = static_cast<int>(t_.size());
    if (std::isnan(x)) return T;
    if (cells_ == 0) return bin_of(t_, x);
    if (x <= t_.front()) return 0;
    if (x > t_.back()) return T;
    const int g = std::min(cells_, static_cast<int>((x - lo_) * scale_));
    int b = start_[static_cast<std::size_t>(g)];
    while (b < T && t_[static_cast<std::size_t>(b)] < x) ++b;
    while (b > 0 && t_[static_cast<std::size_t>(b) - 1] >= x) --b;
    return b;
  }

 private:
  const std::vector<double>& t_;
  int cells_ = 0;
  double lo_ = 0, scale_ = 0;
  std::vector<int> start_;
};

}  // namespace

BinnedMatrix bin_matrix(const FeatureBins& bins, const Mat<double>& X) {
  BinnedMatrix b;
  b.n = X.rows();
  b.p = static_cast<int>(X.cols());
  MOESIM_REQUIRE(static_cast<int>(bins.thresholds.size()) == b.p,
                 "binning has " << bins.thresholds.size() << " features, rows have " << b.p);
  b.nbins.resize(static_cast<std::size_t>(b.p));
  int widest = 1;
  for (int f = 0; f < b.p; ++f) widest = std::max(widest, b.nbins[static_cast<std::size_t>(f)] = bins.bins(f));
  b.use_wide = widest > 256;
  const std::size_t n = static_cast<std::size_t>(b.n), p = static_cast<std::size_t>(b.p);
  auto fill = [&](auto& cols, auto& rows) {
    cols.resize(n * p);
    rows.resize(n * p);
    using BinT = std::remove_reference_t<decltype(cols[0])>;
    std::vector<BinLookup> look;
    for (std::size_t f = 0; f < p; ++f) look.emplace_back(bins.thresholds[f]);
    for (std::size_t i = 0; i < n; ++i) {
      const double* x = X.data() + i * p;
      for (std::size_t f = 0; f < p; ++f) rows[i * p + f] = static_cast<BinT>(look[f](x[f]));
    }
    for (std::size_t f = 0; f < p; ++f)
      for (std::size_t i = 0; i < n; ++i) cols[f * n + i] = rows[i * p + f];
  };
  if (b.use_wide) fill(b.cols16, b.rows16);
  else fill(b.cols8, b.rows8);
  return b;
}

}  // namespace moesim
