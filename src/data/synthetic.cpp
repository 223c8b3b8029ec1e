#include "data/synthetic.hpp"

#include <cmath>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/shard.hpp"

namespace moesim {

Table make_synthetic(const Communicator& comm, const SyntheticSpec& s) {
  MOESIM_CONFIG_CHECK(s.rows >= 1 && s.features >= 1, "synthetic data needs rows >= 1 and features >= 1");
  MOESIM_CONFIG_CHECK(s.informative >= 1 && s.informative + s.redundant <= s.features,
                      "need 1 <= informative and informative + redundant <= features");
  MOESIM_CONFIG_CHECK(!s.classification || (s.classes >= 2 && s.clusters_per_class >= 1),
                      "classification needs classes >= 2 and clusters-per-class >= 1");
  const int I = s.informative, R = s.redundant, p = s.features;
  const int clusters = s.classification ? s.classes * s.clusters_per_class : 4;
  // Fixed structure from the seed: cluster centres on scaled random hypercube
  // vertices, per-cluster linear distortions, the redundant mixing, regression weights.
  Rng rng(s.seed, Stream::kTaskParams, 77);
  Mat<double> centres(clusters, I), mix(I, std::max(R, 1)), beta(clusters, I);
  std::vector<Mat<double>> distort;
  for (int c = 0; c < clusters; ++c) {
    for (int j = 0; j < I; ++j) centres(c, j) = s.class_sep * (rng.uniform() < 0.5 ? -1.0 : 1.0) * (1.0 + 0.5 * rng.uniform());
    Mat<double> a(I, I);
    for (Index k = 0; k < a.size(); ++k) a.data()[k] = (rng.uniform() * 2 - 1) * 0.5;
    a.diagonal().array() += 1.0;
    distort.push_back(a);
    for (int j = 0; j < I; ++j) beta(c, j) = rng.normal();
  }
  for (Index k = 0; k < mix.size(); ++k) mix.data()[k] = rng.normal();

  Table t;
  const Shard sh = shard_of(s.rows, comm.rank(), comm.size());
  t.rows_global = s.rows;
  t.first = sh.first;
  t.X.resize(sh.count, p);
  t.y.assign(static_cast<std::size_t>(sh.count), 0.0);
  t.w.assign(static_cast<std::size_t>(sh.count), 1.0);
  for (int j = 0; j < p; ++j) t.features.push_back("x" + std::to_string(j));
  if (s.classification)
    for (int c = 0; c < s.classes; ++c) t.classes.push_back(std::to_string(c));
  RowVec<double> z(I), xi(I);
  for (std::int64_t i = 0; i < sh.count; ++i) {
    Rng r(s.seed, Stream::kTrain, 0xDA7A, static_cast<std::uint64_t>(sh.first + i));
    const int c = static_cast<int>(r.below(static_cast<std::uint64_t>(clusters)));
    for (int j = 0; j < I; ++j) z(j) = r.normal();
    xi = centres.row(c) + z * distort[static_cast<std::size_t>(c)];
    t.X.row(i).head(I) = xi;
    if (R > 0) t.X.row(i).segment(I, R) = xi * mix;
    for (int j = I + R; j < p; ++j) t.X(i, j) = r.normal();
    if (s.classification) {
      int label = c % s.classes;
      if (r.uniform() < s.label_noise) label = static_cast<int>(r.below(static_cast<std::uint64_t>(s.classes)));
      t.y[static_cast<std::size_t>(i)] = label;
    } else {
      // A different linear regime per cluster plus a smooth non-linearity.
      t.y[static_cast<std::size_t>(i)] = xi.dot(beta.row(c)) + 2.0 * std::sin(xi(0)) + s.noise * r.normal();
    }
  }
  return t;
}

}  // namespace moesim
