#pragma once
// A shard of one batch: what a task draws (data/) and what the losses read (moe/).
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

struct Batch {
  Mat<double> x;            // n x input_width() (token tasks: token ids, exact integers)
  Mat<double> y;            // n x 1 (regression targets)
  std::vector<int> label;   // n (classification)
  std::vector<int> cluster; // n, the source of each token (regime, teacher expert); empty if none
};

}  // namespace moesim
