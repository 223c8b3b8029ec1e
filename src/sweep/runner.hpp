#pragma once
// Running a sweep: every point of the grid (or one, for a Slurm job array task) in this
// process, finished points skipped, points that can never run marked invalid instead of run,
// failures recorded, DIR/sweep.h5 rebuilt at the end.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "io/run_file.hpp"
#include "sweep/grid.hpp"

namespace moesim {

// Runs one point: the command's entry point with the point's values as a preset config
// layer under `args`. Returns its exit code; a ConfigError fails only that point.
using PointRunner = std::function<int(const std::string& command, const std::vector<std::string>& args,
                                      const std::string& preset)>;

// Checks one point's options as the command would, without reading data or running anything:
// throws ConfigError with the reason when the point can never run (K > E, ...). Same arguments
// as PointRunner. Called on rank 0 only, so it must not communicate.
using PointValidator = std::function<void(const std::string& command, const std::vector<std::string>& args,
                                          const std::string& preset)>;

// Every option one point runs with, in effect and typed, as its run file stores them (parsed
// the way the command parses them; nothing is checked or run). Same arguments as PointRunner;
// throws when the options cannot be parsed. Called on rank 0 only.
using PointOptionReader = std::function<std::vector<OptionSetting>(
    const std::string& command, const std::vector<std::string>& args, const std::string& preset)>;

// The arguments a point runs with under `dir` (its run file; for moe its checkpoint and --resume).
std::vector<std::string> point_args(const SweepConfig& cfg, const SweepPoint& p, const std::string& dir);

// COLLECTIVE. Why each point can never run ("" when it can), judged by rank 0 with `check`
// for this job's rank count and shared with every rank.
std::vector<std::string> invalid_reasons(const Communicator& comm, const SweepConfig& cfg,
                                         const std::vector<SweepPoint>& points, const std::string& dir,
                                         const PointValidator& check);

// COLLECTIVE. The sweep config `path`, read by rank 0 and shared (ConfigError on every rank
// when it cannot be read or parsed).
SweepConfig read_sweep_config(const Communicator& comm, const std::string& path);

// COLLECTIVE. Rank 0 prints the grid: index, id, status (sweep_status), swept values, and
// after `  # ` why a point is invalid or failed.
void print_grid(const Communicator& comm, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
                const std::string& dir, const PointValidator& check);

// COLLECTIVE. Runs the valid points (only point `index` when >= 0; none with `summary_only`)
// into `dir`, records the invalid ones (not run) and rebuilds the summary. Returns 143 when a
// signal stopped it (the rest is left for the requeued job), 3 when a valid point failed
// (recorded in its run file) or when no point of the whole grid can run, and 0 otherwise:
// every valid point it ran completed.
int run_sweep(const Communicator& comm, const SweepConfig& cfg, const std::vector<SweepPoint>& points,
              const std::string& dir, std::int64_t index, bool summary_only, const PointRunner& run,
              const PointValidator& check, const PointOptionReader& read_options = {});

}  // namespace moesim
