#pragma once
// Comma-separated lists, as option values and run-file attributes spell them.
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

}  // namespace moesim
