#include "moe/mixture.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "core/error.hpp"

namespace moesim {

MixtureLoss parse_mixture_loss(const std::string& name) {
  if (name == "none") return MixtureLoss::kNone;
  if (name == "global") return MixtureLoss::kGlobal;
  if (name == "per-expert") return MixtureLoss::kPerExpert;
  throw ConfigError("--mixture-loss must be none, global or per-expert (got '" + name + "')");
}

const char* mixture_loss_name(MixtureLoss m) {
  switch (m) {
    case MixtureLoss::kGlobal: return "global";
    case MixtureLoss::kPerExpert: return "per-expert";
    default: return "none";
  }
}

template <class T>
MixtureLossResult mixture_loss(MixtureLoss kind, const Mat<T>& F, const Mat<T>& G,
                               const Batch& batch, bool classification, std::int64_t B_global,
                               Mat<T>* pred, Mat<T>* dF, Mat<T>* dG) {
  MOESIM_REQUIRE(kind != MixtureLoss::kNone, "mixture_loss needs a mixture loss");
  const Index n = G.rows(), K = G.cols(), O = F.cols();
  MOESIM_REQUIRE(F.rows() == n * K, "one expert prediction per token and gate");
  const double inv_b = B_global > 0 ? 1.0 / static_cast<double>(B_global) : 0.0;
  const bool global = kind == MixtureLoss::kGlobal;
  MixtureLossResult r;
  if (pred) pred->resize(n, O);
  if (dF) dF->resize(n * K, O);
  if (dG) dG->resize(n, K);
  std::vector<double> q(static_cast<std::size_t>(K * O)), qbar(static_cast<std::size_t>(O));
  std::vector<double> logp_y(static_cast<std::size_t>(K));
  for (Index t = 0; t < n; ++t) {
    // q_k: the expert's prediction (regression) or class probabilities.
    for (Index k = 0; k < K; ++k) {
      const auto f = F.row(t * K + k);
      if (classification) {
        const double mx = static_cast<double>(f.maxCoeff());
        double z = 0;
        for (Index c = 0; c < O; ++c) z += std::exp(static_cast<double>(f(c)) - mx);
        const double lse = mx + std::log(z);
        for (Index c = 0; c < O; ++c) q[k * O + c] = std::exp(static_cast<double>(f(c)) - lse);
        logp_y[k] = static_cast<double>(f(batch.label[static_cast<std::size_t>(t)])) - lse;
      } else {
        for (Index c = 0; c < O; ++c) q[k * O + c] = static_cast<double>(f(c));
      }
    }
    std::fill(qbar.begin(), qbar.end(), 0.0);
    for (Index k = 0; k < K; ++k)
      for (Index c = 0; c < O; ++c) qbar[c] += static_cast<double>(G(t, k)) * q[k * O + c];
    for (Index k = 0; k < K; ++k) {
      double d2 = 0;
      for (Index c = 0; c < O; ++c) d2 += (q[k * O + c] - qbar[c]) * (q[k * O + c] - qbar[c]);
      r.spread += static_cast<double>(G(t, k)) * d2;
    }
    if (classification) {
      const int y = batch.label[static_cast<std::size_t>(t)];
      // log m = log sum_k g_k p_k(y), by log-sum-exp over the experts.
      double mx = -std::numeric_limits<double>::infinity();
      for (Index k = 0; k < K; ++k)
        if (G(t, k) > 0) mx = std::max(mx, std::log(static_cast<double>(G(t, k))) + logp_y[k]);
      double z = 0;
      for (Index k = 0; k < K; ++k)
        if (G(t, k) > 0) z += std::exp(std::log(static_cast<double>(G(t, k))) + logp_y[k] - mx);
      const double log_m = mx + std::log(z);
      r.prediction -= log_m;
      Index best = 0;
      for (Index c = 1; c < O; ++c)
        if (qbar[c] > qbar[best]) best = c;
      r.correct += best == y;
      if (pred)
        for (Index c = 0; c < O; ++c) (*pred)(t, c) = static_cast<T>(std::log(qbar[c]));
      double per_expert = 0;
      for (Index k = 0; k < K; ++k) per_expert -= static_cast<double>(G(t, k)) * logp_y[k];
      r.objective += global ? -log_m : per_expert;
      for (Index k = 0; k < K; ++k) {
        const double g = static_cast<double>(G(t, k));
        // Global: d(-log m)/d z_kc = -(g_k p_k(y) / m) (1[c = y] - p_kc), the posterior
        // weight of expert k; per-expert: g_k (p_kc - 1[c = y]).
        const double w = global ? std::exp(logp_y[k] - log_m) * g : g;
        if (dG) (*dG)(t, k) = static_cast<T>((global ? -std::exp(logp_y[k] - log_m) : -logp_y[k]) * inv_b);
        if (dF)
          for (Index c = 0; c < O; ++c)
            (*dF)(t * K + k, c) = static_cast<T>(w * (q[k * O + c] - (c == y ? 1.0 : 0.0)) * inv_b);
      }
    } else {
      double global_loss = 0;
      for (Index c = 0; c < O; ++c) {
        const double e = batch.y(t, c) - qbar[c];
        global_loss += e * e;
        if (pred) (*pred)(t, c) = static_cast<T>(qbar[c]);
      }
      r.prediction += global_loss;
      double per_expert = 0;
      for (Index k = 0; k < K; ++k) {
        const double g = static_cast<double>(G(t, k));
        double lk = 0, dg_global = 0;
        for (Index c = 0; c < O; ++c) {
          const double ek = batch.y(t, c) - q[k * O + c], e = batch.y(t, c) - qbar[c];
          lk += ek * ek;
          dg_global += -2.0 * e * q[k * O + c];
          if (dF)
            (*dF)(t * K + k, c) = static_cast<T>(-2.0 * g * (global ? e : ek) * inv_b);
        }
        per_expert += g * lk;
        if (dG) (*dG)(t, k) = static_cast<T>((global ? dg_global : lk) * inv_b);
      }
      r.objective += global ? global_loss : per_expert;
    }
  }
  return r;
}

template <class T>
void MixtureTail<T>::forward(RmsNorm<T>& norm, Linear<T>& head, const Mat<T>& h,
                             const Mat<T>& U, const Mat<T>& G, bool classification,
                             Mat<T>& pred, Index chunk) {
  const Index n = h.rows(), K = G.cols();
  Mat<T> z(n * K, h.cols()), zn;
  for (Index t = 0; t < n; ++t)
    for (Index k = 0; k < K; ++k) z.row(t * K + k) = h.row(t) + U.row(t * K + k);
  norm.forward(z, zn);
  head.forward(zn, F_, chunk * K);
  G_ = G;
  // The prediction alone: the same formulas as the loss, without targets.
  const Index O = F_.cols();
  pred.resize(n, O);
  for (Index t = 0; t < n; ++t) {
    pred.row(t).setZero();
    for (Index k = 0; k < K; ++k) {
      if (classification) {
        const auto f = F_.row(t * K + k);
        const T mx = f.maxCoeff();
        RowVec<T> p = (f.array() - mx).exp().matrix();
        pred.row(t) += G(t, k) * p / p.sum();
      } else {
        pred.row(t) += G(t, k) * F_.row(t * K + k);
      }
    }
    if (classification) pred.row(t) = pred.row(t).array().log().matrix();
  }
}

template <class T>
MixtureLossResult MixtureTail<T>::loss_backward(RmsNorm<T>& norm, Linear<T>& head,
                                                MixtureLoss kind, const Batch& batch,
                                                bool classification, std::int64_t B_global,
                                                Mat<T>& dh, Mat<T>& dU, Mat<T>& dG,
                                                Index chunk) {
  Mat<T> dF, dzn;
  const MixtureLossResult r =
      mixture_loss<T>(kind, F_, G_, batch, classification, B_global, nullptr, &dF, &dG);
  const Index n = G_.rows(), K = G_.cols();
  head.backward(dF, dzn, chunk * K);
  norm.backward(dzn, dU, chunk * K);
  dh = Mat<T>::Zero(n, dU.cols());
  for (Index t = 0; t < n; ++t)
    for (Index k = 0; k < K; ++k) dh.row(t) += dU.row(t * K + k);
  return r;
}

template MixtureLossResult mixture_loss<float>(MixtureLoss, const Mat<float>&, const Mat<float>&,
                                               const Batch&, bool, std::int64_t, Mat<float>*,
                                               Mat<float>*, Mat<float>*);
template MixtureLossResult mixture_loss<double>(MixtureLoss, const Mat<double>&, const Mat<double>&,
                                                const Batch&, bool, std::int64_t, Mat<double>*,
                                                Mat<double>*, Mat<double>*);
template class MixtureTail<float>;
template class MixtureTail<double>;

}  // namespace moesim
