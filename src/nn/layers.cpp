#include "nn/layers.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error.hpp"
#include "core/row_chunks.hpp"

namespace moesim {

template <class T>
Linear<T>::Linear(const std::string& name, Index in, Index out, Placement where) {
  w_.name = name + ".w";
  b_.name = name + ".b";
  w_.placement = b_.placement = where;
  w_.resize(in, out);
  b_.resize(1, out);
}

template <class T>
void Linear<T>::init(Rng& rng, double stddev) {
  w_.fill_normal(rng, stddev);
  b_.value.setZero();
}

template <class T>
void Linear<T>::forward(const Mat<T>& x, Mat<T>& y, Index chunk) {
  x_ = x;
  y.resize(x.rows(), w_.value.cols());
  for_row_chunks(x.rows(), chunk, [&](Index b, Index r) {
    y.middleRows(b, r).noalias() = x.middleRows(b, r) * w_.value;
  });
  y.rowwise() += b_.value.row(0);
}

template <class T>
void Linear<T>::backward(const Mat<T>& dy, Mat<T>& dx, Index chunk) {
  dx.resize(dy.rows(), w_.value.rows());
  if (chunk <= 0) {
    w_.grad.noalias() += x_.transpose() * dy;
    b_.grad.row(0) += dy.colwise().sum();
  }
  for_row_chunks(dy.rows(), chunk, [&](Index b, Index r) {
    if (chunk > 0) {
      w_.leaf().noalias() = x_.middleRows(b, r).transpose() * dy.middleRows(b, r);
      w_.tree.push();
      b_.leaf().row(0) = dy.middleRows(b, r).colwise().sum();
      b_.tree.push();
    }
    dx.middleRows(b, r).noalias() = dy.middleRows(b, r) * w_.value.transpose();
  });
}

template <class T>
Ffn<T>::Ffn(const std::string& name, Index d_model, Index d_ff, Placement where) {
  w1_.name = name + ".w1";
  b1_.name = name + ".b1";
  w2_.name = name + ".w2";
  b2_.name = name + ".b2";
  for (auto* p : {&w1_, &b1_, &w2_, &b2_}) p->placement = where;
  w1_.resize(d_model, d_ff);
  b1_.resize(1, d_ff);
  w2_.resize(d_ff, d_model);
  b2_.resize(1, d_model);
}

template <class T>
void Ffn<T>::init(Rng& rng) {
  w1_.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(w1_.value.rows())));
  // Output projection starts small so that deep residual stacks start near identity.
  w2_.fill_normal(rng, 0.5 / std::sqrt(static_cast<double>(w2_.value.rows())));
  b1_.value.setZero();
  b2_.value.setZero();
}

// GELU on whole blocks with Eigen's vectorised tanh; the tanh is kept for backward.
// chunk > 0: blocks of `chunk` rows (the block version below).
template <class T>
void Ffn<T>::forward(const ConstMatMap<T>& x, MatMap<T> y, Index chunk) {
  constexpr T k = T(0.7978845608028654), c = T(0.044715);
  if (chunk <= 0) {
    x_ = x;
    pre_.noalias() = x * w1_.value;
    pre_.rowwise() += b1_.value.row(0);
    tanh_ = (k * (pre_.array() + c * pre_.array().cube())).tanh();
    h_ = (T(0.5) * pre_.array() * (T(1) + tanh_.array())).matrix();
    y.noalias() = h_ * w2_.value;
    y.rowwise() += b2_.value.row(0);
    return;
  }
  forward(x, y, row_chunk_sizes(x.rows(), chunk));
}

template <class T>
MatMap<T> Ffn<T>::scratch(int which, Index rows, Index cols, Index max_rows, Index max_cols) {
  const Index slot = (max_rows * max_cols + 15) / 16 * 16;
  // The first view of a block (which = 0) sizes the buffer for four.
  if (which == 0 && static_cast<Index>(scratch_.size()) < 4 * slot + 16)
    scratch_.resize(static_cast<std::size_t>(4 * slot + 16));
  MOESIM_REQUIRE(static_cast<Index>(scratch_.size()) >= (which + 1) * slot + 16, "Ffn scratch: view " << which << " first");
  // Aligned to 16 values wherever the vector's memory lies, so each view's alignment (which
  // decides Eigen's scalar head in vectorised loops) is the same for every block.
  T* base = scratch_.data();
  const auto mis = (reinterpret_cast<std::uintptr_t>(base) / sizeof(T)) % 16;
  base += mis ? 16 - mis : 0;
  return MatMap<T>(base + which * slot, rows, cols);
}

// Each block's products and tanh run on aligned per-block views, so that neither the BLAS
// call nor the vectorised tanh depends on where the block sits in the rank's rows.
template <class T>
void Ffn<T>::forward(const ConstMatMap<T>& x, MatMap<T> y, const std::vector<Index>& blocks) {
  constexpr T k = T(0.7978845608028654), c = T(0.044715);
  x_ = x;
  const Index n = x.rows(), F = w1_.value.cols(), D = w2_.value.cols();
  pre_.resize(n, F);
  tanh_.resize(n, F);
  h_.resize(n, F);
  Index most = 0;
  for (const Index r : blocks) most = std::max(most, r);
  Index b = 0;
  for (const Index r : blocks) {
    if (r == 0) continue;
    MatMap<T> pre = scratch(0, r, F, most, std::max(F, D)), th = scratch(1, r, F, most, std::max(F, D));
    MatMap<T> h = scratch(2, r, F, most, std::max(F, D)), out = scratch(3, r, D, most, std::max(F, D));
    pre.noalias() = x.middleRows(b, r) * w1_.value;
    pre.rowwise() += b1_.value.row(0);
    th = (k * (pre.array() + c * pre.array().cube())).tanh();
    h = (T(0.5) * pre.array() * (T(1) + th.array())).matrix();
    out.noalias() = h * w2_.value;
    out.rowwise() += b2_.value.row(0);
    pre_.middleRows(b, r) = pre;
    tanh_.middleRows(b, r) = th;
    h_.middleRows(b, r) = h;
    y.middleRows(b, r) = out;
    b += r;
  }
  MOESIM_REQUIRE(b == n, "Ffn: blocks of " << b << " rows for " << n << " rows");
}

template <class T>
void Ffn<T>::backward(const ConstMatMap<T>& dy, MatMap<T> dx, Index chunk) {
  constexpr T k = T(0.7978845608028654), c = T(0.044715);
  if (chunk <= 0) {
    w2_.grad.noalias() += h_.transpose() * dy;
    b2_.grad.row(0) += dy.colwise().sum();
    Mat<T> dpre = dy * w2_.value.transpose();
    const auto a = pre_.array();
    const auto th = tanh_.array();
    dpre.array() *= T(0.5) * (T(1) + th) +
                    T(0.5) * a * (T(1) - th.square()) * k * (T(1) + T(3) * c * a.square());
    w1_.grad.noalias() += x_.transpose() * dpre;
    b1_.grad.row(0) += dpre.colwise().sum();
    dx.noalias() = dpre * w1_.value.transpose();
    return;
  }
  backward(dy, dx, row_chunk_sizes(dy.rows(), chunk));
}

template <class T>
void Ffn<T>::backward(const ConstMatMap<T>& dy, MatMap<T> dx, const std::vector<Index>& blocks) {
  constexpr T k = T(0.7978845608028654), c = T(0.044715);
  const Index F = w1_.value.cols(), D = w2_.value.cols();
  Index most = 0;
  for (const Index r : blocks) most = std::max(most, r);
  Index b = 0;
  for (const Index r : blocks) {
    if (r == 0) {
      for (Param<T>* p : {&w1_, &b1_, &w2_, &b2_}) p->tree.push_empty();
      continue;
    }
    const auto dyc = dy.middleRows(b, r);
    w2_.leaf().noalias() = h_.middleRows(b, r).transpose() * dyc;
    w2_.tree.push();
    b2_.leaf().row(0) = dyc.colwise().sum();
    b2_.tree.push();
    MatMap<T> dpre = scratch(0, r, F, most, std::max(F, D)), dxb = scratch(1, r, D, most, std::max(F, D));
    dpre.noalias() = dyc * w2_.value.transpose();
    const auto a = pre_.middleRows(b, r).array();
    const auto th = tanh_.middleRows(b, r).array();
    dpre.array() *= T(0.5) * (T(1) + th) +
                    T(0.5) * a * (T(1) - th.square()) * k * (T(1) + T(3) * c * a.square());
    w1_.leaf().noalias() = x_.middleRows(b, r).transpose() * dpre;
    w1_.tree.push();
    b1_.leaf().row(0) = dpre.colwise().sum();
    b1_.tree.push();
    dxb.noalias() = dpre * w1_.value.transpose();
    dx.middleRows(b, r) = dxb;
    b += r;
  }
  MOESIM_REQUIRE(b == dy.rows(), "Ffn: blocks of " << b << " rows for " << dy.rows() << " rows");
}

template <class T>
RmsNorm<T>::RmsNorm(const std::string& name, Index d, Placement where) {
  g_.name = name + ".g";
  g_.placement = where;
  g_.resize(1, d);
  g_.value.setOnes();
}

template <class T>
void RmsNorm<T>::forward(const Mat<T>& x, Mat<T>& y) {
  const Index n = x.rows(), d = x.cols();
  inv_rms_.resize(n);
  xhat_.resize(n, d);
  for (Index i = 0; i < n; ++i) {
    const T ms = x.row(i).squaredNorm() / static_cast<T>(d);
    inv_rms_(i) = T(1) / std::sqrt(ms + static_cast<T>(kEps));
    xhat_.row(i) = x.row(i) * inv_rms_(i);
  }
  y = xhat_.array().rowwise() * g_.value.row(0).array();
}

template <class T>
void RmsNorm<T>::backward(const Mat<T>& dy, Mat<T>& dx, Index chunk) {
  const Index n = dy.rows(), d = dy.cols();
  if (chunk <= 0) {
    g_.grad.row(0) += dy.cwiseProduct(xhat_).colwise().sum();
  } else {
    for_row_chunks(n, chunk, [&](Index b, Index r) {
      g_.leaf().row(0) = dy.middleRows(b, r).cwiseProduct(xhat_.middleRows(b, r)).colwise().sum();
      g_.tree.push();
    });
  }
  Mat<T> dxhat = dy.array().rowwise() * g_.value.row(0).array();
  dx.resize(n, d);
  for (Index i = 0; i < n; ++i) {
    const T proj = dxhat.row(i).dot(xhat_.row(i)) / static_cast<T>(d);
    dx.row(i) = (dxhat.row(i) - xhat_.row(i) * proj) * inv_rms_(i);
  }
}

template class Linear<float>;
template class Linear<double>;
template class Ffn<float>;
template class Ffn<double>;
template class RmsNorm<float>;
template class RmsNorm<double>;

}  // namespace moesim
