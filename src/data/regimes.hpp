#pragma once
// The "regimes" task: inputs from C clusters, each cluster with its own target
// function and its own noise level (a multimodal target, as in score bands). An MoE
// should learn to route each regime to its own experts.
#include <cstdint>
#include <vector>

#include "data/task.hpp"

namespace moesim {

struct RegimesConfig {
  Index d_in = 16;
  int clusters = 8;        // C
  int classes = 0;         // 0: regression (MSE); >= 2: classification (cross-entropy)
  double noise_min = 0.01; // noise of the cleanest cluster (target std or label-flip rate)
  double noise_max = 0.5;  // noise of the noisiest cluster
  double separation = 3.0; // std of the cluster centres relative to the within-cluster spread
  std::uint64_t seed = 1;
};

class RegimesTask : public Task {
 public:
  explicit RegimesTask(const RegimesConfig& cfg);
  std::string name() const override { return "regimes"; }
  bool classification() const override { return cfg_.classes >= 2; }
  Index input_width() const override { return cfg_.d_in; }
  Index output_width() const override { return classification() ? cfg_.classes : 1; }
  int sources() const override { return cfg_.clusters; }
  // Tokens [first, first + n) of batch `index` in `stream`: a pure function of
  // (seed, stream, index, token), so each rank draws just its shard.
  Batch batch(Stream stream, std::uint64_t index, std::int64_t first, Index n) const override;
  double noise(int c) const { return noise_[static_cast<std::size_t>(c)]; }

 private:
  static constexpr Index kHidden = 16;
  RegimesConfig cfg_;
  Mat<double> centres_;             // C x d_in
  std::vector<Mat<double>> w_;      // per cluster: d_in x H
  std::vector<RowVec<double>> b_;   // per cluster: 1 x H
  std::vector<Mat<double>> a_;      // per cluster: H x out
  std::vector<double> noise_;
};

}  // namespace moesim
