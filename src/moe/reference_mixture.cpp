// The serial reference of the mixture of expert predictions (reference_moe.hpp).
#include <cmath>

#include "moe/reference_expert.hpp"

namespace moesim {

using namespace reference;

ReferenceMixture::Result ReferenceMixture::run(const ReferenceMoe& moe, const Mat<double>& x,
                                               const Mat<double>& h, const Mat<double>& y,
                                               const std::vector<int>& label) const {
  const Index B = x.rows(), D = x.cols(), O = head_w.cols();
  const int E = static_cast<int>(moe.router.cols());
  constexpr double kEps = 1e-6;  // as RmsNorm
  Result r;
  r.dx = Mat<double>::Zero(B, D);
  r.dh = Mat<double>::Zero(B, D);
  r.drouter = Mat<double>::Zero(moe.router.rows(), E);
  r.dgain = Mat<double>::Zero(1, D);
  r.dhead_w = Mat<double>::Zero(D, O);
  r.dhead_b = Mat<double>::Zero(1, O);
  r.dexperts = zeros_like(moe.experts);
  r.dshared = zeros_like(moe.shared);
  for (Index t = 0; t < B; ++t) {
    const RowVec<double> xt = x.row(t);
    const RowVec<double> g =
        moe.gate == GateKind::kConstant ? RowVec<double>::Constant(E, 1.0 / E) : softmax(xt * moe.router);
    RowVec<double> s = h.row(t);
    for (const ReferenceExpert& se : moe.shared) s += expert_apply(se, xt, nullptr);
    std::vector<RowVec<double>> z(E), zn(E), f(E);
    std::vector<double> rinv(E);
    for (int k = 0; k < E; ++k) {
      z[k] = s + expert_apply(moe.experts[k], xt, nullptr);
      rinv[k] = 1.0 / std::sqrt(z[k].squaredNorm() / static_cast<double>(D) + kEps);
      zn[k] = (z[k] * rinv[k]).cwiseProduct(gain);
      f[k] = zn[k] * head_w + head_b;
    }
    // Loss of this token and its gradients w.r.t. f_k and g_k.
    std::vector<RowVec<double>> df(E, RowVec<double>::Zero(O));
    RowVec<double> dg = RowVec<double>::Zero(E);
    if (classification) {
      const int c = label[static_cast<std::size_t>(t)];
      std::vector<RowVec<double>> p(E);
      double m = 0;
      for (int k = 0; k < E; ++k) {
        p[k] = softmax(f[k]);
        m += g(k) * p[k](c);
      }
      for (int k = 0; k < E; ++k) {
        const RowVec<double> onehot = RowVec<double>::Unit(O, c);
        if (per_expert) {
          r.loss -= g(k) * std::log(p[k](c));
          dg(k) = -std::log(p[k](c));
          df[k] = g(k) * (p[k] - onehot);
        } else {
          dg(k) = -p[k](c) / m;
          df[k] = -(g(k) / m) * p[k](c) * (onehot - p[k]);
        }
      }
      if (!per_expert) r.loss -= std::log(m);
    } else {
      RowVec<double> fbar = RowVec<double>::Zero(O);
      for (int k = 0; k < E; ++k) fbar += g(k) * f[k];
      const RowVec<double> e = y.row(t) - fbar;
      if (!per_expert) r.loss += e.squaredNorm();
      for (int k = 0; k < E; ++k) {
        const RowVec<double> ek = y.row(t) - f[k];
        if (per_expert) {
          r.loss += g(k) * ek.squaredNorm();
          dg(k) = ek.squaredNorm();
          df[k] = -2.0 * g(k) * ek;
        } else {
          dg(k) = -2.0 * e.dot(f[k]);
          df[k] = -2.0 * g(k) * e;
        }
      }
    }
    // Back through head, norm, experts, shared experts and the gate (all / B).
    RowVec<double> ds = RowVec<double>::Zero(D);
    for (int k = 0; k < E; ++k) {
      const RowVec<double> dfk = df[k] / static_cast<double>(B);
      r.dhead_w += zn[k].transpose() * dfk;
      r.dhead_b += dfk;
      const RowVec<double> dzn = dfk * head_w.transpose();
      r.dgain += (z[k] * rinv[k]).cwiseProduct(dzn);
      const RowVec<double> gd = gain.cwiseProduct(dzn);
      const RowVec<double> dz = rinv[k] * gd - (std::pow(rinv[k], 3) / static_cast<double>(D)) * z[k].dot(gd) * z[k];
      ds += dz;
      r.dx.row(t) += expert_backward(moe.experts[k], r.dexperts[k], xt, dz);
    }
    r.dh.row(t) += ds;
    for (std::size_t si = 0; si < moe.shared.size(); ++si)
      r.dx.row(t) += expert_backward(moe.shared[si], r.dshared[si], xt, ds);
    if (moe.gate != GateKind::kConstant) {
      const RowVec<double> dgb = dg / static_cast<double>(B);
      const RowVec<double> dlogits = (g.array() * (dgb.array() - g.dot(dgb))).matrix();
      r.drouter += xt.transpose() * dlogits;
      r.dx.row(t) += dlogits * moe.router.transpose();
    }
  }
  r.loss /= static_cast<double>(B);
  return r;
}

}  // namespace moesim
