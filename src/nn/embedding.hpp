#pragma once
// Token embedding for token tasks (Bengio et al. 2003): each of the C context
// tokens looks up a row of one shared table (V x De), and the C rows are
// concatenated, so the position of a token is its slot in the concatenation.
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "nn/param.hpp"

namespace moesim {

template <class T>
class TokenEmbedding {
 public:
  TokenEmbedding() = default;
  TokenEmbedding(const std::string& name, Index vocab, Index dim, Placement where);
  void init(Rng& rng, double stddev) { table_.fill_normal(rng, stddev); }
  // ids: n x C token ids (exact integers in [0, V)); y: n x (C * De).
  void forward(const Mat<T>& ids, Mat<T>& y);
  // Accumulates the table gradient (scatter-add of dy's slots); token ids are not
  // differentiable, so there is no dX.
  // chunk > 0: one gradient per block of `chunk` rows into the table's tree (nn/layers.hpp).
  void backward(const Mat<T>& dy, Index chunk = 0);
  void params(ParamList<T>& out) { out.push_back(&table_); }
  Param<T>& table() { return table_; }
  Index vocab() const { return table_.value.rows(); }
  Index dim() const { return table_.value.cols(); }

 private:
  Param<T> table_;
  std::vector<Index> ids_;  // n * C, row-major, saved for backward
  Index context_ = 0;
};

}  // namespace moesim
