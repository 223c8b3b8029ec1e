#include "io/dataset_info.hpp"

#include "io/hdf5.hpp"

namespace moesim {

std::vector<std::string> axis_names(std::string_view axes) {
  std::vector<std::string> out;
  while (!axes.empty()) {
    const std::size_t cut = axes.find(" x ");
    out.emplace_back(axes.substr(0, cut));
    axes = cut == std::string_view::npos ? std::string_view{} : axes.substr(cut + 3);
  }
  return out;
}

namespace {
// "points/options/<option>" matches "points/options/lr".
bool matches(std::string_view pattern, std::string_view path) {
  const std::size_t open = pattern.find('<');
  if (open == std::string_view::npos) return pattern == path;
  const std::size_t close = pattern.find('>', open);
  if (close == std::string_view::npos) return false;
  const std::string_view head = pattern.substr(0, open), tail = pattern.substr(close + 1);
  return path.size() > head.size() + tail.size() && path.substr(0, head.size()) == head &&
         path.substr(path.size() - tail.size()) == tail &&
         path.substr(head.size(), path.size() - head.size() - tail.size()).find('/') == std::string_view::npos;
}
}  // namespace

const DatasetInfo* find_dataset(std::span<const DatasetInfo> table, std::string_view path) {
  for (const DatasetInfo& d : table)
    if (d.path == path) return &d;
  for (const DatasetInfo& d : table)
    if (matches(d.path, path)) return &d;
  return nullptr;
}

void describe_dataset(hid_t loc, const std::string& name, const DatasetInfo& info, const std::string& description) {
  h5::describe_dataset(loc, name, std::string(info.unit), description.empty() ? std::string(info.description) : description,
                       axis_names(info.axes));
}

std::string datasets_markdown(std::span<const DatasetInfo> table) {
  std::string t = "| dataset | axes | type | unit | description |\n|---|---|---|---|---|\n";
  for (const DatasetInfo& d : table) {
    t += "| `";
    t += d.path;
    t += "` | ";
    t += d.axes;
    t += " | ";
    t += d.type;
    t += " | ";
    t += d.unit.empty() ? std::string_view("-") : d.unit;
    t += " | ";
    t += d.description;
    t += " |\n";
  }
  return t;
}

}  // namespace moesim
