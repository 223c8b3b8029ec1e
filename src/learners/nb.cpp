// Gaussian naive Bayes from per-class statistics summed exactly over ranks.
#include "learners/nb.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numbers>
#include <string>

#include "core/error.hpp"
#include "comm/exact_row_sums.hpp"
#include "core/row_order.hpp"
#include "learners/standardize.hpp"

namespace moesim {

namespace {

// Every rank's rows checked together, so bad input throws on all ranks instead of
// hanging the ones that passed. Returns the global feature count.
Index check_rows(const Communicator& comm, const TrainRows& rows, int classes) {
  const Index n = rows.X.rows();
  const Index p = comm.allreduce_max(static_cast<std::int64_t>(rows.X.cols()));
  const auto un = static_cast<std::size_t>(n);
  std::string msg;
  if (n > 0 && rows.X.cols() != p)
    msg = "training rows have " + std::to_string(rows.X.cols()) + " features on this rank, " +
          std::to_string(p) + " elsewhere";
  else if (rows.y.size() != un || rows.w.size() != un)
    msg = "X, y and w have different row counts";
  for (std::size_t i = 0; i < un && msg.empty(); ++i) {
    if (!(std::isfinite(rows.w[i]) && rows.w[i] >= 0))
      msg = "sample weight " + std::to_string(rows.w[i]) + " is not finite and >= 0";
    else if (!(rows.y[i] >= 0 && rows.y[i] < classes && rows.y[i] == std::floor(rows.y[i])))
      msg = "label " + std::to_string(rows.y[i]) + " is not a class index in [0, " +
            std::to_string(classes) + ")";
  }
  comm.agree_or_throw(msg.empty(), "nb: " + msg);
  return p;
}

}  // namespace

NaiveBayesLearner::NaiveBayesLearner(double var_smoothing) : var_smoothing_(var_smoothing) {
  MOESIM_CONFIG_CHECK(std::isfinite(var_smoothing) && var_smoothing >= 0,
                      "nb: var_smoothing must be finite and >= 0 (got " << var_smoothing << ")");
}

void NaiveBayesLearner::fit(const LearnerContext& ctx, const TrainRows& rows) {
  // ctx.classes is the same on every rank, so every rank throws together.
  MOESIM_CONFIG_CHECK(ctx.classes >= 2,
                      "nb is a classifier; it cannot fit a regression task (targets are values, "
                      "not classes): use ridge, knn, tree, forest or gbdt for regression");
  const Communicator& comm = ctx.comm;
  const Index C = ctx.classes, p = check_rows(comm, rows, ctx.classes), n = rows.X.rows();
  auto w = [&](Index i) { return rows.w[static_cast<std::size_t>(i)]; };
  auto cls = [&](Index i) { return static_cast<Index>(rows.y[static_cast<std::size_t>(i)]); };

  // Every bound below is a product of global maxima (or a max over rows of a row's term
  // times them), so that the bounds, and so the sums' rounding grid, are layout-free.
  std::vector<double> mx(1 + static_cast<std::size_t>(p), 0.0);  // [max w | max |x_j|]
  for (Index i = 0; i < n; ++i) mx[0] = std::max(mx[0], w(i));
  for (Index j = 0; j < p && n > 0; ++j) mx[1 + static_cast<std::size_t>(j)] = rows.X.col(j).cwiseAbs().maxCoeff();
  comm.allreduce_max(mx.data(), static_cast<int>(mx.size()));
  const double wmax = mx[0];
  const auto uC = static_cast<std::size_t>(C), up = static_cast<std::size_t>(p);
  auto at = [&](Index c, Index j) { return static_cast<std::size_t>(c * p + j); };

  // Pass 1, exact sums: [sum w per class (C) | sum w x per class (C x p)].
  std::vector<double> b1(uC + uC * up, wmax);
  for (Index j = 0; j < p; ++j) {
    const double b = wmax * mx[1 + static_cast<std::size_t>(j)];
    for (Index c = 0; c < C; ++c) b1[uC + at(c, j)] = b;
  }
  ExactRowSums s1(comm, b1);
  for (Index i = 0; i < n; ++i) {
    s1.add(static_cast<std::size_t>(cls(i)), w(i));
    for (Index j = 0; j < p; ++j) s1.add(uC + at(cls(i), j), w(i) * rows.X(i, j));
    s1.end_row();
  }
  const std::vector<double> t1 = s1.totals(comm);
  const Eigen::Map<const Eigen::VectorXd> sw(t1.data(), C);
  const ConstMatMap<double> swx(t1.data() + C, C, p);
  const double W = sw.sum();
  MOESIM_CONFIG_CHECK(W > 0, "nb: no training row has a positive weight");
  theta_ = Mat<double>::Zero(C, p);
  for (Index c = 0; c < C; ++c)
    if (sw(c) > 0) theta_.row(c) = swx.row(c) / sw(c);
  const RowVec<double> mu = swx.colwise().sum() / W;

  // Pass 2, exact sums: [sum w (x - theta_c)^2 per class (C x p) | sum w (x - mu)^2 (p)],
  // bounded by the largest deviations (not |x|), so that offsets cost no resolution.
  std::vector<double> b2(uC * up + up, 0.0);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < p; ++j) {
      const double dc = std::abs(rows.X(i, j) - theta_(cls(i), j)), dm = std::abs(rows.X(i, j) - mu(j));
      b2[at(cls(i), j)] = std::max(b2[at(cls(i), j)], wmax * dc * dc);
      b2[uC * up + static_cast<std::size_t>(j)] = std::max(b2[uC * up + static_cast<std::size_t>(j)], wmax * dm * dm);
    }
  ExactRowSums s2(comm, b2);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < p; ++j) {
      const double dc = rows.X(i, j) - theta_(cls(i), j), dm = rows.X(i, j) - mu(j);
      s2.add(at(cls(i), j), w(i) * dc * dc);
      s2.add(uC * up + static_cast<std::size_t>(j), w(i) * dm * dm);
    }
    s2.end_row();
  }
  const std::vector<double> t2 = s2.totals(comm);
  const ConstMatMap<double> ssq(t2.data(), C, p);
  const Eigen::Map<const RowVec<double>> gsq(t2.data() + C * p, p);
  const double max_var = p > 0 ? gsq.maxCoeff() / W : 0.0;
  // With every feature constant no variance separates the classes and any positive
  // one leaves the priors; var_smoothing = 0 may leave a class variance at 0, kept
  // finite by DBL_MIN so that its log stays a number.
  epsilon_ = max_var > 0 ? var_smoothing_ * max_var : 1.0;
  var_.resize(C, p);
  log_prior_.resize(C);
  log_norm_.resize(C);
  for (Index c = 0; c < C; ++c) {
    for (Index j = 0; j < p; ++j)
      var_(c, j) = std::max((sw(c) > 0 ? ssq(c, j) / sw(c) : 0.0) + epsilon_, DBL_MIN);
    log_prior_(c) = sw(c) > 0 ? std::log(sw(c) / W) : -HUGE_VAL;
    log_norm_(c) = log_prior_(c) - 0.5 * (2.0 * std::numbers::pi * var_.row(c).array()).log().sum();
  }
  fitted_ = true;
}

Mat<double> NaiveBayesLearner::predict(const LearnerContext& ctx, const Mat<double>& X) {
  MOESIM_REQUIRE(fitted_, "nb: predict before fit");
  const Index n = X.rows(), C = theta_.rows(), p = theta_.cols();
  // Collective only for this check, so that one rank's bad shape fails every rank.
  ctx.comm.agree_or_throw(n == 0 || X.cols() == p, "nb: queries have " + std::to_string(X.cols()) +
                                                       " features, the model " + std::to_string(p));
  Mat<double> out(n, C);
  for (Index i = 0; i < n; ++i) {
    for (Index c = 0; c < C; ++c) {
      if (log_prior_(c) == -HUGE_VAL) {
        out(i, c) = -HUGE_VAL;
        continue;
      }
      double q = 0;
      for (Index j = 0; j < p; ++j) {
        const double d = X(i, j) - theta_(c, j);
        q += d * d / var_(c, j);
      }
      out(i, c) = log_norm_(c) - 0.5 * q;
    }
    // Log-sum-exp; when every class is impossible (a point infinitely far from every
    // zero-variance class) the priors are the only information left.
    const double mx = out.row(i).maxCoeff();
    if (!(mx > -HUGE_VAL)) {
      for (Index c = 0; c < C; ++c) out(i, c) = std::exp(log_prior_(c));
      continue;
    }
    ordered_softmax(out.data() + i * C, C);  // index order: a row's bits do not depend on its place
  }
  return out;
}

std::unique_ptr<Learner> make_nb_learner(const LearnerOptions& opt) {
  return std::make_unique<NaiveBayesLearner>(opt.nb_var_smoothing);
}

}  // namespace moesim
