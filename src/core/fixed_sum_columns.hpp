#pragma once
// Column sums of a float matrix into FixedSums (core/fixed_sum): the router statistics' sum of
// every expert's probability over a rank's tokens. FixedSum's sums are exact, so any order of
// the additions gives the same bits; values in [0, 1) are added eight columns at a time in
// AVX-512 lanes as 128-bit integers (two 64-bit halves, the carry counted), each value
// truncated to its multiple of 2^-64 from its bits, as FixedSum's conversion does. Other
// values (negative, >= 1, not finite) and CPUs without AVX-512F take FixedSum's += itself.
#include "core/fixed_sum.hpp"
#include "core/tensor.hpp"

namespace moesim {

// sums[c] += m[r * cols + c] for every row r < rows and column c < cols (row-major m).
void add_columns(const float* m, Index rows, Index cols, FixedSum* sums);
// The same for doubles, one value at a time (FixedSum's += on each).
void add_columns(const double* m, Index rows, Index cols, FixedSum* sums);

// The same, one value at a time through FixedSum's += (the reference; tests compare the two).
void add_columns_reference(const float* m, Index rows, Index cols, FixedSum* sums);

}  // namespace moesim
