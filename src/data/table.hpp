#pragma once
// A rank's shard of a tabular data set: contiguous global rows [first, first + n).
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.hpp"

namespace moesim {

struct Table {
  std::int64_t rows_global = 0;     // N over all ranks
  std::int64_t first = 0;           // global index of local row 0
  Mat<double> X;                    // n x p features
  std::vector<double> y;            // n: regression target, or class index 0..C-1
  std::vector<double> w;            // n: sample weights (1 when the data gives none)
  std::vector<std::int64_t> group;  // n: fold or group ids when given, else empty
  std::vector<std::string> features;
  std::vector<std::string> classes; // classification: class names; label i = classes[i]
  Index n() const { return X.rows(); }
  Index p() const { return X.cols(); }
  int num_classes() const { return static_cast<int>(classes.size()); }
};

// Rows of `t` where keep[i] is true, in order (local, no communication).
Table select_rows(const Table& t, const std::vector<char>& keep);

}  // namespace moesim
