#pragma once
// Command-line and config-file options (Boost.Program_options). A config file
// given by --config supplies defaults; the command line wins.
#include <boost/program_options.hpp>
#include <functional>
#include <string>
#include <vector>

#include "io/run_file.hpp"

namespace moesim::cli {

namespace po = boost::program_options;

struct Parsed {
  po::variables_map vm;
  bool help = false;
};

// How every command line is split: Boost's default without its guessing of abbreviations
// (`--exp` for `--experts`, as Megatron-LM's argparse sets allow_abbrev=False): a new option
// must not change what an old command line means, and a mistyped name gets a suggestion.
inline constexpr int kCommandLineStyle =
    po::command_line_style::default_style & ~po::command_line_style::allow_guessing;

// A double's default as written in --help: the shortest text that reads back as the same
// value (0.003 where Boost prints 0.0030000000000000001, 1e-8, inf). Only the help text:
// the value (stored in run files and checkpoints) is the double itself.
std::string shown(double v);
// po::value<double> with its default shown as written.
po::typed_value<double>* real(double v);
// po::value<bool> with its default shown as true or false.
po::typed_value<bool>* boolean(bool v);

// " (did you mean 'x'?)" naming the closest of `names` to `typed` (edit distance, '_' read as
// '-'), or "" when none is close; each name is written with `prefix` ("--" for options).
std::string did_you_mean(const std::string& typed, const std::vector<std::string>& names,
                         const std::string& prefix = "");

// Parses `args` (after the subcommand) against `desc`, which must not declare
// --help or --config (they are added here). `preset` is INI text (a sweep point's
// values) that ranks between the command line and the --config file. Megatron-LM's names
// that `desc` declares (cli/aliases) are replaced by the moesim options they mean, source by
// source, so the map holds moesim's names only. Errors become ConfigError; an unknown
// option's names the closest known one.
Parsed parse(const std::string& command, const std::vector<std::string>& args,
             const po::options_description& desc, const std::string& preset = "");

// Every resolved option (for which `keep(name)` holds, when given), typed, with its help text
// from `desc`.
std::vector<OptionSetting> option_settings(const po::variables_map& vm, const po::options_description& desc,
                                           const std::function<bool(const std::string&)>& keep = {});
AttrList as_attrs(const std::vector<OptionSetting>& settings);

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
