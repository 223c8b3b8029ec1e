#pragma once
// The sweep summary (DIR/sweep.h5): one row per grid point, rebuilt from the run
// files every time, never the only copy of anything.
#include <string>
#include <vector>

#include "sweep/grid.hpp"

namespace moesim {

struct PointStatus {
  std::string status;  // complete | failed | incomplete | pending
  std::string error;
};

// Reads the point's run file (absent, unreadable or incomplete files are not complete).
PointStatus point_status(const std::string& run_file);

// Marks `run_file` as failed with `error`, creating it (with the point's options) if
// the failure came before the run created it. Never marks a complete file.
void record_failure(const std::string& run_file, const SweepPoint& p, const std::string& command,
                    const std::string& error);

// Writes DIR/sweep.h5 atomically (a temporary file renamed into place).
void write_summary(const std::string& dir, const SweepConfig& cfg, const std::vector<SweepPoint>& points);

std::string run_file_of(const std::string& dir, const SweepPoint& p);

}  // namespace moesim
