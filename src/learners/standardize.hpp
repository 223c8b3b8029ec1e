#pragma once
// Feature standardisation with statistics of the training rows only (weighted, summed
// exactly over ranks: comm/exact_row_sums), for learners whose geometry depends on scale.
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim {

struct Standardizer {
  RowVec<double> mean, scale;  // 1 x p; scale is 1 for constant features
  // COLLECTIVE. Weighted mean, then the weighted variance about it (two passes, exact
  // sums: the same bits on any number of ranks).
  void fit(const Communicator& comm, const Mat<double>& X, const std::vector<double>& w);
  Mat<double> apply(const Mat<double>& X) const;
};

}  // namespace moesim
