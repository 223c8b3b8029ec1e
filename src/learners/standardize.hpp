#pragma once
// Feature standardisation with statistics of the training rows only (weighted,
// all-reduced over ranks), for learners whose geometry depends on feature scale.
#include <vector>

#include "comm/communicator.hpp"
#include "core/tensor.hpp"

namespace moesim {

struct Standardizer {
  RowVec<double> mean, scale;  // 1 x p; scale is 1 for constant features
  // COLLECTIVE.
  void fit(const Communicator& comm, const Mat<double>& X, const std::vector<double>& w);
  Mat<double> apply(const Mat<double>& X) const;
};

}  // namespace moesim
