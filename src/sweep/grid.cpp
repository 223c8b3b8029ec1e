#include "sweep/grid.hpp"

#include <boost/program_options.hpp>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/strings.hpp"

namespace moesim {

namespace po = boost::program_options;

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// "a, b" -> {a, b}; a value that is itself a list is bracketed: "[ridge,nb], [ridge]" ->
// {"ridge,nb", "ridge"} (a bracket anywhere else, or one left open, is an error).
std::vector<std::string> split_values(const std::string& s, const std::string& where) {
  std::vector<std::string> out;
  if (trim(s).empty()) return out;
  std::string item;
  bool open = false, bracketed = false;
  auto finish = [&] {
    const std::string t = trim(item);
    MOESIM_CONFIG_CHECK(!bracketed || t.empty() || t.back() == ']',
                        where << ": text after ']' in '" << trim(s) << "' (write a list value as [a,b])");
    if (bracketed) {  // "[ridge, nb]" -> "ridge,nb", as the command line takes it
      std::string inner = t.substr(0, t.size() - 1), joined;
      std::stringstream ss(inner);
      for (std::string part; std::getline(ss, part, ',');) joined += (joined.empty() ? "" : ",") + trim(part);
      out.push_back(joined);
    } else {
      out.push_back(t);
    }
    item.clear();
    bracketed = false;
  };
  for (char c : s) {
    if (c == '[' && !open && trim(item).empty()) {
      open = bracketed = true;
      item.clear();
    } else if (c == '[') {
      throw ConfigError(where + ": unexpected '[' in '" + trim(s) + "' (a list value is one [a,b] item)");
    } else if (c == ']' && open) {
      open = false;
      item += c;
    } else if (c == ']') {
      throw ConfigError(where + ": unmatched ']' in '" + trim(s) + "'");
    } else if (c == ',' && !open) {
      finish();
    } else {
      item += c;
    }
  }
  MOESIM_CONFIG_CHECK(!open, where << ": '[' without ']' in '" << trim(s) << "'");
  finish();
  return out;
}

std::uint64_t hash_text(const std::string& s) {
  std::uint64_t h = 0x9E3779B97F4A7C15ULL;
  for (unsigned char c : s) h = splitmix64(h ^ c);
  return h;
}

std::string sanitize(const std::string& v) {
  std::string out;
  for (char c : v) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '-';
  return out;
}

}  // namespace

SweepConfig parse_sweep_config(const std::string& text, const std::string& path) {
  SweepConfig cfg;
  cfg.path = path;
  std::istringstream in(text);
  po::options_description none;
  po::parsed_options parsed(nullptr);
  try {
    parsed = po::parse_config_file(in, none, true);
  } catch (const po::error& e) {
    throw ConfigError(path + ": " + program_options_error_text(e));
  }
  std::set<std::string> seen;
  for (const po::option& o : parsed.options) {
    const std::string key = o.string_key;
    const std::string value = o.value.empty() ? "" : o.value.front();
    if (key == "command") {
      cfg.command = trim(value);
      continue;
    }
    if (key == "zip") {
      cfg.zips.push_back(split_values(value, path + ": zip"));
      continue;
    }
    MOESIM_CONFIG_CHECK(key.find('.') == std::string::npos,
                        path << ": sections are not supported (key '" << key << "')");
    MOESIM_CONFIG_CHECK(seen.insert(key).second, path << ": option '" << key << "' is given twice");
    std::vector<std::string> values = split_values(value, path + ": '" + key + "'");
    for (const std::string& v : values)
      MOESIM_CONFIG_CHECK(!v.empty(), path << ": empty value in the list for '" << key << "'");
    cfg.options.emplace_back(key, values.empty() ? std::vector<std::string>{""} : values);
  }
  MOESIM_CONFIG_CHECK(cfg.command == "moe" || cfg.command == "stack" || cfg.command == "blend",
                      path << ": command must be moe, stack or blend (got '" << cfg.command << "')");
  MOESIM_CONFIG_CHECK(!seen.count("out"), path << ": 'out' is set by the sweep (DIR/<point id>.h5)");
  for (const auto& z : cfg.zips)
    for (const std::string& k : z)
      MOESIM_CONFIG_CHECK(seen.count(k), path << ": zip names '" << k << "', which is not an option in the file");
  return cfg;
}

std::vector<SweepPoint> expand_grid(const SweepConfig& cfg) {
  // Axes in file order of their first key; a zip group is one axis.
  std::map<std::string, std::size_t> zip_of;
  for (std::size_t g = 0; g < cfg.zips.size(); ++g)
    for (const std::string& k : cfg.zips[g]) {
      MOESIM_CONFIG_CHECK(!zip_of.count(k), cfg.path << ": '" << k << "' appears in two zip groups");
      zip_of[k] = g;
    }
  struct Axis {
    std::vector<std::size_t> keys;  // indices into cfg.options
    std::size_t length = 1;
  };
  std::vector<Axis> axes;
  std::map<std::size_t, std::size_t> axis_of_zip;
  for (std::size_t i = 0; i < cfg.options.size(); ++i) {
    const auto& [key, values] = cfg.options[i];
    auto z = zip_of.find(key);
    if (z != zip_of.end()) {
      auto a = axis_of_zip.find(z->second);
      if (a == axis_of_zip.end()) {
        axis_of_zip[z->second] = axes.size();
        axes.push_back({{i}, values.size()});
      } else {
        Axis& ax = axes[a->second];
        MOESIM_CONFIG_CHECK(values.size() == ax.length,
                            cfg.path << ": zipped options need lists of equal length ('" << key << "' has "
                                     << values.size() << ", its group " << ax.length << ")");
        ax.keys.push_back(i);
      }
    } else if (values.size() > 1) {
      axes.push_back({{i}, values.size()});
    }
  }
  // Every point is checked before the sweep runs: a larger grid is a mistake, and the product of
  // its list lengths could wrap around (64 lists of two gave a grid of 0 points).
  constexpr std::size_t kMaxPoints = 10000;
  std::size_t total = 1;
  for (const Axis& a : axes) {
    MOESIM_CONFIG_CHECK(a.length <= kMaxPoints / total,
                        cfg.path << ": the grid has more than " << kMaxPoints << " points (the product of its list "
                                 << "lengths); split the sweep");
    total *= a.length;
  }
  std::vector<SweepPoint> points;
  points.reserve(total);
  std::map<std::string, std::size_t> index_of_id;  // an id names the point's run file
  std::vector<std::size_t> choice(cfg.options.size(), 0);
  for (std::size_t idx = 0; idx < total; ++idx) {
    // The first axis varies slowest.
    std::size_t rest = idx;
    for (std::size_t a = axes.size(); a-- > 0;) {
      const std::size_t c = rest % axes[a].length;
      rest /= axes[a].length;
      for (std::size_t k : axes[a].keys) choice[k] = c;
    }
    SweepPoint p;
    p.index = idx;
    std::string canonical = "command=" + cfg.command + ";", readable;
    std::vector<bool> varies(cfg.options.size(), false);
    for (const Axis& a : axes)
      for (std::size_t k : a.keys) varies[k] = a.length > 1;
    for (std::size_t i = 0; i < cfg.options.size(); ++i) {
      const auto& [key, values] = cfg.options[i];
      const std::string& v = values[choice[i]];
      p.values.emplace_back(key, v);
      canonical += key + "=" + v + ";";
      if (varies[i]) {
        p.swept.emplace_back(key, v);
        readable += (readable.empty() ? "" : "_") + sanitize(key) + sanitize(v);
      }
    }
    char hash[17];
    std::snprintf(hash, sizeof hash, "%08llx", static_cast<unsigned long long>(hash_text(canonical) & 0xFFFFFFFFULL));
    p.id = (readable.empty() ? std::string("run") : readable) + "_" + hash;
    const auto [same, fresh] = index_of_id.emplace(p.id, idx);
    MOESIM_CONFIG_CHECK(fresh, cfg.path << ": points " << same->second << " and " << idx << " are the same run ('"
                                        << p.id << "'): a list or zip group repeats a value");
    points.push_back(std::move(p));
  }
  return points;
}

std::string point_preset(const SweepPoint& p) {
  std::string text;
  for (const auto& [k, v] : p.values) text += k + " = " + v + "\n";
  return text;
}

}  // namespace moesim
