#pragma once
// Command-line and config-file options (Boost.Program_options). A config file
// given by --config supplies defaults; the command line wins.
#include <boost/program_options.hpp>
#include <string>
#include <vector>

#include "io/run_file.hpp"

namespace moesim::cli {

namespace po = boost::program_options;

struct Parsed {
  po::variables_map vm;
  bool help = false;
};

// Parses `args` (after the subcommand) against `desc`, which must not declare
// --help or --config (they are added here). `preset` is INI text (a sweep point's
// values) that ranks between the command line and the --config file. Errors become
// ConfigError.
Parsed parse(const std::string& command, const std::vector<std::string>& args,
             const po::options_description& desc, const std::string& preset = "");

// Every resolved option as an attribute, dashes turned into underscores.
AttrList options_as_attrs(const po::variables_map& vm);

// An integer option held as int: ConfigError when it does not fit (a plain cast would cut
// --folds 100000000000 to 1215752192 and go on).
int int_option(const po::variables_map& vm, const char* key);

// The resolved options as INI text (`key = value`, long names), without those in `skip`:
// what a checkpoint stores so that a run can be rebuilt from it.
std::string options_as_ini(const po::variables_map& vm, const std::vector<std::string>& skip);

void print_help(const std::string& command, const std::string& summary,
                const po::options_description& desc);

}  // namespace moesim::cli
