// Ridge regression and multinomial logistic regression, trained from all-reduced
// statistics of the training rows: a Gram matrix (ridge), gradients and Hessians
// (logistic, Newton's method). Features are standardised with training statistics.
#include <Eigen/Cholesky>
#include <cmath>

#include "learners/learner.hpp"
#include "learners/linear.hpp"
#include "learners/standardize.hpp"

namespace moesim {

namespace {

// Targets as a matrix: the value (regression) or one-hot rows (classification).
Mat<double> target_matrix(const std::vector<double>& y, int classes) {
  const Index n = static_cast<Index>(y.size());
  if (classes == 0) return ConstMatMap<double>(y.data(), n, 1);
  Mat<double> Y = Mat<double>::Zero(n, classes);
  for (Index i = 0; i < n; ++i) Y(i, static_cast<Index>(y[static_cast<std::size_t>(i)])) = 1.0;
  return Y;
}

}  // namespace

// ---------------------------------------------------------------------------- ridge

void RidgeLearner::fit(const LearnerContext& ctx, const TrainRows& rows) {
  const Mat<double>& X = rows.X;
  const std::vector<double>& y = rows.y;
  const std::vector<double>& w = rows.w;
  classes_ = ctx.classes;
  scaler_.fit(ctx.comm, X, w);
  const Mat<double> Z = scaler_.apply(X);
  const Mat<double> Y = target_matrix(y, classes_);
  const Index p = Z.cols(), m = Y.cols();
  // Weighted sums for centring and the Gram system, in one all-reduce:
  // [sum w | sum w y (m) | Z^T W Z (p x p) | Z^T W Y (p x m) | sum w z (p)].
  const Eigen::Map<const Eigen::VectorXd> wv(w.data(), static_cast<Index>(w.size()));
  std::vector<double> buf(static_cast<std::size_t>(1 + m + p * p + p * m + p), 0.0);
  buf[0] = wv.sum();
  Eigen::Map<RowVec<double>>(buf.data() + 1, m) = wv.transpose() * Y;
  Eigen::Map<Mat<double>>(buf.data() + 1 + m, p, p) = Z.transpose() * wv.asDiagonal() * Z;
  Eigen::Map<Mat<double>>(buf.data() + 1 + m + p * p, p, m) = Z.transpose() * wv.asDiagonal() * Y;
  Eigen::Map<RowVec<double>>(buf.data() + 1 + m + p * p + p * m, p) = wv.transpose() * Z;
  ctx.comm.allreduce_sum(buf.data(), static_cast<int>(buf.size()));
  const double sw = buf[0] > 0 ? buf[0] : 1.0;
  const RowVec<double> ymean = Eigen::Map<RowVec<double>>(buf.data() + 1, m) / sw;
  const RowVec<double> zmean = Eigen::Map<RowVec<double>>(buf.data() + 1 + m + p * p + p * m, p) / sw;
  // Centred system: (Z^T W Z - sw zm^T zm + alpha I) B = Z^T W Y - sw zm^T ym.
  Mat<double> G = Eigen::Map<Mat<double>>(buf.data() + 1 + m, p, p);
  G -= sw * zmean.transpose() * zmean;
  G.diagonal().array() += alpha_;
  Mat<double> R = Eigen::Map<Mat<double>>(buf.data() + 1 + m + p * p, p, m);
  R -= sw * zmean.transpose() * ymean;
  coef_ = G.ldlt().solve(R);
  intercept_ = ymean - zmean * coef_;
}

Mat<double> RidgeLearner::predict(const LearnerContext&, const Mat<double>& X) {
  Mat<double> out = scaler_.apply(X) * coef_;
  out.rowwise() += intercept_;
  if (classes_ >= 2) {
    // One-vs-rest regression scores turned into a distribution: clip to [0, 1] and
    // normalise (uniform when every score is <= 0).
    for (Index i = 0; i < out.rows(); ++i) {
      out.row(i) = out.row(i).cwiseMax(0.0).cwiseMin(1.0);
      const double s = out.row(i).sum();
      if (s > 0) out.row(i) /= s;
      else out.row(i).setConstant(1.0 / static_cast<double>(classes_));
    }
  }
  return out;
}

// ------------------------------------------------------------------------- logistic

void LogisticLearner::fit(const LearnerContext& ctx, const TrainRows& rows) {
  const Mat<double>& X = rows.X;
  const std::vector<double>& y = rows.y;
  const std::vector<double>& w = rows.w;
  MOESIM_REQUIRE(ctx.classes >= 2, "logistic regression needs a classification problem");
  classes_ = ctx.classes;
  scaler_.fit(ctx.comm, X, w);
  Mat<double> A(X.rows(), X.cols() + 1);  // standardised features and a bias column
  A.leftCols(X.cols()) = scaler_.apply(X);
  A.col(X.cols()).setOnes();
  const Index n = A.rows(), q = A.cols(), C = classes_;
  const Mat<double> Y = target_matrix(y, classes_);
  W_ = Mat<double>::Zero(q, C);
  // scikit-learn's objective: C * sum_i w_i CE_i + 0.5 ||W||^2 (bias not penalised).
  const double lambda = 1.0 / c_;
  auto penalty_diag = [&](Index k) { return (k % q == q - 1) ? 1e-10 : lambda; };

  auto softmax_rows = [&](const Mat<double>& W) {
    Mat<double> S = A * W;
    for (Index i = 0; i < n; ++i) {
      const double mx = S.row(i).maxCoeff();
      S.row(i) = (S.row(i).array() - mx).exp().matrix();
      S.row(i) /= S.row(i).sum();
    }
    return S;
  };
  auto objective = [&](const Mat<double>& W) {
    const Mat<double> P = softmax_rows(W);
    double local = 0;
    for (Index i = 0; i < n; ++i)
      local -= w[static_cast<std::size_t>(i)] *
               std::log(std::max(P(i, static_cast<Index>(y[static_cast<std::size_t>(i)])), 1e-300));
    const double total = ctx.comm.allreduce_sum(local);
    return total + 0.5 * lambda * W.topRows(q - 1).squaredNorm();
  };

  const Eigen::Map<const Eigen::VectorXd> wv(w.data(), n);
  if (C == 2) {
    // Two classes: the multinomial optimum has W_1 = -W_0 = beta / 2 (the likelihood
    // sees only W_1 - W_0; the penalty is least when the halves are opposite), so Newton
    // runs on beta alone with penalty 0.25 lambda ||beta||^2: a q x q Hessian from one
    // symmetric rank-n update instead of three (2q)-wide blocks, a sixth of the flops.
    const Eigen::VectorXd yv = Y.col(1);
    auto probs = [&](const Eigen::VectorXd& b) {
      Eigen::VectorXd pr = A * b;
      for (Index i = 0; i < n; ++i) pr(i) = pr(i) >= 0 ? 1 / (1 + std::exp(-pr(i))) : std::exp(pr(i)) / (1 + std::exp(pr(i)));
      return pr;
    };
    auto objective2 = [&](const Eigen::VectorXd& b) {
      const Eigen::VectorXd s = A * b;
      double local = 0;
      for (Index i = 0; i < n; ++i)  // -log sigmoid(+-s) = log1p(exp(-|s|)) + max(-+s, 0)
        local += wv(i) * (std::log1p(std::exp(-std::abs(s(i)))) + std::max(yv(i) > 0.5 ? -s(i) : s(i), 0.0));
      return ctx.comm.allreduce_sum(local) + 0.25 * lambda * b.head(q - 1).squaredNorm();
    };
    Eigen::VectorXd beta = Eigen::VectorXd::Zero(q);
    double f2 = objective2(beta);
    Mat<double> B(n, q);
    for (iterations_ = 0; iterations_ < max_iter_; ++iterations_) {
      const Eigen::VectorXd pr = probs(beta);
      std::vector<double> buf(static_cast<std::size_t>(q + q * q), 0.0);
      Eigen::Map<Eigen::VectorXd> grad(buf.data(), q);
      Eigen::Map<Mat<double>> H(buf.data() + q, q, q);
      grad = A.transpose() * (wv.array() * (pr - yv).array()).matrix();
      for (Index i = 0; i < n; ++i) B.row(i) = A.row(i) * std::sqrt(wv(i) * pr(i) * (1 - pr(i)));
      H.selfadjointView<Eigen::Lower>().rankUpdate(B.transpose());
      ctx.comm.allreduce_sum(buf.data(), static_cast<int>(buf.size()));
      H.triangularView<Eigen::StrictlyUpper>() = H.transpose();
      Eigen::VectorXd g = grad;
      for (Index j = 0; j + 1 < q; ++j) {
        g(j) += 0.5 * lambda * beta(j);
        H(j, j) += 0.5 * lambda;
      }
      H(q - 1, q - 1) += 5e-11;  // penalty_diag's 1e-10 on each half of the bias
      // Converged as the multinomial loop: its gradient is -g / 2, g / 2.
      if (0.5 * g.lpNorm<Eigen::Infinity>() < tol_) break;
      const Eigen::VectorXd step = H.ldlt().solve(g);
      double t = 1.0, f_new = f2;
      for (int ls = 0; ls < 30; ++ls, t *= 0.5) {
        f_new = objective2(beta - t * step);
        if (f_new <= f2 - 1e-4 * t * g.dot(step)) break;
      }
      beta -= t * step;
      const bool converged = std::abs(f2 - f_new) <= 1e-12 * std::max(1.0, std::abs(f2));
      f2 = f_new;
      if (converged) break;
    }
    W_.col(1) = 0.5 * beta;
    W_.col(0) = -0.5 * beta;
    return;
  }
  double f = objective(W_);
  for (iterations_ = 0; iterations_ < max_iter_; ++iterations_) {
    const Mat<double> P = softmax_rows(W_);
    // Gradient (q x C) and Hessian ((qC) x (qC), blocks c,d = A^T diag(w p_c (d_cd - p_d)) A),
    // one all-reduce for both; only the upper block triangle is formed.
    const Index dim = q * C;
    std::vector<double> buf(static_cast<std::size_t>(dim + dim * dim), 0.0);
    Eigen::Map<Mat<double>> grad(buf.data(), q, C);
    Eigen::Map<Mat<double>> H(buf.data() + dim, dim, dim);
    grad = A.transpose() * (wv.asDiagonal() * (P - Y));
    for (Index c = 0; c < C; ++c)
      for (Index d = c; d < C; ++d) {
        Eigen::VectorXd s = wv.array() * P.col(c).array() * ((c == d ? 1.0 : 0.0) - P.col(d).array());
        H.block(c * q, d * q, q, q) = A.transpose() * s.asDiagonal() * A;
      }
    ctx.comm.allreduce_sum(buf.data(), static_cast<int>(buf.size()));
    for (Index c = 0; c < C; ++c)
      for (Index d = 0; d < c; ++d) H.block(c * q, d * q, q, q) = H.block(d * q, c * q, q, q).transpose();
    // Parameters ordered class-major: index c*q + j  <->  W(j, c).
    Eigen::VectorXd g(dim);
    for (Index c = 0; c < C; ++c)
      for (Index j = 0; j < q; ++j) {
        g(c * q + j) = grad(j, c) + (j == q - 1 ? 0.0 : lambda * W_(j, c));
        H(c * q + j, c * q + j) += penalty_diag(j);
      }
    if (g.lpNorm<Eigen::Infinity>() < tol_) break;
    const Eigen::VectorXd step = H.ldlt().solve(g);
    Mat<double> dW(q, C);
    for (Index c = 0; c < C; ++c)
      for (Index j = 0; j < q; ++j) dW(j, c) = step(c * q + j);
    // Backtracking line search keeps Newton monotone far from the optimum.
    double t = 1.0, f_new = f;
    for (int ls = 0; ls < 30; ++ls, t *= 0.5) {
      f_new = objective(W_ - t * dW);
      if (f_new <= f - 1e-4 * t * g.dot(step)) break;
    }
    W_ -= t * dW;
    const bool converged = std::abs(f - f_new) <= 1e-12 * std::max(1.0, std::abs(f));
    f = f_new;
    if (converged) break;
  }
}

Mat<double> LogisticLearner::predict(const LearnerContext&, const Mat<double>& X) {
  Mat<double> S = scaler_.apply(X) * W_.topRows(X.cols());
  S.rowwise() += W_.row(X.cols());
  for (Index i = 0; i < S.rows(); ++i) {
    const double mx = S.row(i).maxCoeff();
    S.row(i) = (S.row(i).array() - mx).exp().matrix();
    S.row(i) /= S.row(i).sum();
  }
  return S;
}

namespace {
// For z = (x - m) / s: z B + b = x (B / s) + (b - (m / s) B).
Mat<double> unstandardise(const Standardizer& sc, const Mat<double>& B, const RowVec<double>& b) {
  Mat<double> out(B.rows() + 1, B.cols());
  out.topRows(B.rows()) = B.array().colwise() / sc.scale.transpose().array();
  out.row(B.rows()) = b - (sc.mean.array() / sc.scale.array()).matrix() * B;
  return out;
}
}  // namespace

Mat<double> RidgeLearner::raw_coefficients() const { return unstandardise(scaler_, coef_, intercept_); }

Mat<double> LogisticLearner::raw_coefficients() const {
  const Index p = W_.rows() - 1;
  return unstandardise(scaler_, W_.topRows(p), W_.row(p));
}

std::unique_ptr<Learner> make_ridge_learner(const LearnerOptions& opt) {
  return std::make_unique<RidgeLearner>(opt.ridge_alpha);
}

std::unique_ptr<Learner> make_logistic_learner(const LearnerOptions& opt) {
  return std::make_unique<LogisticLearner>(opt.logistic_c, opt.logistic_max_iter);
}

}  // namespace moesim
