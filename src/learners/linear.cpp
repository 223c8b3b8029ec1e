// Ridge regression and multinomial logistic regression, trained from statistics of the
// training rows summed exactly over ranks (the same bits on any number of ranks): a Gram
// matrix (ridge), gradients and Hessians (logistic, Newton's method). Features are
// standardised with training statistics.
#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>
#include <utility>

#include "learners/learner.hpp"
#include "learners/linear.hpp"
#include "comm/exact_row_sums.hpp"
#include "core/row_order.hpp"
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

// Row i of A times B, each entry summed in index order: a row's bits do not depend on
// which other rows share the matrix (a GEMM's kernels and alignment peeling could).
Mat<double> row_products(const Mat<double>& A, const Mat<double>& B) {
  const Index n = A.rows(), k = A.cols(), m = B.cols();
  Mat<double> out(n, m);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < m; ++c) {
      double s = 0;
      for (Index j = 0; j < k; ++j) s += A(i, j) * B(j, c);
      out(i, c) = s;
    }
  return out;
}

// Softmax of each row in place, in index order (core/row_order.hpp).
void softmax_rows_in_place(Mat<double>& S) {
  for (Index i = 0; i < S.rows(); ++i) ordered_softmax(S.data() + i * S.cols(), S.cols());
}

// COLLECTIVE, like column_max_abs. The largest |v| over every rank's entries. Bounds for
// ExactRowSums are products of such maxima, and must be the same on any layout: the max of
// local products (a rank's largest weight times its largest feature) is not.
double max_abs(const Communicator& comm, const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return comm.allreduce_max(m);
}

RowVec<double> column_max_abs(const Communicator& comm, const Mat<double>& M) {
  RowVec<double> m = M.rows() > 0 ? RowVec<double>(M.cwiseAbs().colwise().maxCoeff()) : RowVec<double>::Zero(M.cols());
  if (m.size() > 0) comm.allreduce_max(m.data(), static_cast<int>(m.size()));
  return m;
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
  // Weighted sums for centring and the Gram system, exact (the same bits on any number
  // of ranks), in one reduction:
  // [sum w | sum w y (m) | upper triangle of Z^T W Z (row by row) | Z^T W Y (p x m) | sum w z (p)].
  const Index n = Z.rows(), tri = p * (p + 1) / 2;
  const auto o_y = std::size_t{1}, o_g = o_y + static_cast<std::size_t>(m);
  const auto o_r = o_g + static_cast<std::size_t>(tri), o_z = o_r + static_cast<std::size_t>(p * m);
  const double wmax = max_abs(ctx.comm, w);
  const RowVec<double> zmax = column_max_abs(ctx.comm, Z), ymax = column_max_abs(ctx.comm, Y);
  std::vector<double> bound(o_z + static_cast<std::size_t>(p));
  bound[0] = wmax;
  for (Index c = 0; c < m; ++c) bound[o_y + static_cast<std::size_t>(c)] = wmax * ymax(c);
  for (Index j = 0, k = 0; j < p; ++j) {
    for (Index l = j; l < p; ++l, ++k) bound[o_g + static_cast<std::size_t>(k)] = wmax * zmax(j) * zmax(l);
    for (Index c = 0; c < m; ++c) bound[o_r + static_cast<std::size_t>(j * m + c)] = wmax * zmax(j) * ymax(c);
    bound[o_z + static_cast<std::size_t>(j)] = wmax * zmax(j);
  }
  ExactRowSums sums(ctx.comm, std::move(bound));
  for (Index i = 0; i < n; ++i) {
    const double wi = w[static_cast<std::size_t>(i)];
    const double* z = Z.data() + i * p;
    const double* yr = Y.data() + i * m;
    sums.add(0, wi);
    sums.add_products(o_y, wi, yr, static_cast<std::size_t>(m));
    for (Index j = 0, k = 0; j < p; k += p - j, ++j) {
      const double wz = wi * z[j];
      sums.add_products(o_g + static_cast<std::size_t>(k), wz, z + j, static_cast<std::size_t>(p - j));
      sums.add_products(o_r + static_cast<std::size_t>(j * m), wz, yr, static_cast<std::size_t>(m));
    }
    sums.add_products(o_z, wi, z, static_cast<std::size_t>(p));
    sums.end_row();
  }
  const std::vector<double> buf = sums.totals(ctx.comm);
  const double sw = buf[0] > 0 ? buf[0] : 1.0;
  const RowVec<double> ymean = ConstMatMap<double>(buf.data() + o_y, 1, m) / sw;
  const RowVec<double> zmean = ConstMatMap<double>(buf.data() + o_z, 1, p) / sw;
  // Centred system: (Z^T W Z - sw zm^T zm + alpha I) B = Z^T W Y - sw zm^T ym.
  Mat<double> G(p, p);
  for (Index j = 0, k = 0; j < p; ++j)
    for (Index l = j; l < p; ++l, ++k) G(j, l) = G(l, j) = buf[o_g + static_cast<std::size_t>(k)];
  G -= sw * zmean.transpose() * zmean;
  G.diagonal().array() += alpha_;
  Mat<double> R = ConstMatMap<double>(buf.data() + o_r, p, m);
  R -= sw * zmean.transpose() * ymean;
  coef_ = G.ldlt().solve(R);
  intercept_ = ymean - zmean * coef_;
}

Mat<double> RidgeLearner::predict(const LearnerContext&, const Mat<double>& X) {
  Mat<double> out = row_products(scaler_.apply(X), coef_);
  out.rowwise() += intercept_;
  if (classes_ >= 2) {
    // One-vs-rest regression scores turned into a distribution: clip to [0, 1] and
    // normalise (uniform when every score is <= 0); scalar loops, as row_products.
    for (Index i = 0; i < out.rows(); ++i) {
      double s = 0;
      for (Index c = 0; c < out.cols(); ++c) s += (out(i, c) = std::clamp(out(i, c), 0.0, 1.0));
      for (Index c = 0; c < out.cols(); ++c) out(i, c) = s > 0 ? out(i, c) / s : 1.0 / static_cast<double>(classes_);
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

  const double wmax = max_abs(ctx.comm, w);
  const RowVec<double> amax = column_max_abs(ctx.comm, A);
  const auto uq = static_cast<std::size_t>(q), tri = uq * (uq + 1) / 2;

  auto softmax_rows = [&](const Mat<double>& W) {
    Mat<double> S = row_products(A, W);
    softmax_rows_in_place(S);
    return S;
  };
  // Every sum over rows below is exact (ExactRowSums): the same bits on any number of ranks.
  auto objective = [&](const Mat<double>& W) {
    const Mat<double> P = softmax_rows(W);
    Mat<double> loss(n, 1);
    for (Index i = 0; i < n; ++i)
      loss(i, 0) = -w[static_cast<std::size_t>(i)] *
                   std::log(std::max(P(i, static_cast<Index>(y[static_cast<std::size_t>(i)])), 1e-300));
    return exact_column_sums(ctx.comm, loss)[0] + 0.5 * lambda * W.topRows(q - 1).squaredNorm();
  };

  const Eigen::Map<const Eigen::VectorXd> wv(w.data(), n);
  if (C == 2) {
    // Two classes: the multinomial optimum has W_1 = -W_0 = beta / 2 (the likelihood
    // sees only W_1 - W_0; the penalty is least when the halves are opposite), so Newton
    // runs on beta alone with penalty 0.25 lambda ||beta||^2: a q x q Hessian instead of
    // three (2q)-wide blocks, a sixth of the terms.
    const Eigen::VectorXd yv = Y.col(1);
    auto scores = [&](const Eigen::VectorXd& b) { return Eigen::VectorXd(row_products(A, b)); };
    auto probs = [&](const Eigen::VectorXd& b) {
      Eigen::VectorXd pr = scores(b);
      for (Index i = 0; i < n; ++i) pr(i) = pr(i) >= 0 ? 1 / (1 + std::exp(-pr(i))) : std::exp(pr(i)) / (1 + std::exp(pr(i)));
      return pr;
    };
    auto objective2 = [&](const Eigen::VectorXd& b) {
      const Eigen::VectorXd s = scores(b);
      Mat<double> loss(n, 1);
      for (Index i = 0; i < n; ++i)  // -log sigmoid(+-s) = log1p(exp(-|s|)) + max(-+s, 0)
        loss(i, 0) = wv(i) * (std::log1p(std::exp(-std::abs(s(i)))) + std::max(yv(i) > 0.5 ? -s(i) : s(i), 0.0));
      return exact_column_sums(ctx.comm, loss)[0] + 0.25 * lambda * b.head(q - 1).squaredNorm();
    };
    // [gradient (q) | upper triangle of the Hessian, row by row]; |p - y| <= 1, p (1 - p) <= 1/4.
    std::vector<double> bound(uq + tri);
    for (Index j = 0, k = 0; j < q; ++j) {
      bound[static_cast<std::size_t>(j)] = wmax * amax(j);
      for (Index l = j; l < q; ++l, ++k) bound[uq + static_cast<std::size_t>(k)] = 0.25 * wmax * amax(j) * amax(l);
    }
    const ExactRowSums empty_sums(ctx.comm, std::move(bound));
    Eigen::VectorXd beta = Eigen::VectorXd::Zero(q);
    double f2 = objective2(beta);
    for (iterations_ = 0; iterations_ < max_iter_; ++iterations_) {
      const Eigen::VectorXd pr = probs(beta);
      ExactRowSums sums = empty_sums;
      for (Index i = 0; i < n; ++i) {
        const double* a = A.data() + i * q;
        const double h = wv(i) * pr(i) * (1 - pr(i));
        sums.add_products(0, wv(i) * (pr(i) - yv(i)), a, uq);
        for (Index j = 0, k = 0; j < q; k += q - j, ++j)
          sums.add_products(uq + static_cast<std::size_t>(k), h * a[j], a + j, static_cast<std::size_t>(q - j));
        sums.end_row();
      }
      const std::vector<double> tot = sums.totals(ctx.comm);
      Eigen::VectorXd g = Eigen::Map<const Eigen::VectorXd>(tot.data(), q);
      Mat<double> H(q, q);
      for (Index j = 0, k = 0; j < q; ++j)
        for (Index l = j; l < q; ++l, ++k) H(j, l) = H(l, j) = tot[uq + static_cast<std::size_t>(k)];
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
  // Gradient (class-major: c q + j <-> W(j, c)) and the upper block triangle of the
  // Hessian (blocks c,d = A^T diag(w p_c (d_cd - p_d)) A; the diagonal blocks' upper
  // triangles), in one exact reduction. |p - y| <= 1 and |p_c (d_cd - p_d)| <= 1.
  const Index dim = q * C;
  std::vector<std::size_t> block(static_cast<std::size_t>(C * C));  // offset of block (c, d), c <= d
  std::vector<double> bound(static_cast<std::size_t>(dim));
  for (Index c = 0; c < C; ++c)
    for (Index j = 0; j < q; ++j) bound[static_cast<std::size_t>(c * q + j)] = wmax * amax(j);
  for (Index c = 0; c < C; ++c)
    for (Index d = c; d < C; ++d) {
      block[static_cast<std::size_t>(c * C + d)] = bound.size();
      for (Index j = 0; j < q; ++j)
        for (Index l = c == d ? j : 0; l < q; ++l) bound.push_back(wmax * amax(j) * amax(l));
    }
  const ExactRowSums empty_sums(ctx.comm, std::move(bound));
  double f = objective(W_);
  for (iterations_ = 0; iterations_ < max_iter_; ++iterations_) {
    const Mat<double> P = softmax_rows(W_);
    ExactRowSums sums = empty_sums;
    for (Index i = 0; i < n; ++i) {
      const double* a = A.data() + i * q;
      const double wi = wv(i);
      for (Index c = 0; c < C; ++c) {
        sums.add_products(static_cast<std::size_t>(c * q), wi * (P(i, c) - Y(i, c)), a, uq);
        for (Index d = c; d < C; ++d) {
          const double sc = wi * P(i, c) * ((c == d ? 1.0 : 0.0) - P(i, d));
          std::size_t k = block[static_cast<std::size_t>(c * C + d)];
          for (Index j = 0; j < q; ++j) {
            const Index l0 = c == d ? j : 0;
            sums.add_products(k, sc * a[j], a + l0, static_cast<std::size_t>(q - l0));
            k += static_cast<std::size_t>(q - l0);
          }
        }
      }
      sums.end_row();
    }
    const std::vector<double> tot = sums.totals(ctx.comm);
    Mat<double> H(dim, dim);
    for (Index c = 0; c < C; ++c)
      for (Index d = c; d < C; ++d) {
        std::size_t k = block[static_cast<std::size_t>(c * C + d)];
        for (Index j = 0; j < q; ++j)
          for (Index l = c == d ? j : 0; l < q; ++l, ++k) H(c * q + j, d * q + l) = H(d * q + l, c * q + j) = tot[k];
      }
    Eigen::VectorXd g(dim);
    for (Index c = 0; c < C; ++c)
      for (Index j = 0; j < q; ++j) {
        g(c * q + j) = tot[static_cast<std::size_t>(c * q + j)] + (j == q - 1 ? 0.0 : lambda * W_(j, c));
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
  Mat<double> S = row_products(scaler_.apply(X), W_.topRows(X.cols()));
  S.rowwise() += W_.row(X.cols());
  softmax_rows_in_place(S);
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
