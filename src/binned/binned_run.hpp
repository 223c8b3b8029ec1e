#pragma once
// A whole `moe --task binned` run: its table read or generated, the run file created,
// the mixture fitted (binned/binned_moe), its results written, a summary printed.
// Run-file layout (besides the root attributes of io/run_file):
//   /bins          edges (B-1), rows (3 x B: train, validation, test)   attrs: mode, rows_are
//   /gate          probability_histogram (B x B x H), confusion, mean_probability (B x B)
//   /experts       loss (B x 5, attr loss_columns), rmse_by_bin (B x B)
//   /calibration   x, y: the isotonic map's knots
//   /predictions/* row-sharded per-row results, written by every rank
//   /final         attributes: RMSEs before and after calibration, gate scores, totals
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "binned/binned_moe.hpp"
#include "comm/communicator.hpp"
#include "data/regimes.hpp"
#include "data/table.hpp"
#include "io/run_file.hpp"

namespace moesim {

struct BinnedInputSpec {
  std::optional<std::string> data;  // a table (CSV or .h5 / .hdf5); none: generated regimes rows
  std::string target;               // CSV: the target column
  std::string weight_column;        // CSV: per-row sample weights
  RegimesConfig regimes;            // without data: the generated rows
  std::int64_t rows = 20000;
};

// COLLECTIVE. The regression table of a binned run; `cluster` (if given) receives the
// regime of each local row when the rows are generated, and stays empty otherwise.
Table read_binned_table(const Communicator& comm, const BinnedInputSpec& spec, std::vector<int>* cluster);

struct BinnedRunSettings {
  BinnedOptions options;  // valid (validate_binned)
  BinnedInputSpec input;
  std::string out;        // the run file
  AttrList option_attrs;  // root attributes naming the resolved options (provenance is added)
};

// COLLECTIVE. Resets the communication tally, so final/bytes_communicated counts this run.
BinnedResult run_binned_file(const Communicator& comm, const BinnedRunSettings& settings);

// COLLECTIVE. The results of a run into `rf`, then complete = 1. `cluster`: the regime
// of each local row, or empty (no predictions/cluster).
// The datasets a binned (moe --task binned) run file holds.
std::span<const DatasetInfo> binned_run_datasets();

void write_binned_run(const Communicator& comm, RunFile& rf, const BinnedResult& r, const BinnedOptions& o,
                      const std::vector<int>& cluster, double seconds);

}  // namespace moesim
