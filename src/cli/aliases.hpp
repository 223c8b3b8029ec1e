#pragma once
// Megatron-LM's option names accepted by `moesim moe` where the meaning is moesim's own
// (docs/options.md has the table). An alias is declared beside the options, so --help lists
// it and Boost parses it; before each source (command line, sweep point, --config file) is
// stored, parse() replaces it by the moesim options it means, so a variables map, a run file
// and a checkpoint only ever hold moesim's names.
#include <functional>
#include <string>
#include <vector>

#include "cli/options.hpp"

namespace moesim::cli {

// One moesim option an alias sets, as text (the moesim option's own parser reads it).
struct AliasSetting {
  std::string option;
  std::string value;
};

// What one alias, given with one value, means.
struct AliasMeaning {
  std::vector<AliasSetting> sets;
  // A check that needs the other options (run after every source is stored; may be empty):
  // e.g. a --moe-layer-freq pattern's length against --layers.
  std::function<void(const po::variables_map&)> check;
};

// The "Megatron-LM names" group of `moesim moe --help`.
po::options_description megatron_aliases();

// Whether `name` is one of them.
bool is_alias(const std::string& name);

// The moesim options `name` given as `value` sets. ConfigError (one line naming what moesim
// offers) when the value has no moesim counterpart.
AliasMeaning alias_meaning(const std::string& name, const std::string& value);

}  // namespace moesim::cli
