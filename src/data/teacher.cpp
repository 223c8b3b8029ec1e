#include "data/teacher.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"

namespace moesim {

TeacherTask::TeacherTask(const TeacherConfig& cfg) : cfg_(cfg) {
  MOESIM_CONFIG_CHECK(cfg.experts >= 1 && cfg.top_k >= 1 && cfg.top_k <= cfg.experts,
                      "--teacher-top-k (" << cfg.top_k << ") must be in [1, --teacher-experts ("
                                          << cfg.experts << ")]");
  MOESIM_CONFIG_CHECK(cfg.d_in >= 1 && cfg.hidden >= 1, "teacher needs --input-dim >= 1 and --teacher-hidden >= 1");
  const Index out = output_width(), D = cfg.d_in, H = cfg.hidden;
  // The teacher's own stream key, apart from every stream the student or the
  // regimes task uses for the same seed.
  Rng rng(cfg.teacher_seed, Stream::kTaskParams, 0x7465616368ULL, 0);
  wg_.resize(D, cfg.experts);
  for (Index i = 0; i < wg_.size(); ++i)
    wg_.data()[i] = cfg.router_scale / std::sqrt(static_cast<double>(D)) * rng.normal();
  const double s1 = 2.0 / std::sqrt(static_cast<double>(D));
  const double s2 = (classification() ? 3.0 : 1.5) / std::sqrt(static_cast<double>(H));
  for (int e = 0; e < cfg.experts; ++e) {
    Mat<double> w1(D, H), w2(H, out);
    RowVec<double> b1(H);
    for (Index i = 0; i < w1.size(); ++i) w1.data()[i] = s1 * rng.normal();
    for (Index i = 0; i < b1.size(); ++i) b1.data()[i] = rng.normal();
    for (Index i = 0; i < w2.size(); ++i) w2.data()[i] = s2 * rng.normal();
    w1_.push_back(w1);
    b1_.push_back(b1);
    w2_.push_back(w2);
  }
}

void TeacherTask::teach(const Mat<double>& x, Mat<double>& f, int& top1) const {
  const int E = cfg_.experts, K = cfg_.top_k;
  const RowVec<double> logits = x.row(0) * wg_;
  std::vector<int> order(static_cast<std::size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  // Only the K largest are used: a partial sort with ties to the lower index gives exactly
  // the stable sort's first K (a full sort of E = 64 per token was a third of the default job).
  std::partial_sort(order.begin(), order.begin() + K, order.end(),
                    [&](int a, int b) { return logits(a) > logits(b) || (logits(a) == logits(b) && a < b); });
  top1 = order[0];
  double z = 0;
  for (int j = 0; j < K; ++j) z += std::exp(logits(order[static_cast<std::size_t>(j)]) - logits(top1));
  f.setZero(1, output_width());
  for (int j = 0; j < K; ++j) {
    const int e = order[static_cast<std::size_t>(j)];
    const double g = std::exp(logits(e) - logits(top1)) / z;
    f += g * ((x.row(0) * w1_[static_cast<std::size_t>(e)] + b1_[static_cast<std::size_t>(e)])
                  .array().tanh().matrix() * w2_[static_cast<std::size_t>(e)]);
  }
}

Batch TeacherTask::batch(Stream stream, std::uint64_t index, std::int64_t first, Index n) const {
  Batch b;
  b.x.resize(n, cfg_.d_in);
  b.y.resize(n, 1);
  b.label.assign(static_cast<std::size_t>(n), 0);
  b.cluster.assign(static_cast<std::size_t>(n), 0);
  Mat<double> xi(1, cfg_.d_in), f;
  for (Index i = 0; i < n; ++i) {
    Rng rng(cfg_.seed, stream, index, static_cast<std::uint64_t>(first + i));
    for (Index d = 0; d < cfg_.d_in; ++d) xi(0, d) = rng.normal();
    b.x.row(i) = xi.row(0);
    teach(xi, f, b.cluster[static_cast<std::size_t>(i)]);
    if (classification()) {
      Index best = 0;
      f.row(0).maxCoeff(&best);
      b.label[static_cast<std::size_t>(i)] = static_cast<int>(best);
    } else {
      b.y(i, 0) = f(0, 0) + cfg_.noise * rng.normal();
    }
  }
  return b;
}

}  // namespace moesim
