#include "stacking/meta.hpp"

#include <Eigen/Eigenvalues>
#include <Eigen/LU>
#include <limits>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"
#include "learners/linear.hpp"
#include "comm/exact_row_sums.hpp"
#include "core/row_order.hpp"
#include "stacking/metrics.hpp"

namespace moesim {

namespace {

std::vector<std::int64_t> no_ids(Index n) { return std::vector<std::int64_t>(static_cast<std::size_t>(n), 0); }

Mat<double> targets(const std::vector<double>& y, int classes) {
  Mat<double> Y = Mat<double>::Zero(static_cast<Index>(y.size()), classes >= 2 ? classes : 1);
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (classes >= 2) Y(static_cast<Index>(i), static_cast<Index>(y[i])) = 1.0;
    else Y(static_cast<Index>(i), 0) = y[i];
  }
  return Y;
}

// Convex combination of the prediction blocks.
Mat<double> blend_blocks(const Mat<double>& Z, const std::vector<double>& a, int width) {
  Mat<double> out = Mat<double>::Zero(Z.rows(), width);
  for (std::size_t l = 0; l < a.size(); ++l)
    if (a[l] != 0) out += a[l] * Z.middleCols(static_cast<Index>(l) * width, width);
  return out;
}

class LinearMeta : public MetaLearner {
 public:
  explicit LinearMeta(std::unique_ptr<Learner> l) : learner_(std::move(l)) {}
  void fit(const LearnerContext& ctx, const Mat<double>& Z, const std::vector<double>& y,
           const std::vector<double>& w, int, int) override {
    const auto ids = no_ids(Z.rows());
    learner_->fit(ctx, TrainRows{Z, y, w, ids});
  }
  Mat<double> predict(const LearnerContext& ctx, const Mat<double>& Z) override {
    return learner_->predict(ctx, Z);
  }
  Mat<double> coefficients(std::vector<std::string>* rows) const override {
    Mat<double> c;
    if (auto* r = dynamic_cast<RidgeLearner*>(learner_.get())) c = r->raw_coefficients();
    else c = dynamic_cast<LogisticLearner*>(learner_.get())->raw_coefficients();
    if (rows) {
      rows->clear();
      for (Index i = 0; i + 1 < c.rows(); ++i) rows->push_back("z" + std::to_string(i));
      rows->push_back("intercept");
    }
    return c;
  }

 private:
  std::unique_ptr<Learner> learner_;
};

class SimplexMeta : public MetaLearner {
 public:
  void fit(const LearnerContext& ctx, const Mat<double>& Z, const std::vector<double>& y,
           const std::vector<double>& w, int blocks, int width) override {
    width_ = width;
    const Mat<double> Y = targets(y, ctx.classes);
    const Index L = blocks, n = Z.rows(), wd = width;
    // Per-row terms w Pa.Pb (a <= b, row-major upper triangle at a * L + b) and w Pa.Y,
    // dot products in scalar loops, summed exactly: the same bits on any number of ranks.
    auto dot = [&](const double* u, const double* v) { return ordered_dot(u, v, wd); };
    Mat<double> t = Mat<double>::Zero(n, L * L + L);
    for (Index i = 0; i < n; ++i) {
      const double wi = w[static_cast<std::size_t>(i)];
      const double* zr = Z.data() + i * Z.cols();
      const double* yr = Y.data() + i * Y.cols();
      for (Index a = 0; a < L; ++a) {
        for (Index b = a; b < L; ++b) t(i, a * L + b) = wi * dot(zr + a * wd, zr + b * wd);
        t(i, L * L + a) = wi * dot(zr + a * wd, yr);
      }
    }
    const std::vector<double> buf = exact_column_sums(ctx.comm, t);
    Mat<double> G(L, L);
    for (Index a = 0; a < L; ++a)
      for (Index b = a; b < L; ++b) G(a, b) = G(b, a) = buf[static_cast<std::size_t>(a * L + b)];
    weights_ = simplex_least_squares(G, std::vector<double>(buf.begin() + L * L, buf.end()));
  }
  Mat<double> predict(const LearnerContext&, const Mat<double>& Z) override {
    return blend_blocks(Z, weights_, width_);
  }
  Mat<double> coefficients(std::vector<std::string>* rows) const override {
    Mat<double> c(static_cast<Index>(weights_.size()), 1);
    for (std::size_t l = 0; l < weights_.size(); ++l) c(static_cast<Index>(l), 0) = weights_[l];
    if (rows) {
      rows->clear();
      for (std::size_t l = 0; l < weights_.size(); ++l) rows->push_back("z" + std::to_string(l));
    }
    return c;
  }

 protected:
  std::vector<double> weights_;
  int width_ = 1;
};

// Caruana et al. (2004): repeatedly add (with replacement) the learner whose inclusion
// gives the best ensemble score; weights are the selection counts.
class GreedyMeta : public SimplexMeta {
 public:
  explicit GreedyMeta(int iterations) : iterations_(iterations) {}
  void fit(const LearnerContext& ctx, const Mat<double>& Z, const std::vector<double>& y,
           const std::vector<double>& w, int blocks, int width) override {
    width_ = width;
    const bool cls = ctx.classes >= 2;
    std::vector<int> counts(static_cast<std::size_t>(blocks), 0);
    Mat<double> sum = Mat<double>::Zero(Z.rows(), width);
    for (int it = 0; it < iterations_; ++it) {
      // Candidate scores for every block in one pass; the loss is log loss
      // (classification) or squared error (regression), summed exactly over ranks.
      Mat<double> terms(Z.rows(), blocks);
      for (int l = 0; l < blocks; ++l) {
        const Mat<double> cand = (sum + Z.middleCols(static_cast<Index>(l) * width, width)) / static_cast<double>(it + 1);
        for (Index i = 0; i < Z.rows(); ++i) {
          const double wi = w[static_cast<std::size_t>(i)];
          double t = 0;
          if (cls) {
            double total = 0;  // a scalar loop: the same bits wherever the row sits
            for (Index c = 0; c < width; ++c) total += cand(i, c);
            const double p = cand(i, static_cast<Index>(y[static_cast<std::size_t>(i)])) / std::max(total, 1e-300);
            t = -wi * std::log(std::clamp(p, 1e-15, 1.0));
          } else {
            const double e = cand(i, 0) - y[static_cast<std::size_t>(i)];
            t = wi * e * e;
          }
          terms(i, l) = t;
        }
      }
      const std::vector<double> loss = exact_column_sums(ctx.comm, terms);
      const int best = static_cast<int>(std::min_element(loss.begin(), loss.end()) - loss.begin());
      ++counts[static_cast<std::size_t>(best)];
      sum += Z.middleCols(static_cast<Index>(best) * width, width);
    }
    weights_.assign(static_cast<std::size_t>(blocks), 0.0);
    for (int l = 0; l < blocks; ++l)
      weights_[static_cast<std::size_t>(l)] = static_cast<double>(counts[static_cast<std::size_t>(l)]) / iterations_;
  }

 private:
  int iterations_;
};

}  // namespace

namespace {

// min a^T G a - 2 b^T a on the support S with sum(a) = 1 (Lagrange system); empty when singular.
bool solve_on_support(const Mat<double>& G, const Eigen::VectorXd& b, const std::vector<Index>& S,
                      Eigen::VectorXd& a) {
  const Index m = static_cast<Index>(S.size());
  Mat<double> A = Mat<double>::Zero(m + 1, m + 1);
  Eigen::VectorXd r(m + 1);
  for (Index i = 0; i < m; ++i) {
    for (Index j = 0; j < m; ++j) A(i, j) = G(S[i], S[j]);
    A(i, m) = A(m, i) = 1.0;
    r(i) = b(S[i]);
  }
  r(m) = 1.0;
  Eigen::FullPivLU<Mat<double>> lu(A);
  if (lu.rank() < m + 1) return false;
  const Eigen::VectorXd sol = lu.solve(r);
  a = Eigen::VectorXd::Zero(G.rows());
  for (Index i = 0; i < m; ++i) a(S[i]) = sol(i);
  return true;
}

}  // namespace

std::vector<double> simplex_least_squares(const Mat<double>& G, const std::vector<double>& rhs) {
  const Index L = G.rows();
  const Eigen::Map<const Eigen::VectorXd> b(rhs.data(), L);
  auto objective = [&](const Eigen::VectorXd& a) { return a.dot(G * a) - 2.0 * b.dot(a); };
  if (L <= 16) {
    // Exact: the optimum is the best feasible stationary point over all supports.
    Eigen::VectorXd best;
    double best_f = std::numeric_limits<double>::infinity();
    for (unsigned long mask = 1; mask < (1UL << L); ++mask) {
      std::vector<Index> S;
      for (Index i = 0; i < L; ++i)
        if (mask & (1UL << i)) S.push_back(i);
      Eigen::VectorXd a;
      if (!solve_on_support(G, b, S, a) || a.minCoeff() < -1e-12) continue;
      a = a.cwiseMax(0.0);
      a /= a.sum();
      const double f = objective(a);
      if (f < best_f) {
        best_f = f;
        best = a;
      }
    }
    if (best.size() == L) return std::vector<double>(best.data(), best.data() + L);
  }
  // Many learners: accelerated projected gradient (FISTA) on the simplex.
  Eigen::VectorXd a = Eigen::VectorXd::Constant(L, 1.0 / static_cast<double>(L));
  const double lmax = Eigen::SelfAdjointEigenSolver<Mat<double>>(G, Eigen::EigenvaluesOnly).eigenvalues().maxCoeff();
  const double step = lmax > 0 ? 1.0 / lmax : 1.0;
  auto project = [&](Eigen::VectorXd v) {
    // Euclidean projection onto the probability simplex (sort-based).
    std::vector<double> u(v.data(), v.data() + L);
    std::sort(u.begin(), u.end(), std::greater<>());
    double cum = 0, theta = 0;
    for (Index k = 0; k < L; ++k) {
      cum += u[static_cast<std::size_t>(k)];
      const double t = (cum - 1.0) / static_cast<double>(k + 1);
      if (u[static_cast<std::size_t>(k)] - t > 0) theta = t;
    }
    return Eigen::VectorXd((v.array() - theta).cwiseMax(0.0));
  };
  Eigen::VectorXd yk = a, prev = a;
  double tk = 1.0;
  for (int it = 0; it < 100000; ++it) {
    const Eigen::VectorXd next = project(yk - step * (G * yk - b));
    const double tn = 0.5 * (1.0 + std::sqrt(1.0 + 4.0 * tk * tk));
    yk = next + ((tk - 1.0) / tn) * (next - prev);
    const double change = (next - prev).lpNorm<Eigen::Infinity>();
    prev = next;
    tk = tn;
    if (change < 1e-15) break;
  }
  return std::vector<double>(prev.data(), prev.data() + L);
}

std::unique_ptr<MetaLearner> make_meta(const MetaOptions& opt, bool classification, bool passthrough) {
  if (opt.kind == "logistic") {
    MOESIM_CONFIG_CHECK(classification, "--meta logistic needs --problem classification (use ridge or nnls)");
    return std::make_unique<LinearMeta>(std::make_unique<LogisticLearner>(opt.c, 200));
  }
  if (opt.kind == "ridge") return std::make_unique<LinearMeta>(std::make_unique<RidgeLearner>(opt.alpha));
  MOESIM_CONFIG_CHECK(!passthrough, "--passthrough needs a linear meta-learner (logistic or ridge), not "
                                        << opt.kind);
  if (opt.kind == "nnls") return std::make_unique<SimplexMeta>();
  if (opt.kind == "greedy") {
    MOESIM_CONFIG_CHECK(opt.greedy_iterations >= 1, "--greedy-iterations must be >= 1");
    return std::make_unique<GreedyMeta>(opt.greedy_iterations);
  }
  throw ConfigError("--meta must be logistic, ridge, nnls or greedy (got '" + opt.kind + "')");
}

}  // namespace moesim
