#pragma once
// The serial references' expert and softmax, token by token in double
// (reference_moe.cpp, reference_mixture.cpp).
#include <vector>

#include "moe/reference_moe.hpp"
#include "nn/activations.hpp"

namespace moesim::reference {

inline RowVec<double> softmax(const RowVec<double>& v) {
  RowVec<double> p = (v.array() - v.maxCoeff()).exp().matrix();
  return p / p.sum();
}

inline RowVec<double> expert_apply(const ReferenceExpert& e, const RowVec<double>& x, RowVec<double>* pre) {
  RowVec<double> a = x * e.w1 + e.b1;
  if (pre) *pre = a;
  RowVec<double> h = a.unaryExpr([](double v) { return gelu(v); });
  return h * e.w2 + e.b2;
}

// Accumulates the expert's parameter gradients for output gradient dout; returns dx.
inline RowVec<double> expert_backward(const ReferenceExpert& ex, ReferenceExpert& dex, const RowVec<double>& xt,
                                      const RowVec<double>& dout) {
  RowVec<double> pre;
  expert_apply(ex, xt, &pre);
  const RowVec<double> h = pre.unaryExpr([](double v) { return gelu(v); });
  dex.w2 += h.transpose() * dout;
  dex.b2 += dout;
  const RowVec<double> dpre =
      (dout * ex.w2.transpose()).cwiseProduct(pre.unaryExpr([](double v) { return gelu_grad(v); }));
  dex.w1 += xt.transpose() * dpre;
  dex.b1 += dpre;
  return dpre * ex.w1.transpose();
}

inline std::vector<ReferenceExpert> zeros_like(const std::vector<ReferenceExpert>& v) {
  std::vector<ReferenceExpert> z(v.size());
  for (std::size_t e = 0; e < v.size(); ++e) {
    z[e].w1 = Mat<double>::Zero(v[e].w1.rows(), v[e].w1.cols());
    z[e].b1 = Mat<double>::Zero(1, v[e].b1.cols());
    z[e].w2 = Mat<double>::Zero(v[e].w2.rows(), v[e].w2.cols());
    z[e].b2 = Mat<double>::Zero(1, v[e].b2.cols());
  }
  return z;
}

}  // namespace moesim::reference
