#pragma once
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "comm/ordered_sum.hpp"
#include "core/tensor.hpp"

namespace moesim {

// Where a parameter lives. Replicated parameters are identical on every rank and
// their gradients are all-reduced; expert parameters live on the owning rank only.
enum class Placement { kReplicated, kExpertLocal };

template <class T>
struct Param {
  std::string name;
  Placement placement = Placement::kReplicated;
  Mat<T> value, grad, adam_m, adam_v;
  // Rank-invariant runs: one gradient per chunk of global tokens, summed in tree order
  // (comm/ordered_sum); layers push here instead of adding to grad.
  TreeSum<T> tree;

  void resize(Index rows, Index cols) {
    value = Mat<T>::Zero(rows, cols);
    grad = Mat<T>::Zero(rows, cols);
    adam_m = Mat<T>::Zero(rows, cols);
    adam_v = Mat<T>::Zero(rows, cols);
  }
  Index size() const { return value.size(); }
  // The next chunk's gradient buffer, shaped like value; push it with tree.push().
  MatMap<T> leaf() { return MatMap<T>(tree.leaf(), value.rows(), value.cols()); }
  void fill_normal(Rng& rng, double stddev) {
    for (Index i = 0; i < value.size(); ++i) value.data()[i] = static_cast<T>(stddev * rng.normal());
  }
};

template <class T>
using ParamList = std::vector<Param<T>*>;

}  // namespace moesim
