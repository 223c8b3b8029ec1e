#pragma once
// Fixed-size row blocks of a token matrix. A product's rounding depends on how many
// rows the BLAS call sees (measured with OpenBLAS: a row of X W differs between a
// 600-row and a 64-row call), so rank-count invariant runs compute every product in
// blocks of `chunk` rows that start at multiples of `chunk` in the global token order
// (a rank's shard is whole chunks). chunk = 0: one block of all rows.
#include <algorithm>

#include "core/tensor.hpp"

namespace moesim {

template <class F>
void for_row_chunks(Index rows, Index chunk, F&& f) {
  if (chunk <= 0) {
    f(Index{0}, rows);
    return;
  }
  for (Index b = 0; b < rows; b += chunk) f(b, std::min(chunk, rows - b));
}

}  // namespace moesim
