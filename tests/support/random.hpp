#pragma once
// Random test inputs from a fixed key. No GoogleTest here: bench/ includes it too.
#include <cstdint>

#include "core/rng.hpp"
#include "core/tensor.hpp"

namespace moesim::test {

inline Mat<double> random_matrix(Index r, Index c, std::uint64_t key, double scale = 1.0) {
  Rng rng(key);
  Mat<double> m(r, c);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = scale * rng.normal();
  return m;
}

}  // namespace moesim::test
