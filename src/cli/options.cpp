#include "cli/options.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>

#include "cli/aliases.hpp"
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

// Optimal string alignment distance (Levenshtein plus swapping two neighbours).
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

std::vector<std::string> long_names(const po::options_description& d) {
  std::vector<std::string> out;
  for (const auto& o : d.options())
    if (!o->long_name().empty()) out.push_back(o->long_name());
  return out;
}

// The value an option's own parser makes of `text`, as text again (so "8" and "08", or
// "0.5" and "5e-1", are one value); the text itself when it does not parse.
std::string normalised(const po::options_description& d, const std::string& key, const std::string& text) {
  const po::option_description* o = d.find_nothrow(key, false);
  if (o == nullptr) return text;
  try {
    boost::any v;
    o->semantic()->parse(v, {text}, true);
    if (const auto* i = boost::any_cast<std::int64_t>(&v)) return std::to_string(*i);
    if (const auto* x = boost::any_cast<double>(&v)) return shown(*x);
    if (const auto* b = boost::any_cast<bool>(&v)) return *b ? "true" : "false";
    if (const auto* s = boost::any_cast<std::string>(&v)) return *s;
  } catch (const std::exception&) {
  }
  return text;
}

// One source's Megatron-LM names replaced by the moesim options they mean (cli/aliases).
// Within the source, an alias and the option it means (or two aliases meaning one option)
// must agree: one entry is kept. Between sources the usual order decides.
void replace_aliases(po::parsed_options& parsed, const po::options_description& all, const std::string& command,
                     const std::string& where, std::vector<AliasMeaning>& meanings) {
  struct Entry {
    po::option option;
    std::string given;  // "--num-experts 4 (Megatron-LM's name for --experts 4)", or "--experts 8"
    bool alias = false;
  };
  std::vector<Entry> entries;
  for (const po::option& o : parsed.options) {
    const std::string value = o.value.empty() ? std::string() : o.value.front();
    if (o.string_key.empty() || !is_alias(o.string_key) || all.find_nothrow(o.string_key, false) == nullptr) {
      entries.push_back({o, "--" + o.string_key + (o.value.empty() ? "" : " " + value), false});
      continue;
    }
    AliasMeaning m;
    try {
      m = alias_meaning(o.string_key, value);
    } catch (const ConfigError& e) {
      throw ConfigError(where + e.what());
    }
    std::string means;
    for (const AliasSetting& s : m.sets) {
      means += (means.empty() ? "--" : " --") + s.option + " " + s.value;
      // A value the option cannot read is reported under the name the user wrote.
      const po::option_description* d = all.find_nothrow(s.option, false);
      MOESIM_REQUIRE(d != nullptr, "alias --" << o.string_key << " names no option --" << s.option);
      try {
        boost::any v;
        d->semantic()->parse(v, {s.value}, true);
      } catch (const po::error&) {
        throw ConfigError(where + "the argument ('" + value + "') for option '--" + o.string_key + "' is invalid (see moesim " +
                          command + " --help)");
      }
    }
    for (const AliasSetting& s : m.sets) {
      po::option c = o;  // keeps the original tokens: Boost's own errors name the alias as given
      c.string_key = s.option;
      c.value = {s.value};
      entries.push_back({c, "--" + o.string_key + " " + value + " (Megatron-LM's name for " + means + ")", true});
    }
    if (m.check) meanings.push_back(std::move(m));
  }
  std::vector<po::option> kept;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    bool duplicate = false;
    for (std::size_t j = 0; j < i && !duplicate; ++j) {
      const Entry& f = entries[j];
      if (f.option.string_key != e.option.string_key || e.option.string_key.empty() || !(e.alias || f.alias)) continue;
      const std::string& key = e.option.string_key;
      const std::string a = normalised(all, key, f.option.value.empty() ? "" : f.option.value.front());
      const std::string b = normalised(all, key, e.option.value.empty() ? "" : e.option.value.front());
      MOESIM_CONFIG_CHECK(a == b, where << f.given << " and " << e.given << " disagree: give one");
      duplicate = true;
    }
    if (!duplicate) kept.push_back(e.option);
  }
  parsed.options = std::move(kept);
}

// The line for an option `all` does not know; `name` as Boost reports it.
std::string unknown_option_text(std::string name, const po::options_description& all, const std::string& where,
                                const std::string& command) {
  const bool dashes = name.rfind("-", 0) == 0;
  name.erase(0, name.find_first_not_of('-'));
  const std::string prefix = where.empty() || dashes ? "--" : "";
  const std::string hint = did_you_mean(name, long_names(all), prefix);
  return where + "unknown option '" + prefix + name + "'" +
         (hint.empty() ? " (see moesim " + command + " --help)" : hint);
}
}  // namespace

std::string shown(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest text that reads back exactly
  std::string s(buf, r.ptr);
  const std::size_t e = s.find('e');
  if (e != std::string::npos) {  // 1e-08 -> 1e-8, 1e+20 -> 1e20
    std::size_t d = e + 1;
    if (s[d] == '+') s.erase(d, 1);
    else if (s[d] == '-') ++d;
    while (d + 1 < s.size() && s[d] == '0') s.erase(d, 1);
  }
  return s;
}

po::typed_value<double>* real(double v) { return po::value<double>()->default_value(v, shown(v)); }

po::typed_value<bool>* boolean(bool v) { return po::value<bool>()->default_value(v, v ? "true" : "false"); }

std::string did_you_mean(const std::string& typed, const std::vector<std::string>& names, const std::string& prefix) {
  // A very long word is no typo of a name (and would cost its length times each name).
  if (typed.empty() || typed.size() > 64) return "";
  std::string t = typed;
  for (char& c : t) c = c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // Close: within a third of the word's letters (at least one), or a name the word begins
  // (counted as the farthest close one, so a nearer typo wins).
  const std::size_t allowed = std::max<std::size_t>(1, t.size() / 3);
  std::size_t best = allowed;
  std::vector<std::string> closest;
  for (const std::string& n : names) {
    std::size_t d = edit_distance(t, n);
    if (d > allowed && t.size() >= 3 && n.rfind(t, 0) == 0) d = allowed;
    if (d > allowed || d > best) continue;
    if (d < best) {
      best = d;
      closest.clear();
    }
    if (std::find(closest.begin(), closest.end(), n) == closest.end()) closest.push_back(n);
  }
  if (closest.empty() || closest.size() > 3) return "";
  std::string out;
  for (std::size_t i = 0; i < closest.size(); ++i)
    out += std::string(i == 0 ? "" : i + 1 == closest.size() ? " or " : ", ") + "'" + prefix + closest[i] + "'";
  return " (did you mean " + out + "?)";
}

Parsed parse(const std::string& command, const std::vector<std::string>& args,
             const po::options_description& desc, const std::string& preset) {
  po::options_description all;
  all.add(common_options()).add(desc);
  Parsed p;
  std::vector<AliasMeaning> meanings;  // the alias checks that need the other options
  std::string where;                   // the source being read, as an error's prefix
  try {
    po::parsed_options parsed = po::command_line_parser(args).options(all).style(kCommandLineStyle).run();
    // Boost keeps words that belong to no option as positional values and store() drops
    // them: `--experts 8 16` or `--learners ridge nb` would run without the 16 or the nb.
    for (const po::option& o : parsed.options)
      if (o.position_key >= 0 || o.string_key.empty())
        throw ConfigError("unexpected argument '" + (o.value.empty() ? std::string() : o.value.front()) +
                          "': every value follows its --option, and a list is one comma-separated word "
                          "(see moesim " + command + " --help)");
    replace_aliases(parsed, all, command, "", meanings);
    po::store(parsed, p.vm);
    if (p.vm.count("help")) {
      p.help = true;
      return p;
    }
    if (!preset.empty()) {
      std::istringstream in(preset);
      po::parsed_options from_preset = po::parse_config_file(in, desc, false);
      replace_aliases(from_preset, all, command, "", meanings);
      po::store(from_preset, p.vm);
    }
    if (p.vm.count("config")) {
      const std::string path = p.vm["config"].as<std::string>();
      std::error_code ec;
      // A directory opens as a stream that reads nothing: it would be silently ignored.
      if (std::filesystem::is_directory(path, ec)) throw ConfigError("config file '" + path + "' is a directory");
      std::ifstream in(path);
      if (!in) throw ConfigError("cannot open config file '" + path + "'");
      where = "config file '" + path + "': ";
      po::parsed_options from_file = po::parse_config_file(in, desc, false);
      replace_aliases(from_file, all, command, where, meanings);
      po::store(from_file, p.vm);
      where.clear();
    }
    po::notify(p.vm);
  } catch (const po::unknown_option& e) {
    throw ConfigError(unknown_option_text(e.get_option_name(), all, where, command));
  } catch (const po::error& e) {
    throw ConfigError(where + program_options_error_text(e) + " (see moesim " + command + " --help)");
  }
  for (const AliasMeaning& m : meanings) m.check(p.vm);
  return p;
}

int int_option(const po::variables_map& vm, const char* key) {
  const std::int64_t v = vm[key].as<std::int64_t>();
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    throw ConfigError("--" + std::string(key) + " (" + std::to_string(v) + ") is out of range");
  return static_cast<int>(v);
}

std::vector<OptionSetting> option_settings(const po::variables_map& vm, const po::options_description& desc,
                                           const std::function<bool(const std::string&)>& keep) {
  std::vector<OptionSetting> out;
  for (const auto& [name, value] : vm) {
    if (name == "help" || (keep && !keep(name))) continue;
    OptionSetting o;
    o.key = name;
    for (char& c : o.key)
      if (c == '-') c = '_';
    const boost::any& v = value.value();
    if (const auto* i = boost::any_cast<std::int64_t>(&v)) o.value = *i;
    else if (const auto* d = boost::any_cast<double>(&v)) o.value = *d;
    else if (const auto* s = boost::any_cast<std::string>(&v)) o.value = *s;
    else if (const auto* b = boost::any_cast<bool>(&v)) o.value = std::int64_t{*b ? 1 : 0}, o.boolean = true;
    else throw RuntimeError("option '" + name + "' has a type the run file cannot store");
    if (const po::option_description* od = desc.find_nothrow(name, false)) o.help = od->description();
    out.push_back(std::move(o));
  }
  return out;
}

AttrList as_attrs(const std::vector<OptionSetting>& settings) {
  AttrList out;
  for (const OptionSetting& o : settings) out.emplace_back(o.key, o.value);
  return out;
}

AttrList options_as_attrs(const po::variables_map& vm) {
  return as_attrs(option_settings(vm, po::options_description()));
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
  std::ostringstream text;
  text << "usage: [mpirun -np P] moesim " << command << " [options]\n\n" << summary << "\n\n" << all;
  // Boost ends each group, and begins each nested one, with an empty line: one between groups.
  std::string s = text.str();
  for (std::size_t at; (at = s.find("\n\n\n")) != std::string::npos;) s.erase(at, 1);
  std::cout << s << std::flush;
}

}  // namespace moesim::cli
