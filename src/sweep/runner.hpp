#pragma once
// Running a sweep: every point of the grid (or one, for a Slurm job array task) in this
// process, finished points skipped, failures recorded, DIR/sweep.h5 rebuilt at the end.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "sweep/grid.hpp"

namespace moesim {

// Runs one point: the command's entry point with the point's values as a preset config
// layer under `args`. Returns its exit code; a ConfigError fails only that point.
using PointRunner = std::function<int(const std::string& command, const std::vector<std::string>& args,
                                      const std::string& preset)>;

// COLLECTIVE. The sweep config `path`, read by rank 0 and shared (ConfigError on every rank
// when it cannot be read or parsed).
SweepConfig read_sweep_config(const Communicator& comm, const std::string& path);

// Rank 0 prints the grid: index, id, status of its run file in `dir`, swept values.
void print_grid(const Communicator& comm, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
                const std::string& dir);

// COLLECTIVE. Runs the points (only point `index` when >= 0; none with `summary_only`) into
// `dir` and rebuilds the summary. Returns 0, 143 when a signal stopped it (the rest is left
// for the requeued job), or 3 when some point failed (recorded in its run file).
int run_sweep(const Communicator& comm, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
              const std::string& dir, std::int64_t index, bool summary_only, const PointRunner& run);

}  // namespace moesim
