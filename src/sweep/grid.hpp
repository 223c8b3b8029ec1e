#pragma once
// Sweep grids: a config file whose values may be comma-separated lists expands into
// the cartesian product of its lists (keys named together in a `zip` line advance
// together). Every point has a stable id derived from its values.
#include <string>
#include <utility>
#include <vector>

namespace moesim {

using OptionValues = std::vector<std::pair<std::string, std::string>>;

struct SweepConfig {
  std::string path;
  std::string command = "moe";                      // moe | stack | blend
  std::vector<std::pair<std::string, std::vector<std::string>>> options;  // file order
  std::vector<std::vector<std::string>> zips;       // key groups advancing together
};

struct SweepPoint {
  std::size_t index = 0;
  std::string id;           // readable swept values + hash of every value
  OptionValues values;      // every option of the point, file order
  OptionValues swept;       // only the options that vary over the grid
};

// Parses INI text (Boost.Program_options' config-file grammar).
SweepConfig parse_sweep_config(const std::string& text, const std::string& path);
std::vector<SweepPoint> expand_grid(const SweepConfig& cfg);
// INI text of a point's values (what the subcommand parses below its command line).
std::string point_preset(const SweepPoint& p);

}  // namespace moesim
