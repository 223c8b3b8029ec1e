#pragma once
// Comma-separated lists, as option values and run-file attributes spell them, and the text
// of an option parser's error.
#include <algorithm>
#include <boost/program_options/errors.hpp>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.hpp"

namespace moesim {

// "a,,b" -> {"a", "b"}: empty items are dropped, nothing is trimmed.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

// {"a", "b"} -> "a,b".
inline std::string join_list(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

// "1,2.5,-3" -> {1, 2.5, -3}; an empty string gives no numbers. Any item that is not
// one number (an empty one too) is a ConfigError "<what>: '<item>' is not a number".
inline std::vector<double> parse_number_list(const std::string& s, const std::string& what) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOESIM_CONFIG_CHECK(used > 0 && item.find_first_not_of(" \t", used) == std::string::npos,
                        what << ": '" << item << "' is not a number");
    out.push_back(v);
  }
  return out;
}

// The text of a Boost.Program_options error. Boost fills its template by replacing each
// %name% with the name's value until none is left, so a value holding its own placeholder
// never ends (`--experts %value%`, the config lines `x%canonical_option% = 1` and
// `%invalid_line%` hung): a '%' in a value is shown as '?'.
inline std::string program_options_error_text(const boost::program_options::error& e) {
  namespace po = boost::program_options;
  const auto* named = dynamic_cast<const po::error_with_option_name*>(&e);
  if (named == nullptr) return e.what();
  struct Substitutions : po::error_with_option_name {  // reads the protected values, nothing else
    static const std::map<std::string, std::string>& of(const po::error_with_option_name& x) {
      return x.*&Substitutions::m_substitutions;
    }
  };
  po::error_with_option_name safe = *named;
  for (auto [name, value] : Substitutions::of(*named)) {
    std::replace(value.begin(), value.end(), '%', '?');
    safe.set_substitute(name, value);
  }
  return safe.what();
}

}  // namespace moesim
