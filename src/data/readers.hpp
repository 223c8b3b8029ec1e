#pragma once
// Tabular inputs, sharded as they are read: rank r parses only its contiguous block
// of rows, so no rank holds the whole data set.
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "data/table.hpp"

namespace moesim {

struct TableSpec {
  std::string target;         // CSV: name of the target column
  bool classification = true;
  std::string weight_column;  // optional per-row sample weights (>= 0)
  std::string group_column;   // optional fold or group ids
  // Classification: the class names to map labels onto (a test set uses the training
  // set's classes); empty = discover them from the data.
  std::vector<std::string> classes;
};

// COLLECTIVE. CSV with a header row; every cell numeric except a classification
// target, which may be any label. Errors name the file, line and column.
Table read_csv(const Communicator& comm, const std::string& path, const TableSpec& spec);

// COLLECTIVE. HDF5 with datasets X (N x p) and y (N), optional w (N) and group (N),
// optional string attribute `features` (comma-separated), read with parallel HDF5.
Table read_hdf5_table(const Communicator& comm, const std::string& path, const TableSpec& spec);

// COLLECTIVE. By extension: .h5 / .hdf5 -> HDF5, anything else -> CSV.
Table read_table(const Communicator& comm, const std::string& path, const TableSpec& spec);

// COLLECTIVE. Class names from the labels every rank saw: numeric labels sorted as
// numbers, others as strings.
std::vector<std::string> union_of_labels(const Communicator& comm,
                                         const std::vector<std::string>& local);

}  // namespace moesim
