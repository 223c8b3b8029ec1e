#include "data/regimes.hpp"

#include <cmath>

#include "core/error.hpp"

namespace moesim {

RegimesTask::RegimesTask(const RegimesConfig& cfg) : cfg_(cfg) {
  MOESIM_REQUIRE(cfg.clusters >= 1 && cfg.d_in >= 1, "regimes needs clusters >= 1 and d_in >= 1");
  const int C = cfg.clusters;
  const Index out = output_width();
  Rng rng(cfg.seed, Stream::kTaskParams);
  centres_.resize(C, cfg.d_in);
  for (Index i = 0; i < centres_.size(); ++i) centres_.data()[i] = cfg.separation * rng.normal();
  const double sw = 1.0 / std::sqrt(static_cast<double>(cfg.d_in));
  const double sa = (classification() ? 3.0 : 1.5) / std::sqrt(static_cast<double>(kHidden));
  for (int c = 0; c < C; ++c) {
    Mat<double> w(cfg.d_in, kHidden), a(kHidden, out);
    RowVec<double> b(kHidden);
    for (Index i = 0; i < w.size(); ++i) w.data()[i] = 2.0 * sw * rng.normal();
    for (Index i = 0; i < b.size(); ++i) b.data()[i] = rng.normal();
    for (Index i = 0; i < a.size(); ++i) a.data()[i] = sa * rng.normal();
    w_.push_back(w);
    b_.push_back(b);
    a_.push_back(a);
    // Noise levels spaced geometrically from the cleanest to the noisiest regime.
    const double frac = C > 1 ? static_cast<double>(c) / (C - 1) : 0.0;
    noise_.push_back(cfg.noise_min * std::pow(cfg.noise_max / cfg.noise_min, frac));
  }
}

Batch RegimesTask::batch(Stream stream, std::uint64_t index, std::int64_t first, Index n) const {
  Batch b;
  b.x.resize(n, cfg_.d_in);
  b.y.resize(n, 1);
  b.label.assign(static_cast<std::size_t>(n), 0);
  b.cluster.assign(static_cast<std::size_t>(n), 0);
  const Index out = output_width();
  Mat<double> f(1, out);
  for (Index i = 0; i < n; ++i) {
    Rng rng(cfg_.seed, stream, index, static_cast<std::uint64_t>(first + i));
    const int c = static_cast<int>(rng.below(static_cast<std::uint64_t>(cfg_.clusters)));
    b.cluster[static_cast<std::size_t>(i)] = c;
    for (Index d = 0; d < cfg_.d_in; ++d) b.x(i, d) = centres_(c, d) + rng.normal();
    f = ((b.x.row(i) * w_[c] + b_[c]).array().tanh().matrix()) * a_[c];
    if (classification()) {
      Index best = 0;
      f.row(0).maxCoeff(&best);
      int label = static_cast<int>(best);
      if (rng.uniform() < noise_[c])  // label noise: a uniformly random class
        label = static_cast<int>(rng.below(static_cast<std::uint64_t>(cfg_.classes)));
      b.label[static_cast<std::size_t>(i)] = label;
    } else {
      b.y(i, 0) = f(0, 0) + noise_[c] * rng.normal();
    }
  }
  return b;
}

}  // namespace moesim
