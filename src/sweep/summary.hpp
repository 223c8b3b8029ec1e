#pragma once
// The sweep summary (DIR/sweep.h5): one row per grid point, rebuilt from the run
// files every time, never the only copy of anything.
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "io/dataset_info.hpp"
#include "io/run_file.hpp"
#include "sweep/grid.hpp"

namespace moesim {

struct PointStatus {
  std::string status;  // complete | failed | invalid | incomplete | pending
  std::string error;   // failed: the error; invalid: why the point can never run
};

// Reads the point's run file (absent, unreadable or incomplete files are not complete).
PointStatus point_status(const std::string& run_file);

// The point's status in the sweep: its run file's, except that a point whose options can
// never run (`invalid_reason` not empty, judged for this job's rank count) is invalid unless
// it has a complete run.
PointStatus sweep_status(const std::string& run_file, const std::string& invalid_reason);

// The point's headline result from its run file's `final` group, as "name value" (%.5f):
// val_loss (moe), rmse_after_calibration (moe --task binned), test_accuracy or test_rmse
// (stack, blend); "" when the file has none of them.
std::string point_result(const std::string& run_file);

// Marks `run_file` as failed with `error`, creating it (with the point's options) if
// the failure came before the run created it. Never marks a complete file.
void record_failure(const std::string& run_file, const SweepPoint& p, const std::string& command,
                    const std::string& error);

// Marks `run_file` as invalid (status "invalid", `reason` as its error) the same way: the
// point was not run because its options can never run.
void record_invalid(const std::string& run_file, const SweepPoint& p, const std::string& command,
                    const std::string& reason);

// Every option a point runs with (throws when its options cannot be parsed).
using PointOptions = std::function<std::vector<OptionSetting>(const SweepPoint&)>;

// Writes DIR/sweep.h5 atomically (a temporary file renamed into place). `invalid_reasons`:
// per point, why it can never run ("" when it can), as sweep_status takes it. `options_of`
// gives each point's every option, typed; without it (or for a point it cannot parse) the
// options the config names are typed from their text.
void write_summary(const std::string& dir, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
                   const std::vector<std::string>& invalid_reasons, const PointOptions& options_of = {});

// The datasets of sweep.h5.
std::span<const DatasetInfo> sweep_summary_datasets();

// Where an int64 column of sweep.h5 has no value (its `missing_value` attribute).
inline constexpr std::int64_t kMissingInt = std::numeric_limits<std::int64_t>::min();

std::string run_file_of(const std::string& dir, const SweepPoint& p);

}  // namespace moesim
