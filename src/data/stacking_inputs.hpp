#pragma once
// The training and test tables of a stacking or blending run: a separate test file
// whose columns are matched to the training file's by name, or a test share split off
// the training file by a hash of (seed, global row), so the split does not depend on
// the rank count.
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "data/readers.hpp"
#include "data/table.hpp"

namespace moesim {

struct StackingInputSpec {
  std::string data;            // training table: CSV (needs table.target) or .h5 / .hdf5
  std::string test;            // separate test table in the same format; empty: none
  TableSpec table;             // target, problem, weight column, fold or group column
  double test_fraction = 0.2;  // without `test`: share of rows held out, in [0, 1)
  bool split_test = true;      // without `test`: whether to hold a share out at all
  std::uint64_t seed = 1;
};

struct StackingInputs {
  Table train, test;
  bool classification = true;
  std::vector<std::int64_t> train_rows;  // global row (in `data`) of each local training row
};

// COLLECTIVE. Reads spec.data (and spec.test, with the training classes), or splits
// off the rows for which is_test_row holds. ConfigError (identical on every rank) for
// a fraction outside [0, 1), a CSV without a target, a test table whose columns do
// not match, and whatever the readers reject.
StackingInputs read_stacking_inputs(const Communicator& comm, const StackingInputSpec& spec);

// Whether global row `row` falls in the held-out test share (a pure function of its
// arguments, so every rank count gives the same split).
bool is_test_row(std::uint64_t seed, std::int64_t row, double test_fraction);

// Reorders test.X's columns to train's by name (a test file may order them
// differently). ConfigError naming both files for a different column count or a
// column of train that test lacks.
void match_columns(Table& test, const Table& train, const std::string& test_name, const std::string& data_name);

}  // namespace moesim
