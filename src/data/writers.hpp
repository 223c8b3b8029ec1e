#pragma once
// Tables written in the formats data/readers reads back: rank by rank, in global row
// order, so no rank holds more than its own rows.
#include <string>

#include "comm/communicator.hpp"
#include "data/table.hpp"

namespace moesim {

// COLLECTIVE. A header row (the features, then `target`), then one line per row
// (17 significant digits); ranks append their blocks in turn.
void write_table_csv(const Communicator& comm, const Table& t, const std::string& path);

// COLLECTIVE. Datasets X (N x p) and y (N), string attribute `features`, written with
// parallel HDF5 (every rank its rows; t.first must be the global row numbering).
void write_table_hdf5(const Communicator& comm, const Table& t, const std::string& path);

// COLLECTIVE. By extension: .h5 / .hdf5 -> HDF5, anything else -> CSV.
void write_table(const Communicator& comm, const Table& t, const std::string& path);

}  // namespace moesim
