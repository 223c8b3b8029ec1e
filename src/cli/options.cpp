#include "cli/options.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>

#include "core/strings.hpp"

namespace moesim::cli {

namespace {
po::options_description common_options() {
  po::options_description d("General");
  d.add_options()("help,h", "print this help and exit")(
      "config", po::value<std::string>(),
      "read options from an INI-style file (key = value, keys as the long option names); "
      "options on the command line win");
  return d;
}
}  // namespace

Parsed parse(const std::string& command, const std::vector<std::string>& args,
             const po::options_description& desc, const std::string& preset) {
  po::options_description all;
  all.add(common_options()).add(desc);
  Parsed p;
  try {
    const po::parsed_options parsed = po::command_line_parser(args).options(all).run();
    // Boost keeps words that belong to no option as positional values and store() drops
    // them: `--experts 8 16` or `--learners ridge nb` would run without the 16 or the nb.
    for (const po::option& o : parsed.options)
      if (o.position_key >= 0 || o.string_key.empty())
        throw ConfigError("unexpected argument '" + (o.value.empty() ? std::string() : o.value.front()) +
                          "': every value follows its --option, and a list is one comma-separated word "
                          "(see moesim " + command + " --help)");
    po::store(parsed, p.vm);
    if (p.vm.count("help")) {
      p.help = true;
      return p;
    }
    if (!preset.empty()) {
      std::istringstream in(preset);
      po::store(po::parse_config_file(in, desc, false), p.vm);
    }
    if (p.vm.count("config")) {
      const std::string path = p.vm["config"].as<std::string>();
      std::error_code ec;
      // A directory opens as a stream that reads nothing: it would be silently ignored.
      if (std::filesystem::is_directory(path, ec)) throw ConfigError("config file '" + path + "' is a directory");
      std::ifstream in(path);
      if (!in) throw ConfigError("cannot open config file '" + path + "'");
      po::store(po::parse_config_file(in, desc, false), p.vm);
    }
    po::notify(p.vm);
  } catch (const po::error& e) {
    throw ConfigError(program_options_error_text(e) + " (see moesim " + command + " --help)");
  }
  return p;
}

int int_option(const po::variables_map& vm, const char* key) {
  const std::int64_t v = vm[key].as<std::int64_t>();
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    throw ConfigError("--" + std::string(key) + " (" + std::to_string(v) + ") is out of range");
  return static_cast<int>(v);
}

AttrList options_as_attrs(const po::variables_map& vm) {
  AttrList out;
  for (const auto& [name, value] : vm) {
    if (name == "help") continue;
    std::string key = name;
    for (char& c : key)
      if (c == '-') c = '_';
    const boost::any& v = value.value();
    if (const auto* i = boost::any_cast<std::int64_t>(&v)) out.emplace_back(key, *i);
    else if (const auto* d = boost::any_cast<double>(&v)) out.emplace_back(key, *d);
    else if (const auto* s = boost::any_cast<std::string>(&v)) out.emplace_back(key, *s);
    else if (const auto* b = boost::any_cast<bool>(&v)) out.emplace_back(key, std::int64_t{*b ? 1 : 0});
    else throw RuntimeError("option '" + name + "' has a type the run file cannot store");
  }
  return out;
}

std::string options_as_ini(const po::variables_map& vm, const std::vector<std::string>& skip) {
  std::string out;
  for (const auto& [name, value] : vm) {
    if (name == "help" || name == "config" || std::find(skip.begin(), skip.end(), name) != skip.end())
      continue;
    const boost::any& v = value.value();
    std::string text;
    if (const auto* i = boost::any_cast<std::int64_t>(&v)) {
      text = std::to_string(*i);
    } else if (const auto* d = boost::any_cast<double>(&v)) {
      char buf[64];
      const auto r = std::to_chars(buf, buf + sizeof buf, *d);  // shortest text that reads back exactly
      text.assign(buf, r.ptr);
    } else if (const auto* s = boost::any_cast<std::string>(&v)) {
      text = *s;
    } else if (const auto* b = boost::any_cast<bool>(&v)) {
      text = *b ? "true" : "false";
    } else {
      throw RuntimeError("option '" + name + "' has a type a config file cannot hold");
    }
    out += name + " = " + text + "\n";
  }
  return out;
}

void print_help(const std::string& command, const std::string& summary,
                const po::options_description& desc) {
  po::options_description all;
  all.add(common_options()).add(desc);
  std::cout << "usage: [mpirun -np P] moesim " << command << " [options]\n\n"
            << summary << "\n\n" << all << std::flush;
}

}  // namespace moesim::cli
