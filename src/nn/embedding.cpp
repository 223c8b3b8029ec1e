#include "nn/embedding.hpp"

#include <cmath>

#include "core/error.hpp"
#include "core/row_chunks.hpp"

namespace moesim {

template <class T>
TokenEmbedding<T>::TokenEmbedding(const std::string& name, Index vocab, Index dim, Placement where) {
  table_.name = name + ".table";
  table_.placement = where;
  table_.resize(vocab, dim);
}

template <class T>
void TokenEmbedding<T>::forward(const Mat<T>& ids, Mat<T>& y) {
  const Index n = ids.rows(), C = ids.cols(), De = dim(), V = vocab();
  context_ = C;
  ids_.resize(static_cast<std::size_t>(n * C));
  y.resize(n, C * De);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < C; ++j) {
      const double v = static_cast<double>(ids(i, j));
      const Index id = static_cast<Index>(v);
      MOESIM_REQUIRE(v == static_cast<double>(id) && id >= 0 && id < V,
                     "token id " << v << " at (" << i << ", " << j << ") is not in [0, " << V << ")");
      ids_[static_cast<std::size_t>(i * C + j)] = id;
      y.block(i, j * De, 1, De) = table_.value.row(id);
    }
}

template <class T>
void TokenEmbedding<T>::backward(const Mat<T>& dy, Index chunk) {
  const Index n = dy.rows(), C = context_, De = dim();
  MOESIM_REQUIRE(dy.cols() == C * De && static_cast<std::size_t>(n * C) == ids_.size(),
                 "embedding backward: dy is " << dy.rows() << " x " << dy.cols()
                                              << ", forward saw " << C << " slots of width " << De);
  if (chunk <= 0) {
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < C; ++j)
        table_.grad.row(ids_[static_cast<std::size_t>(i * C + j)]) += dy.block(i, j * De, 1, De);
    return;
  }
  for_row_chunks(n, chunk, [&](Index b, Index r) {
    MatMap<T> g = table_.leaf();
    g.setZero();
    for (Index i = b; i < b + r; ++i)
      for (Index j = 0; j < C; ++j) g.row(ids_[static_cast<std::size_t>(i * C + j)]) += dy.block(i, j * De, 1, De);
    table_.tree.push();
  });
}

template class TokenEmbedding<float>;
template class TokenEmbedding<double>;

}  // namespace moesim
