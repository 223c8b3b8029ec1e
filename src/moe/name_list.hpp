#pragma once
// "a, b, c or d": the names a registry knows, for its error messages.
#include <string>
#include <vector>

namespace moesim {

inline std::string name_list(const std::vector<std::string>& names) {
  std::string s;
  for (std::size_t i = 0; i < names.size(); ++i)
    s += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return s;
}

}  // namespace moesim
