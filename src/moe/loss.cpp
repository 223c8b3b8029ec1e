#include "moe/loss.hpp"

#include <cmath>

namespace moesim {

template <class T>
LossResult task_loss(const Mat<T>& out, const Batch& batch, bool classification,
                     std::int64_t B_global, Mat<T>* dout) {
  LossResult r;
  const Index n = out.rows();
  const double inv_b = B_global > 0 ? 1.0 / static_cast<double>(B_global) : 0.0;
  if (dout) dout->resize(n, out.cols());
  for (Index i = 0; i < n; ++i) {
    if (classification) {
      const int label = batch.label[static_cast<std::size_t>(i)];
      const double mx = static_cast<double>(out.row(i).maxCoeff());
      double z = 0;
      for (Index c = 0; c < out.cols(); ++c) z += std::exp(static_cast<double>(out(i, c)) - mx);
      const double lse = mx + std::log(z);
      r.sum += lse - static_cast<double>(out(i, label));
      Index best = 0;
      out.row(i).maxCoeff(&best);
      r.correct += (best == label);
      if (dout)
        for (Index c = 0; c < out.cols(); ++c)
          (*dout)(i, c) = static_cast<T>(
              (std::exp(static_cast<double>(out(i, c)) - lse) - (c == label ? 1.0 : 0.0)) * inv_b);
    } else {
      const double diff = static_cast<double>(out(i, 0)) - batch.y(i, 0);
      r.sum += diff * diff;
      if (dout) (*dout)(i, 0) = static_cast<T>(2.0 * diff * inv_b);
    }
  }
  return r;
}

template LossResult task_loss<float>(const Mat<float>&, const Batch&, bool, std::int64_t, Mat<float>*);
template LossResult task_loss<double>(const Mat<double>&, const Batch&, bool, std::int64_t, Mat<double>*);

}  // namespace moesim
