#include "nn/layers.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/error.hpp"
#include "core/row_chunks.hpp"
#include "nn/gelu_rows.hpp"

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
void Ffn<T>::use_device() {
  if constexpr (!std::is_same_v<T, float>)
    throw ConfigError("--device cuda runs fp32 models (--precision fp32)");
  else
    engine_ = std::make_shared<device::FfnEngine>(w1_.value.rows(), w1_.value.cols());
}

template <class T>
void Ffn<T>::init(Rng& rng) {
  w1_.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(w1_.value.rows())));
  // Output projection starts small so that deep residual stacks start near identity.
  w2_.fill_normal(rng, 0.5 / std::sqrt(static_cast<double>(w2_.value.rows())));
  b1_.value.setZero();
  b2_.value.setZero();
}

// chunk <= 0: one block, gradients added to grad; chunk > 0: blocks of `chunk` rows, one
// gradient per block pushed into each parameter's tree (the block version below).
template <class T>
void Ffn<T>::forward(const ConstMatMap<T>& x, MatMap<T> y, Index chunk) {
  if (forward_on_device(x, y)) return;
  keep_input(x);
  place_kept_rows();
  for_row_chunks(x.rows(), chunk, [&](Index b, Index r) { forward_block(x, y, b, r); });
}

template <class T>
void Ffn<T>::forward(const ConstMatMap<T>& x, MatMap<T> y, const std::vector<Index>& blocks) {
  if (forward_on_device(x, y)) return;
  keep_input(x);
  place_kept_rows();
  Index b = 0;
  for (const Index r : blocks) {
    forward_block(x, y, b, r);
    b += r;
  }
  MOESIM_REQUIRE(b == x.rows(), "Ffn: blocks of " << b << " rows for " << x.rows() << " rows");
}

// --device cuda: the whole batch in one pass on the GPU (every row is its own product row, so
// the blocks need no pass of their own); false on the CPU.
template <class T>
bool Ffn<T>::forward_on_device(const ConstMatMap<T>& x, MatMap<T> y) {
  if constexpr (std::is_same_v<T, float>) {
    if (engine_) {
      rows_ = x.rows();
      engine_->forward(x.data(), x.rows(), {w1_.value.data(), b1_.value.data(), w2_.value.data(), b2_.value.data()},
                       y.data());
      return true;
    }
  }
  return false;
}

template <class T>
void Ffn<T>::keep_input(const ConstMatMap<T>& x) {
  rows_ = x.rows();
  if (borrow_input_) {
    input_ = x.data();
    return;
  }
  MatMap<T> kept = x_.view(rows_, x.cols());
  kept = x;
  input_ = kept.data();
}

template <class T>
void Ffn<T>::place_kept_rows() {
  const Index F = w1_.value.cols();
  hidden_ = next_hidden_ ? next_hidden_ : h_.view(rows_, F).data();
  slopes_ = next_slope_ ? next_slope_ : slope_.view(rows_, F).data();
  next_hidden_ = next_slope_ = nullptr;
}

// Rows [b, b + r): x W1 into the kept activations, bias + GELU over them in place in one pass
// that keeps GELU's slope for backward (nn/gelu_rows), h W2 straight into y, then b2.
template <class T>
void Ffn<T>::forward_block(const ConstMatMap<T>& x, MatMap<T> y, Index b, Index r) {
  if (r == 0) return;
  const Index F = w1_.value.cols();
  MatMap<T> hb(hidden_ + b * F, r, F), sb(slopes_ + b * F, r, F);
  MatMap<T> yb(y.data() + b * y.cols(), r, y.cols());
  hb.noalias() = x.middleRows(b, r) * w1_.value;
  bias_gelu_forward<T>(hb, b1_.value.data(), sb);
  yb.noalias() = hb * w2_.value;
  // Row by row: Eigen's rowwise() broadcast over a row-major map compiles to a scalar loop.
  for (Index i = 0; i < r; ++i) yb.row(i) += b2_.value.row(0);
}

template <class T>
void Ffn<T>::backward(const ConstMatMap<T>& dy, MatMap<T> dx, Index chunk) {
  if (chunk <= 0) {
    if (dy.rows() > 0) backward_block(dy, dx, 0, dy.rows(), false);  // no rows: no gradient
    return;
  }
  for_row_chunks(dy.rows(), chunk, [&](Index b, Index r) { backward_block(dy, dx, b, r, true); });
}

template <class T>
void Ffn<T>::backward(const ConstMatMap<T>& dy, MatMap<T> dx, const std::vector<Index>& blocks) {
  Index b = 0;
  for (const Index r : blocks) {
    if (r == 0) {
      for (Param<T>* p : {&w1_, &b1_, &w2_, &b2_}) p->tree.push_empty();
      continue;
    }
    backward_block(dy, dx, b, r, true);
    b += r;
  }
  MOESIM_REQUIRE(b == dy.rows(), "Ffn: blocks of " << b << " rows for " << dy.rows() << " rows");
}

// Rows [b, b + r): into each parameter's next leaf (pushed) or added to its grad.
template <class T>
void Ffn<T>::backward_block(const ConstMatMap<T>& dy, MatMap<T> dx, Index b, Index r, bool leaf) {
  MOESIM_REQUIRE(dy.rows() == rows_, "Ffn backward: " << dy.rows() << " rows after a forward of " << rows_);
  if constexpr (std::is_same_v<T, float>) {
    if (engine_) {
      backward_block_on_device(dy, dx, b, r, leaf);
      return;
    }
  }
  const Index D = w1_.value.rows(), F = w1_.value.cols();
  const ConstMatMap<T> xb(input_ + b * D, r, D);
  const ConstMatMap<T> hb(hidden_ + b * F, r, F), sb(slopes_ + b * F, r, F);
  const auto dyb = dy.middleRows(b, r);
  MatMap<T> dpre = dpre_->view(r, F);
  MatMap<T> dxb(dx.data() + b * D, r, D);
  if (leaf) {
    w2_.leaf().noalias() = hb.transpose() * dyb;
    w2_.tree.push();
    b2_.leaf().row(0) = dyb.colwise().sum();
    b2_.tree.push();
  } else {
    w2_.grad.noalias() += hb.transpose() * dyb;
    b2_.grad.row(0) += dyb.colwise().sum();
  }
  dpre.noalias() = dyb * w2_.value.transpose();
  if (leaf) {
    MatMap<T> b1 = b1_.leaf();
    b1.setZero();
    gelu_backward<T>(dpre, sb, b1.data());
    w1_.leaf().noalias() = xb.transpose() * dpre;
    w1_.tree.push();
    b1_.tree.push();
  } else {
    gelu_backward<T>(dpre, sb, b1_.grad.data());
    w1_.grad.noalias() += xb.transpose() * dpre;
  }
  dxb.noalias() = dpre * w1_.value.transpose();
}

// The GPU computes the block's gradients; they land where the CPU path puts them: the
// parameters' next leaves (pushed) or added to their grads.
template <class T>
void Ffn<T>::backward_block_on_device(const ConstMatMap<T>& dy, MatMap<T> dx, Index b, Index r, bool leaf) {
  if constexpr (std::is_same_v<T, float>) {
    const Index D = w1_.value.rows();
    const device::FfnGrads g = leaf ? device::FfnGrads{w1_.leaf().data(), b1_.leaf().data(), w2_.leaf().data(),
                                                       b2_.leaf().data()}
                                    : device::FfnGrads{w1_.grad.data(), b1_.grad.data(), w2_.grad.data(),
                                                       b2_.grad.data()};
    engine_->backward_block(dy.data() + b * D, b, r, dx.data() + b * D, g, !leaf);
    if (leaf)
      for (Param<T>* p : {&w2_, &b2_, &w1_, &b1_}) p->tree.push();
  }
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
