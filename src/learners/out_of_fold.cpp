// The default out-of-fold pass: one fit and one prediction per fold.
#include "core/timer.hpp"
#include "learners/learner.hpp"

namespace moesim {

Mat<double> kept_rows(const Mat<double>& X, const std::vector<char>& keep) {
  Index n = 0;
  for (char k : keep) n += k ? 1 : 0;
  Mat<double> out(n, X.cols());
  Index r = 0;
  for (Index i = 0; i < X.rows(); ++i)
    if (keep[static_cast<std::size_t>(i)]) out.row(r++) = X.row(i);
  return out;
}

OutOfFold Learner::out_of_fold(const LearnerContext& ctx, const TrainRows& rows, const std::vector<int>& fold,
                               int K, const std::function<void(Learner&)>& each_model) const {
  const Index n = rows.X.rows();
  OutOfFold out;
  for (int k = 0; k < K; ++k) {
    std::vector<char> train(static_cast<std::size_t>(n)), held(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      const bool in_k = fold[static_cast<std::size_t>(i)] == k;
      held[static_cast<std::size_t>(i)] = in_k;
      train[static_cast<std::size_t>(i)] = !in_k;
    }
    // The fold's model sees only the other folds' rows.
    const Mat<double> Xtr = kept_rows(rows.X, train);
    const std::vector<double> ytr = kept_values(rows.y, train), wtr = kept_values(rows.w, train);
    const std::vector<std::int64_t> idtr = kept_values(rows.id, train);
    std::unique_ptr<Learner> model = clone();
    Stopwatch sw;
    model->fit(ctx, TrainRows{Xtr, ytr, wtr, idtr});
    out.fit_seconds += sw.seconds();
    sw.reset();
    const Mat<double> pred = model->predict(ctx, kept_rows(rows.X, held));
    out.predict_seconds += sw.seconds();
    if (k == 0) out.pred = Mat<double>::Zero(n, pred.cols());
    Index j = 0;
    for (Index i = 0; i < n; ++i)
      if (held[static_cast<std::size_t>(i)]) out.pred.row(i) = pred.row(j++);
    if (each_model) each_model(*model);
  }
  return out;
}

}  // namespace moesim
